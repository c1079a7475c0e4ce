"""Prometheus metrics of the token route, on vLLM's own `/metrics`, counted from each request's `Outcome`.

The metric objects are created once per API-server process, when the route is built, in
prometheus_client's default registry, as vLLM creates its own. With one API server vLLM's `/metrics`
serves that registry. With `--api-server-count N` vLLM sets `PROMETHEUS_MULTIPROC_DIR` before it starts
the API servers, so prometheus_client (which picks its value class from the environment when it is first
imported) writes each process's values to files there, and every server's `/metrics` sums them all: the
counts aggregate across API servers with nothing of ours in between. prometheus_client and FastAPI are
imported only when a route is built, so engine-core and worker processes import neither.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm_tokens_patch.log import logger
from vllm_tokens_patch.outcome import CLIENT_CLOSED, Outcome

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

PREFIX = "vllm_tokens_patch_"
ROUTES = ("tokens", "stock")
"""`outcome.Route`: the token route, or vLLM's own chat route taking the token fields (opt-in)."""
MODES = ("tokens", "prefix_tokens", "unknown")
"""`outcome.Mode`: `unknown`: the body did not parse (or the route is unavailable)."""
OUTCOMES = ("ok", "refused", "error", "disconnected")
"""By the HTTP status of the answer: below 400, 4xx, 5xx (or an exception), and `disconnected`: the client
hung up before the answer started (`outcome.CLIENT_CLOSED`)."""
RESULTS = ("match", "mismatch", "skipped")
"""`outcome.Result`."""
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
    "media_runs",
    "engine_prompts",
)
"""Why the plugin refused a request (the `reason` label); pre-created so every series starts at 0."""
REASON_OF_PARAM = {"messages": "multimodal"}
"""`request.refusal_reason` names the offending field; for `messages` that is a multimodal part."""
POSITION_BUCKETS = (0.0, *(float(2**power) for power in range(18)))
"""First-mismatch index buckets: 0 (the first id differs), then powers of two up to 131072 (and +Inf)."""
MISMATCH_SERIES = f'{PREFIX}verifications_total{{result="mismatch"}}'
MEMORY_RESULTS = (
    "hit",
    "no_history",
    "unknown",
    "ambiguous",
    "unkeyable",
    "token_fields",
    "not_json",
    "refused",
)
"""Conversation-memory lookups: a hit, or the reason of a miss (`memory.Lookup.reason`)."""


@dataclass(frozen=True)
class Metrics:
    """The metric objects of this process: one set, shared by every app it builds."""

    requests: Counter
    verifications: Counter
    refusals: Counter
    splices: Counter
    first_mismatch: Histogram
    memory_lookups: Counter
    memory_records: Counter
    memory_evictions: Counter


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


_created: dict[str, Any] = globals().get("_created", {})
"""Every metric object this module made in this process, by name (kept across a reload of the module):
making one again would raise prometheus_client's "Duplicated timeseries"."""


def _create() -> Metrics:
    from prometheus_client import Counter, Histogram

    def made(cls: Any, name: str, documentation: str, **kwargs: Any) -> Any:
        """A new metric, or the one this module made before under `name`."""
        existing = _created.get(PREFIX + name)
        if isinstance(existing, cls):
            return existing
        metric = _created[PREFIX + name] = cls(PREFIX + name, documentation, **kwargs)
        return metric

    def counter(name: str, documentation: str, labels: tuple[str, ...], *values: tuple[str, ...]) -> Any:
        metric = made(Counter, name, documentation, labelnames=labels)
        for label_values in values:
            metric.labels(*label_values)  # each known series is exported from the start, at 0
        return metric

    return Metrics(
        requests=counter(
            "requests",
            "Token requests by route (tokens: the token route, stock: vLLM's chat route with the token "
            "fields), mode (tokens, prefix_tokens, unknown) and outcome (ok, refused: 4xx, error: 5xx, "
            "disconnected: the client hung up before the answer started).",
            ("route", "mode", "outcome"),
            *((route, mode, outcome) for route in ROUTES for mode in MODES for outcome in OUTCOMES),
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
        memory_lookups=counter(
            "memory_lookups",
            "Conversation-memory lookups (VLLM_TOKENS_PATCH_MEMORY): hit, or why not.",
            ("result",),
            *((result,) for result in MEMORY_RESULTS),
        ),
        memory_records=counter(
            "memory_records", "Branches the conversation memory recorded (one per choice).", ()
        ),
        memory_evictions=counter(
            "memory_evictions", "Entries the conversation memory's local store evicted (size, age).", ()
        ),
    )


def record(seen: Outcome) -> None:
    """Count one answered request from its outcome: by mode and outcome (the HTTP status), its refusal,
    and the verification and splice it got (counted as the response headers say them)."""
    metrics = get()
    if metrics is None:
        return
    status = seen.status if seen.status is not None else 500
    metrics.requests.labels(seen.route, seen.mode, outcome(status)).inc()
    if seen.refusal is not None:
        metrics.refusals.labels(REASON_OF_PARAM.get(seen.refusal, seen.refusal)).inc()
    verification = seen.verification
    if verification is not None:
        metrics.verifications.labels(verification.result).inc()
        if verification.first_mismatch is not None:
            metrics.first_mismatch.observe(verification.first_mismatch)
    if seen.splice is not None:
        metrics.splices.labels(seen.splice.close).inc()


def count_memory(result: str | None = None, records: int = 0, evictions: int = 0) -> None:
    """Count a conversation-memory lookup (`result`), recorded branches and evictions."""
    metrics = get()
    if metrics is None:
        return
    if result is not None:
        metrics.memory_lookups.labels(result).inc()
    if records:
        metrics.memory_records.inc(records)
    if evictions:
        metrics.memory_evictions.inc(evictions)


def outcome(status: int) -> str:
    """The `outcome` label of an HTTP status."""
    if status == CLIENT_CLOSED:
        return "disconnected"
    return "ok" if status < 400 else "refused" if status < 500 else "error"
