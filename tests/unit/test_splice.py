"""splice.plan driven by a stand-in renderer (the template families run in `nox -s families`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from vllm_tokens_patch import splice

END = 1001
Renderer = Callable[[list[dict[str, Any]], bool], list[int]]


def _text(content: Any) -> str:
    """A string content, or the text parts of a list of parts joined (as vLLM joins them)."""
    if isinstance(content, list):
        return "\n".join(part if isinstance(part, str) else part.get("text", "") for part in content)
    return str(content or "")


def _turn(message: dict[str, Any]) -> list[int]:
    calls = "".join(call["function"]["name"] for call in message.get("tool_calls") or [])
    return [ord(c) for c in f"{message['role']}:{_text(message.get('content'))}{calls}"] + [END, 10]


def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
    """ChatML-like: one id per character, `<|im_end|>` as 1001; tool calls rendered by name."""
    ids: list[int] = []
    for message in messages:
        ids += _turn(message)
    return ids + ([ord(c) for c in "assistant:"] if add_generation_prompt else [])


def hoisting(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
    """DeepSeek-V3-like: every system message's content first (after a BOS, 1000), the other turns after."""
    notes = "\n\n".join(_text(m.get("content")) for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    return [1000, *(ord(c) for c in notes), *render(rest, add_generation_prompt)]


def strict(inner: Renderer) -> Renderer:
    """Refuses a tool result that does not follow an assistant turn with tool calls (tool results aside)."""

    def renderer(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        calls = False
        for message in messages:
            if message["role"] == "tool" and not calls:
                raise splice.RenderRefused("a tool result must follow a tool call")
            if message["role"] != "tool":
                calls = bool(message.get("tool_calls"))
        return inner(messages, add_generation_prompt)

    return renderer


def run(
    messages: list[Any], prefix: list[int], renderer: Renderer = render, **kwargs: Any
) -> tuple[splice.Splice, int]:
    steps = splice.plan(messages, prefix, **kwargs)
    renders = 0
    try:
        ask = next(steps)
        while True:
            renders += 1
            try:
                ids = renderer(ask.messages, ask.add_generation_prompt)
            except splice.RenderRefused as refused:
                ask = steps.throw(refused)
            else:
                ask = steps.send(ids)
    except StopIteration as done:
        return done.value, renders


def refusal(messages: list[Any], renderer: Renderer) -> tuple[str, int]:
    """The reason a splice of `messages` is refused, and how many renders it took."""
    renders = 0

    def counted(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        nonlocal renders
        renders += 1
        return renderer(messages, add_generation_prompt)

    with pytest.raises(splice.SpliceError) as refused:
        run(messages, [1, 2, END], counted)
    assert refused.value.param == "messages"
    return str(refused.value), renders


HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
NOTE = {"role": "system", "content": "Answer in French."}


def test_a_plain_turn_costs_three_stand_in_renders_and_gives_the_full_render() -> None:
    """Two to read the seam, one to prove the new messages' content is in it."""
    messages = [*HISTORY, NOTE, {"role": "user", "content": "more"}]
    prefix = render(HISTORY, False)[:-1]  # the model sampled <|im_end|>, not the newline after it
    result, renders = run(messages, prefix)
    assert renders == 3
    assert (prefix + result.bridge, result.close) == (render(messages, True), "sampled")


def test_a_moved_system_note_is_refused_naming_it() -> None:
    """Issue 15: a template that renders every system message first; the splice would lack the note."""
    messages = [*HISTORY, NOTE, {"role": "user", "content": "Again"}]
    reason, renders = refusal(messages, hoisting)
    assert reason.startswith("messages[2] (system) is rendered by the chat template before the end of the")
    assert "messages[3]" not in reason
    assert renders == 3 + 2  # the proof, then one render per new message to name the one that moved
    without = [*HISTORY, {"role": "user", "content": "Again"}]  # the user turn alone splices
    prefix = hoisting(HISTORY, False)[:-1]
    result, _ = run(without, prefix, hoisting)
    assert prefix + result.bridge == hoisting(without, True)


def test_every_moved_message_is_named_and_the_request_is_left_untouched() -> None:
    parts = {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}
    messages = [*HISTORY, NOTE, {"role": "user", "content": "Again"}, parts]
    before = copy.deepcopy(messages)
    reason, _ = refusal(messages, hoisting)
    assert reason.startswith("messages[2] (system) and messages[4] (system) are rendered")
    assert messages == before, "the markers go into the stand-ins only"


def test_content_rendered_nowhere_is_no_refusal() -> None:
    """A template that drops a role everywhere: the stock route drops it alike, nothing to refuse."""

    def dropping(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        return render([m for m in messages if m["role"] != "developer"], add_generation_prompt)

    prefix = render(HISTORY, False)[:-1]
    alone = [*HISTORY, {"role": "developer", "content": ["Be brief."]}]  # a string part: also changed
    result, renders = run(alone, prefix, dropping)
    assert (result.bridge, renders) == ([10, *(ord(c) for c in "assistant:")], 3)
    mixed = [*alone, {"role": "user", "content": "hi"}, {"role": "user", "content": None}]  # no text: kept
    result, _ = run(mixed, prefix, dropping)
    assert prefix + result.bridge == dropping(mixed, True)


def test_moves_that_no_single_message_makes_are_refused_too() -> None:
    def together(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        """Renders a flag first when every new text ends with the marker (only the all-changed render)."""
        ended = [_text(m.get("content")).endswith(splice.MARKER) for m in messages[2:]]
        return [*([7] if len(ended) == 2 and all(ended) else []), *render(messages, add_generation_prompt)]

    reason, renders = refusal([*HISTORY, NOTE, {"role": "user", "content": "Again"}], together)
    assert reason.startswith("the chat template renders the new messages (after the last assistant message)")
    assert renders == 5


def test_a_stand_in_the_template_refuses_only_when_changed_is_refused() -> None:
    def picky(messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        if any(_text(m.get("content")).endswith(splice.MARKER) for m in messages):
            raise splice.RenderRefused("no trailing dots")
        return render(messages, add_generation_prompt)

    reason, _ = refusal([*HISTORY, NOTE], picky)
    assert reason == "vLLM cannot render the new messages after an assistant turn: no trailing dots"


def test_the_proof_holds_on_the_tool_calls_path_too() -> None:
    """A template that refuses tool results after a plain turn: the seam is read from a stand-in with the
    calls, and the proof is run there."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    asked = {"role": "assistant", "content": "", "tool_calls": [call]}
    tool = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    messages = [HISTORY[0], asked, tool, NOTE]
    reason, renders = refusal(messages, strict(hoisting))
    assert reason.startswith("messages[3] (system) is rendered by the chat template before the end of")
    assert renders == 1 + 4 + 3 + 2  # refused plain, the close with and without calls, the seam, names
    result, renders = run([HISTORY[0], asked, tool], [1, 2, END], strict(render))
    assert (result.close, renders) == ("sampled", 8)


def test_one_shot_tool_calls_are_kept_for_the_requests_own_render() -> None:
    """pydantic hands `Iterable` fields over as one-shot iterators: the stand-ins must not exhaust them."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    assistant = {"role": "assistant", "content": "", "tool_calls": iter([call])}
    messages = [{"role": "user", "content": "hi"}, assistant, {"role": "tool", "content": "sunny"}]
    result, renders = run(messages, [1, 2, END])
    assert assistant["tool_calls"] == [call], "the request's message still has its call"
    assert renders == 7  # a turn with tool calls also measures its close with those calls (+1: the proof)
    assert result.close == "sampled"
    assert result.bridge == render(messages, True)[len(render(messages[:2], False)) - 1 :]  # after <|im_end|>


PROMPT = render(HISTORY[:1], True)
"""Turn 1's `prompt_token_ids`: the user turn and the generation prompt."""
NEXT = [*HISTORY, {"role": "user", "content": "more"}]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_a_prefix_without_the_sampled_ids_is_refused(add_generation_prompt: bool) -> None:
    """Issue 18: `prefix_tokens` = the previous `prompt_token_ids` alone (the sampled ids forgotten) would
    splice an empty assistant turn after the prompt; it is a 400 that says what to send."""
    with pytest.raises(splice.SpliceError) as refused:
        run(NEXT, PROMPT, add_generation_prompt=add_generation_prompt)
    assert refused.value.param == "prefix_tokens"
    assert "`prompt_token_ids` + `choices[0].token_ids`" in str(refused.value)


def test_the_prompt_with_its_sampled_ids_is_spliced_at_no_extra_cost() -> None:
    result, renders = run(NEXT, [*PROMPT, *(ord(c) for c in "yo"), END])
    assert (renders, result.close) == (3, "sampled")


def test_an_empty_assistant_turn_after_the_prompt_is_spliced() -> None:
    """Nothing was sampled into the message (e.g. an immediate stop): the prefix may end at the prompt."""
    empty = [HISTORY[0], {"role": "assistant", "content": ""}, NEXT[-1]]
    result, _ = run(empty, PROMPT)
    assert result.close == "added"


def test_a_truncated_turn_ending_like_the_prompt_costs_two_renders_more_and_is_spliced() -> None:
    """The last sampled id equals the generation prompt's last id (`:`), but the prefix does not end
    with the whole prompt: checked, not refused."""
    prefix = [*PROMPT, *(ord(c) for c in "yo:")]
    result, renders = run(NEXT, prefix)
    assert (renders, result.close) == (5, "added")
    assert prefix + result.bridge == [*prefix, END, 10, *render(NEXT[-1:], True)]
