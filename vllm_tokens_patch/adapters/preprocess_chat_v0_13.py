"""vLLM 0.13.0 - 0.14.1 (era B): as 0.10-0.12, but the render methods return
`(conversation, engine_prompts)`: the rendered text moved into the engine prompt's `prompt` key, which
the shared swap already drops, so there is nothing else to replace.

Upstream: vLLM PR #30612 "[Chore] Remove redundant `RequestPrompt`" (December 2025, first released in
0.13.0) removed `request_prompts`. It can go when the project drops vLLM < 0.15."""

from __future__ import annotations

from typing import Any

from vllm_tokens_patch.adapters.preprocess_chat_v0_10 import PreprocessChatV010


class PreprocessChatV013(PreprocessChatV010):
    name = "preprocess_chat_v0_13"

    def after_swap(self, result: Any, tokens: list[int]) -> None:
        return None


ADAPTER = PreprocessChatV013()
