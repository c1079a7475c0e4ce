"""Every relative link in README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md reaches its file, and its
`#anchor` a heading of that file (GitHub's anchors): the README is a landing page that links into docs/,
and a page or heading that moves must not leave a dead link (`python -m tools.check_links`, run by lint).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from . import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {anchor(match) for match in HEADING.findall(text)}


def pages(root: Path) -> list[Path]:
    return [root / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")] + sorted(
        (root / "docs").rglob("*.md")
    )


def problems(root: Path) -> list[str]:
    found = []
    for page in pages(root):
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, fragment = target.partition("#")
            where = (page.parent / file).resolve() if file else page
            name = page.relative_to(root).as_posix()
            if not where.exists():
                found.append(f"{name}: link to {target}: no such file")
            elif fragment and where.suffix == ".md" and fragment not in anchors(where):
                found.append(f"{name}: link to {target}: no such heading in {where.relative_to(root)}")
    return found


def main() -> int:
    found = problems(ROOT)
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
