"""Adapter version ranges stated in the docs, checked against the matrix (`python -m tools.matrix_tools
check-docs`, run by `nox -s lint`)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

from vllm_tokens_patch.compat import Matrix, parse_version

from .matrix_file import load
from .matrix_table import TABLE_BEGIN, TABLE_END

__all__ = ["DOCS_CONVENTION", "adapter_ranges", "check_docs", "current_changelog_section"]

_VERSION = r"\d+\.\d+(?:\.\d+)?"
_RANGE = re.compile(rf"(?<![\w.])({_VERSION}) ?[-\u2013] ?({_VERSION})(?![\w.])")
_FULL = re.compile(r"\d+\.\d+\.\d+")
DOCSTRING_RANGE = re.compile(r"vLLM (\S+) - (\S+?)[:,( ]")
DOCS_CONVENTION = """\
Adapter ranges (first - last release in compat_matrix.yaml, full X.Y.Z versions) are stated only as:
  - an adapter module's docstring starts "vLLM A - B";
  - a table row that names one adapter (`name` or `adapters/name.py`) holds its range "A - B" or "A-B";
  - in prose, the adapter's name in backticks followed by the range in parentheses: `name` (A-B...).
A table row or paragraph that names an adapter and holds a range in any other form fails."""


def adapter_ranges(matrix: Matrix) -> dict[str, tuple[str, str]]:
    """Each adapter's first and last release in the matrix."""
    versions: dict[str, list[str]] = {}
    for release in matrix.supported:
        assert release.adapter is not None
        versions.setdefault(release.adapter, []).append(release.version)
    return {name: (min(v, key=parse_version), max(v, key=parse_version)) for name, v in versions.items()}


def _blocks(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, text) of each table row, and of each paragraph or list item otherwise."""
    start, lines = 0, []
    for number, line in enumerate([*text.splitlines(), ""], 1):
        stripped = line.strip()
        new_item = stripped.startswith(("- ", "* ", "|", "#")) or not stripped
        if lines and (new_item or lines[0].lstrip().startswith("|")):
            yield start, " ".join(lines)
            lines = []
        if stripped:
            start = number if not lines else start
            lines.append(stripped)


def _range_problems(where: str, text: str, ranges: dict[str, tuple[str, str]]) -> list[str]:
    names = "|".join(sorted(map(re.escape, ranges), key=len, reverse=True))
    mention = re.compile(rf"`(?:adapters/)?({names})(?:\.py)?`")
    stated = re.compile(rf"`({names})` \(({_VERSION}) ?[-\u2013] ?({_VERSION})")
    problems = []
    for number, block in _blocks(text):
        named = mention.findall(block)
        if not named:
            continue
        found: list[tuple[str, str, str]] = []
        rest = block
        if block.startswith("|"):
            if len(set(named)) > 1 and _RANGE.search(block):
                problems.append(f"{where}:{number}: a table row with a range names one adapter only")
                continue
            found = [(named[0], a, b) for a, b in _RANGE.findall(block)]
            if not found:
                problems.append(f"{where}:{number}: `{named[0]}`: the row states no range A - B")
        else:
            found = stated.findall(block)
            rest = stated.sub("", block)
        for a, b in _RANGE.findall(rest) if not block.startswith("|") else []:
            problems.append(f"{where}:{number}: range {a}-{b} next to an adapter name, not as `name` (A-B)")
        for name, a, b in found:
            if not (_FULL.fullmatch(a) and _FULL.fullmatch(b)):
                problems.append(f"{where}:{number}: `{name}` {a}-{b}: write full X.Y.Z versions")
            elif (a, b) != ranges[name]:
                problems.append(
                    f"{where}:{number}: `{name}` {a}-{b}, the matrix says {' - '.join(ranges[name])}"
                )
    return problems


def current_changelog_section(text: str) -> str:
    """The newest `## ` section (the unreleased one), other lines blanked so line numbers stay: older
    entries are history and stay as written."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")] + [len(lines)]
    if len(heads) < 2:
        return text
    return "\n".join(line if heads[0] <= i < heads[1] else "" for i, line in enumerate(lines))


def check_docs(root: Path) -> list[str]:
    """Every adapter range stated in the adapters' docstrings, README.md, the pages of docs/ (outside the
    generated table) and the CHANGELOG's current section, against the matrix (see DOCS_CONVENTION)."""
    ranges = adapter_ranges(load(root / "compat_matrix.yaml"))
    problems = []
    modules = sorted((root / "vllm_tokens_patch" / "adapters").glob("*.py"))
    for path in modules:
        if path.stem in {"__init__", "base"}:
            continue
        where = path.relative_to(root).as_posix()
        if path.stem not in ranges:
            problems.append(f"{where}: no release in the matrix uses this adapter")
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        match = DOCSTRING_RANGE.match(doc)
        if match is None:
            problems.append(f"{where}: the docstring does not start with 'vLLM A - B'")
        elif match.groups() != ranges[path.stem]:
            a, b = match.groups()
            problems.append(
                f"{where}: docstring says vLLM {a} - {b}, the matrix says {' - '.join(ranges[path.stem])}"
            )
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
        if 0 <= begin < end:  # the generated table is checked by `check-table`
            text = text[:begin] + "\n" * text[begin:end].count("\n") + text[end:]
        problems += _range_problems(page.relative_to(root).as_posix(), text, ranges)
    changelog = current_changelog_section((root / "CHANGELOG.md").read_text(encoding="utf-8"))
    problems += _range_problems("CHANGELOG.md (current section)", changelog, ranges)
    return problems
