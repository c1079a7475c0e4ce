"""Static module and name resolution over a Python source tree (no import, no execution): what a
module-level name of a module is bound to, followed through `from X import name` re-exports and star
imports to where it is defined; a class's members, also inherited through base classes named across
modules; module-level writes into `sys.modules` (alias shims).

Which file a module is comes from the standard library's own path-based finder
(`importlib.machinery.PathFinder` over the tree's root, package by package), so packages, plain modules
and namespace packages are found as `import` would find them; only `.py` sources are read. The tools'
canary (tools/canary.py) checks an adapter's targets with it against an unpacked vLLM wheel or sdist.
"""

from __future__ import annotations

import ast
import importlib.machinery
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Binding",
    "Found",
    "ModuleInfo",
    "Tree",
    "absolute_module",
    "dotted_name",
    "runtime_statements",
]

_TRY_NODES: tuple[type[ast.stmt], ...] = (ast.Try, *((ast.TryStar,) if hasattr(ast, "TryStar") else ()))
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


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


def runtime_statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run at import time at this level: through if/try/with, not `TYPE_CHECKING`."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from runtime_statements(stmt.body)
            yield from runtime_statements(stmt.orelse)
        elif isinstance(stmt, _TRY_NODES):
            yield from runtime_statements(stmt.body)  # type: ignore[attr-defined]
            for handler in stmt.handlers:  # type: ignore[attr-defined]
                yield from runtime_statements(handler.body)
            yield from runtime_statements(stmt.orelse)  # type: ignore[attr-defined]
            yield from runtime_statements(stmt.finalbody)  # type: ignore[attr-defined]
        elif isinstance(stmt, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
            yield stmt
            yield from runtime_statements(stmt.body)
        else:
            yield stmt


def absolute_module(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    base = ".".join(parts)
    return f"{base}.{node.module}" if node.module else base


def _is_sys_modules(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Attribute) and expr.attr == "modules" and dotted_name(expr.value) == "sys"


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


def dotted_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        base = dotted_name(expr.value)
        return f"{base}.{expr.attr}" if base else None
    return None


class Tree:
    """A directory containing `vllm/`, read statically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[str, ModuleInfo | None] = {}
        self._finders: dict[str, importlib.machinery.FileFinder] = {}

    def module_file(self, module: str) -> Path | None:
        """The source `import module` would load from this tree (a package's `__init__.py`): the standard
        library's path-based finder, one package level at a time, over `.py` sources only. None if there
        is none, or the name is a namespace package (a directory without `__init__.py`: no source)."""
        search = [str(self.root)]
        spec = None
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            if spec is not None:
                search = list(spec.submodule_search_locations or [])  # empty: a module has no submodules
            spec = next(
                (
                    found
                    for path in search
                    if (found := self._finder(path).find_spec(".".join(parts[:depth])))
                ),
                None,
            )
            if spec is None:
                return None
        return Path(spec.origin) if spec is not None and spec.has_location and spec.origin else None

    def _finder(self, directory: str) -> importlib.machinery.FileFinder:
        """`import`'s own finder for one directory, for `.py` sources only; cached per tree (not in
        `sys.path_importer_cache`: nothing here is imported)."""
        if directory not in self._finders:
            loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
            self._finders[directory] = importlib.machinery.FileFinder(directory, loader)
        return self._finders[directory]

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
        for stmt in runtime_statements(tree.body):
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
            source = absolute_module(info.name, info.is_package, stmt)
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
        dotted = dotted_name(expr)
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
        for stmt in runtime_statements(cls.body):
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
            for stmt in runtime_statements(cls.body)
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
