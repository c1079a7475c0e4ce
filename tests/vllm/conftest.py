"""Fixtures: vLLM's real app (this session's vLLM release) with a fake engine, one event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_tokens_patch_testbed.harness import VllmApp, build_vllm_app

# Takes PRISTINE on import: before any app is built (vLLM loads the plugin then).
from vllm_tokens_patch_testbed.vllm_suite import API_KEY, MAX_MODEL_LEN, MODES, LoggerRecords

from vllm_tokens_patch import settings
from vllm_tokens_patch.tiny_model import build_tiny_model


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


def _served_with(build: Any, **environ: str) -> VllmApp:
    """`served`'s command line with these settings in the environment (read when the route mounts)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in environ.items():
            env.setenv(name, value)
        settings.current.cache_clear()
        app = build("--api-key", API_KEY, "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    settings.current.cache_clear()
    app.client.headers["Authorization"] = f"Bearer {API_KEY}"
    return app


@pytest.fixture(scope="session")
def stocked(build: Any) -> VllmApp:
    """`served`'s command line with `VLLM_TOKENS_PATCH_STOCK_ROUTE=1` (the token fields on vLLM's route)."""
    return _served_with(build, **{settings.STOCK_ROUTE: "1"})


@pytest.fixture(scope="session")
def remembering(build: Any) -> VllmApp:
    """`served`'s command line with `VLLM_TOKENS_PATCH_MEMORY=local` (the conversation memory)."""
    return _served_with(build, **{settings.MEMORY: "local"})


@pytest.fixture(scope="session")
def forgetful(build: Any) -> VllmApp:
    """The conversation memory with entries evicted a second after their last use."""
    return _served_with(build, **{settings.MEMORY: "local", "VLLM_TOKENS_PATCH_MEMORY_MAX_AGE": "1"})


@pytest.fixture(scope="session")
def reasoning(build: Any) -> VllmApp:
    """`vllm serve MODEL --reasoning-parser deepseek_r1`."""
    return build("--reasoning-parser", "deepseek_r1")


@pytest.fixture
def plugin_logs() -> Iterator[LoggerRecords]:
    """What the plugin's logger handles (vLLM's handlers do not propagate to pytest's caplog)."""
    records = LoggerRecords()
    logger = logging.getLogger("vllm.tokens_patch")
    logger.addFilter(records)
    yield records
    logger.removeFilter(records)
