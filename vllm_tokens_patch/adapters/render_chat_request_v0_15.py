"""vLLM 0.15.0 - 0.15.1: `OpenAIServingChat.render_chat_request` appears. The length check is still
`OpenAIServing._validate_input` (the base default), and the route returns a raised error as HTTP 200,
so a render method must *return* vLLM's `ErrorResponse` (the default `error_from_render`).

Upstream: vLLM PR #32473 "[Frontend] Add render endpoints for prompt preprocessing" (January 2026)
extracted `render_chat_request()` from `create_chat_completion()`, and the chat-serving refactor series
(PR #32240, "[Refactor] [6/N] ... chat_completion serving architecture") moved chat into the
`chat_completion` package with `api_router.attach_router`; both first released in 0.15.0. It can go
when the project drops vLLM < 0.16."""

from __future__ import annotations

from vllm_tokens_patch.adapters.base import Adapter, Location, RenderTarget

_CHAT = "vllm.entrypoints.openai.chat_completion"


class RenderChatRequestV015(Adapter):
    name = "render_chat_request_v0_15"

    route_hook = Location(f"{_CHAT}.api_router", "attach_router")
    chat_route = Location(f"{_CHAT}.api_router", "create_chat_completion")
    json_validator = Location(f"{_CHAT}.api_router", "validate_json_request")
    request_base = Location(f"{_CHAT}.protocol", "ChatCompletionRequest")
    render_targets = (
        RenderTarget(Location(f"{_CHAT}.serving", "OpenAIServingChat.render_chat_request"), True),
    )
    length_check = Location(f"{_CHAT}.serving", "OpenAIServingChat._validate_input")


ADAPTER = RenderChatRequestV015()
