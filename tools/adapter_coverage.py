"""Every adapter's own code ran on a release of its own (`python -m tools.matrix_tools
check-adapters-executed COVERAGE_JSON`, run by `nox -s coverage`)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from vllm_tokens_patch.compat import Matrix

__all__ = ["unexecuted_adapters"]


def _function_body_lines(source: str) -> set[int]:
    """Lines inside function bodies: what importing a module does not execute."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in node.body:
                lines.update(range(statement.lineno, (statement.end_lineno or statement.lineno) + 1))
    return lines


def unexecuted_adapters(report: dict[str, Any], root: Path, matrix: Matrix) -> list[str]:
    """Adapter modules whose code ran in no `vllm-<X>` session of a release the matrix gives that adapter
    (`report`: `coverage json --show-contexts` output, paths relative to `root`; contexts: session names).

    Its code: the method bodies, or the declarations of an adapter that has none. Running elsewhere is not
    enough: the newer adapters import and subclass the older ones, and unit tests load every adapter."""
    files = {Path(name).as_posix(): data for name, data in report["files"].items()}
    missing = []
    for path in sorted((root / "vllm_tokens_patch" / "adapters").glob("*.py")):
        if path.stem in {"__init__", "base"}:
            continue
        relative = path.relative_to(root).as_posix()
        own = {f"vllm-{r.version}" for r in matrix.supported if r.adapter == path.stem}
        contexts = (files.get(relative) or {}).get("contexts") or {}
        ran = {int(line) for line, names in contexts.items() if own & set(names)}
        body = _function_body_lines(path.read_text(encoding="utf-8"))
        if not (ran & body if body else ran):
            missing.append(relative)
    return missing
