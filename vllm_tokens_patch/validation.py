"""Checks on the client's prompt ids, and their comparison with vLLM's rendering: pure functions.

What vLLM's engine would only notice mid-stream (out-of-vocabulary ids, no room for output) is refused
here, before any stream exists, as a `TokensRejected` the swap turns into this vLLM's client error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vllm_tokens_patch.adapters.base import Adapter, RenderContext


class TokensRejected(ValueError):
    """The client's ids cannot be served; the message is the client-facing reason."""

    def __init__(self, message: str, param: str | None = "tokens", reason: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.reason = reason
        """The `reason` label of the refusal metric."""


CHUNK = 512
"""Ids compared per slice when locating a difference: slices compare at C speed, one chunk in Python."""


def first_difference(rendered: Sequence[int], tokens: Sequence[int]) -> int | None:
    """The first index at which the lists differ (a length difference counts), or None if equal.

    Both are taken as lists: a tuple never equals a list, nor does a slice of one equal a slice of the
    other, so a render handing back a tuple would otherwise read as a difference at the first chunk."""
    if not isinstance(rendered, list):
        rendered = list(rendered)
    if not isinstance(tokens, list):
        tokens = list(tokens)
    if rendered == tokens:  # the common case, compared at C speed
        return None
    shorter = min(len(rendered), len(tokens))
    start = 0
    while start < shorter and rendered[start : start + CHUNK] == tokens[start : start + CHUNK]:
        start += CHUNK
    for index in range(start, min(start + CHUNK, shorter)):
        if rendered[index] != tokens[index]:
            return index
    return shorter


def prompt_text(tokens: list[int], context: RenderContext) -> str | None:
    """The text of the ids the engine is fed, for `return_prompt_text` (None without a tokenizer)."""
    if context.tokenizer is None:
        return None
    text: str = context.tokenizer.decode(tokens, skip_special_tokens=False)
    return text


def validate_ids(tokens: Sequence[int], context: RenderContext) -> None:
    """Raise `TokensRejected` for what vLLM would only notice inside the engine (mid-stream).

    The request model already refused empty lists and negative or non-integer ids, so one C-speed `max`
    is the whole scan; the offending position is located only on failure.
    """
    if not tokens:
        raise TokensRejected("`tokens` must contain at least one token id")
    bound = context.id_bound
    if bound is not None and max(tokens) > bound:
        index, token_id = next((i, t) for i, t in enumerate(tokens) if t > bound)
        raise TokensRejected(
            f"Token id {token_id} at tokens[{index}] is out of vocabulary (valid ids are 0 to {bound})",
            reason="out_of_vocabulary",
        )
    if len(tokens) >= context.max_model_len:
        raise TokensRejected(
            f"This model's maximum context length is {context.max_model_len} tokens. However, your "
            f"request has {len(tokens)} input tokens in `tokens`, which leaves no room for output. "
            "Please reduce the length of the input.",
            reason="context_length",
        )


def check_engine_prompt(prompt: Mapping[str, Any], adapter: Adapter) -> None:
    """Refuse engine inputs whose ids are bound to media, embeddings or an encoder prompt."""
    kind = adapter.prompt_kind(prompt)
    if kind is not None:
        raise TokensRejected(
            f"`tokens` cannot replace a {kind!r} prompt with media or embeddings; send text-only messages",
            param="messages",
            reason="multimodal",
        )
