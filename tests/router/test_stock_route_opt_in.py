"""Through vllm-router, servers with `VLLM_TOKENS_PATCH_STOCK_ROUTE=1`: vLLM's own `/v1/chat/completions`
takes top-level `tokens`, `prefix_tokens` and `required_prefix_token_ids` with the token route's semantics.
vllm-router forwards the client's own key on that path, so the servers' `--api-key` holds again (the hole
of test_token_route.py closed), and a splice rollout works with its turns on different replicas.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, MESSAGES, post
from vllm_tokens_patch_testbed.router import Router
from vllm_tokens_patch_testbed.router_suite import AUTH, Replicas, replica_pair, vllm_router

from vllm_tokens_patch import settings
from vllm_tokens_patch.headers import FIRST_MISMATCH_HEADER, SPLICE_HEADER, VERIFICATION_HEADER

STOCK_ROUTE = "/v1/chat/completions"
OPT_IN = {settings.STOCK_ROUTE: "1"}
WRONG = {"Authorization": "Bearer not-the-key"}


@pytest.fixture(scope="module")
def replicas(model: Path) -> Iterator[Replicas]:
    with replica_pair(model, "opt-in", OPT_IN) as pair:
        yield pair


@pytest.fixture(scope="module")
def router(replicas: Replicas) -> Iterator[Router]:
    with vllm_router(replicas, "opt-in-router-api-key", API_KEY) as running:
        yield running


def prompt_ids(url: str, model: Path, messages: list[dict[str, Any]] = MESSAGES) -> list[int]:
    body = {"model": str(model), "messages": messages, "max_tokens": 1, "return_token_ids": True}
    response = post(f"{url}{STOCK_ROUTE}", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert VERIFICATION_HEADER not in response.headers, "no token field: exactly stock"
    return list(response.json()["prompt_token_ids"])


def drifted(ids: list[int]) -> list[int]:
    """`ids` with one changed: the engine gets them only if the stock path took `tokens` (the response's
    `prompt_token_ids` and the verification header say so); a stock render would give back `ids`."""
    return [*ids[:3], ids[3] + 1, *ids[4:]]


@pytest.mark.parametrize("client_key", [{}, WRONG], ids=["no-key", "wrong-key"])
def test_the_opt_in_closes_the_auth_hole(
    router: Router, replicas: Replicas, model: Path, client_key: dict[str, str]
) -> None:
    """The same token request that the token path serves without the key (test_token_route.py) is
    refused on the stock path (the router forwards the client's key) and served with the right key."""
    tokens = drifted(prompt_ids(replicas.urls[0], model))
    body = {"model": str(model), "messages": MESSAGES, "tokens": tokens, "max_tokens": 2}
    refused = post(f"{router.url}{STOCK_ROUTE}", json=body, headers=client_key)
    assert refused.status_code == 401, refused.text
    served = post(f"{router.url}{STOCK_ROUTE}", json={**body, "return_token_ids": True}, headers=AUTH)
    assert served.status_code == 200, served.text
    assert served.headers[VERIFICATION_HEADER] == "mismatch"
    assert served.headers[FIRST_MISMATCH_HEADER] == "3"
    assert served.json()["prompt_token_ids"] == tokens


def test_tokens_on_the_stock_path_stream(router: Router, replicas: Replicas, model: Path) -> None:
    tokens = drifted(prompt_ids(replicas.urls[0], model))
    body = {
        "model": str(model),
        "messages": MESSAGES,
        "tokens": tokens,
        "max_tokens": 4,
        "stream": True,
        "return_token_ids": True,
    }
    with httpx.stream("POST", f"{router.url}{STOCK_ROUTE}", json=body, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers[VERIFICATION_HEADER] == "mismatch"
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
    assert json.loads(first.removeprefix("data: "))["prompt_token_ids"] == tokens


@pytest.mark.parametrize(
    "fields",
    [
        {"tokens": []},
        {"tokens": [1, -2]},
        {"tokens": [1, 2], "prefix_tokens": [1, 2]},
        {"prefix_tokens": [1, 2], "required_prefix_token_ids": [1, 2]},
    ],
    ids=["empty", "negative", "tokens-and-prefix", "prefix-and-required-prefix"],
)
def test_bad_token_fields_get_a_400_before_any_stream(
    router: Router, model: Path, fields: dict[str, Any]
) -> None:
    """A 400 with vLLM's JSON error body, never a stream. vllm-router 0.1.17 labels every answer to a
    `stream: true` request `text/event-stream`, vLLM's own 400s included, so the content type is held to
    what the router gives vLLM's own refusal (a too-long prompt) and the body must be the JSON error."""
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 2, "stream": True}
    too_long = [{"role": "user", "content": "word " * 2000}]
    stock = post(f"{router.url}{STOCK_ROUTE}", json={**body, "messages": too_long}, headers=AUTH)
    assert stock.status_code == 400 and "context length" in stock.text, stock.text
    response = post(f"{router.url}{STOCK_ROUTE}", json={**body, **fields}, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == stock.headers["content-type"]
    error = json.loads(response.text)["error"]
    assert error["code"] == 400 and error["message"], error


def test_splice_rollout_on_the_stock_path_across_replicas(
    router: Router, replicas: Replicas, model: Path
) -> None:
    """Turn 1 plain messages; then `prefix_tokens`, then NeMo-Gym's `required_prefix_token_ids`, each = the
    previous turn's `prompt_token_ids` + `choices[0].token_ids`, with the whole conversation. Round robin
    puts consecutive turns on different replicas (their request logs show it): the splice needs nothing
    from the replica that served the turn before."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    follow_ups = ["And in Rome?", "Which is warmer?"]
    body: dict[str, Any] = {"model": str(model), "max_tokens": 12, "return_token_ids": True}
    extra: dict[str, Any] = {}
    served_by = []
    fields = [None, "prefix_tokens", "required_prefix_token_ids"]
    for turn, field in enumerate(fields):
        mark = replicas.mark()
        response = post(
            f"{router.url}{STOCK_ROUTE}", json={**body, "messages": messages, **extra}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        replica, received = replicas.one_since(mark)
        assert received.path == STOCK_ROUTE and received.status == 200
        served_by.append(replica)
        answer = response.json()
        prompt, sampled = answer["prompt_token_ids"], answer["choices"][0]["token_ids"]
        if field is None:
            assert SPLICE_HEADER not in response.headers
        else:
            prefix = extra[field]
            assert response.headers[SPLICE_HEADER].startswith(f"prefix={len(prefix)}; bridge=")
            assert prompt[: len(prefix)] == prefix, "the engine got the prefix verbatim"
            assert len(prompt) > len(prefix)
        print(f"\nturn {turn + 1} on replica {replica}: {response.headers.get(SPLICE_HEADER)}")
        if turn < len(follow_ups):
            content = answer["choices"][0]["message"]["content"] or ""
            messages = [*messages, {"role": "assistant", "content": content}]
            messages.append({"role": "user", "content": follow_ups[turn]})
            extra = {str(fields[turn + 1]): prompt + sampled}
    assert all(a != b for a, b in itertools.pairwise(served_by)), served_by


def test_each_server_says_the_stock_path_takes_the_token_fields_at_start_up(replicas: Replicas) -> None:
    """The start-up line names the opt-in, once per API server (read from each server's own log)."""
    line = f"also on POST {STOCK_ROUTE} ({settings.STOCK_ROUTE}=1)"
    for server in replicas.servers:
        logged = server.log_path.read_text(errors="replace")
        assert logged.count(line) == 1, server.log_path
