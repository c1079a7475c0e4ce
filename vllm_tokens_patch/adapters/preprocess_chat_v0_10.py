"""vLLM 0.10.2 - 0.12.0 (era A): the prompt is rendered by `OpenAIServing._preprocess_chat` (inherited
by `OpenAIServingChat`; patched on the chat class only, since tokenize, responses, pooling and embeddings
share it) or, for gpt-oss, by the sync `_make_request_with_harmony`. Both return
`(conversation, request_prompts, engine_prompts)`; `request_prompts[0]` (rendered text) feeds request
logging and `prompt_text`, so it is replaced too. The chat route, `validate_json_request` and `build_app`
live on `openai.api_server` (imported before plugins load; `build_app` is looked up at call time).
Render methods report client errors by raising `ValueError` (the serving method turns it into a 400
before any stream, appending `" None"` to the message, as for every error in this era), and
`create_error_response` takes no `param`.

Upstream: the oldest supported layout, not made necessary by a change. It can go when the project drops
vLLM < 0.13 (vLLM PR #30612, below, broke its return shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm_tokens_patch.adapters.base import Adapter, Location, RenderTarget

_OPENAI = "vllm.entrypoints.openai"


class PreprocessChatV010(Adapter):
    name = "preprocess_chat_v0_10"

    route_hook = Location(f"{_OPENAI}.api_server", "build_app")
    chat_route = Location(f"{_OPENAI}.api_server", "create_chat_completion")
    json_validator = Location(f"{_OPENAI}.api_server", "validate_json_request")
    request_base = Location(f"{_OPENAI}.protocol", "ChatCompletionRequest")
    render_targets = (
        RenderTarget(
            Location(f"{_OPENAI}.serving_chat", "OpenAIServingChat._preprocess_chat"),
            True,
            explicit_messages=True,
        ),
        RenderTarget(
            Location(f"{_OPENAI}.serving_chat", "OpenAIServingChat._make_request_with_harmony"), False
        ),
    )

    length_check = Location(f"{_OPENAI}.serving_chat", "OpenAIServingChat._validate_input")
    route_hook_takes_app = False  # build_app(args) builds the whole app from vLLM's CLI args

    def app_of(self, args: Sequence[Any], kwargs: dict[str, Any], result: Any) -> Any:
        return result  # build_app(args) returns the app

    def tokenizer_of(self, serving: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any | None:
        # `_preprocess_chat(request, tokenizer, messages, ...)`; harmony calls carry no tokenizer.
        tokenizer = kwargs.get("tokenizer", args[1] if len(args) > 1 else None)
        return tokenizer if hasattr(tokenizer, "encode") else None

    def error_from_render(self, serving: Any, message: str, param: str | None) -> Any:
        raise ValueError(message)

    def route_error(self, serving: Any, message: str, err_type: str, status: int, param: str | None) -> Any:
        return serving.create_error_response(message, err_type=err_type, status_code=status)

    def after_swap(self, result: Any, tokens: list[int]) -> None:
        result[1][0] = list(tokens)  # request_prompts: what vLLM logs and reports as the prompt


ADAPTER = PreprocessChatV010()
