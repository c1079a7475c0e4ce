"""Prometheus metrics of the token route, on vLLM's own `/metrics`; and how many mismatches get logged.

The metric objects are created once per API-server process, when the route is built, in
prometheus_client's default registry, as vLLM creates its own. With one API server vLLM's `/metrics`
serves that registry. With `--api-server-count N` vLLM sets `PROMETHEUS_MULTIPROC_DIR` before it starts
the API servers, so prometheus_client (which picks its value class from the environment when it is first
imported) writes each process's values to files there, and every server's `/metrics` sums them all: the
counts aggregate across API servers with nothing of ours in between. prometheus_client and FastAPI are
imported only when a route is built, so engine-core and worker processes import neither.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm_tokens_patch import settings

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

logger = logging.getLogger("vllm.tokens_patch")

PREFIX = "vllm_tokens_patch_"
MODES = ("tokens", "prefix_tokens", "unknown")
"""`unknown`: the body did not parse (or the route is unavailable), so its mode is not known."""
OUTCOMES = ("ok", "refused", "error")
"""By the HTTP status of the answer: below 400, 4xx, 5xx (or an exception)."""
RESULTS = ("match", "mismatch", "skipped")
CLOSES = ("sampled", "added", "none")
REASONS = (
    "invalid_request",
    "multimodal",
    "kv_transfer_params",
    "prompt_token_ids",
    "truncate_prompt_tokens",
    "out_of_vocabulary",
    "context_length",
    "splice",
    "engine_prompts",
)
"""Why the plugin refused a request (the `reason` label); pre-created so every series starts at 0."""
REASON_OF_PARAM = {"messages": "multimodal"}
"""`request.refusal_reason` names the offending field; for `messages` that is a multimodal part."""
POSITION_BUCKETS = (0.0, *(float(2**power) for power in range(18)))
"""First-mismatch index buckets: 0 (the first id differs), then powers of two up to 131072 (and +Inf)."""
MISMATCH_SERIES = f'{PREFIX}verifications_total{{result="mismatch"}}'
STATE_KEY = "vllm_tokens_patch_request"
"""Where the route leaves the parsed request on the Starlette request, for `instrument` to read."""

Endpoint = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Metrics:
    """The metric objects of this process: one set, shared by every app it builds."""

    requests: Counter
    verifications: Counter
    refusals: Counter
    splices: Counter
    first_mismatch: Histogram


_lock = threading.Lock()
_metrics: Metrics | None = None
_failed = False


def get() -> Metrics | None:
    """This process's metrics, created on first use; None if prometheus_client cannot make them."""
    global _metrics, _failed
    if _metrics is None and not _failed:
        with _lock:
            if _metrics is None and not _failed:
                try:
                    _metrics = _create()
                except ImportError:  # no prometheus_client: not a vLLM process (every vLLM depends on it)
                    _failed = True
                except Exception as exc:  # metrics must never cost the route
                    _failed = True
                    logger.error("vllm-tokens-patch: no metrics (%s: %s)", type(exc).__name__, exc)
    return _metrics


def _create() -> Metrics:
    from prometheus_client import REGISTRY, Counter, Histogram

    def made(cls: Any, name: str, documentation: str, **kwargs: Any) -> Any:
        """A new metric, or the one registered under `name` by an earlier copy of this module (a reload):
        creating it again would raise prometheus_client's "Duplicated timeseries"."""
        existing = getattr(REGISTRY, "_names_to_collectors", {}).get(PREFIX + name)
        if isinstance(existing, cls):
            return existing
        return cls(PREFIX + name, documentation, **kwargs)

    def counter(name: str, documentation: str, labels: tuple[str, ...], *values: tuple[str, ...]) -> Any:
        metric = made(Counter, name, documentation, labelnames=labels)
        for label_values in values:
            metric.labels(*label_values)  # each known series is exported from the start, at 0
        return metric

    return Metrics(
        requests=counter(
            "requests",
            "Requests to the token route, by mode (tokens, prefix_tokens, unknown) and outcome "
            "(ok, refused: 4xx, error: 5xx).",
            ("mode", "outcome"),
            *((mode, outcome) for mode in MODES for outcome in OUTCOMES),
        ),
        verifications=counter(
            "verifications",
            "Comparisons of the engine's ids with vLLM's render of `messages`: match, mismatch, skipped.",
            ("result",),
            *((result,) for result in RESULTS),
        ),
        refusals=counter(
            "refusals",
            "Token-route requests the plugin refused (4xx), by reason.",
            ("reason",),
            *((reason,) for reason in REASONS),
        ),
        splices=counter(
            "splices",
            "prefix_tokens splices by how the previous turn was closed: sampled, added, none.",
            ("close",),
            *((close,) for close in CLOSES),
        ),
        first_mismatch=made(
            Histogram,
            "first_mismatch_position",
            "On a mismatch: the first index at which the engine's ids differ from vLLM's render.",
            buckets=POSITION_BUCKETS,
        ),
    )


# --- hooks: the route ------------------------------------------------------------------------------------


def instrument(endpoint: Endpoint) -> Endpoint:
    """`endpoint`, counted: every request by mode and outcome, and the verification and splice it got.

    Creates the metrics (at route build time, so `/metrics` lists every series from start-up)."""
    if get() is None:
        return endpoint

    @functools.wraps(endpoint)
    async def counted(raw_request: Any) -> Any:
        try:
            response = await endpoint(raw_request)
        except Exception as exc:
            _count_raised(raw_request, exc)
            raise
        _count_answered(raw_request, getattr(response, "status_code", 200))
        return response

    # FastAPI reads the parameters from the signature; resolved here, since the annotations are strings
    # that only mean something in the endpoint's own module.
    counted.__signature__ = inspect.signature(endpoint, eval_str=True)  # type: ignore[attr-defined]
    return counted


def note_request(raw_request: Any, request: Any) -> None:
    """Leave the parsed request where `instrument` finds it (its mode, verification and splice)."""
    setattr(raw_request.state, STATE_KEY, request)


def refused(reason: str | None) -> None:
    """Count one refusal by the plugin (`reason`: one of REASONS, or the field `refusal_reason` names)."""
    metrics = get()
    if metrics is not None:
        reason = reason or "invalid_request"
        metrics.refusals.labels(REASON_OF_PARAM.get(reason, reason)).inc()


def outcome(status: int) -> str:
    return "ok" if status < 400 else "refused" if status < 500 else "error"


def _noted(raw_request: Any) -> Any:
    return getattr(getattr(raw_request, "state", None), STATE_KEY, None)


def _mode(request: Any) -> str:
    if request is None:
        return "unknown"
    return "prefix_tokens" if getattr(request, "prefix_tokens", None) is not None else "tokens"


def _count_raised(raw_request: Any, exc: Exception) -> None:
    """An exception out of the route: vLLM's handlers answer it (a body that does not parse: 400)."""
    from fastapi.exceptions import RequestValidationError

    status = getattr(exc, "status_code", None)
    if isinstance(exc, RequestValidationError):
        refused("invalid_request")
        status = 400
    _count_answered(raw_request, status if isinstance(status, int) else 500)


def _count_answered(raw_request: Any, status: int) -> None:
    metrics = get()
    if metrics is None:
        return
    request = _noted(raw_request)
    metrics.requests.labels(_mode(request), outcome(status)).inc()
    verification = getattr(request, "_tokens_verification", None)
    if verification is not None:  # counted as the `x-vllm-tokens-verification` header says it
        result = verification.header_value()
        metrics.verifications.labels(result).inc()
        if result == "mismatch":
            metrics.first_mismatch.observe(verification.first_mismatch)
    splice = getattr(request, "_tokens_splice", None)
    if splice is not None:
        metrics.splices.labels(splice.close).inc()


# --- the mismatch log ------------------------------------------------------------------------------------


@dataclass
class MismatchLog:
    """How loud mismatches are in one process: the first `limit` at WARNING (None: every one), then DEBUG.

    In an RL rollout most turns mismatch (that is the point), so one WARNING each would flood the log;
    the count stays exact on `/metrics`. The first mismatch past the limit says so, at WARNING, once."""

    limit: int | None
    seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def level(self) -> int:
        with self._lock:
            self.seen += 1
            seen = self.seen
        if self.limit is None or seen <= self.limit:
            return logging.WARNING
        if seen == self.limit + 1:
            logger.warning(self.suppressed_note())
        return logging.DEBUG

    def suppressed_note(self) -> str:
        return (
            f"vllm-tokens-patch: VLLM_TOKENS_PATCH_MISMATCH_LOG={self.limit}: this API server logged "
            f"{self.limit} `tokens` mismatches at WARNING; further ones are logged at DEBUG only and counted "
            f"in {MISMATCH_SERIES} (and {PREFIX}first_mismatch_position) on /metrics"
        )


_mismatch_log: tuple[settings.Settings, MismatchLog] | None = None


def mismatch_log_level() -> int:
    """The level of this process's next mismatch line (starts over when the settings are re-read)."""
    global _mismatch_log
    current = settings.current()
    kept = _mismatch_log
    if kept is None or kept[0] is not current:
        with _lock:
            kept = _mismatch_log
            if kept is None or kept[0] is not current:
                kept = _mismatch_log = (current, MismatchLog(current.mismatch_log))
    return kept[1].level()
