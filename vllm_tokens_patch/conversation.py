"""Conversation memory keys: which recorded completion a chat request's history continues.

Agent harnesses send the whole history back as text each turn. The server records, for each completion it
served, the exact ids under the key of (model, the request's messages + the assistant message it returned);
a later request looks up the longest prefix of its `messages` that ends with an assistant message
(`assistant_prefixes`) and reuses that prefix's ids instead of re-tokenizing it.

A key must survive what real clients do to an echoed assistant message (openai-agents, LangChain, a router
in between), so it is built from what identifies a message, not from its JSON:

- the role (`developer` stays distinct from `system`);
- the text: absent, null and "" are one; a list of text parts (or plain strings) is its texts joined with
  "\\n", as vLLM joins them; any other part (an image, audio) makes the message unkeyable;
- an assistant's tool calls, in order: id, function name and arguments compared as canonical JSON (the raw
  string when they are not JSON); `type` is ignored; none, [] and null are one;
- a tool message's `tool_call_id`.

Nothing else counts: reasoning (LangChain drops it), `name`, `refusal`, `annotations`, `audio`,
`function_call: null` and any key a router adds. An assistant message with a non-null legacy
`function_call` is unkeyable (the key could not tell two of them apart).

Messages may be dicts or objects with attributes (pydantic models). Lists in them (`content`, `tool_calls`)
must be materialized: a one-shot iterator (what pydantic makes of vLLM's `Iterable[...]` fields) is never
consumed here, the message is unkeyable instead, so pass the request body's JSON rather than vLLM's parsed
request. Pure Python and sans-I/O: the route feeds the response body in (`messages_from_json`,
`StreamCollector`) and stores and looks up the keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KEY_SIZE = 32
"""Bytes of a key (blake2b digest size)."""
_ROOT_PREFIX = b"vllm-tokens-patch/v1\0"
"""What the chain starts from, with the model name: keys of different models or key versions never meet."""
_TEXT_PART = "text"


def _field(obj: Any, name: str) -> Any:
    """`name` of a dict or of an object with attributes (a pydantic model); None when it has none."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _items(value: Any) -> list[Any] | None:
    """The elements of a list-like `value` ([] for None), or None when it is not one or is a one-shot
    iterator (consuming it would leave the caller, e.g. vLLM, with nothing)."""
    if value is None:
        return []
    if isinstance(value, str | bytes | bytearray | Mapping | Iterator):
        return None
    if isinstance(value, Iterable):
        return list(value)
    return None


def _text(content: Any) -> str | None:
    """The text of a message's content (absent, null and "" alike), None if any part is not text."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = _items(content)
    if parts is None:
        return None
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        text = _field(part, "text")
        if _field(part, "type") != _TEXT_PART or not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


def _canonical_arguments(arguments: Any) -> str | None:
    """Tool-call arguments as canonical JSON (LangChain re-serializes them), the raw string when they are
    not JSON; a raw string can never equal a canonical form, which is always valid JSON."""
    if arguments is None:
        return ""
    value = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except (ValueError, RecursionError):
            return arguments
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _tool_calls(value: Any) -> list[list[str]] | None:
    """[[id, name, canonical arguments], ...] in order, None if a call is malformed."""
    calls = _items(value)
    if calls is None:
        return None
    found: list[list[str]] = []
    for call in calls:
        call_id = _field(call, "id")
        function = _field(call, "function")
        name = _field(function, "name") if function is not None else None
        if not isinstance(call_id, str | None) or not isinstance(name, str):
            return None
        arguments = _canonical_arguments(_field(function, "arguments"))
        if arguments is None:
            return None
        found.append([call_id or "", name, arguments])
    return found


def canonical_message(message: Any) -> bytes | None:
    """The bytes of what identifies `message` (see the module docstring), equal for every echo of it a
    client may send back; None when it cannot be keyed (a non-text part, an unreadable field)."""
    role = _field(message, "role")
    text = _text(_field(message, "content"))
    if not isinstance(role, str) or text is None:
        return None
    form: dict[str, Any] = {"role": role, "content": text}
    if role == "assistant":
        if _field(message, "function_call") is not None:
            return None
        calls = _tool_calls(_field(message, "tool_calls"))
        if calls is None:
            return None
        if calls:
            form["tool_calls"] = calls
    elif role == "tool":
        call_id = _field(message, "tool_call_id")
        if not isinstance(call_id, str | None):
            return None
        form["tool_call_id"] = call_id or ""
    # surrogatepass: a lone surrogate (valid in JSON's \ud800) still has bytes, and a distinct key
    return json.dumps(form, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_SIZE).digest()


def root_key(model: str) -> bytes:
    """The key of the empty conversation with `model`."""
    return _hash(_ROOT_PREFIX + model.encode("utf-8", "surrogatepass"))


def extend_key(previous: bytes, message: Any) -> bytes | None:
    """One step of the chain: the key of `previous`'s conversation + `message` (the recorder adds the
    assistant message it returned to the request's last key). None when `message` is unkeyable."""
    canonical = canonical_message(message)
    return None if canonical is None else _hash(previous + canonical)


def conversation_keys(model: str, messages: Sequence[Any]) -> list[bytes | None]:
    """keys[i] identifies (model, messages[0..i]); from the first unkeyable message on, every key is None
    (an unkeyable message is never recorded nor reused, nor is anything after it)."""
    keys: list[bytes | None] = []
    key: bytes | None = root_key(model)
    for message in messages:
        key = None if key is None else extend_key(key, message)
        keys.append(key)
    return keys


def assistant_prefixes(messages: Sequence[Any]) -> list[int]:
    """The indexes i of the assistant messages, longest prefix first: messages[0..i] are the candidates
    to look up (only a prefix ending with an assistant message can have been recorded)."""
    return [i for i in range(len(messages) - 1, -1, -1) if _field(messages[i], "role") == "assistant"]


@dataclass
class AssistantMessage:
    """What the server returned for one choice: what the recorder keys (with `as_message`)."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """[{"id", "type", "function": {"name", "arguments"}}, ...]"""
    finish_reason: str | None = None

    def as_message(self) -> dict[str, Any]:
        """The message as a client echoes it (reasoning left out: it is not part of the key)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {**call, "function": dict(call.get("function") or {})} for call in self.tool_calls
            ]
        return message


def _reasoning(obj: Any) -> str | None:
    """vLLM names it `reasoning_content` or `reasoning` depending on the version (some send both, alike)."""
    for name in ("reasoning_content", "reasoning"):
        value = _field(obj, name)
        if isinstance(value, str):
            return value
    return None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _choice_index(choice: Any, position: int) -> int:
    index = _field(choice, "index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def _choices(body: Any) -> list[Any]:
    choices = _field(body, "choices") if isinstance(body, Mapping) else None
    return choices if isinstance(choices, list) else []


def messages_from_json(body: Mapping[str, Any]) -> dict[int, AssistantMessage]:
    """choices[i].index -> its message, from a non-streaming chat.completion body ({} for an error body)."""
    found: dict[int, AssistantMessage] = {}
    for position, choice in enumerate(_choices(body)):
        message = _field(choice, "message")
        if not isinstance(message, Mapping):
            continue
        calls: list[dict[str, Any]] = []
        for call in _items(message.get("tool_calls")) or []:
            function = _field(call, "function") or {}
            calls.append(
                {
                    "id": _field(call, "id"),
                    "type": _field(call, "type") or "function",
                    "function": {
                        "name": _field(function, "name"),
                        "arguments": _field(function, "arguments"),
                    },
                }
            )
        found[_choice_index(choice, position)] = AssistantMessage(
            content=_optional_str(message.get("content")),
            reasoning=_reasoning(message),
            tool_calls=calls,
            finish_reason=_optional_str(_field(choice, "finish_reason")),
        )
    return found


@dataclass
class _StreamedCall:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class _StreamedChoice:
    content: list[str] | None = None
    reasoning: list[str] | None = None
    calls: dict[int, _StreamedCall] = field(default_factory=dict)
    finish_reason: str | None = None
    logprobs: list[float] | None = None

    def add(self, delta: Any) -> None:
        content = delta.get("content")
        if isinstance(content, str):
            if self.content is None:
                self.content = []
            self.content.append(content)
        reasoning = _reasoning(delta)
        if reasoning is not None:
            if self.reasoning is None:
                self.reasoning = []
            self.reasoning.append(reasoning)
        for position, call_delta in enumerate(_items(delta.get("tool_calls")) or []):
            if not isinstance(call_delta, Mapping):
                continue
            index = _choice_index(call_delta, position)
            call = self.calls.setdefault(index, _StreamedCall())
            function = call_delta.get("function")
            function = function if isinstance(function, Mapping) else {}
            call.id = call.id or _optional_str(call_delta.get("id"))
            call.type = call.type or _optional_str(call_delta.get("type"))
            call.name = call.name or _optional_str(function.get("name"))
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments.append(arguments)

    def message(self) -> AssistantMessage:
        return AssistantMessage(
            content=None if self.content is None else "".join(self.content),
            reasoning=None if self.reasoning is None else "".join(self.reasoning),
            tool_calls=[
                {
                    "id": call.id,
                    "type": call.type or "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self.calls.items())
            ],
            finish_reason=self.finish_reason,
        )


class StreamCollector:
    """Reads the assistant messages out of a streamed (SSE) chat response, fed its raw body in chunks of any
    size: an event may be split across chunks (a line, even a UTF-8 character) or several share one.

    Lines end with "\\n" or "\\r\\n", a blank line ends an event, only `data:` lines count (several in one
    event are joined with "\\n", as SSE says); `data: [DONE]` ends the stream. An event that is not JSON is
    skipped: the message then lacks its piece, so its key is one no client will echo (a miss, not a wrong
    reuse). Events after `[DONE]` are still read.
    """

    def __init__(self) -> None:
        self.done = False
        """`data: [DONE]` was seen: the stream ended normally."""
        self.error = False
        """An error event ({"error": ...} or {"object": "error"}) was seen: do not record this response."""
        self._buffer = bytearray()
        self._scanned = 0
        self._data: list[bytes] = []
        self._first: dict[str, Any] | None = None
        self._choices: dict[int, _StreamedChoice] = {}

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body."""
        self._buffer += chunk
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            self._line(line[:-1] if line.endswith(b"\r") else line)
            start = end + 1
        del self._buffer[:start]
        self._scanned = len(self._buffer)

    def _line(self, line: bytes) -> None:
        if not line:
            if self._data:
                self._event(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)

    def _event(self, data: bytes) -> None:
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            event = json.loads(data.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError too
            return
        if not isinstance(event, dict):
            return
        if self._first is None:
            self._first = event
        if "error" in event or event.get("object") == "error":
            self.error = True
            return
        for position, choice in enumerate(_choices(event)):
            if not isinstance(choice, Mapping):
                continue
            streamed = self._choices.setdefault(_choice_index(choice, position), _StreamedChoice())
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                streamed.add(delta)
            finish_reason = _optional_str(choice.get("finish_reason"))
            if finish_reason is not None:
                streamed.finish_reason = finish_reason
            values = _sampled_logprobs(choice)
            if values is not None:
                streamed.logprobs = [*(streamed.logprobs or []), *values]

    def messages(self) -> dict[int, AssistantMessage]:
        """Per choice index, its deltas merged so far: content and reasoning concatenated (None if never
        sent), tool calls merged by their `index` (id, type and name from the first delta with them,
        arguments concatenated), the last non-null finish_reason."""
        return {index: choice.message() for index, choice in sorted(self._choices.items())}

    def first_event(self) -> dict[str, Any] | None:
        """The first JSON event (vLLM puts what it returns once per response there)."""
        return self._first

    def logprobs(self) -> dict[int, list[float]]:
        """Per choice index that streamed them, the sampled tokens' logprobs in order."""
        return {i: c.logprobs for i, c in sorted(self._choices.items()) if c.logprobs is not None}


def _sampled_logprobs(choice: Mapping[str, Any]) -> list[float] | None:
    """The OpenAI-format `logprobs.content[].logprob` of one choice (or chunk choice), if it has them."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return None
    values = [item.get("logprob") for item in content if isinstance(item, Mapping)]
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return numbers if len(numbers) == len(content) else None


def logprobs_from_json(body: Mapping[str, Any]) -> dict[int, list[float]]:
    """Per choice index of a chat.completion body, its sampled tokens' logprobs, where it has them."""
    found: dict[int, list[float]] = {}
    for position, choice in enumerate(_choices(body)):
        if isinstance(choice, Mapping):
            values = _sampled_logprobs(choice)
            if values is not None:
                found[_choice_index(choice, position)] = values
    return found
