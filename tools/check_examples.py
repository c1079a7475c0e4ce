"""The example code blocks of README.md and docs/*.md are the files in examples/, verbatim
(tests/e2e/test_examples.py runs them).

In those pages each example sits between `<!-- example: examples/NAME -->` and `<!-- example-end -->` as one
fenced block. `python -m tools.check_examples` exits 1 when a block differs from its file, names a missing
file, or a file in examples/ is in no block (the lint session runs it); `--write` copies the files in.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from . import ROOT

EXAMPLES = ROOT / "examples"
BLOCK = re.compile(r"(<!-- example: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- example-end -->)", re.DOTALL)
LANGUAGE = {".py": "python", ".sh": "sh"}


def fenced(path: Path) -> str:
    """The block a file is shown as: one fence, tagged with its language."""
    return f"```{LANGUAGE.get(path.suffix, '')}\n{path.read_text(encoding='utf-8')}```\n"


def pages() -> list[Path]:
    """The pages that show examples: README.md and the docs."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def problems(texts: dict[str, str]) -> list[str]:
    """What is wrong with the example blocks of `texts` (page name -> its text)."""
    found: list[str] = []
    shown = set()
    for name, text in texts.items():
        for match in BLOCK.finditer(text):
            path = ROOT / match["path"]
            shown.add(path)
            if not path.is_file():
                found.append(f"{name} shows {match['path']}, which does not exist")
            elif match["body"] != fenced(path):
                found.append(f"{name}'s block for {match['path']} differs from the file (run with --write)")
    for path in sorted(EXAMPLES.iterdir()):
        if path.is_file() and path not in shown:
            found.append(f"{path.relative_to(ROOT)} is in no example block (<!-- example: ... -->)")
    return found


def write(readme: str) -> str:
    def replace(match: re.Match[str]) -> str:
        path = ROOT / match["path"]
        body = fenced(path) if path.is_file() else match["body"]
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, readme)


def main(argv: list[str]) -> int:
    texts = {}
    for page in pages():
        text = page.read_text(encoding="utf-8")
        if "--write" in argv:
            text = write(text)
            page.write_text(text, encoding="utf-8")
        texts[page.relative_to(ROOT).as_posix()] = text
    found = problems(texts)
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
