"""The conversation memory for many replicas: two `vllm serve` with `VLLM_TOKENS_PATCH_MEMORY=redis://...`
(one real `redis-server`) behind vllm-router (round robin), driven by the unmodified agent loop of the e2e
(only `openai`'s `chat.completions.create`, through the router). vllm-router re-serializes the stock
bodies it forwards; each turn lands on the other replica, which reuses the ids the first one recorded.
The trainer then calls the export route of either replica directly, with the client's own transcript.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_tokens_patch_testbed.agent_loop import Agent, starts_with_previous
from vllm_tokens_patch_testbed.e2e_suite import post
from vllm_tokens_patch_testbed.redis_server import redis_server
from vllm_tokens_patch_testbed.router import Router
from vllm_tokens_patch_testbed.router_suite import AUTH, Replicas, replica_pair, vllm_router

from vllm_tokens_patch import settings

TOOL_PARSER = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def replicas(model: Path, redis_url: str) -> Iterator[Replicas]:
    with replica_pair(model, "memory", {settings.MEMORY: redis_url}, TOOL_PARSER) as pair:
        yield pair


@pytest.fixture(scope="module")
def router(replicas: Replicas) -> Iterator[Router]:
    with vllm_router(replicas, "memory-router", None) as running:
        yield running


def test_turns_on_different_replicas_reuse_each_others_ids_through_redis(
    replicas: Replicas, router: Router, model: Path
) -> None:
    mark = replicas.mark()
    agent = Agent(router.url, model)
    agent.episode()
    served_by = [index for index, received in replicas.since(mark) if received.path == "/v1/chat/completions"]
    assert sorted(set(served_by)) == [0, 1], f"round robin should use both replicas: {served_by}"
    turns = agent.turns
    assert turns[0]["memory"] == "miss; reason=no_history"
    for index in range(1, len(turns)):
        assert turns[index]["memory"].startswith("hit;"), (index, turns[index]["memory"], served_by)
        assert starts_with_previous(turns, index), f"turn {index + 1} (replica {served_by[index]})"
    for url in replicas.urls:  # the trainer asks a replica directly, with the client's own form
        export = post(
            f"{url}/v1/chat/completions/tokens/trajectory",
            json={"model": str(model), "messages": agent.messages},
            headers=AUTH,
        )
        assert export.status_code == 200, export.text
        assert export.json()["token_ids"] == turns[-1]["prompt"] + turns[-1]["sampled"]
        assert len(export.json()["turns"]) == len(turns)
