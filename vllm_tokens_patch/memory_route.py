"""The conversation memory at the ASGI level: serve one request with its answer recorded, and the export
route (`POST <route>/trajectory`).

A request is served inside a `capture` (the engine client's outputs are read into it) while its answer
is read as it is sent (JSON, or SSE events). The branch is stored before the last bytes reach the client
(the JSON body, or the SSE chunk holding `[DONE]`), so a client's next request always finds it. The
answer itself is passed on untouched; on the stock route it gains the `x-vllm-tokens-memory` header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_tokens_patch import metrics
from vllm_tokens_patch.asgi_body import read_body, replaying
from vllm_tokens_patch.capture import capturing
from vllm_tokens_patch.conversation import (
    AssistantMessage,
    StreamCollector,
    logprobs_from_json,
    messages_from_json,
)
from vllm_tokens_patch.log import logger
from vllm_tokens_patch.memory import MEMORY_HEADER, Lookup, Memory, miss, trajectory_body

Decode = Callable[[bytes], Any]
Observe = Callable[[Any], None]
"""Called with the app before a recorded request: makes sure its engine client is observed."""


def session_of(data: Any) -> str | None:
    """What tells two identical conversations apart: vLLM 0.34's `session_id`, or the OpenAI `user`."""
    if not isinstance(data, dict):
        return None
    for name in ("session_id", "user"):
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
    return None


async def lookup_for(memory: Memory, data: Any) -> Lookup:
    """The memory's lookup for a decoded request body (a miss when it is not a chat body)."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        return miss("not_json")
    return await memory.lookup(str(data.get("model")), data["messages"], session_of(data))


class _Answer:
    """The response as it is sent: its status, and the assistant messages and logprobs it carries."""

    def __init__(self) -> None:
        self.status = 0
        self.stream: StreamCollector | None = None
        self.chunks: list[bytes] = []
        self.body: Any = None

    def start(self, message: Message) -> None:
        self.status = int(message.get("status", 0))
        for name, value in message.get("headers", ()):
            if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                self.stream = StreamCollector()

    def feed(self, message: Message, decode: Decode) -> bool:
        """Read one body message; True once the answer is complete and may be recorded."""
        body = message.get("body", b"")
        if self.stream is not None:
            self.stream.feed(body)
            return self.stream.done and not self.stream.error
        self.chunks.append(body)
        if message.get("more_body", False):
            return False
        try:
            self.body = decode(b"".join(self.chunks))
        except Exception:
            return False
        return isinstance(self.body, dict)

    def answers(self) -> dict[int, AssistantMessage]:
        if self.stream is not None:
            return self.stream.messages()
        return messages_from_json(self.body)

    def logprobs(self) -> dict[int, list[float]]:
        """The sampled ids' logprobs per choice, where the response carries them (OpenAI format)."""
        if self.stream is not None:
            return self.stream.logprobs()
        return logprobs_from_json(self.body)


def _with_header(message: Message, value: str) -> Message:
    headers = [*message.get("headers", ()), (MEMORY_HEADER.encode(), value.encode())]
    return {**message, "headers": headers}


async def serve_recorded(
    memory: Memory,
    lookup: Lookup,
    data: Any,
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    decode: Decode,
    header: bool,
) -> None:
    """Serve through `app` with the engine's ids captured; record the branch when the answer is complete."""
    answer = _Answer()
    recorded = False
    with capturing() as capture:

        async def sending(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                answer.start(message)
                if header:
                    message = _with_header(message, lookup.header_value())
            elif (
                message["type"] == "http.response.body"
                and not recorded
                and answer.status == HTTPStatus.OK
                and answer.feed(message, decode)
            ):
                recorded = True
                await _record(memory, lookup, capture, answer, data)
            await send(message)

        await app(scope, receive, sending)


async def _record(memory: Memory, lookup: Lookup, capture: Any, answer: _Answer, data: Any) -> None:
    """Store the branch; a failure is logged (once per kind) and never touches the answer."""
    try:
        records, evictions = await memory.record(
            lookup, capture, answer.answers(), answer.logprobs(), session_of(data)
        )
    except Exception as exc:
        _warn_once(f"vllm-tokens-patch: conversation memory could not record ({type(exc).__name__}: {exc})")
        return
    metrics.count_memory(records=records, evictions=evictions)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.log(logging.WARNING, message)


def recorded_app(app: ASGIApp, memory: Memory, decode: Decode, observe: Observe) -> ASGIApp:
    """`app` (the token route) with its answers recorded: its requests carry ids of their own, so the
    memory is only asked which recorded branch they extend (to chain the trajectory's turns)."""

    async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
        received, body = await read_body(receive)
        replay = replaying(received, receive)
        try:
            data = decode(body) if body is not None else None
        except Exception:
            data = None
        if not isinstance(data, dict):
            await app(scope, replay, send)
            return
        observe(scope.get("app"))
        lookup = await _safe_lookup(memory, data)
        await serve_recorded(memory, lookup, data, app, scope, replay, send, decode, header=False)

    return recorded


async def _safe_lookup(memory: Memory, data: Any) -> Lookup:
    try:
        return await lookup_for(memory, data)
    except Exception as exc:  # the store is down: serve without memory, say so once
        _warn_once(f"vllm-tokens-patch: conversation memory lookup failed ({type(exc).__name__}: {exc})")
        return miss("unknown")


class StockMemory:
    """The memory's part in the stock-route dispatch (`stock_route.StockDispatch`)."""

    def __init__(
        self,
        memory: Memory,
        decode: Decode,
        encode: Callable[[Any], bytes],
        observe: Observe,
        token_fields: tuple[str, ...],
    ) -> None:
        self.memory = memory
        self.decode = decode
        self.encode = encode
        self.observe = observe
        self.token_fields = token_fields
        """Every top-level field that carries ids: a body with one is not given reused ids."""

    def _decoded(self, body: bytes) -> Any:
        try:
            return self.decode(body)
        except Exception:
            return None

    async def serve_tokens(
        self, body: bytes, tokens_app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        data = self._decoded(body)
        if not isinstance(data, dict):
            await tokens_app(scope, receive, send)  # the token endpoint answers with its 400
            return
        self.observe(scope.get("app"))
        lookup = await _safe_lookup(self.memory, data)
        await serve_recorded(
            self.memory, lookup, data, tokens_app, scope, receive, send, self.decode, header=False
        )

    async def serve_stock(
        self,
        body: bytes,
        tokens_app: ASGIApp,
        stock: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope,
        receive: Receive,
        replay: Receive,
        send: Send,
    ) -> None:
        data = self._decoded(body)
        if not isinstance(data, dict):
            lookup = miss("not_json")
        elif any(data.get(name) is not None for name in self.token_fields):
            lookup = miss("token_fields")
        else:
            lookup = await _safe_lookup(self.memory, data)
        self.observe(scope.get("app"))
        if lookup.entry is not None:
            reused = self.encode({**data, "prefix_tokens": list(lookup.entry.ids)})
            again = replaying([{"type": "http.request", "body": reused, "more_body": False}], receive)
            refusal = _Refusal(send)
            await serve_recorded(
                self.memory, lookup, data, tokens_app, scope, again, refusal.send, self.decode, header=True
            )
            if not refusal.held:
                metrics.count_memory(lookup.reason)
                return
            # The reused ids cannot be served (the template refuses the splice, the spliced prompt is too
            # long, ...): the client sent a plain body, so vLLM's own route answers it.
            lookup = miss("refused")
        metrics.count_memory(lookup.reason)
        await serve_recorded(self.memory, lookup, data, stock, scope, replay, send, self.decode, header=True)


class _Refusal:
    """A `send` that passes a successful answer on and holds back an error one (status >= 400): on a
    memory hit the token endpoint's refusal is not the client's to see."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.held = False

    async def send(self, message: Message) -> None:
        if (
            message["type"] == "http.response.start"
            and int(message.get("status", 0)) >= HTTPStatus.BAD_REQUEST
        ):
            self.held = True
        if not self.held:
            await self._send(message)


Endpoint = Callable[..., Awaitable[Any]]


def build_trajectory_endpoint(memory: Memory, error: Callable[..., Any], decode: Decode) -> Endpoint:
    """`POST <route>/trajectory` with `{"model", "messages"}` (a transcript ending with an assistant message
    the server produced; `session_id` or `user` to pick one of several identical ones): that branch's
    ids as the engine saw and sampled them. 404 when it is unknown, 409 when ambiguous."""

    async def conversation_trajectory(raw_request: Request) -> Any:
        try:
            data = decode(await raw_request.body())
        except Exception:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            return error(
                raw_request,
                "the body must be a JSON object with `model` and `messages`",
                "messages",
                HTTPStatus.BAD_REQUEST,
                "BadRequestError",
            )
        found = await memory.trajectory(str(data.get("model")), data["messages"], session_of(data))
        if isinstance(found, str):
            status, text = _TRAJECTORY_ERRORS[found]
            return error(raw_request, text, "messages", status, status.phrase.replace(" ", "") + "Error")
        return JSONResponse(trajectory_body(found))

    return conversation_trajectory


_TRAJECTORY_ERRORS = {
    "unknown": (HTTPStatus.NOT_FOUND, "no recorded conversation has exactly these messages"),
    "ambiguous": (
        HTTPStatus.CONFLICT,
        "several recorded conversations have these messages with different ids; pass the `session_id` or "
        "`user` their requests carried",
    ),
    "unkeyable": (HTTPStatus.BAD_REQUEST, "messages with media content are not recorded"),
    "no_history": (
        HTTPStatus.BAD_REQUEST,
        "`messages` must end with the assistant message the server returned",
    ),
}
