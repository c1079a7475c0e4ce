"""What a `vllm serve` received: an ASGI middleware for vLLM's own `--middleware` option (no change to vLLM).

    vllm serve MODEL --middleware vllm_tokens_patch_testbed.header_log.HeaderLog
    VLLM_TOKENS_PATCH_TESTBED_HEADER_LOG=/path/requests.jsonl

appends one JSON line per HTTP request: method, path, the request headers as the server got them, and the
status it answered. vLLM adds `--middleware` classes after its own (`--api-key`, request id), so this one
is the outermost: it also sees the requests that vLLM's authentication refuses with 401. The router
e2e reads these files to tell which client headers a router forwards and which replica served a request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_ENV = "VLLM_TOKENS_PATCH_TESTBED_HEADER_LOG"
MIDDLEWARE = "vllm_tokens_patch_testbed.header_log.HeaderLog"
"""The `--middleware` argument."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class HeaderLog:
    """Pure ASGI middleware (streams pass through untouched): logs each HTTP request when its response
    starts. Health probes (`GET /health`, which routers send every few seconds) are not logged."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.path = Path(os.environ[LOG_ENV])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        entry: dict[str, Any] = {"method": scope["method"], "path": scope["path"], "headers": headers}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                with self.path.open("a", encoding="utf-8") as log:  # one short line: atomic append
                    log.write(json.dumps(entry) + "\n")
            await send(message)

        await self.app(scope, receive, record_status)


@dataclass(frozen=True)
class Received:
    """One logged request."""

    method: str
    path: str
    headers: dict[str, str]
    status: int


def read_log(path: Path) -> list[Received]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        entries.append(Received(raw["method"], raw["path"], raw["headers"], raw.get("status", 0)))
    return entries
