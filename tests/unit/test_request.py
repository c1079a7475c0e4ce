from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from vllm_tokens_patch.adapters import Adapter
from vllm_tokens_patch.adapters.base import RequestFields
from vllm_tokens_patch.id_fields import IdFieldsError, choose_ids, is_nemo_dialect, prefix_from_messages
from vllm_tokens_patch.request import build_request_model, refusal_reason


class FakeBase(BaseModel):
    """The parts of vLLM's OpenAIBaseModel that matter: extra=allow and the cached field names."""

    model_config = ConfigDict(extra="allow")
    field_names: ClassVar[set[str] | None] = None
    ignored: ClassVar[list[str]] = []

    @model_validator(mode="wrap")
    @classmethod
    def _log_extra(cls, data: Any, handler: Any) -> Any:
        if cls.field_names is None:
            cls.field_names = set(cls.model_fields)
        FakeBase.ignored.extend(sorted(set(data) - cls.field_names))
        return handler(data)


class FakeChatRequest(FakeBase):
    messages: list[dict[str, Any]]
    kv_transfer_params: dict[str, Any] | None = None
    truncate_prompt_tokens: int | None = None


Model = build_request_model(FakeChatRequest, Adapter.request_class_caches)
TEXT = [{"role": "user", "content": "hi"}]


def test_tokens_field_is_known_not_ignored() -> None:
    FakeChatRequest(messages=TEXT)  # caches the parent's field names first, as vLLM's stock route does
    FakeBase.ignored.clear()
    request = Model(messages=TEXT, tokens=[1, 2, 3])
    assert request.tokens == [1, 2, 3]
    assert FakeBase.ignored == []
    assert isinstance(request, FakeChatRequest)


@pytest.mark.parametrize("tokens", [[], [-1], [1.5], ["1"], [True], 3, None])
def test_tokens_must_be_a_non_empty_list_of_non_negative_ints(tokens: Any) -> None:
    with pytest.raises(ValidationError):
        Model(messages=TEXT, tokens=tokens)


def test_tokens_are_required() -> None:
    with pytest.raises(ValidationError):
        Model(messages=TEXT)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages",
        ),
        ({"kv_transfer_params": {"prompt_token_ids": [1]}}, "kv_transfer_params"),
        ({"truncate_prompt_tokens": 5}, "truncate_prompt_tokens"),
    ],
)
def test_refusals_name_their_reason(fields: dict[str, Any], param: str) -> None:
    request = Model(**{"messages": TEXT, "tokens": [1], **fields})
    refusal = refusal_reason(request, Adapter.fields)
    assert refusal is not None and refusal[1] == param


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}


@pytest.mark.parametrize(
    ("part", "says"),
    [
        (IMAGE, None),
        ({"type": "input_image", "image_url": "data:image/png;base64,AA"}, None),
        ({"type": "video_url", "video_url": {"url": "x"}}, "video is not supported with `tokens`"),
        ({"type": "input_audio", "input_audio": {}}, "audio is not supported with `tokens`"),
        ({"type": "image_embeds", "image_embeds": "x"}, "image embeddings is not supported"),
    ],
)
def test_where_images_are_placed_only_images_pass(part: dict[str, Any], says: str | None) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]
    request = Model(messages=messages, tokens=[1])
    refusal = refusal_reason(request, Adapter.fields, images=True)
    assert (refusal is None) if says is None else (refusal is not None and says in refusal[0])
    refused = refusal_reason(request, Adapter.fields)  # a release that cannot place them
    assert refused is not None and refused[1] == "messages"
    assert ("docs/compatibility.md" in refused[0]) is (says is None)


def test_text_parts_and_plain_kv_params_are_fine() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]
    request = Model(messages=parts, tokens=[1], kv_transfer_params={"do_remote_prefill": False})
    assert refusal_reason(request, Adapter.fields) is None


def test_a_negative_id_is_named_by_its_position() -> None:
    with pytest.raises(ValidationError, match=r"tokens\[2\] = -7 is negative"):
        Model(messages=TEXT, tokens=[4, 0, -7, 5])


@pytest.mark.parametrize("switch", ["no", 0, "false", 1.0])
def test_the_verify_switch_is_a_strict_boolean(switch: Any) -> None:
    with pytest.raises(ValidationError):
        Model(messages=TEXT, tokens=[1], vllm_tokens_patch_verify=switch)
    assert Model(messages=TEXT, tokens=[1], vllm_tokens_patch_verify=False).vllm_tokens_patch_verify is False


# --- NeMo-Gym's dialect: `required_prefix_token_ids`, ids on the history's assistant messages ------------

GYM_TURN = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo", "prompt_token_ids": [1, 2], "generation_token_ids": [3, 4]},
    {"role": "user", "content": "again"},
]
FIELDS = RequestFields()


def chosen(**body: Any) -> Any:
    """The body as the route hands it to the request model."""
    return Model.model_validate(choose_ids({"messages": GYM_TURN, **body}, FIELDS))


def test_required_prefix_token_ids_is_prefix_tokens_by_another_name() -> None:
    request = chosen(required_prefix_token_ids=[7, 8])
    assert (request.prefix_tokens, request.tokens, request.required_prefix_token_ids) == (
        [7, 8],
        None,
        [7, 8],
    )
    assert is_nemo_dialect(request) and not is_nemo_dialect(chosen(prefix_tokens=[7]))


def test_nemos_dialect_asks_for_the_prompt_ids_back_unless_the_client_said() -> None:
    assert chosen(required_prefix_token_ids=[7]).return_token_ids is True
    assert chosen().return_token_ids is True  # the prefix of the history: the same dialect
    assert chosen(required_prefix_token_ids=[7], return_token_ids=False).return_token_ids is False
    assert getattr(chosen(prefix_tokens=[7]), "return_token_ids", None) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"tokens": [1], "prefix_tokens": [1]},
        {"tokens": [1], "required_prefix_token_ids": [1]},
        {"prefix_tokens": [1], "required_prefix_token_ids": [1]},
    ],
)
def test_two_id_fields_are_refused_by_name(fields: dict[str, Any]) -> None:
    with pytest.raises(IdFieldsError, match="given together") as raised:
        choose_ids({"messages": GYM_TURN, **fields, "max_tokens": 5}, FIELDS)
    assert all(f"`{name}`" in str(raised.value) for name in fields)
    assert raised.value.param == list(fields)[1]
    assert "max_tokens" not in str(raised.value), "NeMo-Gym would read it as a context overflow"


def test_the_last_assistant_messages_ids_are_the_prefix() -> None:
    request = chosen()
    assert request.prefix_tokens == [1, 2, 3, 4] and is_nemo_dialect(request)


def test_an_explicit_field_wins_over_message_ids() -> None:
    request = chosen(tokens=[9])
    assert (request.tokens, request.prefix_tokens) == ([9], None) and not is_nemo_dialect(request)


def test_message_ids_on_an_earlier_assistant_only_give_no_prefix() -> None:
    later = [*GYM_TURN, {"role": "assistant", "content": "plain"}, {"role": "user", "content": "x"}]
    assert choose_ids({"messages": later}, FIELDS) == {"messages": later}
    with pytest.raises(ValidationError, match="exactly one"):
        Model.model_validate({"messages": later})


def test_a_consistent_chain_of_calls_is_accepted() -> None:
    second = {
        "role": "assistant",
        "content": "b",
        "prompt_token_ids": [1, 2, 3, 4, 5],
        "generation_token_ids": [6],
    }
    chain = [*GYM_TURN, second, {"role": "user", "content": "c"}]
    assert prefix_from_messages(chain) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("carried", "says"),
    [
        ({"prompt_token_ids": [1]}, "messages[1]` carries `prompt_token_ids` without `generation_token_ids`"),
        ({"generation_token_ids": [1]}, "without `prompt_token_ids`"),
        ({"prompt_token_ids": [1, True], "generation_token_ids": [2]}, "messages[1].prompt_token_ids[1]"),
        ({"prompt_token_ids": [1], "generation_token_ids": [-2]}, "messages[1].generation_token_ids[0]"),
        ({"prompt_token_ids": [1], "generation_token_ids": "2"}, "messages[1].generation_token_ids` must be"),
        ({"prompt_token_ids": [], "generation_token_ids": []}, "carries no token ids"),
    ],
)
def test_bad_message_ids_name_the_message(carried: dict[str, Any], says: str) -> None:
    messages = [GYM_TURN[0], {"role": "assistant", "content": "yo", **carried}, GYM_TURN[2]]
    with pytest.raises(IdFieldsError) as raised:
        choose_ids({"messages": messages, "max_tokens": 5}, FIELDS)
    assert says in str(raised.value) and raised.value.param == "messages"
    assert "max_tokens" not in str(raised.value)


def test_a_rewritten_history_names_both_messages() -> None:
    second = {"role": "assistant", "content": "b", "prompt_token_ids": [1, 2, 9], "generation_token_ids": [6]}
    with pytest.raises(IdFieldsError) as raised:
        prefix_from_messages([*GYM_TURN, second, {"role": "user", "content": "c"}])
    assert "`messages[3].prompt_token_ids` does not start with `messages[1]`" in str(raised.value)


def test_the_clients_body_is_not_changed() -> None:
    data = {"messages": GYM_TURN, "required_prefix_token_ids": [7]}
    choose_ids(data, FIELDS)
    assert data == {"messages": GYM_TURN, "required_prefix_token_ids": [7]}
