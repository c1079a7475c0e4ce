"""Turn splicing: the engine prompt is the ids the client already has (`prefix_tokens`) plus a bridge that the
model's own chat template gives the new messages.

`prefix_tokens` is what the engine saw and sampled so far (the previous response's `prompt_token_ids` +
`token_ids`), never re-tokenized. The messages after the LAST assistant message are new. The bridge is read
from two renders of a short stand-in conversation that differ only in the stand-in assistant's content:

    [system?, user "u", assistant "x", *new]  and  [system?, user "u", assistant "y", *new]

Their common suffix is what the template emits after an assistant turn's content: the close of that turn
(ChatML's `<|im_end|>\\n`, or nothing in GLM-style templates), the new messages and the generation prompt.
So the cost does not grow with the history, and whatever a template does to earlier turns (think-stripping,
a default system preamble, BOS, tools in the first user turn) cancels out. A leading system message is kept
in the stand-in because some templates fold it into the last user turn. When the last assistant turn made
tool calls, its close is measured on a stand-in carrying those calls (a template may close such a turn
differently, e.g. Llama's `<|eom_id|>`), and templates that refuse tool results after an assistant without
matching calls get that stand-in for the new messages too; the calls' own rendering is measured the same
way and removed from the seam.

Proof: the seam is only right if every new message's content is rendered in it. Some templates move a
new message elsewhere (DeepSeek-V3 renders every system message right after BOS; others merge a late system
note into the first system turn), where the prefix, rendered without it, can never have it. So the stand-in
is rendered once more with every new message's text changed (`MARKER` appended): the first id where that
render differs must lie in the seam. No difference at all means the template renders that text nowhere
(the stock route drops it alike). Otherwise the splice is refused naming the messages that move (one
render per new message, only then), so the common case costs one render more and never a wrong prompt.

A common client mistake is refused rather than spliced: `prefix_tokens` that end where a prompt ends (the
previous `prompt_token_ids` without the sampled `token_ids`) while the last assistant message has
content would put an empty assistant turn in the prompt; `_refuse_a_bare_prompt` answers it with a 400.

Seam rule: if the last prefix id is the first id of the seam (the model sampled `<|im_end|>`, or, GLM-style,
the next role marker), it is not added twice; otherwise (a truncated turn, another stop id) the whole seam
follows the sampled ids. This module is sans-I/O: `plan` yields `RenderAsk`s and is sent the rendered ids,
so one implementation serves vLLM's async and sync render methods and the template tests.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vllm_tokens_patch.validation import first_difference

STAND_IN_USER = {"role": "user", "content": "u"}
STAND_IN_CONTENTS = ("x", "y")
"""Two one-token contents: the two renders differ exactly there."""
MAX_CONTENT_IDS = 4
"""More differing ids than this means the template did more with the stand-in than render its content."""
MARKER = "\n."
"""Appended to each new message's text in the proof render: it changes the ids wherever that text lands
(also through a template's `trim`)."""

CloseKind = Literal["sampled", "added", "none"]


class SpliceError(ValueError):
    """The splice cannot be done faithfully; the message is the client-facing reason (HTTP 400)."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


class RenderRefused(Exception):
    """vLLM refused to render a stand-in conversation (thrown into `plan` by its driver)."""


@dataclass(frozen=True)
class RenderAsk:
    """Render these messages with this vLLM's chat template (and the request's template kwargs)."""

    messages: list[dict[str, Any]]
    add_generation_prompt: bool


@dataclass(frozen=True)
class Splice:
    prefix_len: int
    bridge: list[int]
    close: CloseKind
    """`sampled`: the last prefix id began the seam; `added`: the whole seam was added; `none`: no bridge."""

    def header_value(self) -> str:
        return f"prefix={self.prefix_len}; bridge={len(self.bridge)}; close={self.close}"


Plan = Generator[RenderAsk, list[int], Splice]


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _materialized(message: Any) -> Any:
    """Turn one-shot iterables in a message (pydantic validates the OpenAI types' `Iterable[...]` fields,
    e.g. `tool_calls` and content parts, into lazy iterators) into lists, in place: the stand-ins copy
    them, and a copy would exhaust what the request's own render must still read."""
    if isinstance(message, MutableMapping):
        for key, value in message.items():
            if isinstance(value, Iterator):
                message[key] = list(value)
    return message


def common_suffix_length(left: Sequence[int], right: Sequence[int]) -> int:
    length = 0
    for a, b in zip(reversed(left), reversed(right), strict=False):
        if a != b:
            break
        length += 1
    return length


def _after_content(first: list[int], second: list[int]) -> list[int]:
    """What both renders have after the stand-in content; refuse if they differ by more than it."""
    suffix = common_suffix_length(first, second)
    prefix = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        prefix += 1
    if max(len(first), len(second)) - min(prefix + suffix, min(len(first), len(second))) > MAX_CONTENT_IDS:
        raise SpliceError(
            "the chat template does not render an assistant turn as its content followed by a fixed end; "
            "the turn cannot be spliced (send `tokens` instead)"
        )
    return first[len(first) - suffix :]


def _assistant(content: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _stand_in_calls(new: Sequence[Any]) -> list[dict[str, Any]]:
    """Calls whose ids match the leading tool results, for templates that check them (used only when the
    last assistant message carries no calls of its own)."""
    calls = []
    for index, message in enumerate(new):
        if _role(message) != "tool":
            break
        call_id = _field(message, "tool_call_id") or f"call_{index}"
        calls.append({"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}})
    return calls


def _stand_in(
    context: list[dict[str, Any]], content: str, tool_calls: list[dict[str, Any]] | None, new: Sequence[Any]
) -> list[dict[str, Any]]:
    # A fresh copy each time: vLLM may edit the messages it renders in place (0.15-0.18 rewrite an
    # assistant's tool calls), and the request's own messages must reach its own render untouched.
    return copy.deepcopy([*context, _assistant(content, tool_calls), *new])


def _seam(
    context: list[dict[str, Any]],
    new: list[Any],
    add_generation_prompt: bool,
    tool_calls: list[dict[str, Any]] | None,
    first_new: int = 0,
) -> Generator[RenderAsk, list[int], list[int]]:
    """The seam after the stand-in assistant's content; with new messages (`first_new`: the first one's
    index in the request), proven to hold all of their content (see `_prove`)."""
    renders = []
    for content in STAND_IN_CONTENTS:
        messages = _stand_in(context, content, tool_calls, new)
        renders.append((yield RenderAsk(messages, add_generation_prompt)))
    seam = _after_content(*renders)
    if new:
        yield from _prove(context, tool_calls, new, add_generation_prompt, renders[0], len(seam), first_new)
    return seam


def _marked(message: Any) -> dict[str, Any] | None:
    """A copy of a new message with `MARKER` appended to its text (a string content, or the last text part
    of a list of parts), or None if it has no text (or is no mapping: vLLM's messages are dicts)."""
    if not isinstance(message, Mapping):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": content + MARKER}
    if isinstance(content, Sequence):
        parts = list(content)
        for index in reversed(range(len(parts))):
            part = parts[index]
            if isinstance(part, str):
                parts[index] = part + MARKER
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts[index] = {**part, "text": part["text"] + MARKER}
            else:
                continue
            return {**message, "content": parts}
    return None


def _prove(
    context: list[dict[str, Any]],
    tool_calls: list[dict[str, Any]] | None,
    new: list[Any],
    add_generation_prompt: bool,
    render: list[int],
    seam_length: int,
    first_new: int,
) -> Generator[RenderAsk, list[int], None]:
    """Refuse unless all the new messages' text lands in the seam of `render` (the stand-in with content
    `STAND_IN_CONTENTS[0]`): a template that moves it into the earlier turns (to the start, into the first
    system turn) would render a prompt the prefix cannot be the start of. One render with every text
    changed; only if that moves, one per message to name the ones that do."""
    start = len(render) - seam_length
    marked = {index: m for index, message in enumerate(new) if (m := _marked(message)) is not None}

    def moves(which: Sequence[int]) -> Generator[RenderAsk, list[int], bool]:
        changed = [marked[index] if index in which else message for index, message in enumerate(new)]
        ask = RenderAsk(_stand_in(context, STAND_IN_CONTENTS[0], tool_calls, changed), add_generation_prompt)
        try:
            ids = yield ask
        except RenderRefused as exc:
            raise SpliceError(f"vLLM cannot render the new messages after an assistant turn: {exc}") from None
        differs = first_difference(render, ids)
        return differs is not None and differs < start

    if not marked or not (yield from moves(list(marked))):
        return
    culprits: list[int] = []
    for index in marked:
        if (yield from moves([index])):
            culprits.append(index)
    raise SpliceError(_moved_reason(new, culprits, first_new))


def _moved_reason(new: Sequence[Any], culprits: Sequence[int], first_new: int) -> str:
    if not culprits:  # only all of them together move something
        return (
            "the chat template renders the new messages (after the last assistant message) partly before the "
            "end of that assistant turn, so they cannot be added after `prefix_tokens`; send `tokens` instead"
        )
    names = " and ".join(f"messages[{first_new + index}] ({_role(new[index])})" for index in culprits)
    verb, it = ("is", "it") if len(culprits) == 1 else ("are", "them")
    return (
        f"{names} {verb} rendered by the chat template before the end of the last assistant message (this "
        f"template moves {it} into the earlier turns, e.g. to the start of the conversation), so {it} cannot "
        f"be added after `prefix_tokens`, which were rendered without {it}; send `tokens` instead, or put "
        f"{it} at the start of the conversation from its first turn on"
    )


def _join(prefix: list[int], seam: list[int]) -> Splice:
    if not seam:
        raise SpliceError("the chat template adds nothing for the new messages")
    if prefix and prefix[-1] == seam[0]:
        return Splice(len(prefix), seam[1:], "sampled")
    return Splice(len(prefix), seam, "added")


def _seam_for_calls(
    context: list[dict[str, Any]],
    new: list[Any],
    add_generation_prompt: bool,
    calls: list[dict[str, Any]],
    plain_seam: list[int] | None,
    first_new: int,
) -> Generator[RenderAsk, list[int], list[int]]:
    """The seam after a turn with tool calls, whose close may differ from a plain turn's (Llama's
    `<|eom_id|>`): the new messages' part from the plain stand-in (or, for templates that demand matching
    calls, from one carrying `calls`, proven there), the close from a stand-in turn with `calls` minus their
    rendering (no new messages: nothing to prove)."""
    try:
        close = yield from _seam(context, [], False, None)
        end_with_calls = yield from _seam(context, [], False, calls)
        if plain_seam is None:
            with_calls = yield from _seam(context, new, add_generation_prompt, calls, first_new)
    except RenderRefused as exc:
        raise SpliceError(f"vLLM cannot render the new messages after an assistant turn: {exc}") from None
    if plain_seam is not None:
        head, new_part = plain_seam[: len(close)], plain_seam[len(close) :]
        if head != close:
            raise SpliceError(
                "the chat template renders the new messages in a way the turn cannot be split at"
            )
    else:
        head, new_part = with_calls[: len(end_with_calls)], with_calls[len(end_with_calls) :]
        if head != end_with_calls:
            raise SpliceError(
                "the chat template renders tool calls in a way the turn cannot be spliced around"
            )
    turn_close = end_with_calls[len(end_with_calls) - len(close) :] if close else []
    return [*turn_close, *new_part]


def plan(
    messages: Sequence[Any],
    prefix: list[int],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> Plan:
    """The splice of `messages` onto `prefix`; yields the renders it needs (see the module docstring)."""
    assistants = [index for index, message in enumerate(messages) if _role(message) == "assistant"]
    if not assistants:
        raise SpliceError(
            "`prefix_tokens` needs an assistant message in `messages`: the messages after the last one are "
            "the new turn (send `tokens` for a first turn)"
        )
    first_new = assistants[-1] + 1
    new = [_materialized(message) for message in messages[first_new:]]
    if not new:
        if continue_final_message:  # the model resumes its own turn, e.g. after a truncation
            return Splice(len(prefix), [], "none")
        raise SpliceError(
            "nothing after the last assistant message: add the new messages, or set "
            "`continue_final_message` to let the model continue its turn"
        )
    if continue_final_message:
        raise SpliceError("`continue_final_message` needs `messages` to end with the assistant message")
    context = [dict(_materialized(messages[0]))] if _role(messages[0]) == "system" else []
    context.append(dict(STAND_IN_USER))
    calls = _field(_materialized(messages[assistants[-1]]), "tool_calls") or None
    try:
        seam: list[int] | None = yield from _seam(context, new, add_generation_prompt, None, first_new)
    except RenderRefused as plain_refused:
        seam, calls = None, calls or _stand_in_calls(new)
        if not calls:
            raise SpliceError(
                f"vLLM cannot render the new messages after an assistant turn: {plain_refused}"
            ) from None
    if calls:
        seam = yield from _seam_for_calls(context, new, add_generation_prompt, list(calls), seam, first_new)
    assert seam is not None
    if _has_content(messages[assistants[-1]]) and (not add_generation_prompt or prefix[-1:] == seam[-1:]):
        yield from _refuse_a_bare_prompt(context, prefix)
    return _join(prefix, seam)


def _has_content(message: Any) -> bool:
    """The assistant message says something (text, parts or tool calls): the model sampled ids for it."""
    content = _field(message, "content")
    return bool(content) or bool(_field(message, "tool_calls"))


def _refuse_a_bare_prompt(
    context: list[dict[str, Any]], prefix: list[int]
) -> Generator[RenderAsk, list[int], None]:
    """Refuse `prefix_tokens` that end where a prompt ends (the previous response's `prompt_token_ids`
    alone) while the last assistant message has content: the sampled ids are missing, and the splice would
    add an empty assistant turn after the prompt. A prompt's end is what the template emits after a user
    message's content with the generation prompt (two stand-in renders that differ only in that content:
    ChatML's `<|im_end|>\n<|im_start|>assistant\n`, Mistral's `[/INST]`). Asked only when the prefix's last
    id is the seam's last, so a normal turn costs nothing more."""
    users = [[*context[:-1], {"role": "user", "content": content}] for content in STAND_IN_CONTENTS]
    try:
        first = yield RenderAsk(copy.deepcopy(users[0]), True)
        second = yield RenderAsk(copy.deepcopy(users[1]), True)
    except RenderRefused:
        return
    end = common_suffix_length(first, second)
    if end and end < len(first) and prefix[-end:] == first[-end:]:
        raise SpliceError(
            "`prefix_tokens` end where a prompt ends, but the last assistant message has content: the ids "
            "the model sampled for it are missing. Send `prefix_tokens` = the previous response's "
            "`prompt_token_ids` + `choices[0].token_ids`",
            param="prefix_tokens",
        )
