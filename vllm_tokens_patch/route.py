"""The endpoint `POST /v1/chat/completions/tokens`: parse, refuse what cannot be honoured, delegate.

It awaits vLLM's own chat route function, so cancellation, load tracking, streaming, tool and reasoning
parsing and error mapping all stay vLLM's. It is added to vLLM's app (not a router of ours), so it
sits behind the same middlewares (auth, CORS, request id, metrics) and exception handlers.
Imported only in processes that build an HTTP app.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from vllm_tokens_patch import metrics
from vllm_tokens_patch.request import refusal_reason
from vllm_tokens_patch.tokens import Verification

VERIFICATION_HEADER = "x-vllm-tokens-verification"
"""`match`, `mismatch` or `skipped` (`VLLM_TOKENS_PATCH_VERIFY=off`): `tokens` vs the rendered ids."""
FIRST_MISMATCH_HEADER = "x-vllm-tokens-first-mismatch"
"""On `mismatch`: the first index at which `tokens` differ from the rendered ids."""
SPLICE_HEADER = "x-vllm-tokens-splice"
"""On `prefix_tokens` requests: `prefix=N; bridge=M; close=sampled|added|none` (see splice.Splice)."""

Endpoint = Callable[..., Awaitable[Any]]
ErrorMaker = Callable[[Any, str, str, int, "str | None"], Any]
"""`adapter.route_error(serving, message, err_type, status, param)`: this vLLM's `ErrorResponse`."""


def error_response(
    make_error: ErrorMaker,
    raw_request: Request,
    message: str,
    param: str | None,
    status: HTTPStatus,
    err_type: str,
) -> JSONResponse:
    """An OpenAI-style error in this vLLM's own `ErrorResponse` format when the app can make one."""
    serving = getattr(raw_request.app.state, "openai_serving_chat", None)
    if serving is not None:
        response: JSONResponse = as_response(make_error(serving, message, err_type, status, param))
        return response
    body = {"error": {"message": message, "type": err_type, "param": param, "code": int(status)}}
    return JSONResponse(content=body, status_code=int(status))


def as_response(result: Any) -> Any:
    """vLLM 0.15 returns a caught exception as a bare `ErrorResponse` (HTTP 200): give it its status."""
    if isinstance(result, Response):
        return result
    info = getattr(result, "error", result)
    code = getattr(info, "code", None)
    if isinstance(code, int) and hasattr(result, "model_dump"):
        return JSONResponse(content=result.model_dump(), status_code=code)
    return result


def set_verification_headers(response: Any, verification: Verification | None) -> None:
    if verification is None or not isinstance(response, Response):
        return
    response.headers[VERIFICATION_HEADER] = verification.header_value()
    if verification.compared and not verification.matched:
        response.headers[FIRST_MISMATCH_HEADER] = str(verification.first_mismatch)


def _json_decoder() -> Callable[[bytes], Any]:
    """msgspec (a vLLM dependency) decodes a long id list ~3x faster than the stdlib `json` FastAPI uses."""
    try:
        import msgspec
    except ImportError:  # pragma: no cover - every supported vLLM depends on msgspec
        return json.loads
    decode: Callable[[bytes], Any] = msgspec.json.Decoder().decode
    return decode


_decode_json = _json_decoder()


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


def _body_error(exc: BaseException) -> RequestValidationError:
    """FastAPI's own error for a body that is not JSON (same `type` and `loc` as its stock routes)."""
    detail = str(exc) if not isinstance(exc, RecursionError) else "nested too deep"
    error = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {}}
    return RequestValidationError([{**error, "ctx": {"error": detail}}], body=None)


def _shape_error(data: Any, exc: BaseException | None) -> RequestValidationError:
    """A body pydantic cannot even start on: not a JSON object, or one on which a validator of the
    request class (vLLM's `mode="before"` validators read `data.get(...)`) raised something other than a
    validation error. FastAPI would answer these with a 500; they are the client's malformed body."""
    if exc is None:
        msg = "Input should be a valid dictionary or object to extract fields from"
        error = {"type": "model_attributes_type", "loc": ("body",), "msg": msg, "input": _bounded(data)}
    else:
        reason = "nested too deep" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
        error = {"type": "value_error", "loc": ("body",), "msg": f"Value error, {reason}", "input": None}
        error["ctx"] = {"error": reason}
    return RequestValidationError([error], body=None)


async def parse_request(request_model: type[Any], raw_request: Request) -> Any:
    """The body as `request_model`; errors raise FastAPI's `RequestValidationError` as FastAPI would for a
    body parameter (same `loc`), so vLLM's own handler answers them (400, vLLM's error format).

    No byte string may become a 5xx: whatever the decoder raises (its `DecodeError`, a `RecursionError` on
    deep nesting, a `UnicodeDecodeError`, an over-long integer's `ValueError`) is the client's malformed
    body; so is a body that is not a JSON object, or one that trips a request validator into anything but a
    validation error. Echoed inputs are bounded in depth (see `MAX_ECHOED_DEPTH`)."""
    try:
        body = await raw_request.body()
    except ClientDisconnect:  # gone before its body arrived: the stock route's quiet 400, no traceback
        gone = {"type": "value_error", "loc": ("body",), "msg": "the client disconnected", "input": None}
        raise RequestValidationError([gone], body=None) from None
    try:
        data = _decode_json(body)
    except Exception as exc:  # any decoder failure is a malformed body
        raise _body_error(exc) from None
    if not isinstance(data, dict):
        raise _shape_error(data, None)
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


def _stream_error(chunk: Any) -> tuple[dict[str, Any], int] | None:
    """vLLM's error event (`data: {"error": {...}}`, or a bare `ErrorResponse` in older releases), if
    `chunk` is one: the body and its status code."""
    text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes | bytearray) else str(chunk)
    if not text.startswith("data: {"):
        return None
    try:
        body = json.loads(text[len("data: ") :])
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    nested = body.get("error")
    if isinstance(nested, dict):
        info: dict[str, Any] = nested
    elif body.get("object") == "error":
        info = body
    else:
        return None
    code = info.get("code")
    return body, code if isinstance(code, int) and 400 <= code < 600 else int(
        HTTPStatus.INTERNAL_SERVER_ERROR
    )


async def refuse_failed_stream(response: StreamingResponse) -> Response:
    """Wait for the stream's first event before committing to HTTP 200: if vLLM's first event is an error
    (inputs only its engine checks, e.g. an out-of-vocabulary `logit_bias`), answer with its status and
    vLLM's JSON error body instead. Nothing is buffered after the first event, and closing the stream
    (client gone) still closes vLLM's generator, which aborts the request.

    The refusal carries the stream's `background` task: vLLM's `load_aware_call` hangs the decrement of
    its in-flight count there (`--enable-server-load-tracking`, `GET /load`), which would otherwise count
    every refused stream forever."""
    events = aiter(response.body_iterator)
    try:
        first = await anext(events)
    except StopAsyncIteration:
        return response
    refused = _stream_error(first)
    if refused is not None:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
        body, status = refused
        return JSONResponse(content=body, status_code=status, background=response.background)

    async def replay() -> AsyncIterator[Any]:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    response.body_iterator = replay()
    return response


def build_tokens_endpoint(chat_route: Endpoint, request_model: type[Any], make_error: ErrorMaker) -> Endpoint:
    """The route function. It parses the body itself (`parse_request`) rather than through a typed FastAPI
    parameter: the id lists are most of the body, and decoding them is most of what the route costs."""

    async def create_tokens_chat_completion(raw_request: Request) -> Any:
        request = await parse_request(request_model, raw_request)
        metrics.note_request(raw_request, request)
        refusal = refusal_reason(request)
        if refusal is not None:
            message, param = refusal
            metrics.refused(param)
            return error_response(
                make_error, raw_request, message, param, HTTPStatus.BAD_REQUEST, "BadRequestError"
            )
        response = as_response(await chat_route(request, raw_request))
        if isinstance(response, StreamingResponse):
            response = await refuse_failed_stream(response)
        set_verification_headers(response, request._tokens_verification)
        if request._tokens_splice is not None and isinstance(response, Response):
            response.headers[SPLICE_HEADER] = request._tokens_splice.header_value()
        return response

    return metrics.instrument(create_tokens_chat_completion)


def build_unavailable_endpoint(reason: str, make_error: ErrorMaker) -> Endpoint:
    """The route when the patch could not apply: a clear 501 instead of a silent 404."""

    async def tokens_route_unavailable(raw_request: Request) -> JSONResponse:
        return error_response(
            make_error, raw_request, reason, None, HTTPStatus.NOT_IMPLEMENTED, "NotImplementedError"
        )

    return metrics.instrument(tokens_route_unavailable)


def add_route(
    app: FastAPI, path: str, endpoint: Endpoint, json_validator: Callable[..., Any] | None
) -> BaseRoute:
    """Add `POST path` to vLLM's app and return the route object (kept for `unpatch`)."""
    dependencies = [Depends(json_validator)] if json_validator is not None else None
    app.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        dependencies=dependencies,
        response_model=None,
        name=endpoint.__name__,
        summary="Chat completion with the exact prompt token ids (vllm-tokens-patch)",
    )
    route: BaseRoute = app.router.routes[-1]
    return route


def remove_route(app: FastAPI, route: BaseRoute) -> None:
    if route in app.router.routes:
        app.router.routes.remove(route)
