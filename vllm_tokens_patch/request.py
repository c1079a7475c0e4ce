"""The token-in request model: this vLLM's `ChatCompletionRequest` plus `tokens`.

Built at app-build time from the installed vLLM's class, so every field, default and validator of the
stock request applies unchanged. What the route refuses (and why) is also decided here, from the
request alone, before vLLM does any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, StrictBool, StrictInt, model_validator

from vllm_tokens_patch.id_fields import PREFIX_ALIASES
from vllm_tokens_patch.media import IMAGE_PART_TYPES, MEDIA_KINDS, TEXT_PART_TYPES, content_parts, part_type

if TYPE_CHECKING:
    from vllm_tokens_patch.adapters.base import RequestFields


def _non_negative(ids: list[int]) -> list[int]:
    """One C-speed `min` instead of a per-item `ge=0` constraint (half the validation cost at 16k ids)."""
    if min(ids) < 0:
        index = next(i for i, token_id in enumerate(ids) if token_id < 0)
        raise ValueError(f"tokens[{index}] = {ids[index]} is negative; token ids are non-negative")
    return ids


TokenIds = Annotated[
    list[StrictInt],
    Field(
        min_length=1,
        description="The exact prompt token ids the engine is fed instead of the rendered `messages`.",
        json_schema_extra={"items": {"type": "integer", "minimum": 0}},
    ),
    AfterValidator(_non_negative),
]
"""Non-empty list of non-negative ints; bools, floats and strings are refused (strict ints)."""

PrefixIds = Annotated[
    TokenIds,
    Field(
        description="The ids the engine saw and sampled so far (the previous response's `prompt_token_ids` + "
        "`token_ids`); the server adds the new messages with the model's chat template.",
    ),
]


def _exactly_one_id_list(request: Any) -> Any:
    """`tokens` (the whole prompt) or `prefix_tokens` (the server splices the new turn): exactly one."""
    if (request.tokens is None) == (request.prefix_tokens is None):
        raise ValueError(
            "give exactly one of `tokens` (the whole prompt) and `prefix_tokens` (the ids so far; also "
            "accepted as `required_prefix_token_ids`, or on the last assistant message as "
            "`prompt_token_ids` + `generation_token_ids`)"
        )
    return request


VERIFY_FIELD = "vllm_tokens_patch_verify"
"""The per-request verification switch (prefixed with the package name so no vLLM field can collide)."""
VerifySwitch = Annotated[
    StrictBool | None,
    Field(
        description="Compare `tokens` with the ids rendered from `messages` (default: the server's "
        "VLLM_TOKENS_PATCH_VERIFY). `false` takes the fast path: vLLM does not render `messages`.",
    ),
]


def build_request_model(base: type[Any], class_caches: Sequence[str]) -> type[Any]:
    """Subclass vLLM's request with `tokens` / `prefix_tokens` (exactly one) and the verify switch.

    `class_caches` (`Adapter.request_class_caches`) are ClassVars of the base that cache per class: each
    starts empty on the subclass instead of inheriting the parent's.
    """
    annotations: dict[str, Any] = {
        "tokens": TokenIds | None,
        "prefix_tokens": PrefixIds | None,
        **dict.fromkeys(PREFIX_ALIASES, PrefixIds | None),
        VERIFY_FIELD: VerifySwitch,
    }
    annotations.update({name: ClassVar[Any] for name in class_caches})
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": "TokensChatCompletionRequest",
        "__doc__": "vLLM's ChatCompletionRequest plus `tokens` (the exact prompt ids) or `prefix_tokens`.",
        "__annotations__": annotations,
        "tokens": None,
        "prefix_tokens": None,
        **dict.fromkeys(PREFIX_ALIASES),
        VERIFY_FIELD: None,
        **dict.fromkeys(class_caches),
        "_exactly_one_id_list": model_validator(mode="after")(_exactly_one_id_list),
    }
    metaclass: Any = type(base)  # pydantic's model metaclass: builds the fields from the annotations
    model: type[Any] = metaclass("TokensChatCompletionRequest", (base,), namespace)
    return model


def refusal_reason(request: Any, fields: RequestFields, images: bool = False) -> tuple[str, str] | None:
    """`(message, param)` when the route cannot honour the request as vLLM would, else None (`fields`:
    the names of this vLLM's request fields, from its adapter; `images`: whether its render hands back
    processed images with their placeholder positions, `Adapter.places_media`)."""
    for index, message in enumerate(request.messages):
        for part in content_parts(message):
            kind = part_type(part)
            if kind in TEXT_PART_TYPES or (images and kind in IMAGE_PART_TYPES):
                continue
            if kind in IMAGE_PART_TYPES:
                return (
                    f"messages[{index}] has a {kind!r} content part: images with `tokens` are not supported "
                    "on this vLLM release, whose chat render does not hand back the processed images and "
                    "their placeholder positions (the runs in the ids would be expanded again); see the "
                    "releases that support them in docs/compatibility.md",
                    "messages",
                )
            what = MEDIA_KINDS.get(str(kind), f"{kind!r} content")
            if images:
                return (
                    f"messages[{index}] has a {kind!r} content part: {what} is not supported with `tokens` "
                    "(text and images are)",
                    "messages",
                )
            return (
                f"messages[{index}] has a {kind!r} content part: multimodal input is not supported with "
                "`tokens` on this vLLM release (the ids would not carry the media placeholders vLLM expands)",
                "messages",
            )
    kv_params = getattr(request, fields.kv_transfer_params, None)
    if isinstance(kv_params, dict) and fields.reused_ids in kv_params:
        return (
            f"`{fields.kv_transfer_params}.{fields.reused_ids}` cannot be combined with `tokens`: vLLM would "
            "feed those ids and skip rendering; send the prompt ids in `tokens` only",
            fields.kv_transfer_params,
        )
    ids_field = fields.prompt_token_ids
    if ids_field in type(request).model_fields and getattr(request, ids_field, None) is not None:
        return (f"`{ids_field}` cannot be combined with `tokens`", ids_field)
    truncate = fields.truncate_prompt_tokens
    if getattr(request, truncate, None) is not None:
        return (
            f"`{truncate}` is not supported with `tokens`: the ids are fed exactly as given, "
            "truncate them on the client",
            truncate,
        )
    return None
