"""The stock-route dispatch as an ASGI route: what it matches, what it hands on, byte for byte."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.routing import Match

from vllm_tokens_patch.route import decode_json
from vllm_tokens_patch.stock_route import StockDispatch, is_token_body, token_fields

PATH = "/v1/chat/completions"
FIELDS = token_fields(())


class Recorder:
    """An ASGI app that reads every message it is given (as vLLM's route or the router would)."""

    def __init__(self, dispatch: StockDispatch | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.dispatch = dispatch
        self.matched_again: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.dispatch is not None:  # the router, asked while the body passes: the dispatch must not match
            self.matched_again = self.dispatch.matches(scope)[0]
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                return


def scope(method: str = "POST", path: str = PATH, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


def chunks_of(body: bytes, size: int) -> list[dict[str, Any]]:
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]


def serve(messages: list[dict[str, Any]]) -> tuple[Recorder, Recorder]:
    tokens, router = Recorder(), Recorder()
    dispatch = StockDispatch(PATH, tokens, router, FIELDS, decode_json)
    router.dispatch = dispatch
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("the recorders send nothing")

    asyncio.run(dispatch.handle(scope(), receive, send))
    return tokens, router


def test_it_matches_post_on_the_stock_path_only() -> None:
    dispatch = StockDispatch(PATH, Recorder(), Recorder(), FIELDS, decode_json)
    assert dispatch.matches(scope())[0] is Match.FULL
    assert dispatch.matches(scope(root_path="/api", path="/api" + PATH))[0] is Match.FULL
    assert dispatch.matches(scope(method="GET"))[0] is Match.NONE
    assert dispatch.matches(scope(path=PATH + "/tokens"))[0] is Match.NONE
    assert dispatch.matches({"type": "websocket", "path": PATH, "headers": []})[0] is Match.NONE


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_a_stock_body_reaches_the_router_chunk_for_chunk(size: int) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "tokens"}]}).encode()
    messages = chunks_of(body, size)
    tokens, router = serve(messages)
    assert tokens.received == []
    assert router.received == messages
    assert router.matched_again is Match.NONE


@pytest.mark.parametrize("size", [3, 10_000])
def test_a_token_body_reaches_the_token_endpoint_whole(size: int) -> None:
    body = json.dumps({"model": "m", "messages": [], "tokens": [1, 2, 3]}).encode()
    messages = chunks_of(body, size)
    tokens, router = serve(messages)
    assert router.received == []
    assert b"".join(m["body"] for m in tokens.received) == body


def test_a_client_gone_before_its_body_ends_goes_to_vllms_route() -> None:
    partial = chunks_of(b'{"tokens": [1, 2', 4)[:-1]
    tokens, router = serve(partial)
    assert tokens.received == []
    assert router.received == [*partial, {"type": "http.disconnect"}]


@pytest.mark.parametrize(
    ("data", "ours"),
    [
        ({"tokens": [1]}, True),
        ({"prefix_tokens": [1]}, True),
        ({"required_prefix_token_ids": [1]}, True),
        ({"tokens": None}, False),
        ({"messages": [{"role": "user", "content": "tokens"}]}, False),
        ({"messages": [{"role": "assistant", "content": "a", "prompt_token_ids": [1]}]}, True),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": "a",
                        "prompt_token_ids": [1],
                        "generation_token_ids": [2],
                    },
                    {"role": "assistant", "content": "b"},
                ]
            },
            False,
        ),
        ([1, 2], False),
        ("tokens", False),
    ],
)
def test_what_makes_a_token_body(data: Any, ours: bool) -> None:
    assert is_token_body(data, FIELDS) is ours


def test_a_field_this_vllm_has_natively_keeps_vllms_meaning() -> None:
    native = token_fields({"required_prefix_token_ids", "messages"})
    assert "required_prefix_token_ids" not in native and "tokens" in native
    assert not is_token_body({"required_prefix_token_ids": [1]}, native)
