from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import matrix_tools  # noqa: E402


def test_readme_table_is_generated_from_the_matrix() -> None:
    table = matrix_tools.render_table(matrix_tools.load(ROOT / "compat_matrix.yaml"))
    assert table in (ROOT / "README.md").read_text(encoding="utf-8")
    assert table.count("\n") == 36 + 1


def test_record_results_round_trips(tmp_path: Path) -> None:
    matrix = tmp_path / "compat_matrix.yaml"
    shutil.copy(ROOT / "compat_matrix.yaml", matrix)
    results = tmp_path / "results"
    results.mkdir()
    record = {"kind": "e2e", "version": "0.20.2", "result": "pass", "date": "2026-11-21"}
    (results / "e2e-0.20.2.json").write_text(json.dumps(record))
    assert matrix_tools.record_results(matrix, results) == 1
    loaded = matrix_tools.load(matrix)
    release = loaded.release("0.20.2")
    assert release is not None and release.status["e2e"] == {"result": "pass", "date": "2026-11-21"}
    assert loaded.ci_versions == matrix_tools.load(ROOT / "compat_matrix.yaml").ci_versions
    assert matrix.read_text().startswith("# The single source of truth")


def test_cpu_torch_overrides_pin_the_matching_companions() -> None:
    assert matrix_tools.cpu_torch_overrides("2.10.0") == [
        "torch==2.10.0",
        "torchvision==0.25.0",
        "torchaudio==2.10.0",
    ]
    assert matrix_tools.cpu_torch_overrides("2.13.0") == ["torch==2.13.0", "torchvision==0.28.0"]
