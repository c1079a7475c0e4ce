"""Test sessions, generated from compat_matrix.yaml (the single source of truth).

nox -s unit                 version-free logic, no vLLM installed (seconds)
nox -s lint                 ruff
nox -s vllm-0.33.0          the behaviour suite on vLLM 0.33.0's real app with a fake engine
nox -t ci                   what .ci/run runs: unit, lint and the representative vllm-<X> set
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
    session.install(".", *UNIT_DEPS)
    session.run(*PYTEST, "tests/unit", *session.posargs)


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    session.install("ruff", "PyYAML", "packaging")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The README table must be what compat_matrix.yaml says (`nox -s matrix-table` regenerates it).
    session.run("python", "tools/matrix_tools.py", "check-table")


def _vllm_session(release: matrix_tools.Release) -> None:
    tags = ["matrix"] + (["ci"] if release.version in MATRIX.ci_versions else [])

    @nox.session(name=f"vllm-{release.version}", python=release.python, tags=tags)
    def session_fn(session: nox.Session) -> None:
        env = {
            "VLLM_CACHE_ROOT": str(Path(session.virtualenv.location) / "vllm-cache"),
            "UV_COMPILE_BYTECODE": "1",
            "VLLM_TARGET_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        session.env.update(env)
        session.install(f"vllm=={release.version}", "--override", str(OVERRIDES))
        # The plugin as a user gets it: a built wheel loaded through its entry point.
        session.install(".", "./tests/support/cpu_platform", "pytest", "httpx")
        try:
            session.run(*PYTEST, "tests/vllm", *session.posargs)
        except nox.command.CommandFailed:
            _write_result("vllm", release.version, "fail", session)
            raise
        if not session.posargs:
            _write_result("vllm", release.version, "pass", session)

    del session_fn


for _release in MATRIX.supported:
    _vllm_session(_release)


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
