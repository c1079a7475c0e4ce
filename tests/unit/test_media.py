"""`media.place`: the client's placeholder runs paired with the render's, in order, checked and moved."""

from __future__ import annotations

import pytest

from vllm_tokens_patch.adapters.base import MediaItem
from vllm_tokens_patch.media import MediaMismatch, has_media, place

P, B, E = 9, 7, 8  # a placeholder id, and a grid's break and end ids inside a run (Pixtral-style)


def item(offset: int, length: int, index: int = 0, modality: str = "image") -> MediaItem:
    return MediaItem(modality, index, offset, length)


def test_each_item_moves_with_its_run() -> None:
    rendered = [1, 2, P, P, 3, P, P, P, 4]
    tokens = [1, 5, 5, 2, P, P, 3, 6, P, P, P, 4]
    assert place(rendered, [item(2, 2), item(5, 3, 1)], tokens) == [4, 8]


def test_items_are_returned_in_their_own_order_and_runs_may_abut() -> None:
    """Two items in one stretch of placeholder ids (no separator between them), listed out of order
    (another modality first): each keeps its place inside the stretch."""
    rendered = [1, P, P, P, P, P, 2]
    tokens = [1, 1, P, P, P, P, P, 2]
    items = [item(4, 2, 0, "video"), item(1, 3)]
    assert place(rendered, items, tokens) == [5, 2]


def test_a_run_with_other_ids_inside_is_one_stretch() -> None:
    rendered = [1, P, P, B, P, P, E, 2]
    tokens = [1, 3, P, P, B, P, P, E, 2]
    assert place(rendered, [item(1, 6)], tokens) == [2]
    with pytest.raises(MediaMismatch, match="right length"):
        place(rendered, [item(1, 6)], [1, P, B, P, P, P, E, 2])


def test_a_longer_run_names_the_image_and_both_lengths() -> None:
    with pytest.raises(MediaMismatch) as raised:
        place([1, P, P, 2, P, 3], [item(1, 2), item(4, 1, 1)], [1, P, P, 2, P, P, 3])
    message = str(raised.value)
    assert "image 2 (the 2nd image in `messages`)" in message and "has 2 ids" in message
    assert "expands this image to 1" in message
    assert raised.value.param == "tokens" and raised.value.reason == "media_runs"


def test_a_missing_or_extra_run_gives_both_counts() -> None:
    rendered = [1, P, P, 2, P, 3]
    items = [item(1, 2), item(4, 1, 1)]
    with pytest.raises(MediaMismatch, match=r"hold 1 placeholder run\(s\).*2 image item\(s\)"):
        place(rendered, items, [1, P, P, 2, 3])
    with pytest.raises(MediaMismatch, match=r"hold 3 placeholder run\(s\)"):
        place(rendered, items, [1, P, P, 2, P, 3, P])
    with pytest.raises(
        MediaMismatch, match=r"hold 0 placeholder run\(s\) \(placeholder ids 9; lengths none\)"
    ):
        place(rendered, items, [1, 2, 3])


def test_no_items_is_nothing_to_place() -> None:
    assert place([1, 2], [], [3]) == []


def test_media_is_any_content_part_that_is_not_text() -> None:
    text = {"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}
    assert not has_media([text, {"role": "assistant", "content": "c"}, {"role": "user"}])
    assert has_media([text, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
