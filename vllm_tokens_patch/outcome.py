"""What happened to one token-route request: the one record the swap writes and the route and the metrics
read (nothing is stashed on vLLM's objects).

The route opens it (`recording`) before it awaits vLLM's chat route; vLLM's render call runs in the same
asyncio task or in one it creates (`with_cancellation`), which copies the context, so the swap finds the
same object through `current()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from vllm_tokens_patch.splice import Splice

Route = Literal["tokens", "stock"]
"""Which path answered: the token route, or vLLM's own chat route (`VLLM_TOKENS_PATCH_STOCK_ROUTE`)."""
Mode = Literal["tokens", "prefix_tokens", "unknown"]
"""`unknown`: the body did not parse (or the route is unavailable), so its mode is not known."""
Result = Literal["match", "mismatch", "skipped"]
"""`skipped`: not compared (the fast path, or verification off)."""


@dataclass(frozen=True)
class Verification:
    """How the client's ids compare with what vLLM rendered from `messages` (the verification header)."""

    result: Result
    first_mismatch: int | None = None
    """On `mismatch`: the index of the first differing position (a length difference counts)."""

    @classmethod
    def of(cls, first_mismatch: int | None) -> Verification:
        """From a comparison: None means the lists are equal."""
        return cls("match") if first_mismatch is None else cls("mismatch", first_mismatch)


SKIPPED = Verification("skipped")


CLIENT_CLOSED = 499
"""The status recorded for a request whose client hung up before it was answered (nginx's "client closed
request"): nobody reads the answer, the metrics count it apart."""


@dataclass
class Outcome:
    """One request's record. `refusal` is the reason label of a refusal by the plugin (or the field the
    route refused); `status` is the HTTP status of the answer (set by the route when it answered)."""

    route: Route = "tokens"
    mode: Mode = "unknown"
    verification: Verification | None = None
    splice: Splice | None = None
    refusal: str | None = None
    status: int | None = None


_current: ContextVar[Outcome | None] = ContextVar("vllm_tokens_patch_outcome", default=None)


@contextmanager
def recording(route: Route = "tokens") -> Iterator[Outcome]:
    """A fresh outcome, current until the block ends."""
    outcome = Outcome(route)
    token = _current.set(outcome)
    try:
        yield outcome
    finally:
        _current.reset(token)


def current() -> Outcome:
    """The outcome of the request being served; a detached one when no route opened it (nothing reads it)."""
    outcome = _current.get()
    return outcome if outcome is not None else Outcome()
