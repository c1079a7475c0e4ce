"""A small client for multi-turn token-in rollouts against any vLLM server with this plugin.

One HTTP request per turn, no `/tokenize`, no local tokenizer: turn 1 goes to vLLM's own chat route with
`return_token_ids` (its prompt is the render anyway); every later turn sends the ids so far
(`prefix_tokens` = the previous prompt ids + the sampled ids) with the whole conversation, and the server
splices the new messages on with the model's own chat template. Truncated turns and tool results need
nothing special. `TokenChatClient` is synchronous, `AsyncTokenChatClient` its asyncio twin. An error
answer raises `TokenRouteError` (an `httpx.HTTPStatusError`) carrying the server's reason.

Needs `httpx`: the `[client]` extra (`pip install 'vllm-tokens-patch[client]'`, or `'.[client]'` in a clone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from vllm_tokens_patch.settings import Settings

try:
    import httpx
except ImportError as exc:  # tests/unit/test_client.py, in a subprocess
    raise ImportError(
        "vllm_tokens_patch.client needs httpx, the [client] extra: pip install 'vllm-tokens-patch[client]' "
        "(or '.[client]' in a clone)"
    ) from exc

STOCK_ROUTE = "/v1/chat/completions"

KEEPALIVE_EXPIRY = 2.0
"""Seconds an idle connection stays in the clients' pools: well under the 5 s after which vLLM's uvicorn
closes one (`VLLM_HTTP_TIMEOUT_KEEP_ALIVE`). httpx's default expiry is the same 5 s, so a turn sent about
5 s after the last (a rollout waiting on a tool) could go out on a connection the server is closing and fail
with a `ReadError` (docs/soak-results.md)."""

LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY)
"""httpx's default pool sizes, with `KEEPALIVE_EXPIRY` (a `transport` given to a client brings its own)."""


class TokenRouteError(httpx.HTTPStatusError):
    """An error answer (any status but 2xx) from the server, with its reason: what both clients raise.

    `status`, and `message`, `type` and `param` from vLLM's OpenAI-style error body (`{"error": {...}}`, or
    the flat `{"object": "error", ...}` of older releases; a FastAPI `{"detail": "..."}` gives the message
    only); when the body is none of these, `message` is its raw text. `str()` is the status and the message.
    An `httpx.HTTPStatusError`, so `except httpx.HTTPStatusError` catches it, with `.request` and `.response`.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.message, self.type, self.param = _error_fields(response)
        request = response.request
        said = f"{self.status} {response.reason_phrase} from {request.method} {request.url}: {self.message}"
        super().__init__(said, request=request, response=response)


def _text_field(info: dict[str, Any], key: str) -> str | None:
    value = info.get(key)
    return value if isinstance(value, str) else None


def _error_fields(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """`message`, `type` and `param` of an error body (see `TokenRouteError`)."""
    try:
        body = response.json()
    except ValueError:  # not JSON (also not UTF-8): a proxy's page, a bare text
        body = None
    if isinstance(body, dict):
        nested = body.get("error")
        info: dict[str, Any] = nested if isinstance(nested, dict) else body
        message = _text_field(info, "message")
        if message is not None:
            return message, _text_field(info, "type"), _text_field(info, "param")
        detail = _text_field(body, "detail")
        if detail is not None:
            return detail, None, None
    return response.text.strip() or response.reason_phrase, None, None


def token_route() -> str:
    """Where the token route is mounted: `VLLM_TOKENS_PATCH_ROUTE` as the server reads it, or the default."""
    return os.environ.get("VLLM_TOKENS_PATCH_ROUTE", "").strip() or Settings.route_path


@dataclass(frozen=True)
class Sampled:
    """One turn's answer: vLLM's chat response body and headers."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.body["prompt_token_ids"])

    @property
    def completion_ids(self) -> list[int]:
        return list(self.body["choices"][0]["token_ids"])

    @property
    def ids(self) -> list[int]:
        """What the engine saw and sampled: the next turn's `prefix_tokens`."""
        return [*self.prompt_ids, *self.completion_ids]

    @property
    def finish_reason(self) -> str | None:
        reason = self.body["choices"][0].get("finish_reason")
        return str(reason) if reason is not None else None

    def assistant_message(self) -> dict[str, Any]:
        """The sampled turn as a message for the conversation (content and tool calls as parsed)."""
        message = self.body["choices"][0]["message"]
        turn: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            turn["tool_calls"] = message["tool_calls"]
        return turn


@dataclass
class _Payloads:
    """What both clients send and how they read answers; only the transport differs."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    transport: Any = None
    """An `httpx` transport to use instead of the network (tests, custom proxies)."""
    route: str = field(default_factory=token_route)

    def __post_init__(self) -> None:
        """Each client opens its `httpx` client here."""

    @property
    def _root(self) -> str:
        return self.base_url.rstrip("/").removesuffix("/v1")

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _body(self, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "return_token_ids": True, **fields}

    @staticmethod
    def _sampled(response: httpx.Response) -> Sampled:
        if not response.is_success:
            raise TokenRouteError(response)
        return Sampled(dict(response.json()), dict(response.headers))


class TokenChatClient(_Payloads):
    """Synchronous rollout client (see the module docstring)."""

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            base_url=self._root,
            headers=self._headers,
            timeout=self.timeout,
            limits=LIMITS,
            transport=self.transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TokenChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> Sampled:
        """vLLM's stock route (renders `messages`): turn 1 of a rollout, or a comparison."""
        return self._sampled(self._http.post(STOCK_ROUTE, json=self._body(messages, **params)))

    def chat_tokens(self, messages: list[dict[str, Any]], tokens: list[int], **params: Any) -> Sampled:
        """The token route with the whole prompt given: the engine is fed exactly `tokens`."""
        return self._sampled(self._http.post(self.route, json=self._body(messages, tokens=tokens, **params)))

    def next_turn(
        self, messages: list[dict[str, Any]], previous: Sampled | list[int], **params: Any
    ) -> Sampled:
        """The token route in splice mode: the ids so far + the server's bridge for the new messages."""
        prefix = previous.ids if isinstance(previous, Sampled) else previous
        body = self._body(messages, prefix_tokens=prefix, **params)
        return self._sampled(self._http.post(self.route, json=body))


class AsyncTokenChatClient(_Payloads):
    """The asyncio twin of `TokenChatClient` (rollouts are concurrent)."""

    def __post_init__(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self._root,
            headers=self._headers,
            timeout=self.timeout,
            limits=LIMITS,
            transport=self.transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTokenChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> Sampled:
        return self._sampled(await self._http.post(STOCK_ROUTE, json=self._body(messages, **params)))

    async def chat_tokens(self, messages: list[dict[str, Any]], tokens: list[int], **params: Any) -> Sampled:
        body = self._body(messages, tokens=tokens, **params)
        return self._sampled(await self._http.post(self.route, json=body))

    async def next_turn(
        self, messages: list[dict[str, Any]], previous: Sampled | list[int], **params: Any
    ) -> Sampled:
        prefix = previous.ids if isinstance(previous, Sampled) else previous
        body = self._body(messages, prefix_tokens=prefix, **params)
        return self._sampled(await self._http.post(self.route, json=body))


def differing_positions(reference: list[int], other: list[int]) -> int:
    """Positions where `other` differs from `reference`, counting a length difference as differences."""
    same_length = sum(1 for left, right in zip(reference, other, strict=False) if left != right)
    return same_length + abs(len(reference) - len(other))
