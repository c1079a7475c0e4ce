"""Render as vLLM does (`apply_chat_template(..., tokenize=False)`, then `encode` without special tokens) and
drive `splice.plan` to completion with that renderer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from vllm_tokens_patch import splice


def render_text(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **chat_template_kwargs: Any,
) -> str:
    text = tokenizer.apply_chat_template(
        [dict(message) for message in messages],
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **chat_template_kwargs,
    )
    assert isinstance(text, str)
    return text


def encode(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in ids]


def render_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **chat_template_kwargs: Any,
) -> list[int]:
    text = render_text(
        tokenizer, messages, tools=tools, add_generation_prompt=add_generation_prompt, **chat_template_kwargs
    )
    return encode(tokenizer, text)


def splice_with(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    prefix: list[int],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    **chat_template_kwargs: Any,
) -> splice.Splice:
    """Run `splice.plan` to completion: send it each render's ids, throw in `RenderRefused` when the
    template raises (jinja's `raise_exception`)."""
    steps = splice.plan(
        messages,
        prefix,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
    )
    try:
        ask = next(steps)
        while True:
            try:
                ids = render_ids(
                    tokenizer,
                    ask.messages,
                    tools=tools,
                    add_generation_prompt=ask.add_generation_prompt,
                    **chat_template_kwargs,
                )
            except jinja2.TemplateError as exc:
                ask = steps.throw(splice.RenderRefused(str(exc)))
            else:
                ask = steps.send(ids)
    except StopIteration as done:
        result = done.value
        assert isinstance(result, splice.Splice)
        return result
