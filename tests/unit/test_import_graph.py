"""The package's modules import each other in one direction: no circle, counting imports inside functions
and under `TYPE_CHECKING` (a circle there is still two modules that each need the other)."""

from __future__ import annotations

import ast
from pathlib import Path

import vllm_tokens_patch

PACKAGE = Path(vllm_tokens_patch.__file__).parent
NAME = vllm_tokens_patch.__name__


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join((NAME, *parts[:-1])) if parts[-1] == "__init__" else ".".join((NAME, *parts))


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import module` imports the module; `from module import name` the module itself
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                if target in modules and target != name and not name.startswith(f"{target}."):
                    if target == NAME and isinstance(node, ast.ImportFrom):
                        continue  # `from vllm_tokens_patch import x`: the edge is to x (added above)
                    edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return found


def test_no_import_circle() -> None:
    assert circles(graph()) == []


def test_the_check_sees_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert circles(edges) == [["a", "b", "c", "a"]]
    assert f"{NAME}.mounting" in graph()[f"{NAME}.plugin"]
