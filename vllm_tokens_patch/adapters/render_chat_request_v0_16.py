"""vLLM 0.16.0 - 0.17.0: as 0.15, but the rendered-prompt length check moved to the request's
`TokenizeParams` (`build_tok_params(...).apply_post_tokenization`). Module moves in 0.16-0.26
(`api_server`, `generate`, `serve`, `launchers`) do not touch the chat package this adapter reads.

Upstream: vLLM's Renderer work, starting with PR #32863 "[Frontend] Use new Renderer for Completions
and Tokenize API" (January 2026: `ChatParams` / `TokenizeParams` passed to the Renderer), first released
in 0.16.0. It can go when the project drops vLLM < 0.27 (0.17.1's adapter inherits it)."""

from __future__ import annotations

from typing import Any

from vllm_tokens_patch.adapters.base import Location, RenderContext
from vllm_tokens_patch.adapters.render_chat_request_v0_15 import RenderChatRequestV015


class RenderChatRequestV016(RenderChatRequestV015):
    name = "render_chat_request_v0_16"
    length_check = Location(
        RenderChatRequestV015.request_base.module, "ChatCompletionRequest.build_tok_params"
    )

    def check_length(self, serving: Any, request: Any, tokens: list[int], context: RenderContext) -> None:
        tok_params = request.build_tok_params(serving.model_config)
        checked = tok_params.apply_post_tokenization(context.tokenizer, {"prompt_token_ids": tokens})
        ids = checked["prompt_token_ids"]
        if ids is not tokens and ids != tokens:  # vLLM hands the same list back when it changes nothing
            raise ValueError("vLLM would modify `tokens` (truncation or padding); send the exact ids instead")


ADAPTER = RenderChatRequestV016()
