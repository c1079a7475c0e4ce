"""Day-0 canary: a static check of every target an adapter needs, against a vLLM source tree.

    python tools/canary.py [PATH] [--adapter NAME] [--version X] [--cache-dir DIR]

PATH is an unpacked vLLM wheel or sdist, a git checkout (any directory containing `vllm/`), the `vllm/`
directory itself, or a wheel / sdist file (its `vllm/**/*.py` files are unpacked into the cache dir).
Without PATH the newest vLLM release on PyPI is downloaded (the upstream wheel, `pip download --no-deps`)
and only its Python files are unpacked. Nothing is imported from vLLM: every check reads the source with
`ast`. The adapter is the one `compat.choose()` picks for the tree's version (`vllm/_version.py`, else the
wheel's METADATA / the sdist's PKG-INFO), unless `--adapter` names one.

Each check prints one `ok` / `FAIL` line with the Location and the reason; the exit status is 1 if any
check failed (2 if the tree or the adapter cannot be determined at all).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version
from repo_paths import ROOT

from vllm_tokens_patch import compat
from vllm_tokens_patch.adapters import Adapter, Location, RenderTarget, load

__all__ = [
    "Check",
    "Tree",
    "choose_adapter",
    "main",
    "newest_release",
    "prepare_tree",
    "run_checks",
    "tree_version",
]

OLD_PREFIX = "vllm.entrypoints"
NEW_PREFIX = "vllm.frontend"
MOVE = "the vLLM frontend move (RFC #54653)"
_TRY_NODES: tuple[type[ast.stmt], ...] = (ast.Try, *((ast.TryStar,) if hasattr(ast, "TryStar") else ()))
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


# --- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    ok: bool
    what: str
    """Which adapter target (`route_hook`, `render_targets[0]`, ...)."""
    location: str
    reason: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what:<18} {self.location}  -- {self.reason}"


# --- the tree -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """A module-level name: what binds it, and for imports where it comes from."""

    kind: str
    """`class`, `def`, `async def`, `assignment` or `import`."""
    node: ast.AST
    lineno: int
    source: str | None = None
    """For imports: the absolute module imported from (or the module itself for `import a.b as c`)."""
    original: str | None = None
    """For `from M import N [as A]`: N (None for a plain `import`)."""


@dataclass
class ModuleInfo:
    name: str
    path: Path
    rel: str
    is_package: bool
    tree: ast.Module
    bindings: dict[str, Binding] = field(default_factory=dict)
    stars: list[tuple[str, int]] = field(default_factory=list)
    sys_modules_writes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Found:
    """Where a module-level name is finally defined, and the import chain that led there."""

    module: ModuleInfo
    binding: Binding
    chain: tuple[str, ...] = ()
    """The modules the name was imported through, in order (empty: defined where asked)."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run at import time at this level: through if/try/with, not `TYPE_CHECKING`."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _runtime_statements(stmt.body)
            yield from _runtime_statements(stmt.orelse)
        elif isinstance(stmt, _TRY_NODES):
            yield from _runtime_statements(stmt.body)  # type: ignore[attr-defined]
            for handler in stmt.handlers:  # type: ignore[attr-defined]
                yield from _runtime_statements(handler.body)
            yield from _runtime_statements(stmt.orelse)  # type: ignore[attr-defined]
            yield from _runtime_statements(stmt.finalbody)  # type: ignore[attr-defined]
        elif isinstance(stmt, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
            yield stmt
            yield from _runtime_statements(stmt.body)
        else:
            yield stmt


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    base = ".".join(parts)
    return f"{base}.{node.module}" if node.module else base


def _is_sys_modules(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Attribute) and expr.attr == "modules" and _dotted(expr.value) == "sys"


def _writes_sys_modules(stmt: ast.stmt) -> bool:
    for node in ast.walk(stmt):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Store)
            and _is_sys_modules(node.value)
        ):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"update", "setdefault", "__setitem__"}
            and _is_sys_modules(node.func.value)
        ):
            return True
    return False


def _dotted(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        base = _dotted(expr.value)
        return f"{base}.{expr.attr}" if base else None
    return None


def moved(module: str) -> str | None:
    """Where RFC #54653 puts a `vllm.entrypoints` module (None for modules outside it)."""
    if module == OLD_PREFIX or module.startswith(OLD_PREFIX + "."):
        return NEW_PREFIX + module[len(OLD_PREFIX) :]
    return None


def _is_frontend(module: str | None) -> bool:
    return module is not None and (module == NEW_PREFIX or module.startswith(NEW_PREFIX + "."))


class Tree:
    """A directory containing `vllm/`, read statically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[str, ModuleInfo | None] = {}

    def module_file(self, module: str) -> Path | None:
        base = self.root.joinpath(*module.split("."))
        for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def module(self, name: str) -> ModuleInfo | None:
        if name not in self._modules:
            self._modules[name] = self._parse(name)
        return self._modules[name]

    def _parse(self, name: str) -> ModuleInfo | None:
        path = self.module_file(name)
        if path is None:
            return None
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
        except SyntaxError:
            return None
        info = ModuleInfo(
            name=name,
            path=path,
            rel=path.relative_to(self.root).as_posix(),
            is_package=path.name == "__init__.py",
            tree=tree,
        )
        for stmt in _runtime_statements(tree.body):
            self._bind(info, stmt)
            if _writes_sys_modules(stmt) and not isinstance(stmt, (*_FUNCS, ast.ClassDef)):
                info.sys_modules_writes.append(stmt.lineno)
        return info

    @staticmethod
    def _bind(info: ModuleInfo, stmt: ast.stmt) -> None:
        def add(name: str, binding: Binding) -> None:
            info.bindings.setdefault(name, binding)

        if isinstance(stmt, ast.ClassDef):
            add(stmt.name, Binding("class", stmt, stmt.lineno))
        elif isinstance(stmt, ast.FunctionDef):
            add(stmt.name, Binding("def", stmt, stmt.lineno))
        elif isinstance(stmt, ast.AsyncFunctionDef):
            add(stmt.name, Binding("async def", stmt, stmt.lineno))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        add(node.id, Binding("assignment", stmt, stmt.lineno))
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname:
                    add(alias.asname, Binding("import", stmt, stmt.lineno, alias.name))
                else:
                    top = alias.name.split(".")[0]
                    add(top, Binding("import", stmt, stmt.lineno, top))
        elif isinstance(stmt, ast.ImportFrom):
            source = _absolute(info.name, info.is_package, stmt)
            for alias in stmt.names:
                if alias.name == "*":
                    info.stars.append((source, stmt.lineno))
                else:
                    add(alias.asname or alias.name, Binding("import", stmt, stmt.lineno, source, alias.name))

    # --- name resolution --------------------------------------------------------------------------------

    def resolve(self, module: str, name: str, _chain: tuple[str, ...] = ()) -> Found | None:
        """A module-level `name` of `module`, following `from X import name` through the tree."""
        info = self.module(module)
        if info is None or len(_chain) > 20:
            return None
        binding = info.bindings.get(name)
        if binding is None:
            for star, _ in info.stars:
                if star != module and (found := self.resolve(star, name, (*_chain, module))) is not None:
                    return found
            return None
        if binding.kind == "import" and binding.original is not None and binding.source:
            target = self.resolve(binding.source, binding.original, (*_chain, module))
            if target is not None:
                return target
        return Found(info, binding, _chain)

    def module_of(self, info: ModuleInfo, dotted: str) -> str | None:
        """The module a dotted name in `info` refers to (`serving_engine` after `from a import
        serving_engine`, `a.b` after `import a.b`), if any."""
        head, *rest = dotted.split(".")
        binding = info.bindings.get(head)
        if binding is None or binding.kind != "import" or binding.source is None:
            return None
        base = binding.source if binding.original is None else f"{binding.source}.{binding.original}"
        module = ".".join([base, *rest])
        return module if self.module_file(module) is not None else None

    def resolve_class(self, info: ModuleInfo, expr: ast.expr) -> Found | None:
        """The class a base-class expression of `info` names."""
        if isinstance(expr, ast.Subscript):  # Generic[T], Base[X]
            expr = expr.value
        dotted = _dotted(expr)
        if dotted is None:
            return None
        if "." not in dotted:
            found = self.resolve(info.name, dotted)
        else:
            owner, _, name = dotted.rpartition(".")
            module = self.module_of(info, owner)
            found = self.resolve(module, name) if module else None
        if found is None or not isinstance(found.binding.node, ast.ClassDef):
            return None
        return found

    def find_member(
        self, info: ModuleInfo, cls: ast.ClassDef, attribute: str, _depth: int = 0
    ) -> tuple[ModuleInfo, ast.ClassDef, ast.stmt] | None:
        """`attribute` in the class body or (by name, through imports) in a base class."""
        for stmt in _runtime_statements(cls.body):
            if isinstance(stmt, (*_FUNCS, ast.ClassDef)) and stmt.name == attribute:
                return info, cls, stmt
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
                    return info, cls, stmt
        if _depth > 20:
            return None
        for base in cls.bases:
            found = self.resolve_class(info, base)
            if found is not None:
                node = found.binding.node
                assert isinstance(node, ast.ClassDef)
                member = self.find_member(found.module, node, attribute, _depth + 1)
                if member is not None:
                    return member
        return None

    def fields(self, info: ModuleInfo, cls: ast.ClassDef, _depth: int = 0) -> set[str]:
        """Annotated class-body names of the class and its bases (pydantic fields)."""
        names = {
            stmt.target.id
            for stmt in _runtime_statements(cls.body)
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        }
        if _depth <= 20:
            for base in cls.bases:
                found = self.resolve_class(info, base)
                if found is not None:
                    node = found.binding.node
                    assert isinstance(node, ast.ClassDef)
                    names |= self.fields(found.module, node, _depth + 1)
        return names

    def python_files(self) -> Iterator[Path]:
        yield from sorted((self.root / "vllm").rglob("*.py"))

    def module_name(self, path: Path) -> tuple[str, bool]:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        return ".".join(parts), is_package


# --- the checks -----------------------------------------------------------------------------------------


def _describe(found: Found) -> str:
    where = f"{found.binding.kind} at {found.module.rel}:{found.binding.lineno}"
    if found.chain:
        return f"imported from {found.module.name}: {where}"
    return where


def _shim_target(info: ModuleInfo) -> str | None:
    """The `vllm.frontend` module a shim points to, if its text names one."""
    for node in ast.walk(info.tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(info.name, info.is_package, node)
            if _is_frontend(source):
                return source
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_frontend(alias.name):
                    return alias.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_frontend(node.value):
            return node.value
    return None


def _moved_reason(location: Location, new_module: str | None, detail: str) -> str:
    new = new_module or moved(location.module) or NEW_PREFIX
    return (
        f"{detail}: {location.module} moved to {new} ({MOVE}); the adapter still names the old path "
        f"and must name {new}:{location.qualname}"
    )


def _module_checks(tree: Tree, what: str, location: Location) -> tuple[ModuleInfo | None, Check | None]:
    """The module's file, and whether it is an alias shim; a FAIL check if either is wrong."""
    info = tree.module(location.module)
    if info is None:
        rel = location.module.replace(".", "/")
        new = moved(location.module)
        if new is not None and tree.module_file(new) is not None:
            return None, Check(
                False, what, str(location), _moved_reason(location, new, f"no {rel}.py or {rel}/__init__.py")
            )
        if tree.module_file(location.module) is not None:
            return None, Check(False, what, str(location), f"{rel} does not parse")
        return None, Check(False, what, str(location), f"module not found (no {rel}.py or {rel}/__init__.py)")
    if info.sys_modules_writes:
        lines = ", ".join(str(n) for n in info.sys_modules_writes)
        detail = f"{info.rel} is a sys.modules alias shim (assigns into sys.modules at line {lines})"
        return info, Check(False, what, str(location), _moved_reason(location, _shim_target(info), detail))
    return info, None


def _frontend_origin(tree: Tree, info: ModuleInfo, name: str) -> tuple[str, int] | None:
    """`name` comes into `info` from a `vllm.frontend` module (a re-export or a star import)."""
    binding = info.bindings.get(name)
    if binding is not None:
        if binding.kind == "import" and _is_frontend(binding.source):
            return binding.source or NEW_PREFIX, binding.lineno
        return None
    for star, lineno in info.stars:
        if _is_frontend(star):
            return star, lineno
    return None


def check_location(tree: Tree, what: str, location: Location) -> tuple[Check, Found | None, ast.stmt | None]:
    """That `location` resolves: module file, then the qualname (a class member may be inherited)."""
    info, failed = _module_checks(tree, what, location)
    if failed is not None or info is None:
        assert failed is not None
        return failed, None, None
    head, *rest = location.qualname.split(".")
    frontend = _frontend_origin(tree, info, head)
    if frontend is not None:
        detail = f"{info.rel}:{frontend[1]} re-exports {head} from {frontend[0]} without defining it"
        return Check(False, what, str(location), _moved_reason(location, frontend[0], detail)), None, None
    found = tree.resolve(location.module, head)
    if found is None:
        reason = f"{info.rel} has no module-level class, def, assignment or import named {head}"
        return Check(False, what, str(location), reason), None, None
    if any(_is_frontend(m) for m in found.chain) or _is_frontend(found.module.name):
        detail = f"{head} is defined in {found.module.name}"
        return (
            Check(False, what, str(location), _moved_reason(location, found.module.name, detail)),
            None,
            None,
        )
    if not rest:
        return Check(True, what, str(location), _describe(found)), found, None
    owner = found
    member: ast.stmt | None = None
    for index, part in enumerate(rest):
        node = owner.binding.node
        if not isinstance(node, ast.ClassDef):
            reason = f"{'.'.join([head, *rest[:index]])} is a {owner.binding.kind}, not a class"
            return Check(False, what, str(location), reason), None, None
        hit = tree.find_member(owner.module, node, part)
        if hit is None:
            reason = (
                f"class {node.name} ({owner.module.rel}:{node.lineno}) and its bases found in the tree "
                f"have no {part}"
            )
            return Check(False, what, str(location), reason), None, None
        member_info, member_cls, member = hit
        kind = _kind(member)
        owner = Found(member_info, Binding(kind, member, member.lineno), owner.chain)
        reason = f"{kind} at {member_info.rel}:{member.lineno}"
        if member_cls is not node:
            reason = f"{kind} inherited from {member_cls.name} ({member_info.rel}:{member.lineno})"
    return Check(True, what, str(location), reason), owner, member


def _kind(node: ast.stmt) -> str:
    if isinstance(node, ast.ClassDef):
        return "class"
    if isinstance(node, ast.AsyncFunctionDef):
        return "async def"
    return "def" if isinstance(node, ast.FunctionDef) else "assignment"


def _positional(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [a.arg for a in (*func.args.posonlyargs, *func.args.args)]


def check_render_target(tree: Tree, index: int, target: RenderTarget) -> list[Check]:
    what = f"render_targets[{index}]"
    located, _, member = check_location(tree, what, target.location)
    if not located.ok:
        return [located]
    loc = str(target.location)
    if not isinstance(member, _FUNCS):
        return [Check(False, what, loc, f"{target.location.attribute} is not a def ({located.reason})")]
    problems = []
    is_async = isinstance(member, ast.AsyncFunctionDef)
    if is_async != target.is_async:
        problems.append(
            f"is {'async def' if is_async else 'def'}, the adapter expects "
            f"{'async def' if target.is_async else 'def'}"
        )
    params = _positional(member)
    if len(params) < 2 or params[1] != "request":
        problems.append(
            f"first parameter after self is {params[1] if len(params) > 1 else 'absent'}, not request"
        )
    if target.explicit_messages:
        if len(params) < 4 or params[3] != "messages":
            shown = ", ".join(params[1:4])
            problems.append(f"positional parameters are ({shown}, ...), expected messages third after self")
        names = set(params) | {a.arg for a in member.args.kwonlyargs}
        for keyword in ("add_generation_prompt", "continue_final_message"):
            if keyword not in names:
                problems.append(f"has no {keyword} parameter")
    if problems:
        return [Check(False, what, loc, "; ".join(problems) + f" ({located.reason})")]
    shape = f"{'async ' if is_async else ''}({', '.join(params[:4])}{', ...' if len(params) > 4 else ''})"
    return [Check(True, what, loc, f"{shape}, {located.reason}")]


@dataclass(frozen=True)
class _Use:
    rel: str
    lineno: int
    function: str | None
    """The enclosing function (None: module level)."""
    module: str
    """The module the name was taken from."""

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else " at module level"
        return f"{self.rel}:{self.lineno}{where}"


def _route_hook_uses(tree: Tree, hook: Location) -> tuple[list[_Use], list[_Use], list[_Use]]:
    """(call-time lookups of the hook, module-level copies of it, call-time lookups of a moved twin)."""
    attribute, module = hook.attribute, hook.module
    suffix = module[len(OLD_PREFIX) :] if moved(module) else "." + module.rpartition(".")[2]
    calls: list[_Use] = []
    copies: list[_Use] = []
    twins: list[_Use] = []

    def is_twin(source: str) -> bool:
        return source != module and (_is_frontend(source) and source.endswith(suffix))

    for path in tree.python_files():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if attribute not in text:
            continue
        try:
            parsed = ast.parse(text, filename=str(path))
        except SyntaxError:
            continue
        name, is_package = tree.module_name(path)
        rel = path.relative_to(tree.root).as_posix()
        top_level = set(map(id, _runtime_statements(parsed.body)))
        aliases: dict[str, str] = {}
        for node in ast.walk(parsed):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(name, is_package, node)
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        for stmt in _runtime_statements(parsed.body):
            if isinstance(stmt, ast.ImportFrom) and id(stmt) in top_level:
                source = _absolute(name, is_package, stmt)
                if (
                    name != module
                    and source == module
                    and any(a.name in {attribute, "*"} for a in stmt.names)
                ):
                    copies.append(_Use(rel, stmt.lineno, None, source))
        for func in ast.walk(parsed):
            if not isinstance(func, _FUNCS):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and any(a.name == attribute for a in node.names):
                    source = _absolute(name, is_package, node)
                    if source == module:
                        calls.append(_Use(rel, node.lineno, func.name, source))
                    elif is_twin(source):
                        twins.append(_Use(rel, node.lineno, func.name, source))
                elif isinstance(node, ast.Attribute) and node.attr == attribute:
                    dotted = _dotted(node.value)
                    if dotted is None:
                        continue
                    head, _, rest = dotted.partition(".")
                    target = aliases.get(head, head if name == module else "")
                    full = f"{target}.{rest}" if rest and target else target
                    if full == module:
                        calls.append(_Use(rel, node.lineno, func.name, module))
                    elif full and is_twin(full):
                        twins.append(_Use(rel, node.lineno, func.name, full))
                elif (
                    name == module
                    and isinstance(node, ast.Name)
                    and node.id == attribute
                    and isinstance(node.ctx, ast.Load)
                ):
                    calls.append(_Use(rel, node.lineno, func.name, module))
    return _dedupe(calls), _dedupe(copies), _dedupe(twins)


def _dedupe(uses: list[_Use]) -> list[_Use]:
    seen: dict[tuple[str, int], _Use] = {}
    for use in uses:
        seen.setdefault((use.rel, use.lineno), use)
    return list(seen.values())


def check_route_hook(tree: Tree, hook: Location) -> list[Check]:
    located, found, _ = check_location(tree, "route_hook", hook)
    checks = [located]
    if not located.ok:
        return checks
    if found is not None and found.binding.kind not in {"def", "async def"}:
        checks.append(Check(False, "route_hook", str(hook), f"is a {found.binding.kind}, not a function"))
    calls, copies, twins = _route_hook_uses(tree, hook)
    loc = str(hook)
    if twins:
        shown = "; ".join(f"from {t.module} import {hook.attribute} at {t}" for t in twins[:3])
        checks.append(
            Check(
                False,
                "route_hook",
                loc,
                f"vLLM looks {hook.attribute} up at call time from another module path: {shown}; "
                f"{hook.module} moved to {twins[0].module} ({MOVE}) and a hook on the old name never fires",
            )
        )
    if copies:
        shown = "; ".join(str(c) for c in copies[:3])
        checks.append(
            Check(
                False,
                "route_hook",
                loc,
                f"module-level `from {hook.module} import {hook.attribute}` in {shown}: that copy is "
                "bound before plugins load, so a patch of the module attribute is bypassed",
            )
        )
    if not calls:
        if not twins:
            checks.append(
                Check(
                    False,
                    "route_hook",
                    loc,
                    f"no function in the tree looks up {hook.attribute} from {hook.module} at call time "
                    f"(neither `from {hook.module} import {hook.attribute}` in a function body nor a call "
                    "through the module)",
                )
            )
    elif not twins and not copies:
        shown = "; ".join(str(c) for c in calls[:3])
        checks.append(
            Check(True, "route_hook", loc, f"looked up at call time ({shown}); no module-level copy")
        )
    return checks


def check_native_reuse(tree: Tree, adapter: Adapter) -> list[Check]:
    reuse = adapter.native_reuse
    if reuse is None:
        return []
    located, found, member = check_location(tree, "native_reuse", reuse)
    checks = [located]
    if located.ok:
        node = member if member is not None else found.binding.node if found else None
        if not isinstance(node, _FUNCS):
            checks[0] = Check(False, "native_reuse", str(reuse), f"is not a function ({located.reason})")
        else:
            params = _positional(node)
            first = params[1] if params[:1] == ["self"] and len(params) > 1 else (params or ["none"])[0]
            if first != "request":
                checks[0] = Check(
                    False, "native_reuse", str(reuse), f"first parameter is {first}, not request"
                )
            else:
                checks[0] = Check(
                    True, "native_reuse", str(reuse), f"({', '.join(params)}), {located.reason}"
                )
    base = tree.resolve(adapter.request_base.module, adapter.request_base.qualname.split(".")[0])
    if base is None or not isinstance(base.binding.node, ast.ClassDef):
        checks.append(Check(False, "request fields", str(adapter.request_base), "request class not found"))
        return checks
    fields = tree.fields(base.module, base.binding.node)
    missing = [f for f in ("kv_transfer_params", "echo") if f not in fields]
    if missing:
        reason = (
            f"no annotated field {', '.join(missing)} in the class or its bases (the fast path needs them)"
        )
        checks.append(Check(False, "request fields", str(adapter.request_base), reason))
    else:
        checks.append(
            Check(True, "request fields", str(adapter.request_base), "has kv_transfer_params and echo")
        )
    return checks


def run_checks(root: Path, adapter: Adapter) -> list[Check]:
    """Every check for `adapter` against the tree at `root` (a directory containing `vllm/`)."""
    tree = Tree(root)
    checks = check_route_hook(tree, adapter.route_hook)
    for what in ("chat_route", "json_validator", "request_base"):
        checks.append(check_location(tree, what, getattr(adapter, what))[0])
    for index, target in enumerate(adapter.render_targets):
        checks += check_render_target(tree, index, target)
    checks += check_native_reuse(tree, adapter)
    covered = {adapter.route_hook, adapter.chat_route, adapter.json_validator, adapter.request_base}
    covered |= {t.location for t in adapter.render_targets}
    if adapter.native_reuse is not None:
        covered.add(adapter.native_reuse)
    for what, location in _other_locations(adapter).items():
        if location not in covered:
            covered.add(location)
            checks.append(check_location(tree, what, location)[0])
    return checks


def _other_locations(adapter: Adapter) -> dict[str, Location]:
    """Locations the adapter declares beyond the ones checked above (e.g. a `length_check`): from its
    `targets()` if it has one, and every class attribute that is a `Location`."""
    found: dict[str, Location] = {}
    targets = getattr(adapter, "targets", None)
    if callable(targets):
        try:
            named = targets()
        except (AttributeError, NotImplementedError):  # an adapter that declares only part of them
            named = {}
        if isinstance(named, dict):
            found.update({str(k): v for k, v in named.items() if isinstance(v, Location)})
    for name in sorted(dir(type(adapter))):
        if not name.startswith("_"):
            value = getattr(type(adapter), name, None)
            if isinstance(value, Location):
                found.setdefault(name, value)
    return found


# --- the tree's version and adapter ---------------------------------------------------------------------


def tree_version(root: Path) -> tuple[str, str] | None:
    """(version, where it was read) from `vllm/_version.py`, else a METADATA / PKG-INFO next to `vllm/`."""
    version_file = root / "vllm" / "_version.py"
    if version_file.is_file():
        for node in ast.walk(ast.parse(version_file.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                value = node.value
                wanted = names & {"__version__", "version"}
                if wanted and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    return value.value, "vllm/_version.py"
    for meta in [*sorted(root.glob("*.dist-info/METADATA")), root / "PKG-INFO"]:
        if meta.is_file():
            match = re.search(r"^Version: *(\S+)", meta.read_text(encoding="utf-8"), re.MULTILINE)
            if match:
                return match.group(1), meta.relative_to(root).as_posix()
    return None


def choose_adapter(version: str, matrix: compat.Matrix) -> tuple[str | None, str]:
    choice = compat.choose(version, matrix)
    return choice.adapter, choice.reason


# --- getting a tree -------------------------------------------------------------------------------------


def _pip(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def release_versions(package: str, timeout: float = 120) -> list[str]:
    """Final releases of `package` on the index, newest first (`pip index versions`)."""
    result = _pip("index", "versions", package, timeout=timeout)
    match = re.search(r"^Available versions: *(.+)$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pip index versions {package} failed: {result.stderr.strip()[-500:]}")
    versions = []
    for text in match.group(1).split(","):
        version = compat.parse_version(text.strip())
        if version == Version("0"):
            continue
        if not (version.is_prerelease or version.is_devrelease or version.is_postrelease or version.local):
            versions.append(version)
    return [str(v) for v in sorted(versions, reverse=True)]


def newest_release(package: str = "vllm") -> str:
    return release_versions(package)[0]


def download_wheel(package: str, version: str, dest: Path, timeout: float | None = None) -> Path:
    """`pip download --no-deps --only-binary=:all: package==version` into `dest` (reused if present)."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    existing = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if existing:
        return existing[0]
    result = _pip(
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{package}=={version}",
        "-d",
        str(dest),
        timeout=timeout,
    )
    wheels = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def _wanted(member: str) -> bool:
    return (member.startswith("vllm/") and member.endswith(".py")) or (
        member.endswith((".dist-info/METADATA", "PKG-INFO")) and member.count("/") <= 1
    )


def unpack(archive: Path, dest: Path) -> Path:
    """The Python files of `vllm/` (and the metadata) of a wheel or sdist, into `dest`; returns `dest`."""
    marker = dest / ".unpacked"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            for member in wheel.namelist():
                if _wanted(member):
                    wheel.extract(member, dest)
    else:
        with tarfile.open(archive) as sdist:
            for entry in sdist.getmembers():
                inner = entry.name.partition("/")[2]  # vllm-X/vllm/... -> vllm/...
                if entry.isfile() and _wanted(inner) and ".." not in inner:
                    source = sdist.extractfile(entry)
                    if source is not None:
                        target = dest / inner
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(source.read())
    marker.write_text(archive.name)
    return dest


def prepare_tree(path: Path | None, cache: Path, log: bool = True) -> Path:
    """A directory containing `vllm/` for PATH (or the newest PyPI release when PATH is None)."""
    if path is None:
        version = newest_release("vllm")
        if log:
            print(f"canary: newest vLLM release on PyPI: {version}")
        wheel = download_wheel("vllm", version, cache / "wheels")
        return unpack(wheel, cache / "src" / wheel.stem)
    if path.is_file():
        name = path.name.removesuffix(".tar.gz").removesuffix(".whl")
        return unpack(path, cache / "src" / name)
    if (path / "vllm").is_dir():
        return path
    if path.name == "vllm" and (path / "__init__.py").is_file():
        return path.parent
    raise FileNotFoundError(f"{path} is neither a wheel, an sdist nor a directory containing vllm/")


def canary(root: Path, adapter_name: str | None, version: str | None, matrix: compat.Matrix) -> int:
    """Print the report for `root`; the exit status (0 all ok, 1 a FAIL, 2 nothing to check)."""
    if version is None:
        found = tree_version(root)
        if found is not None:
            version, source = found
            print(f"canary: vLLM {version} at {root} (version from {source})")
    if adapter_name is None:
        if version is None:
            print(f"FAIL  cannot tell the vLLM version of {root}: pass --version or --adapter")
            return 2
        adapter_name, reason = choose_adapter(version, matrix)
        print(f"canary: {reason}")
        if adapter_name is None:
            print(f"FAIL  no adapter for vLLM {version}")
            return 2
    else:
        print(f"canary: adapter {adapter_name} (given)")
    checks = run_checks(root, load(adapter_name))
    for check in checks:
        print(check.line())
    failed = sum(not c.ok for c in checks)
    print(f"canary: adapter {adapter_name}: {len(checks) - failed} ok, {failed} FAIL")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "path", nargs="?", type=Path, help="vLLM tree, wheel or sdist (default: newest on PyPI)"
    )
    parser.add_argument("--adapter", help="check this adapter instead of the one the matrix picks")
    parser.add_argument("--version", help="treat the tree as this vLLM version (for git trees)")
    parser.add_argument("--matrix", type=Path, default=ROOT / "compat_matrix.yaml")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".nox" / "canary" / "tmp")
    args = parser.parse_args(argv)
    try:
        root = prepare_tree(args.path, args.cache_dir)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"FAIL  {exc}")
        return 2
    matrix = compat.parse_matrix(args.matrix.read_text(encoding="utf-8"))
    return canary(root, args.adapter, args.version, matrix)


if __name__ == "__main__":
    sys.exit(main())
