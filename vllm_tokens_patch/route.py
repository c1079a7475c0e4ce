"""The endpoint `POST /v1/chat/completions/tokens`: parse, refuse what cannot be honoured, delegate.

It awaits vLLM's own chat route function, so cancellation, load tracking, streaming, tool and reasoning
parsing and error mapping all stay vLLM's. It is added to vLLM's app (not a router of ours), so it
sits behind the same middlewares (auth, CORS, request id, metrics) and exception handlers.
Imported only in processes that build an HTTP app.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from vllm_tokens_patch import metrics, outcome
from vllm_tokens_patch.adapters.base import Adapter
from vllm_tokens_patch.headers import FIRST_MISMATCH_HEADER, SPLICE_HEADER, VERIFICATION_HEADER
from vllm_tokens_patch.id_fields import IdFieldsError, choose_ids
from vllm_tokens_patch.outcome import CLIENT_CLOSED, Outcome, Route
from vllm_tokens_patch.request import refusal_reason

Endpoint = Callable[..., Awaitable[Any]]


def error_response(
    adapter: Adapter,
    raw_request: Request,
    message: str,
    param: str | None,
    status: HTTPStatus,
    err_type: str,
) -> JSONResponse:
    """An OpenAI-style error in this vLLM's own `ErrorResponse` format when the app can make one."""
    serving = adapter.serving_of(raw_request.app)
    if serving is not None:
        made = adapter.route_error(serving, message, err_type, status, param)
        response: JSONResponse = adapter.as_response(made)
        return response
    body = {"error": {"message": message, "type": err_type, "param": param, "code": int(status)}}
    return JSONResponse(content=body, status_code=int(status))


def set_headers(response: Any, seen: Outcome) -> None:
    """The verification and splice headers, from the request's outcome."""
    if not isinstance(response, Response):
        return
    verification = seen.verification
    if verification is not None:
        response.headers[VERIFICATION_HEADER] = verification.result
        if verification.first_mismatch is not None:
            response.headers[FIRST_MISMATCH_HEADER] = str(verification.first_mismatch)
    if seen.splice is not None:
        response.headers[SPLICE_HEADER] = seen.splice.header_value()


def _json_decoder() -> Callable[[bytes], Any]:
    """msgspec (a vLLM dependency) decodes a long id list ~3x faster than the stdlib `json` FastAPI uses."""
    try:
        import msgspec
    except ImportError:  # pragma: no cover - every supported vLLM depends on msgspec
        return json.loads
    decode: Callable[[bytes], Any] = msgspec.json.Decoder().decode
    return decode


decode_json = _json_decoder()


def encode_json(data: Any) -> bytes:
    """A body re-encoded (the conversation memory adds the reused ids to a stock body)."""
    try:
        import msgspec
    except ImportError:  # pragma: no cover - every supported vLLM depends on msgspec
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return msgspec.json.encode(data)


MAX_ECHOED_DEPTH = 32
"""A validation error's `input` nested deeper than this is replaced by a summary: vLLM's error handlers
`repr()` it (recursively), which a hostile body nested 10,000 deep would turn into a RecursionError (500)."""


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests lists/dicts more than `limit` deep (iterative: never recurses itself)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list | tuple):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in item if isinstance(child, list | tuple | dict))
    return False


def _bounded(value: Any) -> Any:
    if _deeper_than(value, MAX_ECHOED_DEPTH):
        return f"<{type(value).__name__} nested more than {MAX_ECHOED_DEPTH} deep>"
    return value


def _client_error(
    kind: str, msg: str, echoed: Any = None, loc: tuple[str | int, ...] = ("body",), reason: str | None = None
) -> RequestValidationError:
    """One error about the body, keyed as pydantic keys its errors (`type`, `loc`, `msg`, `input`, and
    `ctx` when there is a `reason`), raised as FastAPI's `RequestValidationError`: vLLM's handler answers
    it with a 400 in vLLM's error format."""
    error: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": echoed}
    if reason is not None:
        error["ctx"] = {"error": reason}
    return RequestValidationError([error], body=None)


def _body_error(exc: BaseException) -> RequestValidationError:
    """FastAPI's own error for a body that is not JSON (same `type` and `loc` as its stock routes)."""
    detail = str(exc) if not isinstance(exc, RecursionError) else "nested too deep"
    return _client_error("json_invalid", "JSON decode error", {}, ("body", 0), detail)


def _shape_error(data: Any, exc: BaseException | None) -> RequestValidationError:
    """A body pydantic cannot even start on: not a JSON object, or one on which a validator of the
    request class (vLLM's `mode="before"` validators read `data.get(...)`) raised something other than a
    validation error. FastAPI would answer these with a 500; they are the client's malformed body."""
    if exc is None:
        msg = "Input should be a valid dictionary or object to extract fields from"
        return _client_error("model_attributes_type", msg, _bounded(data))
    reason = "nested too deep" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
    return _client_error("value_error", f"Value error, {reason}", reason=reason)


async def parse_request(request_model: type[Any], raw_request: Request) -> Any:
    """The body as `request_model`; errors raise FastAPI's `RequestValidationError` as FastAPI would for a
    body parameter (same `loc`), so vLLM's own handler answers them (400, vLLM's error format).

    No byte string may become a 5xx: whatever the decoder raises (its `DecodeError`, a `RecursionError` on
    deep nesting, a `UnicodeDecodeError`, an over-long integer's `ValueError`) is the client's malformed
    body; so is a body that is not a JSON object, or one that trips a request validator into anything but a
    validation error. Echoed inputs are bounded in depth (see `MAX_ECHOED_DEPTH`)."""
    return validate_body(request_model, await read_body(raw_request))


async def read_body(raw_request: Request) -> dict[str, Any]:
    """The body as a JSON object (`parse_request`'s first half)."""
    try:
        body = await raw_request.body()
    except ClientDisconnect:  # gone before its body arrived: the stock route's quiet 400, no traceback
        raise _client_error("value_error", "the client disconnected") from None
    try:
        data = decode_json(body)
    except Exception as exc:  # any decoder failure is a malformed body
        raise _body_error(exc) from None
    if not isinstance(data, dict):
        raise _shape_error(data, None)
    return data


def validate_body(request_model: type[Any], data: dict[str, Any]) -> Any:
    """`data` as `request_model` (`parse_request`'s second half)."""
    try:
        return request_model.model_validate(data)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = []
        for details in exc.errors(include_url=False):
            error: dict[str, Any] = {**details, "loc": ("body", *details["loc"])}
            if "input" in error:
                error["input"] = _bounded(error["input"])
            errors.append(error)
        raise RequestValidationError(errors, body=_bounded(data)) from None
    except Exception as exc:  # e.g. AttributeError from a validator that assumed well-formed fields
        raise _shape_error(data, exc) from None


async def _hung_up(raw_request: Request) -> None:
    """Return when the client disconnects (the body is read: the next ASGI message is the disconnect)."""
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass


async def _close(events: AsyncIterator[Any]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()


async def refuse_failed_stream(
    response: StreamingResponse, adapter: Adapter, raw_request: Request
) -> Response:
    """Wait for the stream's first event before committing to HTTP 200: if vLLM's first event is an error
    (inputs only its engine checks, e.g. an out-of-vocabulary `logit_bias`), answer with its status and
    vLLM's JSON error body instead. Nothing is buffered after the first event, and closing the stream
    (client gone) still closes vLLM's generator, which aborts the request.

    The wait watches the client as Starlette watches a stream it sends: a client that hangs up before the
    first event (a long prefill, a full queue) gets vLLM's generator cancelled there and then, which aborts
    the request in the engine, as on vLLM's own route; the answer nobody reads is a 499.

    The refusal carries the stream's `background` task: vLLM's `load_aware_call` hangs the decrement of
    its in-flight count there (`--enable-server-load-tracking`, `GET /load`), which would otherwise count
    every refused stream forever."""
    events = aiter(response.body_iterator)
    waiting = asyncio.ensure_future(anext(events))
    watching = asyncio.ensure_future(_hung_up(raw_request))
    try:
        await asyncio.wait((waiting, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if watching.done() and not watching.cancelled():  # gone, whether or not the first event came too
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await _close(events)
        return Response(status_code=CLIENT_CLOSED, background=response.background)
    try:
        first = waiting.result()
    except StopAsyncIteration:
        return response
    refused = adapter.stream_error(first)
    if refused is not None:
        await _close(events)
        body, status = refused
        return JSONResponse(content=body, status_code=status, background=response.background)

    async def replay() -> AsyncIterator[Any]:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await _close(events)

    response.body_iterator = replay()
    return response


async def answer_as_the_app(raw_request: Request, exc: Exception) -> Response | None:
    """The response the app's exception handler gives `exc` (vLLM maps a `ValueError` to a 400, an
    `HTTPException` to its status), or None when the app has none for it here (a 500).

    Called in place of Starlette's route-level handling, which looks the handler up exactly so (from the
    handlers its exception middleware put in the scope), so the client gets the same answer and the handler
    still runs once; the metrics then count the status the client got, not an exception."""
    handlers = raw_request.scope.get("starlette.exception_handlers")
    if not handlers:
        return None
    by_class, by_status = handlers
    handler = by_status.get(exc.status_code) if isinstance(exc, HTTPException) else None
    if handler is None:
        handler = next((by_class[cls] for cls in type(exc).__mro__ if cls in by_class), None)
    if handler is None:
        return None
    if inspect.iscoroutinefunction(handler):
        response = await handler(raw_request, exc)
    else:  # a plain function in a thread, as Starlette runs it; a callable object's coroutine awaited here
        response = await run_in_threadpool(handler, raw_request, exc)
        if inspect.isawaitable(response):
            response = await response
    # A handler that answers nothing leaves the server to answer: uvicorn's 500.
    return response if isinstance(response, Response) else Response(status_code=500)


def observed(endpoint: Endpoint, route: Route) -> Endpoint:
    """`endpoint` with the request's `Outcome` open while it runs (the swap writes into it), and counted
    from it once answered. Creates the metrics (at route build time, so `/metrics` lists every series from
    start-up)."""
    metrics.get()

    @functools.wraps(endpoint)
    async def answered(raw_request: Request) -> Any:
        with outcome.recording(route) as seen:
            try:
                response = await endpoint(raw_request)
            except Exception as exc:  # the app's handler answers it (a body that does not parse: 400)
                if isinstance(exc, RequestValidationError):
                    seen.refusal = "invalid_request"
                response = await answer_as_the_app(raw_request, exc)
                if response is None:  # answered outside the route: by its status if it has one, else a 500
                    status = getattr(exc, "status_code", None)
                    if isinstance(exc, RequestValidationError):
                        status = 400
                    seen.status = status if isinstance(status, int) else 500
                    metrics.record(seen)
                    raise
            # None: vLLM's `with_cancellation` saw the client leave (FastAPI still answers `null`).
            seen.status = CLIENT_CLOSED if response is None else getattr(response, "status_code", 200)
            metrics.record(seen)
            return response

    # FastAPI reads the parameters from the signature; resolved here, since the annotations are strings
    # that only mean something in the endpoint's own module.
    answered.__signature__ = inspect.signature(endpoint, eval_str=True)  # type: ignore[attr-defined]
    return answered


def build_tokens_endpoint(
    chat_route: Endpoint, request_model: type[Any], adapter: Adapter, route: Route = "tokens"
) -> Endpoint:
    """The route function (`route`: the path it answers on, for the metrics). It parses the body itself
    (`parse_request`) rather than through a typed FastAPI parameter: the id lists are most of the body, and
    decoding them is most of what the route costs."""

    async def create_tokens_chat_completion(raw_request: Request) -> Any:
        seen = outcome.current()
        try:
            data = choose_ids(await read_body(raw_request), adapter.fields)
        except IdFieldsError as exc:
            seen.refusal = "invalid_request"
            return error_response(
                adapter, raw_request, str(exc), exc.param, HTTPStatus.BAD_REQUEST, "BadRequestError"
            )
        request = validate_body(request_model, data)
        seen.mode = "prefix_tokens" if request.prefix_tokens is not None else "tokens"
        refusal = refusal_reason(request, adapter.fields, images=adapter.places_media)
        if refusal is not None:
            message, param = refusal
            seen.refusal = param
            return error_response(
                adapter, raw_request, message, param, HTTPStatus.BAD_REQUEST, "BadRequestError"
            )
        response = adapter.as_response(await chat_route(request, raw_request))
        if isinstance(response, StreamingResponse):
            response = await refuse_failed_stream(response, adapter, raw_request)
        set_headers(response, seen)
        return response

    return observed(create_tokens_chat_completion, route)


def build_unavailable_endpoint(reason: str, adapter: Adapter, route: Route = "tokens") -> Endpoint:
    """The route when the patch could not apply: a clear 501 instead of a silent 404."""

    async def tokens_route_unavailable(raw_request: Request) -> JSONResponse:
        return error_response(
            adapter, raw_request, reason, None, HTTPStatus.NOT_IMPLEMENTED, "NotImplementedError"
        )

    return observed(tokens_route_unavailable, route)


SUMMARY = "Chat completion with the exact prompt token ids (vllm-tokens-patch)"


def add_route(
    app: FastAPI, path: str, endpoint: Endpoint, json_validator: Callable[..., Any] | None
) -> BaseRoute:
    """Add `POST path` to vLLM's app and return the route object (kept for `unpatch`)."""
    app.add_api_route(path, endpoint, **_route_options(endpoint, json_validator))
    route: BaseRoute = app.router.routes[-1]
    return route


def unmounted_route(path: str, endpoint: Endpoint, json_validator: Callable[..., Any] | None) -> APIRoute:
    """A route object for `endpoint` that no app lists (the stock-route dispatch calls its ASGI app)."""
    return APIRoute(path, endpoint, **_route_options(endpoint, json_validator))


def _route_options(endpoint: Endpoint, json_validator: Callable[..., Any] | None) -> dict[str, Any]:
    """What both kinds of route are made with: POST, vLLM's JSON content-type check, no response model."""
    dependencies = [Depends(json_validator)] if json_validator is not None else None
    return {
        "methods": ["POST"],
        "dependencies": dependencies,
        "response_model": None,
        "name": endpoint.__name__,
        "summary": SUMMARY,
    }


def remove_route(app: FastAPI, route: BaseRoute) -> None:
    if route in app.router.routes:
        app.router.routes.remove(route)
