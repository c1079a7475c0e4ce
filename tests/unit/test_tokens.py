from __future__ import annotations

import logging
from typing import Any

import pytest

from vllm_tokens_patch.adapters.base import Adapter, Location, RenderContext
from vllm_tokens_patch.tokens import (
    TokensRejected,
    TokensSwap,
    Verification,
    check_engine_prompt,
    first_difference,
    validate_ids,
    vocabulary_bound,
)


class Tokenizer:
    max_token_id = 99


CONTEXT = RenderContext(max_model_len=16, vocab_size=128, tokenizer=Tokenizer())


@pytest.mark.parametrize(
    ("rendered", "tokens", "index"),
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2], [1, 2, 3], 2),
        ([1, 2, 3], [1], 1),
        ([], [5], 0),
    ],
)
def test_first_difference(rendered: list[int], tokens: list[int], index: int | None) -> None:
    assert first_difference(rendered, tokens) == index


def test_vocabulary_bound_is_the_engines() -> None:
    assert vocabulary_bound(CONTEXT) == 127
    assert vocabulary_bound(RenderContext(16, 50, Tokenizer())) == 99
    assert vocabulary_bound(RenderContext(16, None, None)) is None


@pytest.mark.parametrize(
    ("tokens", "fragment"),
    [
        ([], "at least one"),
        ([1, 128], r"tokens\[1\] is out of vocabulary"),
        ([-1], "out of vocabulary"),
        ([1] * 16, "maximum context length"),
    ],
)
def test_validate_ids_rejects(tokens: list[int], fragment: str) -> None:
    with pytest.raises(TokensRejected, match=fragment):
        validate_ids(tokens, CONTEXT)


def test_validate_ids_accepts_the_edges() -> None:
    validate_ids([0, 127] + [1] * 13, CONTEXT)


@pytest.mark.parametrize(
    "prompt",
    [
        {"type": "multimodal", "prompt_token_ids": [1]},
        {"prompt_token_ids": [1], "multi_modal_data": {}},
        {"type": "embeds"},
    ],
)
def test_engine_prompts_tied_to_media_are_refused(prompt: dict[str, Any]) -> None:
    with pytest.raises(TokensRejected):
        check_engine_prompt(prompt)


class Request:
    def __init__(self, tokens: list[int], max_tokens: int | None = None) -> None:
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.request_id = "req-1"
        self._tokens_verification: Verification | None = None


class Serving:
    def create_error_response(self, message: str, param: str | None = None) -> dict[str, Any]:
        return {"error": message, "param": param}


class FakeAdapter(Adapter):
    name = "fake"
    route_hook = Location("fake", "hook")
    chat_route = json_validator = request_base = Location("fake", "x")
    render_targets = ()

    def render_context(self, serving: Any, args: Any, kwargs: Any) -> RenderContext:
        return CONTEXT

    def check_length(self, serving: Any, request: Any, tokens: list[int], context: RenderContext) -> None:
        if request.max_tokens is not None and len(tokens) + request.max_tokens > context.max_model_len:
            raise ValueError("'max_tokens' is too large")


def rendered_result(ids: list[int]) -> tuple[list[Any], list[dict[str, Any]]]:
    return (
        [{"role": "user", "content": "hi"}],
        [
            {
                "type": "token",
                "prompt_token_ids": ids,
                "prompt": "hi",
                "prompt_token_offsets": [0],
                "cache_salt": "s",
            }
        ],
    )


def swap(verify: bool = True) -> TokensSwap:
    return TokensSwap(FakeAdapter(), lambda request: True, verify=verify)


def test_swap_feeds_tokens_and_drops_what_described_the_rendered_ids() -> None:
    request = Request([5, 6, 7])
    result = swap().apply(Serving(), (request,), {}, rendered_result([5, 6, 8]))
    prompt = result[1][0]
    assert prompt == {"type": "token", "prompt_token_ids": [5, 6, 7], "cache_salt": "s"}
    assert request._tokens_verification == Verification(3, 3, 2)
    assert request._tokens_verification.header_value() == "mismatch"


def test_mismatch_logs_one_warning_and_match_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vllm.tokens_patch"):
        swap().apply(Serving(), (Request([5, 6, 7]),), {}, rendered_result([5, 6, 7]))
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        swap().apply(Serving(), (Request([5, 6, 7]),), {}, rendered_result([5, 6]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "req-1" in warnings[0] and "rendered 2 ids, tokens 3 ids" in warnings[0] and "index 2" in warnings[0]
    )
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("[5, 6, 7]" in m for m in debug) and any("[5, 6]" in m for m in debug)


def test_verify_off_skips_the_comparison() -> None:
    request = Request([5, 6, 7])
    swap(verify=False).apply(Serving(), (request,), {}, rendered_result([1]))
    assert request._tokens_verification.header_value() == "skipped"


@pytest.mark.parametrize(
    ("request_obj", "fragment"),
    [
        (Request([1, 500]), "out of vocabulary"),
        (Request([1] * 20), "maximum context length"),
        (Request([1, 2], max_tokens=15), "too large"),
    ],
)
def test_bad_tokens_return_the_render_error_and_leave_the_prompt(request_obj: Request, fragment: str) -> None:
    result = rendered_result([1, 2])
    answer = swap().apply(Serving(), (request_obj,), {}, result)
    assert fragment in answer["error"]
    assert result[1][0]["prompt_token_ids"] == [1, 2]


def test_vllm_errors_pass_through_untouched() -> None:
    error = {"error": "vLLM said no"}
    assert swap().apply(Serving(), (Request([1]),), {}, error) is error
