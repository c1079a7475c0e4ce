"""What tests/vllm's conftest and test modules share: the suite's constants, vLLM's functions as they
were before any plugin ran, and log recorders. Import it before vLLM loads the plugin (the conftest
does, first)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import vllm

from vllm_tokens_patch import adapters, compat
from vllm_tokens_patch.settings import Settings
from vllm_tokens_patch_testbed.harness import Script, VllmApp, app_functions, code_objects, wrappers

API_KEY = "test-key"
MAX_MODEL_LEN = 256

app_functions()  # imports the modules vLLM builds its app from, before vLLM loads the plugin (in `build`)
PRISTINE = code_objects()
"""Every vLLM, FastAPI and Starlette function and class loaded so far, as they were before any plugin ran:
what `unpatch` must give back (taken here, not from the plugin's own records)."""
PRISTINE_WRAPPERS = wrappers()
"""Wrappers already present then (none: else `PRISTINE` was taken too late)."""


MODES = {"default": {}, "fast": {"vllm_tokens_patch_verify": False}}
"""Every parity test runs in both modes: compared with the render (default) and the fast path (no
comparison; vLLM skips the render where this release has a native branch, see `test_fast_path_*`)."""


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


class LoggerRecords(logging.Filter):
    """Records what a logger handles. A filter, not a handler: vLLM re-applies its logging config each time
    it builds an engine config, and that clears the handlers (not the filters) of every `vllm.*` logger."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return True

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


# --- requests the test modules share ----------------------------------------------------------------

ROUTE = Settings.route_path
STOCK = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hello world, how are you today?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def body(app: VllmApp, messages: list[dict[str, Any]] = MESSAGES, **fields: Any) -> dict[str, Any]:
    return {"model": app.args.model, "messages": messages, "temperature": 0, **fields}


def post(run: Any, app: VllmApp, path: str, payload: dict[str, Any], **kwargs: Any) -> Any:
    return run(app.client.post(path, json=payload, **kwargs))


ADAPTER = adapters.load(str(compat.choose(vllm.__version__).adapter))
"""The adapter this release runs (the suite checks it against the matrix)."""


def drifted(ids: list[int]) -> list[int]:
    """Same length, different last id: what an RL client sends when the re-rendered history drifted."""
    return [*ids[:-1], ids[-1] - 1 if ids[-1] > 0 else 1]


TOO_LONG_MESSAGES = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 40}]
"""Renders past `MAX_MODEL_LEN`."""


FIRST_TURN = [{"role": "user", "content": "Hello world, how are you today?"}]
ANSWER = {"role": "assistant", "content": "Fine, thanks."}


def rendered(run: Any, app: VllmApp, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
    """What this vLLM's own chat route feeds the engine for `messages` (with the tools the splice requests
    carry): how a release passes tool calls to the template differs, even between its own routes (0.15-0.18
    render them differently for `/tokenize`), so the splice is held to the stock chat route's render."""
    payload = body(app, messages, tools=TOOLS, max_tokens=1, add_generation_prompt=generation_prompt)
    response = post(run, app, STOCK, payload)
    assert response.status_code == 200, response.text
    return list(app.engine.prompts[-1]["prompt_token_ids"])


async def hang_up_while_prefilling(app: VllmApp, path: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Send `payload` as uvicorn hands a request to the app (ASGI 2.3), hang up once the request sits in
    the engine waiting for its first output (`Script.hold`), and return what the app sent. Fails if the
    app is still waiting 5 s later: the engine would have prefilled for a client that is gone."""
    hold, gone = asyncio.Event(), asyncio.Event()
    app.engine.script = Script(text="Hello there", hold=hold)
    pending = [{"type": "http.request", "body": json.dumps(payload).encode(), "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"test"), (b"content-type", b"application/json")]
    if "Authorization" in app.client.headers:  # `--api-key`
        headers.append((b"authorization", app.client.headers["Authorization"].encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    known = len(app.engine.prompts)
    serving = asyncio.ensure_future(app.app(scope, receive, send))
    try:
        for _ in range(500):
            if len(app.engine.prompts) > known or serving.done():
                break
            await asyncio.sleep(0.01)
        assert len(app.engine.prompts) > known, f"the request never reached the engine: {sent}"
        gone.set()
        await asyncio.wait_for(serving, 5)
    finally:
        hold.set()
        app.engine.script = Script(text="Hello there")
    return sent
