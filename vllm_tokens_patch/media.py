"""Images with token-in: place each image's features at its placeholder run in the client's ids.

The client's ids already hold every image's placeholder run expanded as the model's processor expands it
(what `prompt_token_ids` of an earlier response holds). vLLM's render processes the same media and returns
its own ids with the runs and where each item's features go (offset, length). Feeding the client's ids
with the render's offsets would misplace the features wherever the two differ in text; expanding the
client's runs again (what stacks that send ids with `multi_modal_data` get) corrupts the prompt. So the
runs are matched instead: the placeholder ids are the ids the render puts inside its runs; the maximal
stretches of them in the render and in the client's ids are paired in order; their count and each one's
ids must be equal; each item then moves by the difference of its stretch's starts. Never expanded twice,
never silently misplaced: a difference is a 400 naming the image and both lengths.

Sans-I/O and version-free: the adapter reads the render's items and writes the moved offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vllm_tokens_patch.adapters.base import MediaItem as Item
from vllm_tokens_patch.validation import TokensRejected

TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal", "thinking"})
"""Content-part types that are text (the ids carry them as they are)."""
IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})
"""Content-part types vLLM's chat parser reads as an image (a URL, a data URL)."""
MEDIA_KINDS = {
    "video_url": "video",
    "input_video": "video",
    "audio_url": "audio",
    "input_audio": "audio",
    "image_embeds": "image embeddings",
    "audio_embeds": "audio embeddings",
}
"""Other media content parts, by what a refusal calls them."""


def content_parts(message: Any) -> Iterable[Any]:
    """The content parts of a message (none for a string or missing content)."""
    content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", None)
    return content if isinstance(content, list) else ()


def part_type(part: Any) -> str | None:
    if isinstance(part, Mapping):
        kind = part.get("type")
        return str(kind) if kind is not None else ("text" if "text" in part else None)
    kind = getattr(part, "type", None)
    return None if kind is None else str(kind)


def has_media(messages: Iterable[Any]) -> bool:
    """Whether any message has a content part that is not text (the render must then process media)."""
    return any(
        part_type(part) not in TEXT_PART_TYPES for message in messages for part in content_parts(message)
    )


class MediaMismatch(TokensRejected):
    """The client's placeholder runs are not the ones the processor produced (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "tokens", "media_runs")


def _stretches(ids: Sequence[int], marks: frozenset[int]) -> list[tuple[int, int]]:
    """`(start, end)` of each maximal stretch of ids in `marks`."""
    found: list[tuple[int, int]] = []
    start = None
    for index, token in enumerate(ids):
        if token in marks:
            if start is None:
                start = index
        elif start is not None:
            found.append((start, index))
            start = None
    if start is not None:
        found.append((start, len(ids)))
    return found


def _name(item: Item, ordinal: int) -> str:
    return f"{item.modality} {ordinal + 1} (the {_nth(item.index)} {item.modality} in `messages`)"


def _nth(index: int) -> str:
    number = index + 1
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def place(rendered: Sequence[int], items: Sequence[Item], tokens: Sequence[int]) -> list[int]:
    """The offset in `tokens` of each of `items` (placed by vLLM's render in `rendered`), in their order.

    Raises `MediaMismatch` when `tokens` do not hold the same placeholder runs in the same order.
    """
    if not items:
        return []
    marks = frozenset(token for item in items for token in rendered[item.offset : item.offset + item.length])
    ordered = sorted(range(len(items)), key=lambda i: items[i].offset)
    ours, theirs = _stretches(rendered, marks), _stretches(tokens, marks)
    shown = ", ".join(str(mark) for mark in sorted(marks))
    if len(theirs) != len(ours):
        return _count_mismatch(items, ordered, ours, theirs, shown)
    moved = [0] * len(items)
    for ordinal, position in enumerate(ordered):
        item = items[position]
        stretch = next(s for s, (start, end) in enumerate(ours) if start <= item.offset < end)
        (start, end), (their_start, their_end) = ours[stretch], theirs[stretch]
        if their_end - their_start != end - start:
            raise MediaMismatch(
                f"{_name(item, ordinal)}: its placeholder run in `tokens` at index {their_start} has "
                f"{their_end - their_start} ids (placeholder ids {shown}), but the model's processor "
                f"expands this {item.modality} to {end - start}; send the run as an earlier response's "
                "`prompt_token_ids` holds it (the ids are never expanded again)"
            )
        if list(tokens[their_start:their_end]) != list(rendered[start:end]):
            raise MediaMismatch(
                f"{_name(item, ordinal)}: its placeholder run in `tokens` at index {their_start} has the "
                f"right length ({end - start}) but other ids than the model's processor produces for it"
            )
        moved[position] = item.offset - start + their_start
    return moved


def _count_mismatch(
    items: Sequence[Item],
    ordered: Sequence[int],
    ours: Sequence[tuple[int, int]],
    theirs: Sequence[tuple[int, int]],
    shown: str,
) -> list[int]:
    kinds = sorted({item.modality for item in items})
    what = " and ".join(kinds)
    lengths = ", ".join(str(end - start) for start, end in ours)
    given = ", ".join(str(end - start) for start, end in theirs) or "none"
    raise MediaMismatch(
        f"`tokens` hold {len(theirs)} placeholder run(s) (placeholder ids {shown}; lengths {given}), but "
        f"`messages` have {len(ordered)} {what} item(s) that the model's processor expands to {len(ours)} "
        f"run(s) (lengths {lengths}); each {what} needs its run in `tokens`, expanded once, in order"
    )
