"""Through vllm-router, servers without the stock-route opt-in: the token route works (JSON, SSE), which
client headers reach the servers, and the `--api-key` hole on the token path (README "Behind a router").

The facts asserted here are vllm-router 0.1.17's, measured: on `/v1/chat/completions/tokens` (a path it
does not know, forwarded as is) it sends none of the client's headers, and with its own `--api-key` it
sends its own key instead; on `/v1/chat/completions` it forwards the client's headers, key included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, MESSAGES, post
from vllm_tokens_patch_testbed.router import Router
from vllm_tokens_patch_testbed.router_suite import AUTH, Replicas, replica_pair, vllm_router

from vllm_tokens_patch.headers import SPLICE_HEADER, VERIFICATION_HEADER
from vllm_tokens_patch.settings import Settings

TOKENS_ROUTE = Settings.route_path
STOCK_ROUTE = "/v1/chat/completions"
WRONG = {"Authorization": "Bearer not-the-key"}
PROBED = {
    "x-request-id": "router-e2e-request",
    "x-data-parallel-rank": "0",
    "x-session-id": "router-e2e-session",
}
"""Client headers a server reads (`x-request-id`: vLLM's request id; `x-data-parallel-rank`: the DP rank
vLLM's chat route takes from a router) or that session-affine routing uses."""


@pytest.fixture(scope="module")
def replicas(model: Path) -> Iterator[Replicas]:
    with replica_pair(model, "stock") as pair:
        yield pair


@pytest.fixture(scope="module")
def router(replicas: Replicas) -> Iterator[Router]:
    """vllm-router with `--api-key` (the servers' key): the deployment the auth tests are about."""
    with vllm_router(replicas, "router-api-key", API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def keyless_router(replicas: Replicas) -> Iterator[Router]:
    with vllm_router(replicas, "router-no-api-key", None) as running:
        yield running


def stock_turn(url: str, model: Path) -> dict[str, Any]:
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 8, "return_token_ids": True}
    response = post(f"{url}{STOCK_ROUTE}", json={**body, "temperature": 0}, headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_token_route_json_through_the_router_on_both_replicas(
    router: Router, replicas: Replicas, model: Path
) -> None:
    """`tokens` = a stock turn's prompt ids: both replicas answer through the router with the same ids as
    the stock route, and the verification header reaches the client."""
    stock = stock_turn(router.url, model)
    tokens = stock["prompt_token_ids"]
    body = {"model": str(model), "messages": MESSAGES, "tokens": tokens, "max_tokens": 8, "temperature": 0}
    mark = replicas.mark()
    for _ in replicas.servers:
        response = post(f"{router.url}{TOKENS_ROUTE}", json={**body, "return_token_ids": True}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.headers[VERIFICATION_HEADER] == "match"
        assert response.json()["prompt_token_ids"] == tokens
        assert response.json()["choices"][0]["token_ids"] == stock["choices"][0]["token_ids"]
    served = sorted(index for index, entry in replicas.since(mark) if entry.path == TOKENS_ROUTE)
    assert served == [0, 1], "round robin: one request on each replica"


def test_token_route_sse_through_the_router(router: Router, model: Path) -> None:
    stock = stock_turn(router.url, model)
    tokens = stock["prompt_token_ids"]
    body = {
        "model": str(model),
        "messages": MESSAGES,
        "tokens": tokens,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "return_token_ids": True,
    }
    events = []
    with httpx.stream(
        "POST", f"{router.url}{TOKENS_ROUTE}", json=body, headers=AUTH, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers[VERIFICATION_HEADER] == "match"
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
    assert events[0]["prompt_token_ids"] == tokens
    streamed = [i for event in events for choice in event["choices"] for i in choice.get("token_ids") or []]
    assert streamed == stock["choices"][0]["token_ids"]


@pytest.mark.parametrize("path", [TOKENS_ROUTE, STOCK_ROUTE])
@pytest.mark.parametrize("router_key", [True, False], ids=["router-api-key", "router-no-api-key"])
def test_which_client_headers_reach_the_server(
    request: pytest.FixtureRequest, replicas: Replicas, model: Path, path: str, router_key: bool
) -> None:
    """The client sends the right key and the probed headers; the request log of the replica that got the
    request shows what arrived."""
    router: Router = request.getfixturevalue("router" if router_key else "keyless_router")
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 2}
    if path == TOKENS_ROUTE:
        body["tokens"] = stock_turn(replicas.urls[0], model)["prompt_token_ids"]
    mark = replicas.mark()
    response = post(f"{router.url}{path}", json=body, headers={**AUTH, **PROBED})
    _, received = replicas.one_since(mark)
    arrived = {name: received.headers.get(name) for name in ["authorization", *PROBED]}
    print(
        f"\n{'with' if router_key else 'without'} router --api-key, {path}: {response.status_code}, {arrived}"
    )
    assert received.path == path
    if path == STOCK_ROUTE:  # everything the client sent
        assert arrived == {"authorization": AUTH["Authorization"], **PROBED}
        assert response.status_code == 200
    elif router_key:  # the router's own key (here the same as the client's), nothing else
        assert arrived == {"authorization": f"Bearer {API_KEY}", **dict.fromkeys(PROBED)}
        assert response.status_code == 200
    else:  # nothing: the servers' --api-key refuses the request
        assert arrived == {"authorization": None, **dict.fromkeys(PROBED)}
        assert response.status_code == received.status == 401


@pytest.mark.parametrize("client_key", [{}, WRONG], ids=["no-key", "wrong-key"])
def test_auth_hole_on_the_token_path(
    router: Router, replicas: Replicas, model: Path, client_key: dict[str, str]
) -> None:
    """Servers and router all with `--api-key`: the token path serves a client without the key (the router
    puts its own key on the request), the stock path refuses it (the router forwards the client's)."""
    tokens = stock_turn(replicas.urls[0], model)["prompt_token_ids"]
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 2}
    mark = replicas.mark()
    hole = post(f"{router.url}{TOKENS_ROUTE}", json={**body, "tokens": tokens}, headers=client_key)
    assert hole.status_code == 200, hole.text
    _, received = replicas.one_since(mark)
    assert received.headers.get("authorization") == f"Bearer {API_KEY}", "the router's key, not the client's"

    mark = replicas.mark()
    stock = post(f"{router.url}{STOCK_ROUTE}", json=body, headers=client_key)
    assert stock.status_code == 401, stock.text
    _, received = replicas.one_since(mark)
    assert received.status == 401 and received.headers.get("authorization") == client_key.get("Authorization")
    assert post(f"{router.url}{STOCK_ROUTE}", json=body, headers=AUTH).status_code == 200


def test_stock_path_ignores_token_fields_without_the_setting(router: Router, model: Path) -> None:
    """vllm-router forwards top-level `tokens` / `prefix_tokens` on the stock path; without
    `VLLM_TOKENS_PATCH_STOCK_ROUTE` vLLM ignores them (the engine gets the rendered `messages`)."""
    stock = stock_turn(router.url, model)
    body = {
        "model": str(model),
        "messages": MESSAGES,
        "max_tokens": 2,
        "return_token_ids": True,
    }
    for extra in ({"tokens": [1, 2, 3]}, {"prefix_tokens": [1, 2, 3]}, {"tokens": []}):
        response = post(f"{router.url}{STOCK_ROUTE}", json={**body, **extra}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["prompt_token_ids"] == stock["prompt_token_ids"]
        assert VERIFICATION_HEADER not in response.headers and SPLICE_HEADER not in response.headers
