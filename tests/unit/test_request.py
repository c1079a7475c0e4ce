from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from vllm_tokens_patch.adapters import Adapter
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
