"""splice.py against our own templates of ten chat-template families and one strict template.

Each case builds the conversation, the ids the model would have sampled (`prefix`), and the full render of
the conversation (what `/v1/chat/completions` would feed). Where nothing drifts, `prefix + bridge` must BE
the full render. Where something drifts (think-stripping, another tokenization, another stop id, a folded
system prompt), the prefix is kept verbatim and the bridge must be what the full render has after the
corresponding point: the end of the last assistant turn, i.e. the N-th turn-end id of the full render
(`<|im_end|>`, `<|eot_id|>`/`<|eom_id|>`, `</s>`, DeepSeek's end of sentence, GLM's role markers), N being the
number of turn ends before the sampled stop in the prefix, plus one. With `close == "sampled"` the model
sampled that id itself, so the bridge starts right after it; otherwise the bridge starts with it.

New messages that are notes (system, developer) or mix them with tool results and user turns are spliced
like that too, unless the template refuses them itself (so does the stock route: `REFUSED`, None) or moves
them out of the bridge (to the start, into the first system turn): then the splice must be refused, naming
exactly the messages that move (`REFUSED`, their indexes), never answered with a prompt that lacks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2
import pytest
from vllm_tokens_patch_testbed.family_templates import FAMILIES, Family
from vllm_tokens_patch_testbed.splice_driver import encode, render_ids, render_text, splice_with

from vllm_tokens_patch.splice import SpliceError

PrefixKind = Literal["stop", "truncated", "other_stop", "retokenized", "gen_prompt", "continue"]
CLOSE_BY_KIND = {
    "stop": "sampled",
    "truncated": "added",
    "other_stop": "added",
    "retokenized": "sampled",
    "gen_prompt": "sampled",
    "continue": "none",
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _call(call_id: str, city: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": city}},
    }


def _tool(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _user(content: str) -> dict[str, Any]:
    return {"role": "user", "content": content}


@dataclass(frozen=True)
class Case:
    messages: list[dict[str, Any]]
    kind: PrefixKind
    tools: list[dict[str, Any]] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    answer: str = ""
    """The last assistant's answer text (re-tokenized in the `retokenized` case)."""


def _assistant(family: Family, answer: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    content = f"<think>\nLet me think step by step.\n</think>\n\n{answer}" if family.reasoning else answer
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def _plain(family: Family, kind: PrefixKind) -> Case:
    answer = "I am fine, thank you."
    messages = [
        _user("Hello world, how are you today?"),
        _assistant(family, answer),
        _user("Tell me a story about a robot."),
    ]
    return Case(messages, kind, answer=answer)


def _system(family: Family) -> Case:
    answer = "Rain in Oslo."
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Be brief."},
        _user("What is the weather in Paris?"),
        _assistant(family, "It is sunny and warm in Paris."),
        _user("What about Oslo?"),
        _assistant(family, answer),
        _user("Thanks! Which city is colder?"),
    ]
    return Case(messages, "stop", answer=answer)


def _truncated(family: Family) -> Case:
    answer = "Once upon a time a small robot"
    messages = [_user("Tell me a story about a robot."), _assistant(family, answer), _user("Go on, please.")]
    return Case(messages, "truncated", answer=answer)


def _continue(family: Family) -> Case:
    answer = "Once upon a time a small robot"
    messages = [_user("Tell me a story about a robot."), _assistant(family, answer)]
    return Case(messages, "continue", answer=answer)


def _tool_one(family: Family) -> Case:
    messages = [
        _user("What is the weather in Paris?"),
        _assistant(family, "", [_call("call_1", "Paris")]),
        _tool("call_1", "sunny, 21 degrees"),
    ]
    return Case(messages, "stop", tools=TOOLS)


def _tool_several(family: Family) -> Case:
    messages = [
        _user("What about Lima and Oslo?"),
        _assistant(family, "", [_call("call_1", "Lima"), _call("call_2", "Oslo")]),
        _tool("call_1", "sunny, 21 degrees"),
        _tool("call_2", "rain, 4 degrees"),
    ]
    return Case(messages, "stop", tools=TOOLS)


def _user_after_tools(family: Family) -> Case:
    answer = "It is sunny in Paris, 21 degrees."
    messages = [
        _user("What is the weather in Paris?"),
        _assistant(family, "", [_call("call_1", "Paris")]),
        _tool("call_1", "sunny, 21 degrees"),
        _assistant(family, answer),
        _user("Thanks! What about Oslo?"),
    ]
    return Case(messages, "stop", tools=TOOLS, answer=answer)


def _nothink(family: Family) -> Case:
    answer = "I am fine, thank you."
    messages = [
        _user("Hello world, how are you today?"),
        {"role": "assistant", "content": answer},  # the reasoning parser leaves no reasoning in the content
        _user("Tell me a story about a robot."),
    ]
    return Case(messages, "gen_prompt", kwargs={"enable_thinking": False}, answer=answer)


NOTE = {"role": "system", "content": "Answer in French."}
DEVELOPER = {"role": "developer", "content": "Be brief."}


def _late(family: Family, *new: dict[str, Any]) -> Case:
    """New messages after a plain answer: a system note, a developer message (alone, or before a user)."""
    answer = "I am fine, thank you."
    messages = [_user("Hello world, how are you today?"), _assistant(family, answer), *new]
    return Case(messages, "stop", answer=answer)


def _after_call(family: Family, *new: dict[str, Any]) -> Case:
    """New messages after a turn that called a tool: its result, then notes and a user turn."""
    messages = [
        _user("What is the weather in Paris?"),
        _assistant(family, "", [_call("call_1", "Paris")]),
        _tool("call_1", "sunny, 21 degrees"),
        *new,
    ]
    return Case(messages, "stop", tools=TOOLS)


SCENARIOS: dict[str, Callable[[Family], Case]] = {
    "plain": lambda family: _plain(family, "stop"),
    "system": _system,
    "truncated": _truncated,
    "other_stop": lambda family: _plain(family, "other_stop"),
    "continue": _continue,
    "tool_one": _tool_one,
    "tool_several": _tool_several,
    "user_after_tools": _user_after_tools,
    "retokenized": lambda family: _plain(family, "retokenized"),
    "nothink": _nothink,
    "late_system": lambda family: _late(family, NOTE),
    "late_system_user": lambda family: _late(family, NOTE, _user("Tell me a story about a robot.")),
    "late_developer": lambda family: _late(family, DEVELOPER),
    "tool_then_user": lambda family: _after_call(family, _user("Thanks! What about Oslo?")),
    "late_mixed": lambda family: _after_call(family, NOTE, DEVELOPER, _user("Thanks! What about Oslo?")),
}

_OTHER_STOP = "the prefix ends with another stop id than the close; the whole close follows it"
_RETOKENIZED = "the sampled answer has another tokenization of the same text than a re-render gives"
_STRIPPED = "the template drops the reasoning of this turn on re-render"
_R1 = "R1-style: the reasoning of every assistant turn but the final message is dropped, tool loop included"

DRIFT: dict[tuple[str, str], str] = {
    **{(name, "other_stop"): _OTHER_STOP for name in FAMILIES},
    **{(name, "retokenized"): _RETOKENIZED for name in FAMILIES},
    **{
        ("qwen3", s): _STRIPPED
        for s in ["plain", "system", "truncated", "user_after_tools", "tool_then_user"]
    },
    ("qwen3", "other_stop"): f"{_OTHER_STOP}; {_STRIPPED}",
    ("qwen3", "retokenized"): f"{_RETOKENIZED}; {_STRIPPED}",
    ("qwen3", "nothink"): "the prompt had an empty `<think></think>` block; history renders without it",
    **{
        ("deepseek", s): _R1
        for s in [
            "plain",
            "system",
            "truncated",
            "tool_one",
            "tool_several",
            "user_after_tools",
            "tool_then_user",
        ]
    },
    ("deepseek", "retokenized"): f"{_RETOKENIZED}; {_R1}",
    ("mistral", "system"): "the system prompt is folded into the LAST user turn: it moves to the new turn",
}
"""Cases whose prefix is not a prefix of the full render, and why. Every other case must be exact."""

_NOTES = ["late_system", "late_system_user", "late_developer", "late_mixed"]
_IN_ORDER_ONLY = [
    "chatml",
    "qwen3",
    "llama3",
    "glm",
    "mistral",
    "hermes",
    "deepseek",
    "strict",
    "strict_named",
]
REFUSED: dict[tuple[str, str], tuple[int, ...] | None] = {
    # The template raises on a system message that is not the first, and on the `developer` role.
    **{(name, s): None for name in _IN_ORDER_ONLY for s in _NOTES},
    ("mistral", "tool_then_user"): None,  # a user turn right after a tool result breaks its alternation
    # Every system message goes right after BOS (the `developer` role is rendered nowhere, here or there).
    ("deepseek_v3", "late_system"): (2,),
    ("deepseek_v3", "late_system_user"): (2,),
    ("deepseek_v3", "late_mixed"): (3,),
    # Every system and developer message goes into the first system turn.
    ("chatml_merged", "late_system"): (2,),
    ("chatml_merged", "late_system_user"): (2,),
    ("chatml_merged", "late_developer"): (2,),
    ("chatml_merged", "late_mixed"): (3, 4),
}
"""Cases the splice must refuse: None, the template refuses the conversation itself (the stock route too);
else the indexes of exactly the messages the template moves before the end of the last assistant turn.
Every other case (`chatml_inline` renders every note where it stands) must splice as above."""

NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("mistral", "other_stop"): "Mistral's only end-of-generation id is `</s>`, the close itself",
    (
        "deepseek",
        "other_stop",
    ): "DeepSeek's only end-of-generation id is its end of sentence, the close itself",
    **{
        (name, "nothink"): "the template has no `enable_thinking` switch"
        for name in [
            "chatml",
            "llama3",
            "mistral",
            "hermes",
            "strict",
            "strict_named",
            "deepseek_v3",
            "chatml_merged",
            "chatml_inline",
        ]
    },
    ("deepseek", "nothink"): "R1-style: the template has no `enable_thinking` switch",
    (
        "deepseek_v3",
        "other_stop",
    ): "DeepSeek's only end-of-generation id is its end of sentence, the close itself",
    ("glm", "nothink"): "every GLM case already runs with enable_thinking=False (`<think></think>` prompt)",
}


def _params() -> list[Any]:
    params = []
    for name in FAMILIES:
        for scenario in SCENARIOS:
            if (name, scenario) in NOT_APPLICABLE:
                continue
            params.append(pytest.param(name, scenario, id=f"{name}-{scenario}"))
    return params


def _token_id(tokenizer: Any, token: str) -> int:
    ids = encode(tokenizer, token)
    assert len(ids) == 1, f"{token!r} is not one id: {ids}"
    return ids[0]


def _sampled_prefix(family: Family, tokenizer: Any, case: Case) -> tuple[list[int], int]:
    """The ids the engine saw and sampled, and how many of them precede the sampled stop (the body)."""
    last = max(i for i, message in enumerate(case.messages) if message["role"] == "assistant")
    kwargs = {**family.kwargs, **case.kwargs}
    # The history up to the last assistant turn, cut where the model stopped sampling: after the stop id
    # that closes the turn (before the template's glue), or, GLM-style, after the next role marker.
    history = render_text(tokenizer, case.messages[: last + 1], tools=case.tools, **kwargs)
    assert history.endswith(family.glue)
    history = history[: len(history) - len(family.glue)]
    stop = next((s for s in family.stops if history.endswith(s)), "")
    assert stop or not family.stops, repr(history[-40:])
    text = history[: len(history) - len(stop)]
    stop_ids = [_token_id(tokenizer, stop)] if stop else []
    if not family.stops and last + 1 < len(case.messages):
        stop_ids = [_token_id(tokenizer, family.next_markers[case.messages[last + 1]["role"]])]
    if case.kind == "gen_prompt":  # the generation-prompt render, then the sampled content and stop
        prompt = render_ids(
            tokenizer, case.messages[:last], tools=case.tools, add_generation_prompt=True, **kwargs
        )
        body = prompt + encode(tokenizer, case.messages[last]["content"])
        return body + stop_ids, len(body)
    body = encode(tokenizer, text)
    if case.kind in ("truncated", "continue"):
        return body, len(body)
    if case.kind == "other_stop":
        assert family.other_stop is not None
        return [*body, _token_id(tokenizer, family.other_stop)], len(body)
    if case.kind == "retokenized":
        start = text.rindex(case.answer)
        chars = [_token_id(tokenizer, char) for char in case.answer]  # one id per character
        body = encode(tokenizer, text[:start]) + chars + encode(tokenizer, text[start + len(case.answer) :])
        canonical = encode(tokenizer, text)
        assert body != canonical and tokenizer.decode(body) == tokenizer.decode(canonical)
    return body + stop_ids, len(body)


def _nth_turn_end(family: Family, tokenizer: Any, ids: list[int], n: int) -> int:
    ends = {_token_id(tokenizer, token) for token in family.turn_ends}
    positions = [index for index, token in enumerate(ids) if token in ends]
    assert len(positions) >= n, f"the render has {len(positions)} turn ends, wanted the {n}-th"
    return positions[n - 1]


def _assert_refused(family: Family, tokenizer: Any, case: Case, named: tuple[int, ...] | None) -> None:
    """The splice is refused, with the stock route (the template raises) or naming exactly `named`."""
    kwargs = {**family.kwargs, **case.kwargs}
    last = max(i for i, message in enumerate(case.messages) if message["role"] == "assistant")
    prefix = render_ids(tokenizer, case.messages[: last + 1], tools=case.tools, **kwargs)
    with pytest.raises(SpliceError) as refused:
        splice_with(tokenizer, case.messages, prefix, tools=case.tools, **kwargs)
    reason = str(refused.value)
    assert refused.value.param == "messages"
    if named is None:
        assert "vLLM cannot render" in reason
        with pytest.raises(jinja2.TemplateError):
            render_ids(tokenizer, case.messages, tools=case.tools, add_generation_prompt=True, **kwargs)
        return
    assert tuple(int(i) for i in re.findall(r"messages\[(\d+)\]", reason)) == named, reason
    for index in named:
        assert f"messages[{index}] ({case.messages[index]['role']})" in reason
    assert "before the end of the last assistant message" in reason
    # The template does move them: the full render has each one's content before the end of the history's
    # render (a template that renders it where it stands has it after).
    full = render_text(tokenizer, case.messages, tools=case.tools, add_generation_prompt=True, **kwargs)
    history = render_text(tokenizer, case.messages[: last + 1], tools=case.tools, **kwargs)
    for index in named:
        assert full.index(case.messages[index]["content"]) < len(history) - len(family.glue)


@pytest.mark.parametrize(("name", "scenario"), _params())
def test_splice(tokenizers: dict[str, Any], name: str, scenario: str) -> None:
    family, tokenizer = FAMILIES[name], tokenizers[name]
    case = SCENARIOS[scenario](family)
    if (name, scenario) in REFUSED:
        _assert_refused(family, tokenizer, case, REFUSED[name, scenario])
        return
    kwargs = {**family.kwargs, **case.kwargs}
    prefix, body_len = _sampled_prefix(family, tokenizer, case)
    continuing = case.kind == "continue"

    result = splice_with(
        tokenizer,
        case.messages,
        prefix,
        tools=case.tools,
        add_generation_prompt=not continuing,
        continue_final_message=continuing,
        **kwargs,
    )

    assert result.prefix_len == len(prefix)
    if continuing:
        assert (result.bridge, result.close) == ([], "none")
        return
    close = CLOSE_BY_KIND[case.kind]
    full = render_ids(tokenizer, case.messages, tools=case.tools, add_generation_prompt=True, **kwargs)
    spliced = prefix + result.bridge
    shown = f"\nspliced: {tokenizer.decode(spliced)!r}\nfull:    {tokenizer.decode(full)!r}"
    if (name, scenario) not in DRIFT:
        assert spliced == full, f"bridge {result.bridge}, close {result.close}{shown}"
        assert result.close == close
        return
    # Drift: the prefix is kept verbatim; the bridge is what the full render has after the corresponding
    # point, the end of the last assistant turn (the n-th turn end of the full render).
    assert full[: len(prefix)] != prefix, "the case was meant to drift"
    n = sum(token in {_token_id(tokenizer, t) for t in family.turn_ends} for token in prefix[:body_len]) + 1
    point = _nth_turn_end(family, tokenizer, full, n)
    if close == "sampled":
        assert prefix[-1] == full[point]
        assert result.bridge == full[point + 1 :], f"close {result.close}{shown}"
    else:
        assert result.bridge == full[point:], f"close {result.close}{shown}"
    assert result.close == close
    if scenario == "nothink":
        assert tokenizer.decode(result.bridge).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize(("name", "scenario"), sorted(NOT_APPLICABLE), ids="-".join)
def test_not_applicable(name: str, scenario: str) -> None:
    """The family x scenario pairs that are not run, each with its reason, checked against the family."""
    family = FAMILIES[name]
    assert NOT_APPLICABLE[name, scenario]
    if scenario == "other_stop":
        assert family.other_stop is None
    elif scenario == "nothink":
        assert "enable_thinking" not in family.template or family.kwargs.get("enable_thinking") is False
    else:
        pytest.fail(f"no check for {scenario}")


def test_every_pair_is_run_or_explained() -> None:
    ran = {(name, scenario) for name, scenario in (p.values for p in _params())}
    assert ran | set(NOT_APPLICABLE) == {(n, s) for n in FAMILIES for s in SCENARIOS}
    assert not ran & set(NOT_APPLICABLE)
    assert set(DRIFT) <= ran | set(NOT_APPLICABLE)
    assert set(REFUSED) <= ran
    assert not set(REFUSED) & set(DRIFT)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_refused(tokenizers: dict[str, Any], name: str) -> None:
    """What cannot be spliced raises SpliceError."""
    family, tokenizer = FAMILIES[name], tokenizers[name]
    user = _user("Hello world, how are you today?")
    prefix = render_ids(tokenizer, [user], add_generation_prompt=True, **family.kwargs)
    with pytest.raises(SpliceError, match="needs an assistant message"):
        splice_with(tokenizer, [user], prefix, **family.kwargs)
    history = [user, _assistant(family, "I am fine.")]
    with pytest.raises(SpliceError, match="nothing after the last assistant"):
        splice_with(tokenizer, history, prefix, **family.kwargs)
    with pytest.raises(SpliceError, match="continue_final_message"):
        splice_with(
            tokenizer, [*history, _user("Go on.")], prefix, continue_final_message=True, **family.kwargs
        )
    # Issue 18: the previous prompt's ids without the sampled ones, in every family's real template.
    with pytest.raises(SpliceError, match=r"`prompt_token_ids` \+ `choices\[0\]\.token_ids`") as bare:
        splice_with(tokenizer, [*history, _user("Go on.")], prefix, **family.kwargs)
    assert bare.value.param == "prefix_tokens"
