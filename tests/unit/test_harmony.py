"""gpt-oss's harmony path in vLLM 0.10.2-0.14.1: `_make_request_with_harmony` is sync, bypasses
`_preprocess_chat`, renders ids directly and carries no `prompt` text. No gpt-oss model runs on these
machines, so the wrapper is tested on the return shapes recorded from the releases' source:

  0.10.2-0.12.0: `return messages, [prompt_token_ids], [engine_prompt]`   (request_prompts hold the ids)
  0.13.0-0.14.1: `return messages, [engine_prompt]`   (0.14.1 adds `should_include_tools=True`)
  with `engine_prompt = TokensPrompt(prompt_token_ids=...)` plus `cache_salt` when the request has one.
"""

from __future__ import annotations

from typing import Any

import pytest
import wrapt

from vllm_tokens_patch import adapters, mounting, outcome
from vllm_tokens_patch.outcome import Verification
from vllm_tokens_patch.tokens import TokensSwap

RENDERED = [200006, 17360, 200008, 3575, 200007]


class ModelConfig:
    max_model_len = 64

    def get_vocab_size(self) -> int:
        return 201088


class Request:
    def __init__(self, tokens: list[int] | None = None, max_tokens: int | None = None) -> None:
        self.messages = [{"role": "user", "content": "hi"}]
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.cache_salt = "salt"
        self.request_id = "harmony-1"


class ServingChat:
    """The serving attributes the adapters read, and the two recorded harmony shapes."""

    model_config = ModelConfig()
    max_model_len = ModelConfig.max_model_len

    def _validate_input(self, request: Any, input_ids: list[int], input_text: str) -> None:
        if request.max_tokens is not None and len(input_ids) + request.max_tokens > self.max_model_len:
            raise ValueError(f"'max_tokens' or 'max_completion_tokens' is too large: {request.max_tokens}.")

    def harmony_0_10(self, request: Any) -> Any:
        ids = list(RENDERED)
        return ["<harmony Message>"], [ids], [{"prompt_token_ids": ids, "cache_salt": request.cache_salt}]

    def harmony_0_14(self, request: Any, should_include_tools: bool = True) -> Any:
        return ["<harmony Message>"], [{"prompt_token_ids": list(RENDERED), "cache_salt": request.cache_salt}]


def wrapped(adapter_name: str, method: str) -> Any:
    adapter = adapters.load(adapter_name)
    swap = TokensSwap(adapter, lambda request: request.tokens is not None)
    target = next(t for t in adapter.render_targets if t.location.attribute == "_make_request_with_harmony")
    assert target.is_async is False
    function = wrapt.FunctionWrapper(getattr(ServingChat, method), mounting.render_wrapper(swap, target))
    return function.__get__(ServingChat(), ServingChat)


def test_0_10_shape_swaps_engine_prompt_and_request_prompts() -> None:
    request = Request(tokens=[200006, 9, 9, 200007])
    with outcome.recording() as seen:
        messages, request_prompts, engine_prompts = wrapped("preprocess_chat_v0_10", "harmony_0_10")(request)
    assert messages == ["<harmony Message>"]
    assert engine_prompts == [{"prompt_token_ids": [200006, 9, 9, 200007], "cache_salt": "salt"}]
    assert request_prompts == [[200006, 9, 9, 200007]]
    assert seen.verification == Verification("mismatch", 1)


@pytest.mark.parametrize("args", [(), (False,)])
def test_0_14_shape_swaps_and_passes_arguments_through(args: tuple[bool, ...]) -> None:
    request = Request(tokens=list(RENDERED))
    with outcome.recording() as seen:
        _, engine_prompts = wrapped("preprocess_chat_v0_13", "harmony_0_14")(request, *args)
    assert engine_prompts == [{"prompt_token_ids": RENDERED, "cache_salt": "salt"}]
    assert seen.verification == Verification("match")


def test_other_requests_are_untouched() -> None:
    request = Request(tokens=None)
    result = wrapped("preprocess_chat_v0_13", "harmony_0_14")(request)
    assert result == ServingChat().harmony_0_14(request)


@pytest.mark.parametrize(
    ("request_obj", "fragment"),
    [
        (Request(tokens=[1, 201088]), "out of vocabulary"),
        (Request(tokens=[1] * 64), "maximum context length"),
        (Request(tokens=[1] * 10, max_tokens=60), "too large"),
    ],
)
def test_bad_tokens_raise_value_error_as_this_era_reports_client_errors(
    request_obj: Request, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        wrapped("preprocess_chat_v0_10", "harmony_0_10")(request_obj)
