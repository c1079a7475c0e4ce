"""`python -m vllm_tokens_patch doctor --json` in a fresh interpreter, as a user runs it (tests/vllm, e2e)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any


def doctor_report(timeout: float = 300, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The doctor's JSON report (`env`: settings added to this environment); it must exit 0 (vLLM's own log
    lines may precede the JSON)."""
    done = subprocess.run(
        [sys.executable, "-m", "vllm_tokens_patch", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=tempfile.gettempdir(),  # not the checkout: `-m` would import the package from the current dir
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    return report
