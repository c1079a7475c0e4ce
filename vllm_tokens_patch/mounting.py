"""Putting the route on vLLM's app: the route-hook wrapper, the serving check, the render patch.

Runs only in API-server processes (the route-hook module and FastAPI are imported only there). Every
function works on the `State` that `plugin.register()` made, so an `unpatch()` (a new state) leaves a
late import hook of the old generation nothing to act on.
"""

from __future__ import annotations

import logging
import sys
import weakref
from typing import Any

from vllm_tokens_patch import settings
from vllm_tokens_patch.adapters import Adapter, AdapterMismatch, RenderTarget
from vllm_tokens_patch.patches import Wrapper, wrap_attribute
from vllm_tokens_patch.state import State
from vllm_tokens_patch.tokens import TokensSwap


def wrap_route_hook(state: State, adapter: Adapter, module: Any) -> None:
    """Wrap the function vLLM calls with its app while building it; mount the route right after."""
    # An alias shim at the hook's module path (vLLM's planned `vllm/frontend` move) replaces its own
    # `sys.modules` entry with the real module: patch that one, the object vLLM's own imports get.
    module = sys.modules.get(getattr(module, "__name__", ""), module)
    if getattr(module, adapter.route_hook.attribute, None) is None:
        state.fail(
            state.cannot_patch(
                adapter, f"{adapter.route_hook} does not exist; the token route is not available"
            ),
            settings.current(),
        )
        return

    def on_attach(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = wrapped(*args, **kwargs)
        mount(state, adapter, adapter.app_of(args, kwargs, result))
        return result

    state.record(wrap_attribute(module, adapter.route_hook.attribute, on_attach))


def watch_serving(state: State, fastapi_class: Any) -> None:
    """Check every app at its first ASGI call (the lifespan startup under uvicorn, else the first request):
    a vLLM chat app without our route means the route hook never ran (moved, renamed, or imported under
    another module name), which must not pass silently. Later calls cost one set lookup."""

    def on_call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if instance not in state.checked:
            ensure_route(state, instance)
        return wrapped(*args, **kwargs)

    state.record(wrap_attribute(fastapi_class, "__call__", on_call))


def serves(routes: Any, path: str) -> bool:
    """Whether `path` is routed, also inside mounts and included routers (newer FastAPI keeps those as
    `_IncludedRouter` entries holding the `original_router`)."""
    for route in routes:
        if getattr(route, "path", None) == path:
            return True
        nested = getattr(route, "routes", None) or getattr(
            getattr(route, "original_router", None), "routes", None
        )
        if nested and serves(nested, path):
            return True
    return False


def ensure_route(state: State, app: Any) -> None:
    """Mount the 501 route (and say why, once) on a vLLM chat app that is about to serve without ours."""
    with state.lock:
        state.checked.add(app)
        adapter = state.adapter
        if adapter is None or state.is_mounted(app):
            return
        if not serves(getattr(app, "routes", ()), adapter.stock_chat_path):
            return  # not vLLM's chat app (render-only server, another app in the process)
        current = settings.current()
        reason = state.failure or state.cannot_patch(
            adapter,
            f"vLLM serves {adapter.stock_chat_path} but never called {adapter.route_hook} (moved, renamed, "
            f"or imported under another module name); POST {current.route_path} answers 501",
        )
        from vllm_tokens_patch import route

        state.fail(reason, current)
        unavailable = route.build_unavailable_endpoint(reason, adapter)
        state.mounted.append((weakref.ref(app), route.add_route(app, current.route_path, unavailable, None)))
        if current.stock_route:
            stock = route.build_unavailable_endpoint(reason, adapter, "stock")
            mount_stock_dispatch(state, adapter, app, stock, None, ())


def mount(state: State, adapter: Adapter, app: Any) -> None:
    """Patch the render methods (once per process) and add the route to `app` (once per app)."""
    from vllm_tokens_patch import route

    with state.lock:
        if state.is_mounted(app):
            return
        current = settings.current()
        try:
            found = adapter.probe()
            patch_render(state, adapter, current)
            model = state.request_model_for(found.request_base)
            endpoint = route.build_tokens_endpoint(found.chat_route, model, adapter)
            added = route.add_route(app, current.route_path, endpoint, found.json_validator)
            memory = mount_memory(state, adapter, app, added, found.json_validator, current)
            if current.stock_route or memory is not None:
                stock = route.build_tokens_endpoint(found.chat_route, model, adapter, "stock")
                native = tuple(getattr(found.request_base, "model_fields", ()))
                mount_stock_dispatch(state, adapter, app, stock, found.json_validator, native, memory)
            also = ""
            if current.stock_route:
                also = f"; also on POST {adapter.stock_chat_path} ({settings.STOCK_ROUTE}=1)"
            if memory is not None:
                also += f"; conversation memory {current.memory} ({settings.MEMORY})"
            state.log_once(
                logging.INFO,
                f"vllm-tokens-patch: POST {current.route_path} enabled "
                f"(vLLM {state.vllm_version}, adapter {adapter.name}){also}",
            )
        except Exception as exc:  # a moved vLLM internal, or a bug of ours: vLLM must still start
            what = str(exc) if isinstance(exc, AdapterMismatch) else f"{type(exc).__name__}: {exc}"
            reason = state.cannot_patch(adapter, f"{what}; POST {current.route_path} answers 501")
            # A render wrapper left behind stays inert: only our requests pass its gate.
            state.fail(reason, current)
            unavailable = route.build_unavailable_endpoint(reason, adapter)
            added = route.add_route(app, current.route_path, unavailable, None)
            if current.stock_route:
                _forget_stock_dispatch(state, app)
                stock = route.build_unavailable_endpoint(reason, adapter, "stock")
                mount_stock_dispatch(state, adapter, app, stock, None, ())
        state.mounted.append((weakref.ref(app), added))


def mount_stock_dispatch(
    state: State,
    adapter: Adapter,
    app: Any,
    endpoint: Any,
    json_validator: Any,
    native: tuple[str, ...],
    memory: Any = None,
) -> None:
    """Put the stock-route dispatch in front of vLLM's chat route of `app`: with
    `VLLM_TOKENS_PATCH_STOCK_ROUTE`, bodies with a token field go to `endpoint`; with the conversation
    memory (`memory`: its `StockMemory`), every other body is recorded and, on a hit, reuses ids through
    `endpoint`; the rest goes on to vLLM's route."""
    from vllm_tokens_patch import route, stock_route

    tokens = route.unmounted_route(adapter.stock_chat_path, endpoint, json_validator)
    fields = stock_route.token_fields(native) if settings.current().stock_route else ()
    dispatch = stock_route.StockDispatch(
        adapter.stock_chat_path, tokens.handle, app.router, fields, route.decode_json, memory
    )
    app.router.routes.insert(0, dispatch)
    state.mounted.append((weakref.ref(app), dispatch))


def mount_memory(
    state: State,
    adapter: Adapter,
    app: Any,
    token_route: Any,
    json_validator: Any,
    current: settings.Settings,
) -> Any:
    """With `VLLM_TOKENS_PATCH_MEMORY`: record the token route's answers, add the export route, and return
    the memory's part in the stock-route dispatch (None when the memory is off)."""
    if current.memory is None:
        return None
    from vllm_tokens_patch import capture, route
    from vllm_tokens_patch.id_fields import ID_FIELDS
    from vllm_tokens_patch.memory import Memory
    from vllm_tokens_patch.memory_route import StockMemory, build_trajectory_endpoint, recorded_app
    from vllm_tokens_patch.memory_store import Limits

    memory = Memory(current.memory, Limits(current.memory_max_bytes, current.memory_max_age))
    observed: weakref.WeakSet[Any] = weakref.WeakSet()

    def observe(served: Any) -> None:
        """Read the engine's outputs of `served`'s chat serving object (once per app)."""
        if served is None or served in observed:
            return
        serving = adapter.serving_of(served)
        if serving is not None:
            with state.lock:
                state.record(capture.observe_engine(adapter, serving))
                observed.add(served)

    token_route.app = recorded_app(token_route.app, memory, route.decode_json, observe)

    def error(raw_request: Any, message: str, param: str | None, status: Any, err_type: str) -> Any:
        return route.error_response(adapter, raw_request, message, param, status, err_type)

    export = build_trajectory_endpoint(memory, error, route.decode_json)
    exported = route.add_route(app, current.route_path + "/trajectory", export, json_validator)
    state.mounted.append((weakref.ref(app), exported))
    return StockMemory(memory, route.decode_json, route.encode_json, observe, ID_FIELDS)


def _forget_stock_dispatch(state: State, app: Any) -> None:
    """Take back a dispatch mounted before a later step of the same mount failed."""
    from vllm_tokens_patch import route

    for entry in [entry for entry in state.mounted if entry[0]() is app]:
        route.remove_route(app, entry[1])
        state.mounted.remove(entry)


def patch_render(state: State, adapter: Adapter, current: settings.Settings) -> None:
    """Wrap each render method of the adapter; only our request class passes the wrappers' gate."""
    swap = TokensSwap(adapter, state.is_tokens_request, verify=current.verify != "off")
    for target in adapter.render_targets:
        owner = target.location.resolve_owner()
        state.record(wrap_attribute(owner, target.location.attribute, render_wrapper(swap, target)))


def render_wrapper(swap: TokensSwap, target: RenderTarget) -> Wrapper:
    """Pass other requests straight through (same coroutine, no extra frame); swap ours."""
    render = swap.render_async if target.is_async else swap.render_sync

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = args[0] if args else kwargs.get("request")
        if not swap.is_tokens_request(request):
            return wrapped(*args, **kwargs)
        return render(wrapped, instance, target, args, kwargs)

    return wrapper
