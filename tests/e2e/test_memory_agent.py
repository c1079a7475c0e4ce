"""The conversation memory on a real `vllm serve --api-server-count 2` (`VLLM_TOKENS_PATCH_MEMORY=local`),
driven by an unmodified agent loop: only `openai`'s `chat.completions.create`, the whole history sent back
as the SDK returned it, a new connection per call (so both API-server processes serve turns).

The loop: two tool rounds (the model is made to call a tool by a named `tool_choice`), a turn cut short by
`max_tokens`, a user turn, then a history rewrite (the harness summarizes) and a turn after it. With memory
on, every turn's engine prompt begins with the previous turn's prompt + sampled ids (read through
`return_token_ids`, added only for checking), the rewrite starts a new branch, and the export equals the
last turn's ids. Without memory the same conversations drift: vLLM's own render of each turn's
`messages` (`/tokenize`, what the stock route would feed) does not begin with the previous turn's ids
(counted).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_tokens_patch_testbed.agent_loop import Agent, starts_with_previous
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS, post
from vllm_tokens_patch_testbed.serve import VllmServer


@pytest.fixture(scope="module")
def memory_server(model: Path) -> Iterator[VllmServer]:
    with VllmServer(
        model,
        [
            "--api-server-count",
            "2",
            "--api-key",
            API_KEY,
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ],
        log_path=ARTIFACTS / "server-memory.log",
        env={"VLLM_TOKENS_PATCH_MEMORY": "local"},
    ) as running:
        yield running


def test_an_unmodified_agent_gets_exact_ids_every_turn(memory_server: VllmServer, model: Path) -> None:
    agent = Agent(memory_server.url, model, tokenize_url=f"{memory_server.url}/tokenize")
    agent.episode()
    turns = agent.turns
    assert turns[2]["finish"] == "length"
    assert turns[0]["memory"] == "miss; reason=no_history"
    for index in range(1, len(turns)):
        assert turns[index]["memory"].startswith("hit;"), (index, turns[index]["memory"])
        assert starts_with_previous(turns, index), f"turn {index + 1}: not the previous prompt + sampled ids"
    export = post(
        f"{memory_server.url}/v1/chat/completions/tokens/trajectory",
        json={"model": str(model), "messages": agent.messages},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert export.status_code == 200, export.text
    got = export.json()
    assert got["token_ids"] == turns[-1]["prompt"] + turns[-1]["sampled"]
    assert len(got["turns"]) == len(turns)
    assert sum(got["sampled_mask"]) == sum(len(turn["sampled"]) for turn in turns)

    # The harness rewrites its history (a summary): a new branch from there, then reuse again.
    agent.messages = [agent.messages[0], {"role": "user", "content": "Summary: Paris and Rome are sunny."}]
    agent.step(max_tokens=8)
    assert agent.turns[-1]["memory"] == "miss; reason=no_history"
    agent.messages.append({"role": "user", "content": "Thanks."})
    agent.step(max_tokens=8)
    assert agent.turns[-1]["memory"].startswith("hit; messages=3")
    assert starts_with_previous(agent.turns, len(agent.turns) - 1)

    # Memory off: vLLM's own render of the same conversations drifts from what was sampled.
    drifted = [i for i in range(1, len(turns)) if not starts_with_previous(turns, i, "stock")]
    print(f"memory off: {len(drifted)} of {len(turns) - 1} turns would have drifted ({drifted})")
    assert drifted, "the random model's samples always drift on the stock route"
