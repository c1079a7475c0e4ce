from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import (
    adapter_coverage,
    check_links,
    doc_ranges,
    matrix_file,
    matrix_table,
    session_results,
    vllm_cpu_env,
)
from vllm_tokens_patch import compat

ROOT = Path(__file__).resolve().parents[2]


def test_matrix_table_is_generated_from_the_matrix() -> None:
    table = matrix_table.render_table(matrix_file.load(ROOT / "compat_matrix.yaml"))
    assert table in (ROOT / matrix_table.TABLE_DOC).read_text(encoding="utf-8")
    assert table.count("\n") == len(matrix_file.load(ROOT / "compat_matrix.yaml").releases) + 1


def test_the_table_sorts_pre_releases_by_pep_440() -> None:
    text = (ROOT / "compat_matrix.yaml").read_text(encoding="utf-8")
    extra = "".join(
        f'  - version: "{v}"\n    adapter: "render_chat_request_v0_27"\n    python: "3.12"\n'
        for v in ["99.0.0", "99.0.0rc1", "0.9.2"]
    )
    matrix = compat.parse_matrix(text.replace("releases:\n", "releases:\n" + extra))
    versions = [
        row.split(" | ")[0].removeprefix("| ") for row in matrix_table.render_table(matrix).splitlines()[2:]
    ]
    newest = matrix_file.load(ROOT / "compat_matrix.yaml").newest_supported.version
    assert versions[:2] == ["0.9.2", "0.10.2"] and versions[-3:] == [newest, "99.0.0rc1", "99.0.0"]


# --- recorded results: only this run's, pass and fail alike ---------------------------------------------


def result(results: Path, version: str, outcome: str, run: str | None, kind: str = "vllm") -> None:
    record = {"kind": kind, "version": version, "result": outcome, "date": "2026-12-02"}
    session_results.write_result(results, record if run is None else {**record, "run": run})


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    path = tmp_path / "compat_matrix.yaml"
    shutil.copy(ROOT / "compat_matrix.yaml", path)
    shutil.copy(ROOT / "compat_results.yaml", tmp_path / "compat_results.yaml")
    return path


def status(matrix: Path, version: str, kind: str = "vllm") -> dict[str, str] | None:
    release = matrix_file.load(matrix).release(version)
    assert release is not None
    return release.status.get(kind)


def test_record_takes_only_the_named_run_pass_and_fail_alike(tmp_path: Path, matrix: Path) -> None:
    results = tmp_path / "results"
    result(results, "0.20.2", "pass", "run-old")  # a stale file of an earlier invocation
    result(results, "0.21.0", "fail", None)  # written before results carried a run id
    result(results, "0.33.0", "fail", "run-now")
    result(results, "0.10.2", "pass", "run-now", kind="e2e")
    before = {v: status(matrix, v) for v in ["0.20.2", "0.21.0"]}
    hand_kept = matrix.read_text()
    assert session_results.record_results(matrix, results, "run-now") == 2
    assert matrix.read_text() == hand_kept  # only compat_results.yaml is written
    assert status(matrix, "0.33.0") == {"result": "fail", "date": "2026-12-02"}
    assert status(matrix, "0.10.2", "e2e") == {"result": "pass", "date": "2026-12-02"}
    assert {v: status(matrix, v) for v in ["0.20.2", "0.21.0"]} == before  # not this run: untouched
    written = matrix.with_name("compat_results.yaml").read_text()
    assert written.startswith(matrix_file.RESULTS_HEADER)
    assert matrix_file.dump_results(yaml.safe_load(written)) == written  # stays canonical


def test_record_starts_the_results_file_and_skips_unlisted_releases(tmp_path: Path, matrix: Path) -> None:
    matrix.with_name("compat_results.yaml").unlink()
    results = tmp_path / "results"
    result(results, "0.33.0", "pass", "run-now")
    result(results, "99.0.0", "pass", "run-now")  # not a row of the matrix
    assert session_results.record_results(matrix, results, "run-now") == 1
    assert yaml.safe_load(matrix.with_name("compat_results.yaml").read_text()) == {
        "0.33.0": {"vllm": {"result": "pass", "date": "2026-12-02"}}
    }


@pytest.mark.parametrize("key", ["status", "fast_path"])
def test_a_row_with_a_generated_field_fails_naming_what_to_do(matrix: Path, key: str) -> None:
    """E.g. a merge that brings back the old layout's `status:` blocks."""
    text = matrix.read_text().replace("cpu_wheel: true\n", f"cpu_wheel: true\n    {key}: {{}}\n", 1)
    matrix.write_text(text)
    with pytest.raises(ValueError, match=f"delete `{key}`"):
        matrix_file.load(matrix)


def test_record_of_a_named_earlier_run_or_all(tmp_path: Path, matrix: Path) -> None:
    results = tmp_path / "results"
    result(results, "0.20.2", "fail", "run-old")
    result(results, "0.21.0", "fail", None)
    assert session_results.record_results(matrix, results, "run-missing") == 0
    assert [r["version"] for r in session_results.select_results(results, "run-old")] == ["0.20.2"]
    assert session_results.record_results(matrix, results, None) == 2  # --all: every file
    assert status(matrix, "0.20.2") == status(matrix, "0.21.0") == {"result": "fail", "date": "2026-12-02"}


def test_a_new_result_replaces_the_file_of_an_earlier_run(tmp_path: Path) -> None:
    result(tmp_path, "0.33.0", "pass", "run-old")
    result(tmp_path, "0.33.0", "fail", "run-new")
    assert session_results.select_results(tmp_path, None) == [
        {"kind": "vllm", "version": "0.33.0", "result": "fail", "date": "2026-12-02", "run": "run-new"}
    ]


# --- the pins table -----------------------------------------------------------------------------------------


def test_the_repo_files_are_in_the_canonical_layout() -> None:
    text = (ROOT / "compat_matrix.yaml").read_text(encoding="utf-8")
    assert matrix_file.dump(yaml.safe_load(text), matrix_file.header(text)) == text
    results = (ROOT / "compat_results.yaml").read_text(encoding="utf-8")
    assert matrix_file.dump_results(yaml.safe_load(results)) == results


def test_every_pin_and_override_says_why() -> None:
    data = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text(encoding="utf-8"))
    for table in ("pins", "overrides"):
        for spec, entry in (data.get(table) or {}).items():
            assert set(entry) == {"requirements", "why"} and entry["why"].strip(), (table, spec)


def test_dump_refuses_pins_on_a_row() -> None:
    data = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text(encoding="utf-8"))
    data["releases"][0]["pins"] = ["transformers<5"]
    with pytest.raises(ValueError, match="top-level `pins` table"):
        matrix_file.dump(data, "# header\n")


def test_cpu_torch_overrides_pin_the_matching_companions() -> None:
    assert vllm_cpu_env.cpu_torch_overrides("2.10.0") == [
        "torch==2.10.0",
        "torchvision==0.25.0",
        "torchaudio==2.10.0",
    ]
    assert vllm_cpu_env.cpu_torch_overrides("2.13.0") == ["torch==2.13.0", "torchvision==0.28.0"]


@pytest.mark.parametrize("pyyaml", ["installed", "missing"])
def test_vllm_cpu_env_without_uv_says_how_to_get_it(tmp_path: Path, pyyaml: str) -> None:
    """`python -m tools.vllm_cpu_env VENV` from the checkout's root, with no uv on PATH: one line saying how
    to get it and a non-zero exit, not a traceback (with PyYAML; without it, the tool would re-run itself
    under `uv run`)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    if pyyaml == "installed":
        command = [sys.executable, "-m", "tools.vllm_cpu_env", str(tmp_path / "venv")]
    else:  # what `-m` does, with PyYAML made unimportable first
        block = "import runpy, sys; sys.modules['yaml'] = None; "
        run = "runpy.run_module('tools.vllm_cpu_env', run_name='__main__', alter_sys=True)"
        command = [sys.executable, "-c", block + run, str(tmp_path / "venv")]
    env = {**os.environ, "PATH": str(empty)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr, done.stdout) == (1, vllm_cpu_env.UV_MISSING + "\n", "")
    assert "get it with: python3 -m pip install uv" in vllm_cpu_env.UV_MISSING
    assert not (tmp_path / "venv").exists()


# --- adapter ranges in the docs ----------------------------------------------------------------------------

NEWEST = matrix_file.load(ROOT / "compat_matrix.yaml").newest_supported.version
"""The newest row: the last release of the newest adapter (so a new row needs no edit here)."""
DOC_FILES = [
    "compat_matrix.yaml",
    "README.md",
    "CHANGELOG.md",
    *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of what check-docs reads."""
    for name in DOC_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "vllm_tokens_patch" / "adapters", tmp_path / "vllm_tokens_patch" / "adapters")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_docs_state_the_matrix_adapter_ranges() -> None:
    assert doc_ranges.check_docs(ROOT) == []
    assert doc_ranges.adapter_ranges(matrix_file.load(ROOT / "compat_matrix.yaml")) == {
        "preprocess_chat_v0_10": ("0.10.2", "0.12.0"),
        "preprocess_chat_v0_13": ("0.13.0", "0.14.1"),
        "render_chat_request_v0_15": ("0.15.0", "0.15.1"),
        "render_chat_request_v0_16": ("0.16.0", "0.17.0"),
        "render_chat_request_v0_17_1": ("0.17.1", "0.26.0"),
        "render_chat_request_v0_27": ("0.27.0", NEWEST),
    }


def test_a_new_release_makes_every_stale_statement_fail(tree: Path) -> None:
    matrix = tree / "compat_matrix.yaml"
    data = yaml.safe_load(matrix.read_text(encoding="utf-8"))
    data["releases"].append({"version": "99.0.0", "adapter": "render_chat_request_v0_27", "python": "3.12"})
    matrix.write_text(matrix_file.dump(data, matrix_file.header(matrix.read_text())), encoding="utf-8")
    problems = doc_ranges.check_docs(tree)
    assert all(f"{NEWEST}, the matrix says 0.27.0 - 99.0.0" in p for p in problems), problems
    assert [p.split(":")[0] for p in problems] == [
        "vllm_tokens_patch/adapters/render_chat_request_v0_27.py",
        "docs/architecture.md",
        "docs/reference.md",  # the adapters table of "How it works"
        "CHANGELOG.md (current section)",  # the fast-path entry
        "CHANGELOG.md (current section)",  # the list of adapters
    ]


def test_loose_range_statements_fail(tree: Path) -> None:
    edit(tree / "docs/architecture.md", "| 0.13.0-0.14.1: the same", "| 0.13-0.14: the same")
    edit(tree / "CHANGELOG.md", "`render_chat_request_v0_15` (0.15.0-0.15.1)", "`render_chat_request_v0_15`")
    edit(
        tree / "CHANGELOG.md",
        "- Adapters `preprocess_chat_v0_10`",
        "- On 0.15.0-0.15.1: `preprocess_chat_v0_10`",
    )
    edit(
        tree / "docs/reference.md",
        "| 0.15.0 - 0.15.1 | `render_chat_request_v0_15` |",
        "| 0.15.x | `render_chat_request_v0_15` |",
    )
    problems = doc_ranges.check_docs(tree)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "`preprocess_chat_v0_13` 0.13-0.14: write full X.Y.Z versions",
        "`render_chat_request_v0_15`: the row states no range A - B",
        "range 0.15.0-0.15.1 next to an adapter name, not as `name` (A-B)",
    ]


def test_a_docstring_without_its_range_fails(tree: Path) -> None:
    adapters = tree / "vllm_tokens_patch" / "adapters"
    edit(adapters / "render_chat_request_v0_15.py", '"""vLLM 0.15.0 - 0.15.1:', '"""vLLM 0.15:')
    (adapters / "render_chat_request_v0_99.py").write_text('"""vLLM 0.99.0 - 0.99.1: x."""\n')
    assert [p.split(": ", 1)[1] for p in doc_ranges.check_docs(tree)] == [
        "the docstring does not start with 'vLLM A - B'",
        "no release in the matrix uses this adapter",
    ]


def test_older_changelog_sections_and_the_generated_table_are_not_checked(tree: Path) -> None:
    changelog = tree / "CHANGELOG.md"
    changelog.write_text(
        changelog.read_text() + "\n## 0.0.9\n\n- `render_chat_request_v0_27` (0.27.0-0.28.0).\n"
    )
    old = f"| {NEWEST} | `render_chat_request_v0_27` |"
    edit(tree / matrix_table.TABLE_DOC, old, f"| {NEWEST} - 99.0.0 | `render_chat_request_v0_27` |")
    assert doc_ranges.check_docs(tree) == []
    changelog.write_text(
        "# Changelog\n\n## 0.1.1 (unreleased)\n\n- `render_chat_request_v0_27` (0.27.0-0.28.0).\n"
    )
    assert doc_ranges.check_docs(tree) == [
        "CHANGELOG.md (current section):5: `render_chat_request_v0_27` 0.27.0-0.28.0, "
        f"the matrix says 0.27.0 - {NEWEST}"
    ]


# --- coverage: every adapter's own code ran in a vllm-<X> session ------------------------------------------


def report(lines_by_adapter: dict[str, dict[str, list[str]]]) -> dict[str, object]:
    return {
        "files": {f"vllm_tokens_patch/adapters/{n}.py": {"contexts": c} for n, c in lines_by_adapter.items()}
    }


def code_line(name: str) -> str:
    """A line of adapter `name`'s own code: in a method body, else (a declarative adapter) `ADAPTER = ...`."""
    text = (ROOT / "vllm_tokens_patch" / "adapters" / f"{name}.py").read_text(encoding="utf-8")
    body = adapter_coverage._function_body_lines(text)
    lines = text.splitlines()
    return str(
        min(body) if body else next(n for n, line in enumerate(lines, 1) if line.startswith("ADAPTER ="))
    )


def test_an_adapter_counts_as_executed_only_if_its_code_ran_on_a_release_of_its_own() -> None:
    matrix = matrix_file.load(ROOT / "compat_matrix.yaml")
    own = {"preprocess_chat_v0_10": "vllm-0.10.2", "preprocess_chat_v0_13": "vllm-0.14.1"}
    own |= {"render_chat_request_v0_15": "vllm-0.15.1", "render_chat_request_v0_16": "vllm-0.17.0"}
    own |= {"render_chat_request_v0_17_1": "vllm-0.25.1", "render_chat_request_v0_27": f"vllm-{NEWEST}"}
    ran = {name: {code_line(name): [context], "1": ["unit"]} for name, context in own.items()}
    assert adapter_coverage.unexecuted_adapters(report(ran), ROOT, matrix) == []
    ran["preprocess_chat_v0_13"] = {"1": ["vllm-0.14.1"], code_line("preprocess_chat_v0_13"): ["unit"]}
    ran["render_chat_request_v0_15"] = {code_line("render_chat_request_v0_15"): ["vllm-0.17.0"]}
    del ran["render_chat_request_v0_16"]
    assert adapter_coverage.unexecuted_adapters(report(ran), ROOT, matrix) == [
        "vllm_tokens_patch/adapters/preprocess_chat_v0_13.py",  # imported on its release, ran in unit only
        "vllm_tokens_patch/adapters/render_chat_request_v0_15.py",  # ran as v0_16's base only
        "vllm_tokens_patch/adapters/render_chat_request_v0_16.py",  # not measured at all
    ]


# --- links between README and docs ---------------------------------------------------------------------


def test_links_of_readme_and_docs_reach_their_files_and_headings(tmp_path: Path) -> None:
    assert check_links.problems(ROOT) == []
    (tmp_path / "docs").mkdir()
    (tmp_path / "CONTRIBUTING.md").write_text(
        "[ok](docs/page.md#settings-environment-read-by-every-vllm-process)\n"
    )
    (tmp_path / "CHANGELOG.md").write_text("[web](https://example.com/x) `[not](a link)`\n")
    (tmp_path / "README.md").write_text(
        "[gone](docs/gone.md) [moved](docs/page.md#tests)\n```\n# Tests\n```\n"
    )
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Settings (environment, read by every vLLM process)\n\n[back](../README.md)\n"
    )
    assert check_links.problems(tmp_path) == [
        "README.md: link to docs/gone.md: no such file",
        "README.md: link to docs/page.md#tests: no such heading in docs/page.md",
    ]
    assert check_links.anchor("NeMo-Gym / NeMo-RL") == "nemo-gym--nemo-rl"
