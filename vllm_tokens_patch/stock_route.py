"""The token fields on vLLM's own `POST /v1/chat/completions` (opt-in: `VLLM_TOKENS_PATCH_STOCK_ROUTE=1`).

Routers in front of many replicas drop unknown paths but keep top-level fields on the stock route, and
NeMo-Gym sends `required_prefix_token_ids` there. So, when the server opts in, a route of ours is put in
front of vLLM's chat route for that one path and method: it reads the body, and a body that carries a
token field (`request.ID_FIELDS`, or ids on the last assistant message) is answered by the token endpoint
(the same parse, refusals, swap, headers; metrics labelled `route="stock"`). Every other body is replayed,
byte for byte and chunk for chunk, to the app's router, which then routes it to vLLM's own chat route as if
we were not there. It sits inside the app, so vLLM's middlewares (auth, request id, CORS) ran before it.

What a body costs: a substring search. Only a body that names a token field (or uses `\\u` escapes, which
could spell one) is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm_tokens_patch.asgi_body import read_body, replaying
from vllm_tokens_patch.id_fields import ID_FIELDS, MESSAGE_ID_FIELDS, last_assistant_with_ids

if TYPE_CHECKING:  # the memory's modules load only when it is on
    from vllm_tokens_patch.memory_route import StockMemory


_passing: ContextVar[bool] = ContextVar("vllm_tokens_patch_stock_passing", default=False)
"""Set while a stock body is handed back to the router, so that this route does not match it again."""


def token_fields(native: Collection[str]) -> tuple[str, ...]:
    """The top-level fields that make a stock-route body a token request: ours, minus any this vLLM's own
    request class has (a release with a native field keeps its own meaning for it)."""
    return tuple(name for name in ID_FIELDS if name not in native)


def _needles(fields: tuple[str, ...]) -> tuple[bytes, ...]:
    quoted = tuple(f'"{name}"'.encode() for name in (*fields, *MESSAGE_ID_FIELDS))
    return (*quoted, b"\\u")


def is_token_body(data: Any, fields: tuple[str, ...]) -> bool:
    """A decoded body asks for the token semantics: a token field with a value, or ids on the last
    assistant message (NeMo-Gym's history)."""
    if not isinstance(data, dict):
        return False
    if any(data.get(name) is not None for name in fields):
        return True
    return last_assistant_with_ids(data.get("messages")) is not None


class StockDispatch(BaseRoute):
    """`POST path`, matched before vLLM's chat route: token bodies go to `tokens_app`, others on to the
    router (which this route then does not match)."""

    def __init__(
        self,
        path: str,
        tokens_app: ASGIApp,
        router: ASGIApp,
        fields: tuple[str, ...],
        decode: Callable[[bytes], Any],
        memory: StockMemory | None = None,
    ) -> None:
        self.path = path
        self.matcher = Route(path, _never_called, methods=["POST"])
        """Starlette's own matching of the path (its `root_path` handling) and method."""
        self.tokens_app = tokens_app
        self.router = router
        self.fields = fields
        self.decode = decode
        self.needles = _needles(fields)
        self.memory = memory
        self.name = "vllm_tokens_patch_stock_dispatch"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if _passing.get() or self.matcher.matches(scope)[0] is not Match.FULL:
            return Match.NONE, {}
        return Match.FULL, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        from starlette.routing import NoMatchFound

        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        received, body = await read_body(receive)
        replay = replaying(received, receive)
        if body is not None and self.fields and self.wants_tokens(body):
            if self.memory is None:
                await self.tokens_app(scope, replay, send)
            else:
                await self.memory.serve_tokens(body, self.tokens_app, scope, replay, send)
            return
        if self.memory is None or body is None:
            await self.pass_on(scope, replay, send)
            return
        await self.memory.serve_stock(body, self.tokens_app, self.pass_on, scope, receive, replay, send)

    async def pass_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request to the app's router, which routes it to vLLM's own chat route."""
        passing = _passing.set(True)
        try:
            await self.router(scope, receive, send)
        finally:
            _passing.reset(passing)

    def wants_tokens(self, body: bytes) -> bool:
        if not any(needle in body for needle in self.needles):
            return False
        try:
            data = self.decode(body)
        except Exception:  # not JSON: the token route's parser answers with its 400 when a field is named
            return any(needle in body for needle in self.needles[:-1])
        return is_token_body(data, self.fields)


def _never_called(request: Any) -> Any:  # pragma: no cover - the matcher is only asked to match
    raise NotImplementedError
