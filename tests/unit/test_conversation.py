"""vllm_tokens_patch.conversation: keys that survive the echoes of real clients, and the assistant messages
read out of vLLM's chat responses (JSON and SSE).

The echo shapes are the ones measured with openai-agents 0.24.0, langchain-openai 1.7.4 and vllm-router
0.1.17 against vLLM: what each sends back of the assistant message the server returned.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from pydantic import BaseModel

from vllm_tokens_patch.conversation import (
    KEY_SIZE,
    AssistantMessage,
    StreamCollector,
    assistant_prefixes,
    canonical_message,
    conversation_keys,
    extend_key,
    messages_from_json,
    root_key,
)

MODEL = "Qwen/Qwen3-0.6B"
ARGUMENTS = '{"city": "Zürich", "unit": "celsius"}'  # as vLLM's hermes parser writes them (json.dumps)
CALL_ID = "chatcmpl-tool-5f3a0c6e1f2b4c8e9d7a6b5c4d3e2f1a"

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Zürich?"},
]

CHAT_N2 = {
    "id": "chatcmpl-8c2d0f6a9b4e4f1e",
    "object": "chat.completion",
    "created": 1733000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "It is 4 °C in Zürich.",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": "The user wants the weather.",
            },
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
            "token_ids": [1026, 374, 220, 19, 11616, 34, 13],
        },
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ARGUMENTS},
                    }
                ],
                "reasoning": "I should call get_weather.",
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
            "stop_reason": None,
            "token_ids": [151657, 198, 4913, 606, 151658],
        },
    ],
    "service_tier": None,
    "system_fingerprint": None,
    "usage": {
        "prompt_tokens": 31,
        "total_tokens": 43,
        "completion_tokens": 12,
        "prompt_tokens_details": None,
    },
    "prompt_logprobs": None,
    "prompt_token_ids": [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645],
    "kv_transfer_params": None,
}


def tool_call_turn() -> AssistantMessage:
    return messages_from_json(CHAT_N2)[1]


def recorded_key(history: list[Any], returned: AssistantMessage, model: str = MODEL) -> bytes | None:
    """What the recorder stores: the request's last key extended by the message the server returned."""
    last = conversation_keys(model, history)[-1] if history else root_key(model)
    assert last is not None
    return extend_key(last, returned.as_message())


def echo_key(history: list[Any], echoed: Any, model: str = MODEL) -> bytes | None:
    """What the lookup finds for the next request: the key of history + the echoed assistant message."""
    return conversation_keys(model, [*history, echoed])[-1]


# --- reading a chat.completion body ---------------------------------------------------------------------


def test_a_json_body_with_two_choices_gives_both_messages() -> None:
    found = messages_from_json(CHAT_N2)
    assert sorted(found) == [0, 1]
    assert found[0] == AssistantMessage(
        content="It is 4 °C in Zürich.",
        reasoning="The user wants the weather.",
        tool_calls=[],
        finish_reason="stop",
    )
    assert found[1] == AssistantMessage(
        content=None,
        reasoning="I should call get_weather.",  # vLLM's newer field name, `reasoning`
        tool_calls=[
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
        ],
        finish_reason="tool_calls",
    )


def test_choices_are_keyed_by_their_index_not_their_position() -> None:
    body = copy.deepcopy(CHAT_N2)
    body["choices"].reverse()
    found = messages_from_json(body)
    assert found[0].finish_reason == "stop" and found[1].finish_reason == "tool_calls"


def test_an_error_body_has_no_messages() -> None:
    error = {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400}
    assert messages_from_json(error) == {}
    assert messages_from_json({"error": {"message": "boom", "code": 500}}) == {}


def test_as_message_is_what_a_client_echoes() -> None:
    found = messages_from_json(CHAT_N2)
    assert found[0].as_message() == {"role": "assistant", "content": "It is 4 °C in Zürich."}
    assert found[1].as_message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
        ],
    }
    message = found[1].as_message()
    message["tool_calls"][0]["function"]["arguments"] = "{}"
    assert found[1].tool_calls[0]["function"]["arguments"] == ARGUMENTS  # a copy, not the recorded calls


# --- the echoes of real clients ------------------------------------------------------------------------


def test_the_openai_agents_echo_matches() -> None:
    """openai-agents keeps the reasoning and sends the tool-call turn's content as null (or "")."""
    returned = tool_call_turn()
    echoed = {
        "role": "assistant",
        "content": "",  # the server returned null
        "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
        ],
        "reasoning_content": "I should call get_weather.",
    }
    assert recorded_key(HISTORY, returned) == echo_key(HISTORY, echoed)
    text_turn = messages_from_json(CHAT_N2)[0]
    echoed_text = {"role": "assistant", "content": text_turn.content, "reasoning": text_turn.reasoning}
    assert recorded_key(HISTORY, text_turn) == echo_key(HISTORY, echoed_text)


def test_content_null_and_empty_are_one_both_ways() -> None:
    with_empty = AssistantMessage(content="", tool_calls=tool_call_turn().tool_calls)
    echoed_null = {**with_empty.as_message(), "content": None}
    assert recorded_key(HISTORY, with_empty) == echo_key(HISTORY, echoed_null)
    assert recorded_key(HISTORY, tool_call_turn()) == echo_key(HISTORY, {**echoed_null, "content": ""})


def test_the_langchain_echo_matches() -> None:
    """LangChain drops the reasoning and re-serializes the arguments (ASCII escapes, its own key order)."""
    returned = tool_call_turn()
    arguments = json.dumps(
        {"unit": "celsius", "city": "Zürich"}
    )  # '{"unit": "celsius", "city": "Z\\u00fcrich"}'
    assert arguments != ARGUMENTS
    echoed = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "id": CALL_ID, "function": {"arguments": arguments, "name": "get_weather"}}
        ],
    }
    assert recorded_key(HISTORY, returned) == echo_key(HISTORY, echoed)
    compact = json.dumps({"city": "Zürich", "unit": "celsius"}, separators=(",", ":"), ensure_ascii=False)
    echoed["tool_calls"][0]["function"]["arguments"] = compact
    assert recorded_key(HISTORY, returned) == echo_key(HISTORY, echoed)


def test_the_vllm_router_echo_matches() -> None:
    """vllm-router drops `content: null` and adds its default fields to every message."""
    returned = tool_call_turn()
    defaults = {"name": None, "refusal": None, "annotations": None, "audio": None, "function_call": None}
    echoed = {
        "role": "assistant",
        **defaults,
        "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
        ],
    }
    history = [{**message, "name": None, "tool_calls": None} for message in HISTORY]
    assert conversation_keys(MODEL, history) == conversation_keys(MODEL, HISTORY)
    assert recorded_key(HISTORY, returned) == echo_key(history, echoed)


def test_a_full_agent_loop_matches_at_every_assistant_turn() -> None:
    """Record turn 1, the client echoes it + a tool result; record turn 2; a third request finds turn 2."""
    turn1 = tool_call_turn()
    recorded = {recorded_key(HISTORY, turn1)}
    tool_result = {"role": "tool", "tool_call_id": CALL_ID, "content": '{"temperature": 4}'}
    request2 = [*HISTORY, {**turn1.as_message(), "content": ""}, tool_result]
    turn2 = AssistantMessage(content="It is 4 °C in Zürich.", finish_reason="stop")
    recorded.add(recorded_key(request2, turn2))
    request3 = [
        *request2,
        {"role": "assistant", "content": [{"type": "text", "text": "It is 4 °C in Zürich."}]},
    ]
    request3.append({"role": "user", "content": "And in Bern?"})
    keys = conversation_keys(MODEL, request3)
    found = [i for i in assistant_prefixes(request3) if keys[i] in recorded]
    assert found == [4, 2]  # the longest recorded prefix first


# --- what is and is not in the key ---------------------------------------------------------------------


def test_reasoning_is_not_in_the_key() -> None:
    plain = {"role": "assistant", "content": "4"}
    assert canonical_message(plain) == canonical_message({**plain, "reasoning_content": "2+2"})
    assert canonical_message(plain) == canonical_message({**plain, "reasoning": "2+2"})


def test_extra_keys_do_not_change_the_key() -> None:
    user = {"role": "user", "content": "hi"}
    assert canonical_message(user) == canonical_message({**user, "name": "alice", "x-router-default": 1})
    assistant = {"role": "assistant", "content": "hello"}
    for extra in (
        {"tool_calls": []},
        {"tool_calls": None},
        {"function_call": None},
        {"refusal": None, "annotations": [], "audio": None},
    ):
        assert canonical_message(assistant) == canonical_message({**assistant, **extra}), extra


def test_absent_null_and_empty_content_are_one() -> None:
    forms = [
        {"role": "assistant"},
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": []},
    ]
    assert len({canonical_message(m) for m in forms}) == 1


def test_text_parts_are_the_joined_text() -> None:
    as_string = canonical_message({"role": "user", "content": "line one\nline two"})
    parts = [{"type": "text", "text": "line one"}, {"type": "text", "text": "line two"}]
    assert canonical_message({"role": "user", "content": parts}) == as_string
    assert canonical_message({"role": "user", "content": ["line one", "line two"]}) == as_string
    assert canonical_message({"role": "user", "content": ("line one", parts[1])}) == as_string
    assert canonical_message({"role": "user", "content": "line one line two"}) != as_string


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "refusal", "refusal": "no"},
        {"type": "text"},  # no text
        {"text": "no type"},
        42,
    ],
)
def test_a_part_that_is_not_text_makes_the_message_unkeyable(part: Any) -> None:
    assert canonical_message({"role": "user", "content": [{"type": "text", "text": "look:"}, part]}) is None


def test_an_image_makes_every_key_from_there_none() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    messages = [
        *HISTORY,
        {"role": "assistant", "content": "Which city?"},
        {"role": "user", "content": [{"type": "text", "text": "This one:"}, image]},
        {"role": "assistant", "content": "Zürich."},
        {"role": "user", "content": "Thanks"},
    ]
    keys = conversation_keys(MODEL, messages)
    assert all(isinstance(key, bytes) and len(key) == KEY_SIZE for key in keys[:3])
    assert keys[3:] == [None, None, None]
    assert assistant_prefixes(messages) == [4, 2]  # the caller skips the None key at 4


def test_developer_is_not_system() -> None:
    assert canonical_message({"role": "developer", "content": "Be brief."}) != canonical_message(
        {"role": "system", "content": "Be brief."}
    )


def test_a_message_without_a_role_or_with_odd_content_is_unkeyable() -> None:
    assert canonical_message({"content": "hi"}) is None
    assert canonical_message({"role": None, "content": "hi"}) is None
    assert canonical_message({"role": "user", "content": 42}) is None
    assert canonical_message({"role": "user", "content": {"type": "text", "text": "hi"}}) is None
    assert canonical_message(None) is None


def test_tool_calls_key_on_id_name_and_arguments_in_order() -> None:
    def call(call_id: str, name: str, arguments: str, kind: str = "function") -> dict[str, Any]:
        return {"id": call_id, "type": kind, "function": {"name": name, "arguments": arguments}}

    def key(*calls: dict[str, Any]) -> bytes | None:
        return canonical_message({"role": "assistant", "content": None, "tool_calls": list(calls)})

    a, b = call("call_a", "f", '{"x": 1}'), call("call_b", "g", "{}")
    assert key(a, b) != key(b, a)
    assert key(a) != key(call("call_other", "f", '{"x": 1}'))
    assert key(a) != key(call("call_a", "h", '{"x": 1}'))
    assert key(a) != key(call("call_a", "f", '{"x": 2}'))
    assert key(a) != key(call("call_a", "f", '{"x": 1.0}'))  # JSON's 1 and 1.0 are kept apart
    assert key(a) == key(call("call_a", "f", '{ "x" : 1 }'))
    assert key(a) == key(call("call_a", "f", '{"x": 1}', kind="custom"))  # type is ignored
    assert key(a) == key({**a, "function": {"name": "f", "arguments": {"x": 1}}})  # already parsed
    assert key(a) != key()
    assert canonical_message({"role": "assistant", "content": None, "tool_calls": ({**a},)}) == key(a)


def test_arguments_that_are_not_json_compare_as_the_raw_string() -> None:
    def key(arguments: str) -> bytes | None:
        call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        return canonical_message({"role": "assistant", "tool_calls": [call]})

    truncated = '{"city": "Zür'  # a generation cut off by max_tokens
    assert key(truncated) is not None
    assert key(truncated) == key(truncated)
    assert key(truncated) != key('{"city":"Zür')
    assert key('"{}"') != key("{}")  # a JSON string is not the object it spells


def test_a_malformed_tool_call_is_unkeyable() -> None:
    no_function = {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]}
    assert canonical_message(no_function) is None
    legacy = {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}
    assert canonical_message(legacy) is None


def test_tool_messages_key_on_tool_call_id_and_content() -> None:
    result = {"role": "tool", "tool_call_id": "call_1", "content": "4 °C"}
    assert canonical_message(result) != canonical_message({**result, "tool_call_id": "call_2"})
    assert canonical_message(result) != canonical_message({**result, "content": "5 °C"})
    assert canonical_message(result) == canonical_message({**result, "name": "get_weather"})
    assert canonical_message(result) == canonical_message(
        {**result, "content": [{"type": "text", "text": "4 °C"}]}
    )


def test_a_one_shot_iterator_is_not_consumed() -> None:
    """pydantic makes vLLM's `Iterable[...]` fields one-shot iterators: reading one would empty it."""
    parts = iter([{"type": "text", "text": "hi"}])
    assert canonical_message({"role": "user", "content": parts}) is None
    assert list(parts) == [{"type": "text", "text": "hi"}]
    calls = iter([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    assert canonical_message({"role": "assistant", "tool_calls": calls}) is None
    assert len(list(calls)) == 1


# --- the chain -----------------------------------------------------------------------------------------


def test_keys_are_a_chain_from_the_model_root() -> None:
    keys = conversation_keys(MODEL, HISTORY)
    assert len(keys) == 2
    assert keys[0] == extend_key(root_key(MODEL), HISTORY[0])
    assert keys[0] is not None and keys[1] == extend_key(keys[0], HISTORY[1])
    assert len(root_key(MODEL)) == KEY_SIZE
    assert conversation_keys(MODEL, []) == []


def test_the_model_is_in_the_key() -> None:
    assert conversation_keys(MODEL, HISTORY) != conversation_keys("Qwen/Qwen3-1.7B", HISTORY)
    assert root_key(MODEL) != root_key("Qwen/Qwen3-1.7B")


def test_a_rewritten_history_differs_from_the_change_on() -> None:
    messages = [*HISTORY, {"role": "assistant", "content": "4 °C."}, {"role": "user", "content": "Bern?"}]
    rewritten = copy.deepcopy(messages)
    rewritten[1]["content"] = "What is the weather in Basel?"
    before, after = conversation_keys(MODEL, messages), conversation_keys(MODEL, rewritten)
    assert before[0] == after[0]
    assert all(b != a for b, a in zip(before[1:], after[1:], strict=True))
    assert len(set(before)) == len(before)  # every prefix has its own key


def test_the_message_boundaries_are_in_the_key() -> None:
    assert (
        conversation_keys(MODEL, [{"role": "user", "content": "ab"}])[-1]
        != conversation_keys(MODEL, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])[-1]
    )


def test_assistant_prefixes_are_longest_first() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "tool", "tool_call_id": "c", "content": "t"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "u2"},
    ]
    assert assistant_prefixes(messages) == [4, 2]
    assert assistant_prefixes(messages[:2]) == []
    assert assistant_prefixes([]) == []


# --- pydantic messages ---------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: str = "text"
    text: str


class Function(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: str = "function"
    function: Function


class Message(BaseModel):
    role: str
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


def test_pydantic_messages_key_like_dicts() -> None:
    dicts = [
        *HISTORY,
        {**tool_call_turn().as_message(), "reasoning_content": "I should call get_weather."},
        {
            "role": "tool",
            "tool_call_id": CALL_ID,
            "content": [{"type": "text", "text": '{"temperature": 4}'}],
        },
        {"role": "assistant", "content": "It is 4 °C."},
    ]
    models = [Message.model_validate(message) for message in dicts]
    assert isinstance(models[2].tool_calls, list) and isinstance(models[2].tool_calls[0], ToolCall)
    assert conversation_keys(MODEL, models) == conversation_keys(MODEL, dicts)
    assert None not in conversation_keys(MODEL, models)
    assert assistant_prefixes(models) == assistant_prefixes(dicts) == [4, 2]


# --- streamed responses --------------------------------------------------------------------------------

PROMPT_IDS = [151644, 872, 198, 3838, 374, 279, 9104, 304, 71137, 30, 151645]


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-8c2d0f6a9b4e4f1e",
        "object": "chat.completion.chunk",
        "created": 1733000000,
        "model": MODEL,
        "choices": choices,
        **extra,
    }


def delta(index: int = 0, finish_reason: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish_reason}


def tool_delta(**fields: Any) -> dict[str, Any]:
    return delta(tool_calls=[{"index": 0, **fields}])


TOOL_STREAM_EVENTS: list[dict[str, Any]] = [
    chunk([delta(role="assistant", content="")], prompt_token_ids=PROMPT_IDS),
    chunk([delta(reasoning_content="The user wants ")]),
    chunk([delta(reasoning_content="the weather.")]),
    chunk([delta(content="Let me ")]),
    chunk([delta(content="check.")]),
    chunk([tool_delta(id=CALL_ID, type="function", function={"name": "get_weather"})]),
    chunk([tool_delta(function={"arguments": '{"city": '})]),
    chunk([tool_delta(function={"arguments": '"Zürich", '})]),
    chunk([tool_delta(function={"arguments": '"unit": "celsius"}'})]),
    chunk([delta(finish_reason="tool_calls", content="")], stop_reason=None),
    chunk([], usage={"prompt_tokens": 11, "total_tokens": 40, "completion_tokens": 29}),
]


def sse(events: list[dict[str, Any]], newline: str = "\n", done: bool = True) -> bytes:
    """vLLM's body: `data: <json>` and a blank line per event, `data: [DONE]` last."""
    lines = [f"data: {json.dumps(event, ensure_ascii=False)}{newline}{newline}" for event in events]
    if done:
        lines.append(f"data: [DONE]{newline}{newline}")
    return "".join(lines).encode("utf-8")


EXPECTED_TOOL_TURN = AssistantMessage(
    content="Let me check.",
    reasoning="The user wants the weather.",
    tool_calls=[
        {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
    ],
    finish_reason="tool_calls",
)


def collect(body: bytes, sizes: list[int] | None = None) -> StreamCollector:
    collector = StreamCollector()
    if sizes is None:
        collector.feed(body)
        return collector
    position = 0
    for size in sizes:
        collector.feed(body[position : position + size])
        position += size
    collector.feed(body[position:])
    return collector


@pytest.mark.parametrize(
    "how",
    [
        "all at once",
        "byte by byte",
        "crlf all at once",
        "crlf byte by byte",
        "random chunks",
        "one event each",
    ],
)
def test_a_streamed_tool_call_is_merged(how: str) -> None:
    newline = "\r\n" if "crlf" in how else "\n"
    body = sse(TOOL_STREAM_EVENTS, newline=newline)
    if "byte by byte" in how:
        collector = collect(body, [1] * len(body))  # splits every line and every UTF-8 character too
    elif how == "random chunks":
        rng = random.Random(7)
        collector = collect(body, [rng.randint(1, 40) for _ in range(len(body) // 10)])
    elif how == "one event each":
        collector = StreamCollector()
        for event in TOOL_STREAM_EVENTS:
            collector.feed(sse([event], done=False))
        collector.feed(b"data: [DONE]\n\n")
    else:
        collector = collect(body)
    assert collector.done and not collector.error
    assert collector.messages() == {0: EXPECTED_TOOL_TURN}
    first = collector.first_event()
    assert first is not None and first["prompt_token_ids"] == PROMPT_IDS


def test_a_streamed_turn_keys_like_its_echo() -> None:
    streamed = collect(sse(TOOL_STREAM_EVENTS)).messages()[0]
    echoed = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": CALL_ID,
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": json.dumps({"city": "Zürich", "unit": "celsius"}),
                },
            }
        ],
    }
    assert recorded_key(HISTORY, streamed) == echo_key(HISTORY, echoed)


def test_two_streamed_choices_are_kept_apart() -> None:
    events = [
        chunk([delta(0, role="assistant", content=""), delta(1, role="assistant", content="")]),
        chunk([delta(1, reasoning="Hmm, ")]),
        chunk([delta(0, content="Four")]),
        chunk([delta(1, reasoning="two plus two."), delta(0, content=".")]),
        chunk([delta(1, content="4")]),
        chunk([delta(0, finish_reason="stop", content="")]),
        chunk([delta(1, finish_reason="length", content="")]),
        chunk([delta(1)]),  # a later delta without finish_reason keeps the last non-null one
        chunk([], usage={"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4}),
    ]
    found = collect(sse(events)).messages()
    assert found == {
        0: AssistantMessage(content="Four.", reasoning=None, tool_calls=[], finish_reason="stop"),
        1: AssistantMessage(
            content="4", reasoning="Hmm, two plus two.", tool_calls=[], finish_reason="length"
        ),
    }


def test_content_never_sent_is_none_and_calls_merge_by_index() -> None:
    events = [
        chunk([delta(role="assistant")]),
        chunk(
            [
                delta(
                    tool_calls=[
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "g", "arguments": ""},
                        },
                        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f"}},
                    ]
                )
            ]
        ),
        chunk(
            [delta(tool_calls=[{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{}"}}])]
        ),
        chunk([delta(tool_calls=[{"index": 1, "function": {"arguments": '{"y": 2}'}}])]),
        chunk([delta(finish_reason="tool_calls")]),
    ]
    message = collect(sse(events)).messages()[0]
    assert message.content is None and message.reasoning is None
    assert message.tool_calls == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"y": 2}'}},
    ]


def test_an_error_event_sets_error() -> None:
    collector = collect(sse(TOOL_STREAM_EVENTS[:3], done=False))
    error = {
        "error": {"object": "error", "message": "engine died", "type": "InternalServerError", "code": 500}
    }
    collector.feed(sse([error]))
    assert collector.error and collector.done
    legacy = {
        "object": "error",
        "message": "bad request",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    other = collect(sse([legacy]))
    assert other.error and other.first_event() == legacy
    assert other.messages() == {}


def test_an_unfinished_stream_is_not_done() -> None:
    body = sse(TOOL_STREAM_EVENTS, done=False)
    collector = collect(body[:-1])  # the last event's blank line has not come yet
    assert not collector.done and not collector.error
    assert collector.messages()[0].finish_reason == "tool_calls"  # the last chunk with choices was complete
    collector.feed(body[-1:])
    collector.feed(b"data: [DO")
    assert not collector.done
    collector.feed(b"NE]\n\n")
    assert collector.done


def test_other_lines_and_bad_events_are_skipped() -> None:
    body = (
        b": keep-alive\n\n"
        b"event: message\nid: 1\nretry: 100\n"
        b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
        b"data: not json\n\n"
        b'data: ["a", "list"]\n\n'
        b"data: \xff\xfe\n\n"
        b'data:{"choices": [{"index": 0,\n'
        b'data: "delta": {"content": "b"}}]}\n\n'  # two data lines of one event are joined with "\n"
        b"data: [DONE]\n\n"
    )
    collector = collect(body, [3] * (len(body) // 3))
    assert collector.done and not collector.error
    assert collector.messages() == {0: AssistantMessage(content="ab")}
    assert collector.first_event() == {"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}}]}


def test_an_empty_stream_has_nothing() -> None:
    collector = StreamCollector()
    collector.feed(b"")
    assert not collector.done and not collector.error
    assert collector.messages() == {} and collector.first_event() is None
