"""The behaviour suite: identical on every vLLM release, run against vLLM's real app.

Each test talks HTTP (in-process ASGI) to the app vLLM builds from a parsed `vllm serve` command line;
the plugin was loaded by vLLM through its entry point while the engine args were built.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import vllm
from vllm_tokens_patch_testbed import harness
from vllm_tokens_patch_testbed.doctor_cli import doctor_report
from vllm_tokens_patch_testbed.harness import Script, VllmApp, normalize, parse_sse
from vllm_tokens_patch_testbed.vllm_errors import assert_vllm_error, error_info
from vllm_tokens_patch_testbed.vllm_suite import (
    ADAPTER,
    ANSWER,
    API_KEY,
    FIRST_TURN,
    MAX_MODEL_LEN,
    MESSAGES,
    MODES,
    PRISTINE,
    PRISTINE_WRAPPERS,
    ROUTE,
    STOCK,
    TOO_LONG_MESSAGES,
    TOOLS,
    LoggerRecords,
    Records,
    body,
    drifted,
    post,
    rendered,
)

import vllm_tokens_patch
from vllm_tokens_patch import compat, plugin
from vllm_tokens_patch.adapters import Location


def matrix_row() -> compat.Release:
    release = compat.load_matrix().release(vllm.__version__)
    assert release is not None, vllm.__version__
    return release


def without_volatile(prompt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prompt.items() if k not in {"arrival_time"}}


# --- loading ------------------------------------------------------------------------------------------


def test_plugin_is_the_installed_wheel_loaded_by_vllm(served: VllmApp) -> None:
    assert "site-packages" in vllm_tokens_patch.__file__, vllm_tokens_patch.__file__
    state = plugin.status()
    assert state["registered"] and state["failure"] is None
    assert state["adapter"] == compat.choose(vllm.__version__).adapter
    assert compat.choose(vllm.__version__).tested


def route_paths(routes: list[Any]) -> list[str]:
    """Paths of every route, descending into mounted routers."""
    paths = []
    for route in routes:
        if getattr(route, "path", None):
            paths.append(route.path)
        paths += route_paths(getattr(route, "routes", None) or [])
    return paths


def test_route_sits_next_to_the_stock_route(run: Any, served: VllmApp) -> None:
    assert route_paths(served.app.router.routes).count(ROUTE) == 1
    assert post(run, served, STOCK, body(served)).status_code == 200


# --- ids ----------------------------------------------------------------------------------------------


def test_engine_receives_exactly_tokens(run: Any, served: VllmApp) -> None:
    tokens = drifted(served.chat_ids(MESSAGES))
    response = post(run, served, ROUTE, body(served, tokens=tokens, return_token_ids=True))
    assert response.status_code == 200, response.text
    prompt = served.engine.prompts[-1]
    assert prompt["prompt_token_ids"] == tokens
    assert "prompt" not in prompt or prompt["prompt"] is None, "rendered text must not describe other ids"
    assert response.json()["prompt_token_ids"] == tokens
    assert response.json()["choices"][0]["message"]["content"] == "Hello there"


def test_stock_route_is_untouched_even_with_a_stray_tokens_field(run: Any, served: VllmApp) -> None:
    rendered = served.chat_ids(MESSAGES)
    plain = post(run, served, STOCK, body(served, return_token_ids=True))
    plain_prompt = without_volatile(served.engine.prompts[-1])
    stray = post(run, served, STOCK, body(served, tokens=[1, 2, 3], return_token_ids=True))
    stray_prompt = without_volatile(served.engine.prompts[-1])
    assert plain.status_code == stray.status_code == 200
    assert plain_prompt["prompt_token_ids"] == rendered
    assert stray_prompt == plain_prompt
    assert "x-vllm-tokens-verification" not in stray.headers


def test_tokens_is_not_reported_as_an_ignored_field(run: Any, served: VllmApp) -> None:
    """vLLM logs unknown request fields ("... ignored"); `tokens` is a field of our request class."""
    records = Records()
    vllm_logger = logging.getLogger("vllm")
    vllm_logger.addHandler(records)
    level = vllm_logger.level
    vllm_logger.setLevel(logging.DEBUG)
    try:
        ours = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES)))
        ignored_ours = [r.getMessage() for r in records.records if "ignored" in r.getMessage()]
        stray = post(run, served, STOCK, body(served, tokens=[1, 2], not_a_field=1))
    finally:
        vllm_logger.removeHandler(records)
        vllm_logger.setLevel(level)
    assert ours.status_code == stray.status_code == 200
    assert not [m for m in ignored_ours if "tokens" in m], ignored_ours
    # the same check sees vLLM's report for the stock route: it would notice ours
    assert any("not_a_field" in r.getMessage() for r in records.records), [
        r.getMessage() for r in records.records
    ]


def test_match_logs_nothing_and_says_match(run: Any, served: VllmApp, plugin_logs: LoggerRecords) -> None:
    response = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES)))
    assert response.status_code == 200, response.text
    assert response.headers["x-vllm-tokens-verification"] == "match"
    assert "x-vllm-tokens-first-mismatch" not in response.headers
    assert plugin_logs.messages(logging.WARNING) == []


def test_mismatch_logs_one_warning_and_says_where(
    run: Any, served: VllmApp, plugin_logs: LoggerRecords
) -> None:
    rendered = served.chat_ids(MESSAGES)
    response = post(run, served, ROUTE, body(served, tokens=drifted(rendered), request_id="drift-1"))
    assert response.status_code == 200, response.text
    assert response.headers["x-vllm-tokens-verification"] == "mismatch"
    assert response.headers["x-vllm-tokens-first-mismatch"] == str(len(rendered) - 1)
    warnings = plugin_logs.messages(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "drift-1" in warnings[0] and f"first difference at index {len(rendered) - 1}" in warnings[0]


def test_mismatch_header_on_streams_too(run: Any, served: VllmApp) -> None:
    tokens = drifted(served.chat_ids(MESSAGES))
    response = post(run, served, ROUTE, body(served, tokens=tokens, stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vllm-tokens-verification"] == "mismatch"


# --- same answers as the stock route ------------------------------------------------------------------


@pytest.mark.parametrize("return_token_ids", [False, True])
def test_stream_chunks_equal_the_stock_route(
    run: Any, served: VllmApp, return_token_ids: bool, mode: dict[str, Any]
) -> None:
    served.engine.script = Script(text="The quick brown fox jumps")
    extra = {"stream": True, "stream_options": {"include_usage": True}, "return_token_ids": return_token_ids}
    stock = post(run, served, STOCK, body(served, **extra))
    ours = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), **extra, **mode))
    served.engine.script = Script(text="Hello there")
    assert stock.status_code == ours.status_code == 200
    stock_events, our_events = parse_sse(stock.text), parse_sse(ours.text)
    assert len(our_events) > 3 and our_events[-1] == "[DONE]"
    assert normalize(our_events) == normalize(stock_events)


def test_json_response_equals_the_stock_route(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    stock = post(run, served, STOCK, body(served, return_token_ids=True, logprobs=False))
    tokens = served.chat_ids(MESSAGES)
    ours = post(run, served, ROUTE, body(served, tokens=tokens, return_token_ids=True, **mode))
    assert stock.status_code == ours.status_code == 200
    assert normalize(ours.json()) == normalize(stock.json())


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_parsed_on_the_token_route(
    run: Any, served: VllmApp, stream: bool, mode: dict[str, Any]
) -> None:
    served.engine.script = Script(
        text='<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    extra = {"tools": TOOLS, "tool_choice": "auto", "stream": stream}
    stock = post(run, served, STOCK, body(served, **extra))
    ours = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), **extra, **mode))
    served.engine.script = Script(text="Hello there")
    assert stock.status_code == ours.status_code == 200, ours.text
    if stream:
        events = [e for e in parse_sse(ours.text) if e != "[DONE]"]
        names = [
            call["function"].get("name")
            for event in events
            for choice in event["choices"]
            for call in (choice["delta"].get("tool_calls") or [])
        ]
        assert "get_weather" in names
        assert normalize(parse_sse(ours.text)) == normalize(parse_sse(stock.text))
    else:
        message = ours.json()["choices"][0]["message"]
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"
        assert normalize(ours.json()) == normalize(stock.json())


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_is_parsed_on_the_token_route(
    run: Any, reasoning: VllmApp, stream: bool, mode: dict[str, Any]
) -> None:
    reasoning.engine.script = Script(text="<think>because it is</think>The answer")
    stock = post(run, reasoning, STOCK, body(reasoning, stream=stream))
    tokens = reasoning.chat_ids(MESSAGES)
    ours = post(run, reasoning, ROUTE, body(reasoning, tokens=tokens, stream=stream, **mode))
    assert stock.status_code == ours.status_code == 200, ours.text
    if stream:
        deltas = [c["delta"] for e in parse_sse(ours.text) if e != "[DONE]" for c in e["choices"]]
        reasoning_text = "".join(d.get("reasoning") or d.get("reasoning_content") or "" for d in deltas)
        assert reasoning_text == "because it is"
        assert "".join(d.get("content") or "" for d in deltas) == "The answer"
        assert normalize(parse_sse(ours.text)) == normalize(parse_sse(stock.text))
    else:
        message = ours.json()["choices"][0]["message"]
        assert message["content"] == "The answer"
        assert "because it is" in str(message.get("reasoning") or message.get("reasoning_content"))
        assert normalize(ours.json()) == normalize(stock.json())


# --- bad input: 400 JSON before any stream (the README's "Errors" table) -------------------------------

VALIDATION, REFUSAL = "validation", "refusal"
"""Every bad input below is a 400 (README "Errors"). A validation error is vLLM's own request-validation
error (the type its handler gives); a refusal is an error vLLM's serving code makes (the type the stock
route's own refusals carry)."""
CONTEXT_LENGTH = "maximum context length"
"""What the README promises a too-long prompt's message says."""


@dataclasses.dataclass(frozen=True)
class Bad:
    kind: str
    fields: dict[str, Any]
    says: str | None = None


BAD_INPUTS = {
    "empty": Bad(VALIDATION, {"tokens": []}),
    "negative": Bad(VALIDATION, {"tokens": [1, -1, 2]}),
    "past-vocabulary": Bad(REFUSAL, {"tokens": [1, 10**6]}),
    "float": Bad(VALIDATION, {"tokens": [1, 2.5]}),
    "string": Bad(VALIDATION, {"tokens": [1, "2"]}),
    "bool": Bad(VALIDATION, {"tokens": [1, True]}),
    "not-a-list": Bad(VALIDATION, {"tokens": 5}),
    "missing": Bad(VALIDATION, {}),
    "longer-than-max-model-len": Bad(REFUSAL, {"tokens": [1] * (MAX_MODEL_LEN + 10)}, CONTEXT_LENGTH),
    "exactly-max-model-len": Bad(REFUSAL, {"tokens": [1] * MAX_MODEL_LEN}, CONTEXT_LENGTH),
    "multimodal": Bad(
        REFUSAL,
        {
            "tokens": [1, 2, 3],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        # refused on every release (images are placed from 0.17.1: tests/vllm/test_images.py)
                        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
                    ],
                }
            ],
        },
    ),
    "kv-prompt-token-ids": Bad(
        REFUSAL, {"tokens": [1, 2, 3], "kv_transfer_params": {"prompt_token_ids": [1, 2, 3]}}
    ),
    "truncate-prompt-tokens": Bad(REFUSAL, {"tokens": [1, 2, 3], "truncate_prompt_tokens": 2}),
}


@pytest.fixture(scope="module")
def stock_errors(run: Any, served: VllmApp) -> dict[str, dict[str, Any]]:
    """This vLLM's own error bodies, asked of its stock chat route on the same app: a request that fails
    validation, and one its render refuses (too long). Both must be vLLM's own `ErrorResponse` (the class
    its validation handler builds), in full."""
    from fastapi.exceptions import RequestValidationError

    invalid = post(run, served, STOCK, {"model": served.args.model, "messages": "not a list"})
    refused = post(run, served, STOCK, body(served, TOO_LONG_MESSAGES))
    assert invalid.status_code == 400, invalid.text
    # its render's length refusal (worded per release: "maximum context length", "the model's context length")
    assert refused.status_code == 400 and "context length" in refused.text, refused.text
    handler = served.app.exception_handlers[RequestValidationError]
    error_response = handler.__globals__["ErrorResponse"]
    errors = {VALIDATION: invalid.json(), REFUSAL: refused.json()}
    for error in errors.values():
        assert error_response.model_validate(error).model_dump(mode="json") == error, error
    return errors


def test_verifiers_token_client_request_shape(run: Any, served: VllmApp) -> None:
    """What verifiers' token client sends on turns after the first (`tools: null`, assistant messages with
    `tool_calls: null, reasoning_content: null`, `max_completion_tokens`), and what it reads. (It also sends
    `logprobs: true`, which the fake engine cannot sample; e2e serves it for real.)"""
    history = [
        *MESSAGES,
        {"role": "assistant", "content": "Fine.", "tool_calls": None, "reasoning_content": None},
        {"role": "user", "content": "Tell me more."},
    ]
    tokens = served.chat_ids(history)
    payload = {
        "model": served.args.model,
        "messages": history,
        "tools": None,
        "tokens": tokens,
        "max_completion_tokens": 8,
        "return_token_ids": True,
        "temperature": 1.0,
    }
    response = post(run, served, ROUTE, payload)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["prompt_token_ids"] == tokens
    choice = answer["choices"][0]
    assert choice["token_ids"] and choice["finish_reason"] in {"stop", "length"}
    too_long = post(run, served, ROUTE, {**payload, "tokens": [1] * (MAX_MODEL_LEN + 1)})
    assert too_long.status_code == 400 and "maximum context length" in too_long.text  # ends a rollout cleanly


def test_prime_rl_teacher_logprob_request_shape(run: Any, served: VllmApp) -> None:
    """prime-rl's teacher-logprob call: an empty user message, `prompt_logprobs`, `max_tokens: 1`."""
    tokens = served.chat_ids(MESSAGES)
    payload = body(served, [{"role": "user", "content": ""}], tokens=tokens, prompt_logprobs=1, max_tokens=1)
    response = post(run, served, ROUTE, payload)
    assert response.status_code == 200, response.text
    assert served.engine.prompts[-1]["prompt_token_ids"] == tokens
    assert served.engine.sampling_params[-1].prompt_logprobs == 1


def test_an_engine_error_before_the_first_event_is_a_4xx_not_a_failed_stream(
    run: Any, served: VllmApp, mode: dict[str, Any]
) -> None:
    """vLLM's stock route answers HTTP 200 and an error event for what only its engine checks; the token
    route waits for the first event and answers vLLM's error body with its status instead."""
    served.engine.script = Script(text="unused", error="logit_bias token id 99999 is out of vocabulary")
    try:
        stock = post(run, served, STOCK, body(served, stream=True))
        ours = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), stream=True, **mode))
    finally:
        served.engine.script = Script(text="Hello there")
    stock_events = parse_sse(stock.text)
    assert stock.status_code == 200 and "out of vocabulary" in json.dumps(stock_events[0]), stock.text
    assert ours.status_code == 400, ours.text
    assert ours.headers["content-type"].startswith("application/json")
    assert ours.json() == stock_events[0], "vLLM's own error body, with its own status"


def test_too_long_says_maximum_context_length(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    response = post(run, served, ROUTE, body(served, tokens=[1] * (MAX_MODEL_LEN + 1), stream=True, **mode))
    assert response.status_code == 400
    assert "maximum context length" in response.text


LONG_MESSAGES = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 18}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("overflow", [-5, 1, 40])
def test_prompt_plus_max_tokens_behaves_as_the_stock_route(
    run: Any, served: VllmApp, stream: bool, overflow: int, mode: dict[str, Any]
) -> None:
    """Short `messages` + long `tokens` vs the stock route on long messages rendering to those tokens:
    only the plugin's own length check can make the two agree."""
    long_ids = served.chat_ids(LONG_MESSAGES)
    assert (
        len(served.chat_ids(MESSAGES))
        < MAX_MODEL_LEN // 4
        < MAX_MODEL_LEN // 2
        < len(long_ids)
        < MAX_MODEL_LEN
    )
    max_tokens = MAX_MODEL_LEN - len(long_ids) + overflow
    served.engine.script = Script(text="word " * 200)
    extra = {"max_tokens": max_tokens, "stream": stream}
    if stream:
        extra["stream_options"] = {"include_usage": True}
    stock = post(run, served, STOCK, body(served, LONG_MESSAGES, return_token_ids=True, **extra))
    ours = post(run, served, ROUTE, body(served, tokens=long_ids, return_token_ids=True, **extra, **mode))
    served.engine.script = Script(text="Hello there")
    assert ours.status_code == stock.status_code, (stock.text[:300], ours.text[:300])
    if stock.status_code != 200:
        assert ours.headers["content-type"].startswith("application/json")
        return
    if stream:
        stock_events, our_events = parse_sse(stock.text), parse_sse(ours.text)
        assert our_events[0]["prompt_token_ids"] == long_ids
        assert [e.get("usage") for e in our_events[1:-1]] == [e.get("usage") for e in stock_events[1:-1]]
        assert len(our_events) == len(stock_events)
    else:
        assert ours.json()["prompt_token_ids"] == long_ids
        assert ours.json()["usage"] == stock.json()["usage"]
        assert ours.json()["choices"][0]["finish_reason"] == stock.json()["choices"][0]["finish_reason"]


# --- the fast path (`vllm_tokens_patch_verify: false`) --------------------------------------------------


def test_fast_path_feeds_tokens_says_skipped_and_logs_nothing(
    run: Any, served: VllmApp, plugin_logs: LoggerRecords
) -> None:
    tokens = drifted(served.chat_ids(MESSAGES))
    payload = body(served, tokens=tokens, return_token_ids=True, **MODES["fast"])
    response = post(run, served, ROUTE, payload)
    assert response.status_code == 200, response.text
    assert served.engine.prompts[-1]["prompt_token_ids"] == tokens
    assert response.json()["prompt_token_ids"] == tokens
    assert response.headers["x-vllm-tokens-verification"] == "skipped"
    assert "x-vllm-tokens-first-mismatch" not in response.headers
    assert plugin_logs.messages(logging.WARNING) == []


def test_fast_path_skips_the_render_where_the_adapter_has_it(run: Any, served: VllmApp) -> None:
    """`messages` that render past `max_model_len` with short `tokens`: vLLM refuses them when it renders
    (default mode, and releases whose adapter has no fast path); the fast path never renders them. So the
    adapter's `fast_path` (the README table's column, derived from it) is proven on each release."""
    too_long = TOO_LONG_MESSAGES
    assert len(served.chat_ids(too_long)) > MAX_MODEL_LEN
    tokens = served.chat_ids(MESSAGES)
    rendered = post(run, served, ROUTE, body(served, too_long, tokens=tokens))
    assert rendered.status_code == 400, rendered.text
    fast = post(run, served, ROUTE, body(served, too_long, tokens=tokens, **MODES["fast"]))
    if ADAPTER.fast_path:
        assert fast.status_code == 200, fast.text
        assert served.engine.prompts[-1]["prompt_token_ids"] == tokens
        assert fast.headers["x-vllm-tokens-verification"] == "skipped"
    else:
        assert (fast.status_code, fast.json()) == (rendered.status_code, rendered.json())


def test_the_switch_is_strictly_a_boolean(run: Any, served: VllmApp) -> None:
    tokens = served.chat_ids(MESSAGES)
    response = post(run, served, ROUTE, body(served, tokens=tokens, vllm_tokens_patch_verify="no"))
    assert response.status_code == 400, response.text


def test_echo_works_on_both_modes(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    """`echo` echoes the rendered conversation, so an `echo` request is rendered even on the fast path."""
    messages = [*MESSAGES, {"role": "assistant", "content": "Once upon a time"}]
    extra = {"echo": True, "add_generation_prompt": False, "continue_final_message": True}
    stock = post(run, served, STOCK, body(served, messages, **extra))
    tokens = served.tokenizer.encode(
        served.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False, continue_final_message=True
        ),
        add_special_tokens=False,
    )
    ours = post(run, served, ROUTE, body(served, messages, tokens=tokens, **extra, **mode))
    assert stock.status_code == ours.status_code == 200, ours.text
    assert ours.json()["choices"][0]["message"]["content"].startswith("Once upon a time")
    assert normalize(ours.json()) == normalize(stock.json())
    assert served.engine.prompts[-1]["prompt_token_ids"] == tokens


def test_sampling_params_equal_the_stock_route(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    """Structured outputs, tools and the rest reach the engine as on the stock route (and nothing of the
    fast path's hand-off to vLLM, e.g. in `kv_transfer_params`, leaks into them)."""
    extra = {"response_format": {"type": "json_object"}, "tools": TOOLS, "max_tokens": 7, "seed": 3}
    post(run, served, STOCK, body(served, **extra))
    stock = served.engine.sampling_params[-1]
    response = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), **extra, **mode))
    assert response.status_code == 200, response.text
    assert repr(served.engine.sampling_params[-1]) == repr(stock)


def test_response_role_follows_the_request(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "Once upon"}]
    extra = {"add_generation_prompt": False, "continue_final_message": True, "stream": True}
    stock = post(run, served, STOCK, body(served, messages, **extra))
    ours = post(run, served, ROUTE, body(served, messages, tokens=served.chat_ids(MESSAGES), **extra, **mode))
    assert stock.status_code == ours.status_code == 200, ours.text
    assert normalize(parse_sse(ours.text)) == normalize(parse_sse(stock.text))
    assert parse_sse(ours.text)[0]["choices"][0]["delta"]["role"] == "assistant"


# --- turn splicing (`prefix_tokens`) ------------------------------------------------------------------

SPLICE_HEADER = "x-vllm-tokens-splice"
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
CALL_2 = {
    "id": "call_2",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
}
SPLICE_CASES = {
    "user-turn": ([*FIRST_TURN, ANSWER], [{"role": "user", "content": "And tomorrow?"}]),
    "system-note": ([*FIRST_TURN, ANSWER], [{"role": "system", "content": "Be brief."}]),
    "one-tool-result": (
        [*FIRST_TURN, {"role": "assistant", "content": "", "tool_calls": [CALL]}],
        [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    ),
    "tool-results-then-user": (
        [*FIRST_TURN, {"role": "assistant", "content": "", "tool_calls": [CALL, CALL_2]}],
        [
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
            {"role": "user", "content": "Thanks. Which is warmer?"},
        ],
    ),
}


def special_id(app: VllmApp, token: str) -> int:
    return int(app.tokenizer.convert_tokens_to_ids(token))


@pytest.mark.parametrize("case", sorted(SPLICE_CASES))
@pytest.mark.parametrize("ending", ["stop-token", "truncated", "other-stop-id"])
def test_splice_feeds_prefix_plus_the_templates_bridge(
    run: Any, served: VllmApp, case: str, ending: str, mode: dict[str, Any]
) -> None:
    """The tiny ChatML template is append-only: with no drift, prefix + bridge is the full render."""
    history, new = SPLICE_CASES[case]
    so_far = rendered(run, served, history, False)  # ... <|im_end|> \n
    im_end, stop = special_id(served, "<|im_end|>"), special_id(served, "<|endoftext|>")
    assert so_far[-2] == im_end
    prefix = {
        "stop-token": so_far[:-1],  # the model sampled <|im_end|>, never the \n after it
        "truncated": so_far[:-2],  # finish_reason "length": no stop id at all
        "other-stop-id": [*so_far[:-2], stop],  # a stop id that begins neither the close nor a turn
    }[ending]
    full = rendered(run, served, [*history, *new], True)
    payload = body(served, [*history, *new], prefix_tokens=prefix, return_token_ids=True, tools=TOOLS, **mode)
    response = post(run, served, ROUTE, payload)
    assert response.status_code == 200, response.text
    engine_ids = served.engine.prompts[-1]["prompt_token_ids"]
    assert engine_ids[: len(prefix)] == prefix, "the prefix is fed verbatim"
    if ending == "other-stop-id":
        assert engine_ids[len(prefix) :] == full[len(so_far) - 2 :]
    else:
        assert engine_ids == full
    assert response.json()["prompt_token_ids"] == engine_ids
    close = "sampled" if ending == "stop-token" else "added"
    bridge = len(engine_ids) - len(prefix)
    assert response.headers[SPLICE_HEADER] == f"prefix={len(prefix)}; bridge={bridge}; close={close}"
    expected = "skipped" if mode else ("mismatch" if ending == "other-stop-id" else "match")
    assert response.headers["x-vllm-tokens-verification"] == expected


def test_splice_keeps_a_drifted_prefix_verbatim(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    history, new = SPLICE_CASES["user-turn"]
    so_far = rendered(run, served, history, False)
    prefix = [*drifted(so_far[:-2]), so_far[-2]]  # what was sampled differs from a re-render of the text
    full = rendered(run, served, [*history, *new], True)
    response = post(run, served, ROUTE, body(served, [*history, *new], prefix_tokens=prefix, **mode))
    assert response.status_code == 200, response.text
    engine_ids = served.engine.prompts[-1]["prompt_token_ids"]
    assert engine_ids == [*prefix, *full[len(so_far) - 1 :]]
    assert response.headers["x-vllm-tokens-verification"] == ("skipped" if mode else "mismatch")


def test_splice_streams_the_spliced_prompt_ids(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    history, new = SPLICE_CASES["user-turn"]
    prefix = rendered(run, served, history, False)[:-1]
    extra = {"stream": True, "return_token_ids": True, **mode}
    response = post(run, served, ROUTE, body(served, [*history, *new], prefix_tokens=prefix, **extra))
    assert response.status_code == 200, response.text
    assert SPLICE_HEADER in response.headers
    events = parse_sse(response.text)
    assert events[0]["prompt_token_ids"] == rendered(run, served, [*history, *new], True)


def test_splice_continues_the_final_message_verbatim(run: Any, served: VllmApp, mode: dict[str, Any]) -> None:
    history, _ = SPLICE_CASES["user-turn"]
    prefix = rendered(run, served, history, False)[:-2]  # a truncated answer the model should go on with
    extra = {"continue_final_message": True, "add_generation_prompt": False, **mode}
    response = post(run, served, ROUTE, body(served, history, prefix_tokens=prefix, **extra))
    assert response.status_code == 200, response.text
    assert served.engine.prompts[-1]["prompt_token_ids"] == prefix
    assert response.headers[SPLICE_HEADER] == f"prefix={len(prefix)}; bridge=0; close=none"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prefix_without_the_sampled_ids_is_a_400_that_says_what_to_send(
    run: Any, served: VllmApp, stock_errors: dict[str, Any], mode: dict[str, Any], stream: bool
) -> None:
    """Issue 18: `prefix_tokens` = turn 1's `prompt_token_ids` alone (the client forgot `token_ids`) would
    splice an empty assistant turn after the prompt; it is refused before anything reaches the engine."""
    history, new = SPLICE_CASES["user-turn"]
    prompt = rendered(run, served, FIRST_TURN, True)  # turn 1's prompt_token_ids, generation prompt last
    seen = len(served.engine.prompts)
    payload = body(served, [*history, *new], prefix_tokens=prompt, stream=stream, **mode)
    info = assert_vllm_error(post(run, served, ROUTE, payload), 400, like=stock_errors[REFUSAL])
    assert "`prompt_token_ids` + `choices[0].token_ids`" in info["message"], info
    assert len(served.engine.prompts) == seen, "nothing may reach the engine"
    answer = served.tokenizer.encode(ANSWER["content"], add_special_tokens=False)
    sampled = [*prompt, *answer, special_id(served, "<|im_end|>")]  # with the sampled ids: spliced
    assert post(run, served, ROUTE, {**payload, "prefix_tokens": sampled}).status_code == 200


SPLICE_BAD_INPUTS = {
    "both-id-lists": Bad(
        REFUSAL,
        {"messages": [*FIRST_TURN, ANSWER, *FIRST_TURN], "tokens": [1, 2], "prefix_tokens": [1, 2]},
    ),
    "neither-id-list": Bad(VALIDATION, {"messages": [*FIRST_TURN, ANSWER, *FIRST_TURN], "tokens": None}),
    "no-assistant-message": Bad(REFUSAL, {"messages": FIRST_TURN, "prefix_tokens": [1, 2, 3]}),
    "nothing-after-the-assistant": Bad(
        REFUSAL, {"messages": [*FIRST_TURN, ANSWER], "prefix_tokens": [1, 2, 3]}
    ),
    "prefix-past-vocabulary": Bad(
        REFUSAL, {"messages": [*FIRST_TURN, ANSWER, *FIRST_TURN], "prefix_tokens": [1, 10**6]}
    ),
    "prefix-negative": Bad(
        VALIDATION, {"messages": [*FIRST_TURN, ANSWER, *FIRST_TURN], "prefix_tokens": [1, -2]}
    ),
    "prefix-empty": Bad(VALIDATION, {"messages": [*FIRST_TURN, ANSWER, *FIRST_TURN], "prefix_tokens": []}),
    "spliced-past-max-model-len": Bad(
        REFUSAL,
        {"messages": [*FIRST_TURN, ANSWER, *FIRST_TURN], "prefix_tokens": [1] * (MAX_MODEL_LEN - 3)},
        CONTEXT_LENGTH,
    ),
}


ALL_BAD_INPUTS = {**BAD_INPUTS, **SPLICE_BAD_INPUTS}
assert len(ALL_BAD_INPUTS) == len(BAD_INPUTS) + len(SPLICE_BAD_INPUTS)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(ALL_BAD_INPUTS))
def test_bad_input_is_a_400_json_error_before_any_stream(
    run: Any, served: VllmApp, stock_errors: dict[str, Any], case: str, stream: bool, mode: dict[str, Any]
) -> None:
    """README "Errors": a 400 in this vLLM's own error format (JSON, also for `stream: true`) before
    anything reaches the engine; the app keeps serving."""
    bad = ALL_BAD_INPUTS[case]
    seen = len(served.engine.prompts)
    response = post(run, served, ROUTE, body(served, **bad.fields, stream=stream, **mode))
    like = stock_errors[bad.kind]
    info = assert_vllm_error(response, 400, like=like)
    assert info["type"] == error_info(like)["type"], (info, like)
    if bad.says is not None:
        assert bad.says in info["message"], info
    assert len(served.engine.prompts) == seen, "nothing may reach the engine"
    healthy = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES)))
    assert healthy.status_code == 200, healthy.text


def test_api_key_is_required(run: Any, served: VllmApp) -> None:
    payload = body(served, tokens=served.chat_ids(MESSAGES))
    denied = run(served.client.post(ROUTE, json=payload, headers={"Authorization": "Bearer wrong"}))
    assert denied.status_code == 401
    allowed = run(served.client.post(ROUTE, json=payload, headers={"Authorization": f"Bearer {API_KEY}"}))
    assert allowed.status_code == 200


# --- doctor ---------------------------------------------------------------------------------------------


def test_doctor_reports_this_release_in_a_fresh_process() -> None:
    report = doctor_report()
    row = matrix_row()
    assert (report["vllm_version"], report["adapter"], report["tested"]) == (
        vllm.__version__,
        row.adapter,
        True,
    )
    assert report["fast_path"] is ADAPTER.fast_path and report["ok"] is True
    assert report["images"] is ADAPTER.places_media
    assert report["matrix_status"] == row.status
    checks = {check["name"]: check for check in report["checks"]}
    assert {f"target {role}" for role in ADAPTER.targets()} <= set(checks)
    assert all(checks[f"target {role}"]["ok"] for role in ADAPTER.targets())
    assert (
        checks["entry point"]["ok"] and "vllm_tokens_patch.plugin:register" in checks["entry point"]["detail"]
    )
    expected_mount = True if ADAPTER.route_hook.attribute == "attach_router" else None  # era A/B: not checked
    assert checks["route mounts"]["ok"] is expected_mount, checks["route mounts"]


def test_doctor_names_a_missing_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_tokens_patch import doctor

    renamed = dataclasses.replace(ADAPTER.render_targets[0].location, qualname="OpenAIServingChat.gone")
    targets = (dataclasses.replace(ADAPTER.render_targets[0], location=renamed), *ADAPTER.render_targets[1:])
    monkeypatch.setattr(type(ADAPTER), "render_targets", targets)
    report = doctor.report()
    assert not report.ok
    failed = [check for check in report.checks if check.ok is False]
    assert len(failed) == 1 and "OpenAIServingChat.gone" in failed[0].detail, failed
    assert "doctor: problems found" in doctor.as_text(report)


# --- patch lifecycle (these rebuild apps; keep them last) -------------------------------------------------


MISSING = object()


def _restored(wrapper_at: tuple[str, str], wrapper: Any) -> tuple[bool, Any]:
    """Whether the place a wrapper sat holds what it wrapped again (stored there, or inherited again when
    a base class stores it: the subclass only inherited it before), and what it holds now."""
    where, attribute = wrapper_at
    owner = harness.owner_of(where)
    now = vars(owner).get(attribute, MISSING)
    inherited = isinstance(owner, type) and any(
        vars(base).get(attribute, MISSING) is wrapper.__wrapped__ for base in owner.__mro__[1:]
    )
    if inherited:
        return now is MISSING and inspect.getattr_static(owner, attribute) is wrapper.__wrapped__, now
    return now is wrapper.__wrapped__, now


def test_register_twice_wraps_once_and_mounts_once(run: Any, build: Any, served: VllmApp) -> None:
    """By effect: an app built after two more `register()` calls, and the running one, each have the route
    once, and the ids are swapped once (a second swap would compare the ids with themselves: `match`)."""
    vllm_tokens_patch.register()
    vllm_tokens_patch.register()
    fresh = build()
    for app in (served, fresh):
        assert route_paths(app.app.router.routes).count(ROUTE) == 1
        rendered = app.chat_ids(MESSAGES)
        response = post(run, app, ROUTE, body(app, tokens=drifted(rendered)))
        assert response.status_code == 200, response.text
        assert response.headers["x-vllm-tokens-verification"] == "mismatch", "swapped twice"
        assert response.headers["x-vllm-tokens-first-mismatch"] == str(len(rendered) - 1)
        assert app.engine.prompts[-1]["prompt_token_ids"] == drifted(rendered)
    found = harness.wrappers()
    assert any(where.startswith("vllm.") for where, _ in found), found
    doubled = [place for place, wrapper in found.items() if isinstance(wrapper.__wrapped__, harness.PROXY)]
    assert doubled == [], "wrapped twice"


@pytest.mark.unpatches
def test_unpatch_restores_every_original_and_register_reapplies(
    run: Any, build: Any, served: VllmApp
) -> None:
    """Where the patches sit is found by scanning vLLM's, FastAPI's and Starlette's modules for wrapt
    wrappers; what they must give back, by the wrappers themselves and a snapshot taken before vLLM loaded
    the plugin (`vllm_suite.PRISTINE`), never by the plugin's records."""
    assert PRISTINE_WRAPPERS == {}, "the snapshot was taken after something patched vLLM"
    patched = harness.wrappers()
    assert any(where.startswith("vllm.") for where, _ in patched), patched
    assert any(where.startswith("fastapi.") for where, _ in patched), "the serving check wraps FastAPI"
    before = harness.code_objects()
    vllm_tokens_patch.unpatch()
    try:
        after = harness.code_objects()
        assert harness.wrappers() == {}, "a wrapper remains"
        for place, wrapper in patched.items():
            restored, now = _restored(place, wrapper)
            assert restored, (place, now, wrapper.__wrapped__)
        changed = [
            key for key in before.keys() & after.keys() - patched.keys() if before[key] is not after[key]
        ]
        assert changed == [], "unpatch changed what it had not patched"
        # vLLM itself replaces a few objects while it serves (pydantic rebuilds a config dataclass's
        # `__init__`); with no wrapper there, that was not a patch, and the rest must be as before vLLM
        # loaded the plugin
        by_vllm = {key for key in PRISTINE.keys() - patched.keys() if before.get(key) is not PRISTINE[key]}
        not_back = [key for key in PRISTINE.keys() - by_vllm if after.get(key, MISSING) is not PRISTINE[key]]
        assert not_back == [], "not as before vLLM loaded the plugin"
        pristine_owners = {where for where, _ in PRISTINE}
        added = [
            key
            for key in after.keys() - PRISTINE.keys()
            if key[0] in pristine_owners and (key in patched or key not in before)
        ]
        assert added == [], "left in a namespace that did not hold it before the plugin"
        assert ROUTE not in route_paths(served.app.router.routes)
        assert post(run, served, ROUTE, body(served, tokens=[1, 2, 3])).status_code in (404, 405)
        stock = post(run, served, STOCK, body(served))
        assert stock.status_code == 200
        assert served.engine.prompts[-1]["prompt_token_ids"] == served.chat_ids(MESSAGES)
        vllm_tokens_patch.unpatch()  # idempotent
        again = harness.code_objects()
        assert [key for key, value in after.items() if again.get(key) is not value] == []
    finally:
        vllm_tokens_patch.register()
    fresh = build()
    tokens = drifted(fresh.chat_ids(MESSAGES))
    response = post(run, fresh, ROUTE, body(fresh, tokens=tokens))
    assert response.status_code == 200, response.text
    assert fresh.engine.prompts[-1]["prompt_token_ids"] == tokens


FRONTEND_MOVE = "frontend-move"
"""vLLM RFC #54653's layout: vLLM imports the route-hook module under a new name, so a post-import hook on
the old name never fires. Simulated by hooking a module name nothing imports."""
FAULTS = [*ADAPTER.targets(), FRONTEND_MOVE]


def _broken(monkeypatch: pytest.MonkeyPatch, fault: str) -> str:
    """Make the running adapter look for one target where it is not; return the name it will miss."""
    cls = type(ADAPTER)
    if fault == FRONTEND_MOVE:
        missing = Location("vllm.frontend.openai.chat_completion.api_router", ADAPTER.route_hook.attribute)
        monkeypatch.setattr(cls, "route_hook", missing)
        return str(missing)
    location = ADAPTER.targets()[fault]
    gone = Location(location.module, location.qualname + "_gone")
    if fault.startswith("render:"):
        targets = tuple(
            dataclasses.replace(t, location=gone) if t.location == location else t
            for t in ADAPTER.render_targets
        )
        monkeypatch.setattr(cls, "render_targets", targets)
    else:
        monkeypatch.setattr(cls, fault, gone)
    return gone.qualname


@pytest.mark.unpatches
@pytest.mark.parametrize("fault", FAULTS)
def test_a_missing_target_gives_501_and_one_error_or_fails_startup_if_strict(
    run: Any, build: Any, monkeypatch: pytest.MonkeyPatch, plugin_logs: LoggerRecords, fault: str
) -> None:
    """Each target removed in turn (and the frontend move): the app still builds, stock chat works, one
    ERROR line names what is missing, the token route answers 501; strict mode fails start-up instead."""
    vllm_tokens_patch.unpatch()
    try:
        named = _broken(monkeypatch, fault)
        vllm_tokens_patch.register()
        app = build()
        stock = post(run, app, STOCK, body(app))
        assert stock.status_code == 200, stock.text
        response = post(run, app, ROUTE, body(app, tokens=[1, 2, 3]))
        assert response.status_code == 501, response.text
        reason = response.json()["error"]["message"]
        assert vllm.__version__ in reason and named in reason, reason
        errors = plugin_logs.messages(logging.ERROR)
        assert len(errors) == 1 and named in errors[0], errors

        vllm_tokens_patch.unpatch()
        monkeypatch.setenv("VLLM_TOKENS_PATCH_STRICT", "1")
        with pytest.raises(plugin.PatchError, match=re.escape(named)):
            vllm_tokens_patch.register()
            strict_app = build()
            lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}
            strict_app.app(lifespan, None, None)  # uvicorn's start-up: the app's first ASGI call
    finally:
        vllm_tokens_patch.unpatch()
        monkeypatch.undo()
        vllm_tokens_patch.register()


@pytest.mark.unpatches
def test_server_wide_verify_off_takes_the_fast_path(run: Any, build: Any, monkeypatch: Any) -> None:
    """`VLLM_TOKENS_PATCH_VERIFY=off` for the whole server; a request can still ask for the comparison."""
    vllm_tokens_patch.unpatch()
    monkeypatch.setenv("VLLM_TOKENS_PATCH_VERIFY", "off")
    try:
        vllm_tokens_patch.register()
        app = build()
        tokens = drifted(app.chat_ids(MESSAGES))
        off = post(run, app, ROUTE, body(app, tokens=tokens))
        asked = post(run, app, ROUTE, body(app, tokens=tokens, vllm_tokens_patch_verify=True))
        assert (off.status_code, asked.status_code) == (200, 200), (off.text, asked.text)
        assert off.headers["x-vllm-tokens-verification"] == "skipped"
        assert asked.headers["x-vllm-tokens-verification"] == "mismatch"
        assert app.engine.prompts[-1]["prompt_token_ids"] == tokens
    finally:
        vllm_tokens_patch.unpatch()
        monkeypatch.undo()
        vllm_tokens_patch.register()


def test_model_dir_is_offline(model_dir: Path, tmp_path: Path) -> None:
    """The suite's model directory is all vLLM needs: a fresh process with an empty Hugging Face cache, the
    hub switched off and every outbound connection refused loads its config and tokenizer through vLLM's
    own loaders, and the tokenizer renders the chat template."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, harness.__file__, str(model_dir), str(MAX_MODEL_LEN)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["attempts"] == [], "reached for the network"
    assert loaded["max_model_len"] == MAX_MODEL_LEN and loaded["vocab_size"] > 0, loaded
    assert loaded["architectures"] == ["LlamaForCausalLM"], loaded
    assert loaded["text"].startswith("<|im_start|>user") and loaded["decoded"] == loaded["text"], loaded
    assert loaded["ids"][0] == loaded["im_start"], loaded
