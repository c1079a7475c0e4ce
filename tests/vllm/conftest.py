"""Fixtures: vLLM's real app (this session's vLLM release) with a fake engine, one event loop."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "support"), str(HERE.parents[1] / "testbed")]

from harness import VllmApp, app_functions, build_vllm_app, code_objects, wrappers  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

API_KEY = "test-key"
MAX_MODEL_LEN = 256

app_functions()  # imports the modules vLLM builds its app from, before vLLM loads the plugin (in `build`)
PRISTINE = code_objects()
"""Every vLLM, FastAPI and Starlette function and class loaded so far, as they were before any plugin ran:
what `unpatch` must give back (taken here, not from the plugin's own records)."""
PRISTINE_WRAPPERS = wrappers()
"""Wrappers already present then (none: else `PRISTINE` was taken too late)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "unpatches: calls `unpatch()` (or mounts a broken plugin), which leaves every app built before it "
        "answering 501 on the token route; such tests run after all others",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `unpatches` last (a stable sort: every other order stays), so that no test that uses
    the session's `served` app runs after one of them, whichever module it is in."""
    items.sort(key=lambda item: item.get_closest_marker("unpatches") is not None)


MODES = {"default": {}, "fast": {"vllm_tokens_patch_verify": False}}
"""Every parity test runs in both modes: compared with the render (default) and the fast path (no
comparison; vLLM skips the render where this release has a native branch, see `test_fast_path_*`)."""


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(MODES[request.param])


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="session")
def run(loop: asyncio.AbstractEventLoop) -> Any:
    return loop.run_until_complete


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", with_weights=False)


@pytest.fixture(scope="session")
def build(run: Any, model_dir: Path) -> Iterator[Any]:
    apps: list[VllmApp] = []

    def build_app(*extra_args: str) -> VllmApp:
        app = run(build_vllm_app(model_dir, extra_args, max_model_len=MAX_MODEL_LEN))
        apps.append(app)
        return app

    yield build_app
    for app in apps:
        run(app.client.aclose())


@pytest.fixture(scope="session")
def served(build: Any) -> VllmApp:
    """`vllm serve MODEL --api-key ... --enable-auto-tool-choice --tool-call-parser hermes`."""
    app = build("--api-key", API_KEY, "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    app.client.headers["Authorization"] = f"Bearer {API_KEY}"
    return app


@pytest.fixture(scope="session")
def reasoning(build: Any) -> VllmApp:
    """`vllm serve MODEL --reasoning-parser deepseek_r1`."""
    return build("--reasoning-parser", "deepseek_r1")


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


@pytest.fixture
def plugin_logs() -> Iterator[LoggerRecords]:
    """What the plugin's logger handles (vLLM's handlers do not propagate to pytest's caplog)."""
    records = LoggerRecords()
    logger = logging.getLogger("vllm.tokens_patch")
    logger.addFilter(records)
    yield records
    logger.removeFilter(records)
