"""vLLM 0.27.0 - 0.34.0: as 0.17.1 (images included), plus a native reuse branch (vLLM PR #48145, for
disaggregated prefill/decode): `kv_transfer_params["prompt_token_ids"]` makes the online renderer pop those
ids and feed them to the engine without applying the chat template or tokenizing `messages`, while
tool-choice validation, `adjust_request` and output parsing still run (not for media, which that branch
drops or ignores: requests with images are rendered). The fast path hands `tokens` to that branch.
It has no length check (the shared core runs one) and, from 0.32, validates the ids itself (the core
validates them first, so errors name `tokens`).

Upstream: vLLM PR #48145 "[Frontend] Reuse prefill token ids on the decode chat path for disaggregated
serving" (merged 2026-07-29, first released in 0.27.0). A release that accepts prompt ids as a chat
request field (PR #55771 "[Frontend] Accept pre-tokenized prompt_token_ids in /v1/chat/completions", open
as of 2026-12-01) would get its own adapter feeding that field; this one goes when the project drops the
releases before that."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm_tokens_patch.adapters.base import Location
from vllm_tokens_patch.adapters.render_chat_request_v0_17_1 import RenderChatRequestV0171


class RenderChatRequestV027(RenderChatRequestV0171):
    name = "render_chat_request_v0_27"

    native_reuse = Location("vllm.renderers.online_renderer", "_reused_prompt_token_ids")
    client_error = Location("vllm.exceptions", "VLLMValidationError")
    """The length check's error: no `ValueError` from 0.27 (`VLLMValidationError(VLLMClientError)`)."""

    def offer_ids(self, request: Any, tokens: list[int]) -> Callable[[], None]:
        given = request.kv_transfer_params  # the client's own dict is never mutated
        request.kv_transfer_params = {**(given or {}), self.fields.reused_ids: tokens}

        def undo() -> None:
            request.kv_transfer_params = given

        return undo


ADAPTER = RenderChatRequestV027()
