"""The bundled client against vLLM's real app: its errors carry the route's reason.

The asyncio client drives the app in-process through its `transport` argument (httpx's ASGI transport, as
the suite's own client does); the synchronous twin reads answers with the same code (unit-tested).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from vllm_tokens_patch_testbed.harness import VllmApp
from vllm_tokens_patch_testbed.vllm_errors import error_info
from vllm_tokens_patch_testbed.vllm_suite import ANSWER, API_KEY, FIRST_TURN, ROUTE, body, post

from vllm_tokens_patch.client import AsyncTokenChatClient, TokenRouteError


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
