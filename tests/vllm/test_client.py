"""The bundled client against vLLM's real app: its errors carry the route's reason.

The asyncio client drives the app in-process through its `transport` argument (httpx's ASGI transport, as
the suite's own client does), or over TCP through uvicorn set as `vllm serve` sets it; the synchronous twin
reads answers with the same code (unit-tested).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
import uvicorn
from vllm import envs
from vllm_tokens_patch_testbed.harness import VllmApp
from vllm_tokens_patch_testbed.vllm_errors import error_info
from vllm_tokens_patch_testbed.vllm_suite import ANSWER, API_KEY, FIRST_TURN, ROUTE, body, post

from vllm_tokens_patch.client import KEEPALIVE_EXPIRY, AsyncTokenChatClient, TokenRouteError


def test_a_refused_splice_raises_the_routes_reason(run: Any, served: VllmApp) -> None:
    """`prefix_tokens` with nothing after the last assistant message: vLLM's 400 reaches the caller as
    `TokenRouteError` with the body's message, type and param (this release's error shape), not as
    httpx's bare `Client error '400 Bad Request'`."""
    messages = [*FIRST_TURN, ANSWER]
    prefix = [1, 2, 3]
    answer = post(run, served, ROUTE, body(served, messages, prefix_tokens=prefix, return_token_ids=True))
    assert answer.status_code == 400, answer.text
    info = error_info(answer.json())  # what this vLLM's error body says, in its own shape

    async def next_turn() -> None:
        transport = httpx.ASGITransport(app=served.app, raise_app_exceptions=False)
        client = AsyncTokenChatClient(
            "http://test/v1", served.args.model, api_key=API_KEY, transport=transport, route=ROUTE
        )
        async with client:
            await client.next_turn(messages, prefix, temperature=0)

    with pytest.raises(TokenRouteError) as raised:
        run(next_turn())
    error = raised.value
    assert error.status == 400 and error.response.status_code == 400
    assert "nothing after the last assistant message" in error.message, error.message
    assert (error.message, error.type, error.param) == (info["message"], info["type"], info.get("param"))
    assert str(error) == f"400 Bad Request from POST http://test{ROUTE}: {info['message']}"


def test_idle_connections_are_dropped_before_vllm_closes_them(run: Any, served: VllmApp) -> None:
    """vLLM's uvicorn closes a connection idle for `VLLM_HTTP_TIMEOUT_KEEP_ALIVE` seconds; a client that
    keeps it as long (httpx's default) can send a turn on it just as it closes (a `ReadError`). After an
    idle spell past the client's expiry and well within the server's, the next turn opens a new
    connection."""
    server_timeout = envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE
    idle = KEEPALIVE_EXPIRY + 0.5
    assert idle < server_timeout - 1, (KEEPALIVE_EXPIRY, server_timeout)

    async def connections_for_two_turns() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(
            served.app,
            host="127.0.0.1",
            port=port,
            timeout_keep_alive=server_timeout,
            log_level="warning",
            lifespan="off",  # the suite's app is already up
        )
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        opened: list[str] = []

        async def trace(event: str, info: Any) -> None:
            if event == "connection.connect_tcp.complete":
                opened.append(event)

        try:
            root = f"http://127.0.0.1:{port}/v1"
            async with AsyncTokenChatClient(root, served.args.model, api_key=API_KEY) as client:
                for turn in range(2):
                    answer = await client._http.get("/v1/models", extensions={"trace": trace})
                    assert answer.status_code == 200, answer.text
                    if turn == 0:
                        await asyncio.sleep(idle)
        finally:
            server.should_exit = True
            await serving
        return len(opened)

    assert run(connections_for_two_turns()) == 2
