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
from typing import Any

import pytest
from openai import OpenAI
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS, post
from vllm_tokens_patch_testbed.serve import VllmServer

MEMORY_HEADER = "x-vllm-tokens-memory"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
            },
        },
    }
]
CALL_TOOL = {"type": "function", "function": {"name": "get_weather"}}


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


class Agent:
    """An agent harness as they are written: one `create` per step, the SDK's message appended as is."""

    def __init__(self, server: VllmServer, model: Path) -> None:
        self.server, self.model = server, str(model)
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris and in Rome?"},
        ]
        self.turns: list[dict[str, Any]] = []

    def step(self, **options: Any) -> Any:
        client = OpenAI(base_url=f"{self.server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=self.messages,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            temperature=1.0,
            extra_body={"return_token_ids": True},  # only for checking: the memory does not need it
            **options,
        )
        completion = raw.parse()
        client.close()
        choice = completion.choices[0]
        stock = post(
            f"{self.server.url}/tokenize",
            json={
                "model": self.model,
                "messages": self.messages,
                "tools": TOOLS,
                "add_generation_prompt": True,
            },
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert stock.status_code == 200, stock.text
        self.turns.append(
            {
                "stock": stock.json()["tokens"],
                "prompt": list(completion.prompt_token_ids),  # type: ignore[attr-defined]
                "sampled": list(choice.token_ids),  # type: ignore[attr-defined]
                "memory": raw.headers.get(MEMORY_HEADER),
                "finish": choice.finish_reason,
            }
        )
        self.messages.append(choice.message.model_dump(exclude_none=True))
        return choice

    def tool_round(self, city: str) -> None:
        choice = self.step(tool_choice=CALL_TOOL, max_tokens=64)
        assert choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": f"sunny in {city}"})

    def episode(self) -> None:
        self.tool_round("Paris")
        self.tool_round("Rome")
        self.step(max_tokens=6)  # cut short: finish_reason "length"
        self.messages.append({"role": "user", "content": "Go on, and be brief."})
        self.step(max_tokens=12)


def starts_with_previous(turns: list[dict[str, Any]], index: int, prompt: str = "prompt") -> bool:
    before = turns[index - 1]["prompt"] + turns[index - 1]["sampled"]
    return turns[index][prompt][: len(before)] == before


def test_an_unmodified_agent_gets_exact_ids_every_turn(memory_server: VllmServer, model: Path) -> None:
    agent = Agent(memory_server, model)
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
