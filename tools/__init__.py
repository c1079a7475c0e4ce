"""The checkout's maintenance tools, one module per job (CONTRIBUTING.md lists them).

Run from the checkout's root as `python -m tools.NAME ...`: Python then puts the current directory first
on `sys.path`, so `tools` and the checkout's `vllm_tokens_patch` import with nothing installed. The
noxfile and the unit tests import this package by its file location instead (importlib's recipe), so
nothing edits `sys.path`. Importing the package itself imports nothing beyond `pathlib`.
"""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
"""The checkout's root."""
