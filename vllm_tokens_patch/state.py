"""What the plugin did in one process: the adapter, the patches, the apps it mounted on, why it is off.

`plugin.unpatch()` replaces the state with a fresh one, so an import hook registered before that (it
holds the old state) finds it is stale and does nothing.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from vllm_tokens_patch import settings
from vllm_tokens_patch.adapters import Adapter
from vllm_tokens_patch.log import logger
from vllm_tokens_patch.patches import Patch


class PatchError(RuntimeError):
    """Raised (only in strict mode) when the patch cannot apply to the installed vLLM."""


@dataclass
class State:
    """What the plugin did in this process; `unpatch()` replaces it with a fresh one, so import hooks
    registered before that (they hold the old state) find they are stale and do nothing."""

    registered: bool = False
    vllm_version: str | None = None
    adapter: Adapter | None = None
    failure: str | None = None
    request_model: type[Any] | None = None
    patches: list[Patch] = field(default_factory=list)
    mounted: list[tuple[weakref.ref[Any], Any]] = field(default_factory=list)
    """(app, the route added to it)."""
    checked: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    """Apps the serving check has seen."""
    logged: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def log_once(self, level: int, message: str) -> None:
        if message not in self.logged:
            self.logged.add(message)
            logger.log(level, message)

    def fail(self, reason: str, current: settings.Settings | None = None, *, serving: bool = True) -> None:
        """Record why the patch is off; log it once (only where HTTP is served); raise if strict."""
        self.failure = reason
        if current is not None and current.strict:
            raise PatchError(reason)
        if serving:
            self.log_once(logging.ERROR, reason)

    def cannot_patch(self, adapter: Adapter, what: str) -> str:
        """The reason the route is off, worded once: what is missing or failed, and what follows."""
        return f"vllm-tokens-patch cannot patch vLLM {self.vllm_version} (adapter {adapter.name}): {what}"

    def record(self, patch: Patch | None) -> None:
        if patch is not None:
            self.patches.append(patch)

    def is_mounted(self, app: Any) -> bool:
        return any(ref() is app for ref, _ in self.mounted)

    def request_model_for(self, base: type[Any]) -> type[Any]:
        """The token-in request class: vLLM's `ChatCompletionRequest` plus `tokens` (built once per base)."""
        if self.request_model is None or self.request_model.__mro__[1] is not base:
            from vllm_tokens_patch.request import build_request_model

            caches = self.adapter.request_class_caches if self.adapter is not None else ()
            self.request_model = build_request_model(base, caches)
        return self.request_model

    def is_tokens_request(self, request: Any) -> bool:
        """The gate: only our request class, never a stock request with a stray `tokens` field."""
        model = self.request_model
        return model is not None and isinstance(request, model)
