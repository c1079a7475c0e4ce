"""`route.parse_request`: the token route's own body decoding (no vLLM needed: a plain pydantic model).

Every failure is FastAPI's `RequestValidationError`, which vLLM's handler answers with a 400 in its own
format; nothing may escape as another exception (a 500 with a traceback). The suite holds the same on each
vLLM release's real app (tests/vllm/test_hostile_bodies.py, fuzzed).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, model_validator
from starlette.requests import Request

from vllm_tokens_patch.route import MAX_ECHOED_DEPTH, parse_request


class Chat(BaseModel):
    model: str
    tokens: list[int]

    @model_validator(mode="before")
    @classmethod
    def peek(cls, data: Any) -> Any:
        """As vLLM's `mode="before"` validators do: assume a mapping."""
        data.get("stream_options")
        return data


def request(*messages: dict[str, Any]) -> Request:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def body(raw: bytes) -> Request:
    return request({"type": "http.request", "body": raw, "more_body": False})


def parse(req: Request) -> Any:
    return asyncio.run(parse_request(Chat, req))


def test_a_valid_body_parses() -> None:
    assert parse(body(b'{"model": "m", "tokens": [1, 2]}')).tokens == [1, 2]


@pytest.mark.parametrize(
    "raw",
    [b"", b"[" * 100_000, b"\xff", b"null", b"[1]", b'"x"', b"1", b'{"model": "m", "tokens": [NaN]}'],
    ids=["empty", "deep", "utf8", "null", "list", "string", "number", "nan"],
)
def test_a_malformed_body_is_a_validation_error(raw: bytes) -> None:
    with pytest.raises(RequestValidationError):
        parse(body(raw))


def test_a_client_gone_before_its_body_is_a_validation_error_not_a_disconnect() -> None:
    with pytest.raises(RequestValidationError) as caught:
        parse(request({"type": "http.disconnect"}))
    assert "disconnected" in str(caught.value.errors())


def test_echoed_inputs_are_bounded_in_depth() -> None:
    deep = "[" * 500 + "1" + "]" * 500
    with pytest.raises(RequestValidationError) as caught:
        parse(body(b'{"model": "m", "tokens": ' + deep.encode() + b"}"))
    (error,) = caught.value.errors()
    assert error["input"] == f"<list nested more than {MAX_ECHOED_DEPTH} deep>"
    repr(caught.value.errors())  # what vLLM's older handlers do with it: must not recurse 500 deep
