"""splice.plan driven by a stand-in renderer (the template families run in `nox -s families`)."""

from __future__ import annotations

from typing import Any

from vllm_tokens_patch import splice

END = 1001


def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
    """ChatML-like: one id per character, `<|im_end|>` as 1001; tool calls rendered by name."""
    ids: list[int] = []
    for message in messages:
        calls = "".join(call["function"]["name"] for call in message.get("tool_calls") or [])
        ids += [ord(c) for c in f"{message['role']}:{message.get('content') or ''}{calls}"] + [END, 10]
    return ids + ([ord(c) for c in "assistant:"] if add_generation_prompt else [])


def run(messages: list[Any], prefix: list[int], **kwargs: Any) -> tuple[splice.Splice, int]:
    steps = splice.plan(messages, prefix, **kwargs)
    renders = 0
    try:
        ask = next(steps)
        while True:
            renders += 1
            ask = steps.send(render(ask.messages, ask.add_generation_prompt))
    except StopIteration as done:
        return done.value, renders


def test_a_plain_turn_costs_two_stand_in_renders_and_gives_the_full_render() -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    messages = [*history, {"role": "user", "content": "more"}]
    prefix = render(history, False)[:-1]  # the model sampled <|im_end|>, not the newline after it
    result, renders = run(messages, prefix)
    assert renders == 2
    assert (prefix + result.bridge, result.close) == (render(messages, True), "sampled")


def test_one_shot_tool_calls_are_kept_for_the_requests_own_render() -> None:
    """pydantic hands `Iterable` fields over as one-shot iterators: the stand-ins must not exhaust them."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    assistant = {"role": "assistant", "content": "", "tool_calls": iter([call])}
    messages = [{"role": "user", "content": "hi"}, assistant, {"role": "tool", "content": "sunny"}]
    result, renders = run(messages, [1, 2, END])
    assert assistant["tool_calls"] == [call], "the request's message still has its call"
    assert renders == 6  # a turn with tool calls also measures its close with those calls
    assert result.close == "sampled"
    assert result.bridge == render(messages, True)[len(render(messages[:2], False)) - 1 :]  # after <|im_end|>
