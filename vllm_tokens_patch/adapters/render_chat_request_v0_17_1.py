"""vLLM 0.17.1 - 0.26.0: as 0.16, plus images. From 0.17.1 the chat render processes media in the API
server and hands the engine a `type="multimodal"` input: the expanded ids, the processed items
(`mm_kwargs`, `mm_hashes`) and where each item's features go (`mm_placeholders`, per modality a list of
`PlaceholderRange(offset, length, is_embed)` in the items' order), which the engine's input processor turns
into feature specs at those offsets without processing anything again. So the core can feed the client's
ids and move each range to the client's run (`media.place`). Before 0.17.1 the render hands back raw
`multi_modal_data` that the engine processes (and expands) later: images are refused there.

Upstream: vLLM's Renderer work (`ProcessorInputs` from the chat render, `vllm/inputs/engine.py`), read in
the released 0.17.1, 0.20.2, 0.29.0 and 0.34.0 sources; the suite checks every release from 0.17.1 on. It
can go when the project drops vLLM < 0.27 (0.27's adapter inherits it)."""

from __future__ import annotations

from vllm_tokens_patch.adapters.render_chat_request_v0_16 import RenderChatRequestV016


class RenderChatRequestV0171(RenderChatRequestV016):
    name = "render_chat_request_v0_17_1"
    media_prompt_kinds = frozenset({"multimodal"})
    placeholders_key = "mm_placeholders"


ADAPTER = RenderChatRequestV0171()
