"""How loud a `tokens` mismatch is: the first `VLLM_TOKENS_PATCH_MISMATCH_LOG` of each API-server process
at WARNING, later ones at DEBUG only (they stay counted on `/metrics`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from vllm_tokens_patch import settings
from vllm_tokens_patch.log import logger
from vllm_tokens_patch.metrics import MISMATCH_SERIES, PREFIX


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


_lock = threading.Lock()
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


def report_mismatch(request_id: str, rendered: Sequence[int], tokens: Sequence[int], index: int) -> None:
    logger.log(
        mismatch_log_level(),
        "vllm-tokens-patch: request %s: `tokens` differ from the ids vLLM rendered from `messages` "
        "(rendered %d ids, tokens %d ids, first difference at index %d); the engine is fed `tokens`",
        request_id,
        len(rendered),
        len(tokens),
        index,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("vllm-tokens-patch: request %s rendered ids: %s", request_id, list(rendered))
        logger.debug("vllm-tokens-patch: request %s tokens: %s", request_id, list(tokens))
