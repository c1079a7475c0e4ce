"""`vllm-tokens-patch doctor`: will the token route work in this environment? Answered without a server.

It reports the installed vLLM (and which distribution provides it), whether vLLM will load the plugin
(entry point visible, not excluded by `VLLM_PLUGINS`, not `VLLM_TOKENS_PATCH_DISABLE=1`), the adapter the
compatibility matrix picks and whether that release was tested (and when), every vLLM location the
adapter needs, whether the route mounts on an app the way vLLM builds it (from 0.15.0), the fast path,
whether images are taken, and the settings in force. Exit status 0 when all is well, 1 otherwise;
`--json` for machines. It checks the environment it runs in: where vLLM cannot be imported, it tells the
user to run it with the Python that runs `vllm serve`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from vllm_tokens_patch import __version__, compat, settings
from vllm_tokens_patch.adapters import Adapter, AdapterMismatch, load
from vllm_tokens_patch.adapters.base import DISTRIBUTIONS, PLUGIN_FILTER, PLUGIN_GROUP, installed_version

PACKAGE = __name__.partition(".")[0]
DISABLE = "VLLM_TOKENS_PATCH_DISABLE"


@dataclass
class Check:
    name: str
    ok: bool | None
    """None: not checked (and why is in `detail`)."""
    detail: str


@dataclass
class Report:
    package: str = __version__
    vllm_version: str | None = None
    distributions: dict[str, str] = field(default_factory=dict)
    adapter: str | None = None
    tested: bool = False
    matrix_status: dict[str, Any] = field(default_factory=dict)
    fast_path: bool = False
    images: bool = False
    """Whether token-in requests may carry images on this release (`Adapter.places_media`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks)

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def _distributions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _entry_point(report: Report) -> None:
    """Our entry point (named once, in pyproject.toml: found here by the package it points into)."""
    points = [
        ep
        for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP)
        if ep.value.partition(":")[0].partition(".")[0] == PACKAGE
    ]
    report.add("entry point", bool(points), f"{PLUGIN_GROUP}: {points[0].value}" if points else "not found")
    allowed = os.environ.get(PLUGIN_FILTER)
    if allowed is None:
        report.add(PLUGIN_FILTER, True, "unset: vLLM loads every general plugin")
    elif not points:
        report.add(PLUGIN_FILTER, None, f"{allowed!r}: not checked, no entry point of ours found")
    else:
        name = points[0].name
        listed = name in allowed.split(",")
        report.add(PLUGIN_FILTER, listed, f"{allowed!r} {'lists' if listed else 'excludes'} {name}")


def _targets(report: Report, adapter: Adapter) -> None:
    for role, location in adapter.targets().items():
        try:
            location.resolve()
        except AdapterMismatch as exc:
            report.add(f"target {role}", False, str(exc))
        else:
            report.add(f"target {role}", True, str(location))


def _mounts(report: Report, adapter: Adapter, route_path: str, stock_route: bool) -> None:
    """Mount the route the way vLLM does: call the route hook with a bare app. Only where the hook takes
    an app (`attach_router(app)`, from 0.15.0); `build_app(args)` before that needs vLLM's CLI args."""
    if not adapter.route_hook_takes_app:
        report.add(
            "route mounts", None, f"not checked: {adapter.route_hook} builds the whole app from CLI args"
        )
        return
    from fastapi import FastAPI

    from vllm_tokens_patch import mounting, plugin
    from vllm_tokens_patch import stock_route as dispatch

    registered_here = not plugin.status()["registered"]
    plugin.register()
    try:
        app = FastAPI()
        adapter.route_hook.resolve()(app)
        mounted = mounting.serves(app.routes, route_path)
        stocked = any(isinstance(route, dispatch.StockDispatch) for route in app.router.routes)
        failure = plugin.status()["failure"]
    except Exception as exc:  # the check itself must report, not crash
        report.add("route mounts", False, f"{type(exc).__name__}: {exc}")
        return
    finally:
        if registered_here:  # never undo what vLLM's own plugin loading did in this process
            plugin.unpatch()
    report.add(
        "route mounts", mounted and failure is None, failure or f"POST {route_path} on {adapter.route_hook}"
    )
    if stock_route:
        where = f"POST {adapter.stock_chat_path} takes the token fields ({settings.STOCK_ROUTE}=1)"
        report.add("stock route", stocked and failure is None, failure or where)


_NO_VLLM = (
    "vllm cannot be imported by this Python ({python}: {error}). The plugin works only when installed in "
    "vLLM's own environment: install it there and run the doctor with the Python that runs `vllm serve`, "
    '`<that python> -m vllm_tokens_patch doctor` (`head -1 "$(command -v vllm)"` names it)'
)
"""Where vLLM is missing, the doctor is almost always run in another environment than the server's."""


def report() -> Report:
    """Everything the doctor checks, in this process's environment."""
    result = Report(distributions=_distributions())
    try:
        current = settings.Settings.from_environ()
        result.settings = asdict(current)
        result.add("settings", True, "parsed")
    except settings.SettingsError as exc:
        current = settings.Settings()
        result.add("settings", False, str(exc))
    if current.disabled:
        result.add(DISABLE, False, "set: the plugin loads as a no-op and adds no route")
    if current.memory is not None:
        result.add("memory", *_memory(current.memory))
    _entry_point(result)
    try:
        result.vllm_version = installed_version()
    except ImportError as exc:
        result.add("vllm", False, _NO_VLLM.format(python=sys.executable, error=exc))
        return result
    choice = compat.choose(result.vllm_version)
    result.adapter, result.tested = choice.adapter, choice.tested
    release = compat.load_matrix().release(result.vllm_version)
    result.matrix_status = dict(release.status) if release is not None else {}
    result.add("vllm release", choice.adapter is not None and (choice.tested or None), choice.reason)
    if choice.adapter is None:
        return result
    adapter = load(choice.adapter)
    result.fast_path, result.images = adapter.fast_path, adapter.places_media
    _targets(result, adapter)
    if not current.disabled and all(check.ok for check in result.checks if check.name.startswith("target ")):
        _mounts(result, adapter, current.route_path, current.stock_route)
    return result


def _memory(setting: str) -> tuple[bool, str]:
    """The conversation memory's store: `local` needs nothing; a Redis URL needs the client and a server
    that answers."""
    if setting == "local":
        return True, "local: one SQLite store shared by the server's API-server processes"
    import asyncio

    from vllm_tokens_patch.memory_store import RedisStore

    async def stats() -> str:
        store = RedisStore(setting)
        try:
            found = await asyncio.wait_for(store.stats(), timeout=5)
        finally:
            await store.close()
        return f"{found.entries} entries"

    try:
        return True, f"{setting.split('@')[-1]} answers ({asyncio.run(stats())})"
    except ImportError as exc:
        return False, f"{exc} (or `pip install '.[redis]'` from a clone)"
    except Exception as exc:
        return False, f"{setting.split('@')[-1]} does not answer: {type(exc).__name__}: {exc}"


def as_dict(result: Report) -> dict[str, Any]:
    return {**asdict(result), "ok": result.ok}


def as_text(result: Report) -> str:
    lines = [
        f"vllm-tokens-patch {result.package}",
        f"vLLM {result.vllm_version or '-'} "
        f"({', '.join(f'{k} {v}' for k, v in result.distributions.items()) or 'no vllm distribution found'})",
        f"adapter {result.adapter or '-'} ({'tested' if result.tested else 'untested'}; matrix: "
        f"{json.dumps(result.matrix_status) if result.matrix_status else 'no recorded result'}); "
        f"fast path: {'yes' if result.fast_path else 'no'}; images: {'yes' if result.images else 'no'}",
    ]
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    lines += [f"  {marks[check.ok]} {check.name}: {check.detail}" for check in result.checks]
    lines.append("doctor: all good" if result.ok else "doctor: problems found")
    return "\n".join(lines)
