"""What tests/e2e's conftest and test modules share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

API_KEY = "e2e-key"
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", Path.cwd() / "artifacts" / "e2e"))
"""Where the server logs go (`nox -s e2e-<X>` sets E2E_ARTIFACTS; nox runs from the checkout)."""

MESSAGES = [{"role": "user", "content": "Hello world, how are you today?"}]


def post(url: str, **kwargs: Any) -> httpx.Response:
    """A CPU engine on 2 shared cores can take seconds per request: httpx's 5 s default is too short."""
    return httpx.post(url, timeout=120, **kwargs)
