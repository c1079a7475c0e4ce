"""The checks `nox -s lint` and `nox -s coverage` run against compat_matrix.yaml:

    python -m tools.matrix_tools check-table | check-docs | check-adapters-executed COVERAGE_JSON

Each job is its own module: `matrix_file` (reading and writing the matrix and its results),
`session_results` (recording session results), `matrix_table`, `doc_ranges`, `adapter_coverage`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import ROOT
from .adapter_coverage import unexecuted_adapters
from .doc_ranges import DOCS_CONVENTION, check_docs
from .matrix_file import load
from .matrix_table import TABLE_DOC, render_table


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    matrix = ROOT / "compat_matrix.yaml"
    if command == "check-table":
        doc = (ROOT / TABLE_DOC).read_text(encoding="utf-8")
        if render_table(load(matrix)) in doc:
            return 0
        print(f"{TABLE_DOC}: the compatibility table is not compat_matrix.yaml's (run `nox -s matrix-table`)")
        return 1
    if command == "check-docs":
        problems = check_docs(ROOT)
        for problem in problems:
            print(problem)
        if problems:
            print(DOCS_CONVENTION)
        return 1 if problems else 0
    if command == "check-adapters-executed" and len(argv) == 2:
        report = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        missing = unexecuted_adapters(report, ROOT, load(matrix))
        for path in missing:
            print(f"{path}: its code ran in no vllm-<X> session of a release that uses it")
        return 1 if missing else 0
    print(
        "usage: python -m tools.matrix_tools check-table | check-docs | check-adapters-executed COVERAGE_JSON"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
