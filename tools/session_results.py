"""Session results: each `vllm-<X>` / `e2e-<X>` run writes one file into artifacts/results; `nox -s record`
merges one run's files into compat_results.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vllm_tokens_patch.compat import RESULTS_FILE

from .matrix_file import dump_results, load

__all__ = ["record_results", "select_results", "write_result"]


def write_result(results_dir: Path, record: dict[str, str]) -> Path:
    """One session's verdict, `{kind, version, result, date, run}`, as `<kind>-<version>.json`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{record['kind']}-{record['version']}.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def select_results(results_dir: Path, run: str | None) -> list[dict[str, str]]:
    """The results of nox invocation `run` (None: every file, e.g. results copied from another clone).

    A file left by an earlier invocation carries that invocation's id, so it never counts as this run's."""
    records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(results_dir.glob("*.json"))]
    return [record for record in records if run is None or record.get("run") == run]


def record_results(matrix_path: Path, results_dir: Path, run: str | None) -> int:
    """Merge the results of `run` (see `select_results`) into compat_results.yaml next to the matrix
    (for releases the matrix lists; the matrix itself is only read); return how many."""
    versions = {release.version for release in load(matrix_path).releases}
    path = matrix_path.with_name(RESULTS_FILE)
    recorded = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None) or {}
    results = {str(version): dict(kinds or {}) for version, kinds in recorded.items()}
    changed = 0
    for record in select_results(results_dir, run):
        if record["version"] not in versions:
            continue
        results.setdefault(record["version"], {})[record["kind"]] = {
            "result": record["result"],
            "date": record["date"],
        }
        changed += 1
    path.write_text(dump_results(results), encoding="utf-8")
    return changed
