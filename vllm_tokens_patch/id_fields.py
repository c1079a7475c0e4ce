"""Where a token request's ids come from: the field names, and the prefix NeMo-Gym's history implies.

Pure functions on the decoded body, without pydantic: the request model (`request.py`), the stock-route
dispatch (`stock_route.py`) and the swap (`tokens.py`, imported in every vLLM process) share them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm_tokens_patch.adapters.base import RequestFields


class IdFieldsError(ValueError):
    """The request's ids cannot be told apart (two id fields) or NeMo-Gym's message ids are malformed or
    inconsistent. Answered as our own 400 naming the field or message, not as a pydantic error, whose echo
    of the whole body (`max_tokens` in it) NeMo-Gym would take for a context overflow."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


PREFIX_ALIASES = ("required_prefix_token_ids",)
"""Other names clients send `prefix_tokens` under: NeMo-Gym's `VLLMModel` (`supply_prefix_token_ids`) sends
the parent call's prompt + generated ids as `required_prefix_token_ids`. One more name is one more entry."""
ID_FIELDS = ("tokens", "prefix_tokens", *PREFIX_ALIASES)
"""The request fields that carry ids: exactly one per request (or the ids on the last assistant message)."""
MESSAGE_ID_FIELDS = PROMPT_IDS, GENERATION_IDS = ("prompt_token_ids", "generation_token_ids")
"""NeMo-Gym's shape (`return_token_id_information`): an assistant message of the history carries the prompt
ids and the sampled ids of the call that produced it; their concatenation is the prefix of the next turn."""


def _ids_error(where: str, ids: Any) -> str | None:
    """Why `ids` (found at `where`) is not a list of non-negative ints, or None."""
    if not isinstance(ids, list):
        return f"`{where}` must be a list of token ids, not {type(ids).__name__}"
    for index, token_id in enumerate(ids):
        if type(token_id) is not int or token_id < 0:
            return f"`{where}[{index}]` = {token_id!r} is not a token id (a non-negative integer)"
    return None


def _message_ids(message: Any, where: str) -> list[int] | None:
    """`prompt_token_ids + generation_token_ids` of one message (None when it carries neither)."""
    if not isinstance(message, dict):
        return None
    present = [name for name in MESSAGE_ID_FIELDS if message.get(name) is not None]
    if not present:
        return None
    if len(present) != len(MESSAGE_ID_FIELDS):
        missing = next(name for name in MESSAGE_ID_FIELDS if name not in present)
        raise IdFieldsError(
            f"`{where}` carries `{present[0]}` without `{missing}`: send both or neither", "messages"
        )
    ids: list[int] = []
    for name in MESSAGE_ID_FIELDS:
        error = _ids_error(f"{where}.{name}", message[name])
        if error is not None:
            raise IdFieldsError(error, "messages")
        ids.extend(message[name])
    if not ids:
        raise IdFieldsError(f"`{where}` carries no token ids", "messages")
    return ids


def last_assistant_with_ids(messages: Any) -> int | None:
    """The index of the last assistant message if it carries `MESSAGE_ID_FIELDS` (any of them), else None."""
    if not isinstance(messages, list):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "assistant":
            return index if any(message.get(name) is not None for name in MESSAGE_ID_FIELDS) else None
    return None


def prefix_from_messages(messages: Any) -> list[int] | None:
    """The prefix NeMo-Gym's history implies: the last assistant message's prompt + generated ids, checked
    against every earlier assistant message that carries ids (each must be a prefix of the next one's
    prompt: that is what the engine saw, turn after turn). None when the last assistant carries none."""
    last = last_assistant_with_ids(messages)
    if last is None:
        return None
    prefix = _message_ids(messages[last], f"messages[{last}]")
    earlier = None
    for index, message in enumerate(messages[:last]):
        if not (isinstance(message, dict) and message.get("role") == "assistant"):
            continue
        ids = _message_ids(message, f"messages[{index}]")
        if ids is None:
            continue
        if earlier is not None:
            _check_extends(earlier, index, ids, messages)
        earlier = (index, ids)
    if earlier is not None:
        _check_extends(earlier, last, prefix or [], messages)
    return prefix


def _check_extends(earlier: tuple[int, list[int]], index: int, ids: list[int], messages: list[Any]) -> None:
    """Refuse a history whose later call did not start from an earlier call's ids (rewritten history)."""
    before, seen = earlier
    prompt = messages[index].get(PROMPT_IDS) or []
    if prompt[: len(seen)] != seen:
        raise IdFieldsError(
            f"`messages[{index}].{PROMPT_IDS}` does not start with `messages[{before}]`'s prompt + "
            f"generated ids: the ids on the history's assistant messages are inconsistent",
            "messages",
        )


NEMO_PREFIX = PREFIX_ALIASES[0]
"""NeMo's extension field: set (given, or derived from the history) on a request in NeMo's dialect."""


def is_nemo_dialect(request: Any) -> bool:
    """A prefix sent as NeMo-Gym sends it (`required_prefix_token_ids`, or ids on the history). Such a
    request gets what NeMo-RL's own servers give: the prompt ids back (`return_token_ids` unless the client
    said otherwise) and an output length clamped to the room left."""
    return getattr(request, NEMO_PREFIX, None) is not None


def choose_ids(data: dict[str, Any], fields: RequestFields) -> dict[str, Any]:
    """The body with its ids in place, before the request model validates it: at most one of `ID_FIELDS`
    (else `IdFieldsError`); a prefix alias is also `prefix_tokens`; with no id field, NeMo-Gym's history
    may give the prefix (`prefix_from_messages`). NeMo's dialect (`NEMO_PREFIX` set) asks for the prompt ids
    back unless the client said otherwise. The client's dict is not changed."""
    given = [name for name in ID_FIELDS if data.get(name) is not None]
    if len(given) > 1:
        named = " and ".join(f"`{name}`" for name in given)
        aliases = ", ".join(f"`{alias}`" for alias in PREFIX_ALIASES)
        raise IdFieldsError(
            f"{named} were given together: send exactly one of `tokens` (the whole prompt) and "
            f"`prefix_tokens` (the ids so far; also accepted as {aliases})",
            given[1],
        )
    if given and given[0] not in PREFIX_ALIASES:
        return data
    ids = data[given[0]] if given else prefix_from_messages(data.get("messages"))
    if ids is None:
        return data
    chosen = {**data, "prefix_tokens": ids, NEMO_PREFIX: ids}
    if data.get(fields.return_token_ids) is None:
        chosen[fields.return_token_ids] = True  # NeMo-Gym's check fails closed without the prompt ids
    return chosen
