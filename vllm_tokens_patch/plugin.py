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
from typing import Any

import wrapt

from vllm_tokens_patch import compat, mounting, settings
from vllm_tokens_patch.adapters import load
from vllm_tokens_patch.adapters.base import API_SERVER_MODULES, installed_version
from vllm_tokens_patch.patches import PatchWrapper
from vllm_tokens_patch.state import PatchError, State

__all__ = ["PatchError", "PatchWrapper", "State", "register", "status", "unpatch"]


FASTAPI_MODULE = "fastapi.applications"
"""Where `FastAPI` is defined (its `__call__` is where the serving check runs)."""

_state = State()


def _in_api_server_process() -> bool:
    return any(name in sys.modules for name in API_SERVER_MODULES)


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
    version = installed_version()
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
    if FASTAPI_MODULE in sys.modules:
        on_fastapi(sys.modules[FASTAPI_MODULE])
    else:
        wrapt.register_post_import_hook(on_fastapi, FASTAPI_MODULE)


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
