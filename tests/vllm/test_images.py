"""Images with token-in on vLLM's real app (fake engine, a tiny Qwen2-VL-style model whose processor runs
for real): the engine is fed the client's ids with each image's features at the client's placeholder run,
never expanded twice; runs that differ from what the processor produced are a 400 before any stream.
Releases whose render does not hand back processed media (`Adapter.places_media` false) refuse images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm_tokens_patch_testbed.harness import VllmApp, build_vllm_app, parse_sse
from vllm_tokens_patch_testbed.images import image_part, runs
from vllm_tokens_patch_testbed.vllm_suite import ADAPTER, ROUTE, STOCK, post

from vllm_tokens_patch.tiny_vlm import build_tiny_vlm, num_image_tokens

MAX_LEN = 1024
LIMITS = '{"image": 4, "video": 0}'


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


SMALL, WIDE, LARGE = image_part(56, 56), image_part(100, 60, 1), image_part(200, 200, 2)
"""4, 8 and 16 placeholder ids after the processor's resize and 2x2 merge."""
ONE = [{"role": "user", "content": [text("What is this?"), SMALL]}]
TWO = [{"role": "user", "content": [text("Compare"), SMALL, text("with"), WIDE]}]


@pytest.fixture(scope="session")
def vision(run: Any, tmp_path_factory: pytest.TempPathFactory) -> VllmApp:
    if not ADAPTER.places_media:
        pytest.skip(
            f"adapter {ADAPTER.name} does not place images: "
            "test_images_are_refused_where_this_release_cannot_place_them asserts their 400"
        )
    model = build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-vlm", with_weights=False)
    return run(build_vllm_app(Path(model), ["--limit-mm-per-prompt", LIMITS], max_model_len=MAX_LEN))


def payload(app: VllmApp, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "model": app.args.model,
        "messages": messages,
        "temperature": 0,
        "max_completion_tokens": 4,
        **fields,
    }


def pad_id(app: VllmApp) -> int:
    return int(app.tokenizer.convert_tokens_to_ids("<|image_pad|>"))


def placed(app: VllmApp) -> list[tuple[int, int]]:
    """`(offset, length)` of each image's features in the last engine prompt."""
    return [(r.offset, r.length) for r in app.engine.prompts[-1]["mm_placeholders"]["image"]]


def stock_prompt(run: Any, app: VllmApp, messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = post(run, app, STOCK, payload(app, messages))
    assert response.status_code == 200, response.text
    return app.engine.prompts[-1]


def shifted(ids: list[int], at: int, extra: list[int]) -> list[int]:
    return [*ids[:at], *extra, *ids[at:]]


def test_images_are_refused_where_this_release_cannot_place_them(run: Any, served: VllmApp) -> None:
    """The text model's app: where the adapter places images the request reaches vLLM's render (which
    refuses images for a text-only model); elsewhere the route refuses them itself, naming why."""
    tokens = served.chat_ids([{"role": "user", "content": "What is this?"}])
    response = post(run, served, ROUTE, payload(served, ONE, tokens=tokens))
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert ("docs/compatibility.md" in message) is not ADAPTER.places_media, message


def test_exact_ids_feed_the_stock_prompt(run: Any, vision: VllmApp, mode: dict[str, Any]) -> None:
    """The ids of the stock render (an earlier response's `prompt_token_ids`): the engine gets the same
    ids, media and placements as on vLLM's own route; the fast-path switch still renders (media)."""
    stock = stock_prompt(run, vision, TWO)
    ids = list(stock["prompt_token_ids"])
    assert [length for _, length in runs(ids, pad_id(vision))] == [num_image_tokens(56, 56), 8]
    response = post(run, vision, ROUTE, payload(vision, TWO, tokens=ids, **mode))
    assert response.status_code == 200, response.text
    fed = vision.engine.prompts[-1]
    assert fed["prompt_token_ids"] == ids
    assert placed(vision) == [(r.offset, r.length) for r in stock["mm_placeholders"]["image"]]
    assert fed["mm_hashes"] == stock["mm_hashes"]
    expected = "skipped" if mode.get("vllm_tokens_patch_verify") is False else "match"
    assert response.headers["x-vllm-tokens-verification"] == expected


def test_features_move_to_the_clients_runs(run: Any, vision: VllmApp, mode: dict[str, Any]) -> None:
    """The client's text differs from the render's (drift before and between the images): each image's
    features go to its run in the client's ids, not to the render's offsets (also unverified: vLLM's
    native reuse branch, which drops or ignores media, is not taken)."""
    stock = stock_prompt(run, vision, TWO)
    ids, pad = list(stock["prompt_token_ids"]), pad_id(vision)
    (first, length), (second, _) = runs(ids, pad)
    filler = ids[1:4]  # ids of the conversation's own text
    tokens = shifted(shifted(ids, second - 1, filler[:2]), first - 1, filler)
    response = post(run, vision, ROUTE, payload(vision, TWO, tokens=tokens, **mode))
    assert response.status_code == 200, response.text
    assert vision.engine.prompts[-1]["prompt_token_ids"] == tokens
    assert placed(vision) == runs(tokens, pad) == [(first + 3, length), (second + 5, 8)]
    assert vision.engine.prompts[-1]["mm_hashes"] == stock["mm_hashes"]
    verified = mode.get("vllm_tokens_patch_verify") is not False
    assert response.headers["x-vllm-tokens-verification"] == ("mismatch" if verified else "skipped")


def test_an_image_only_user_turn(run: Any, vision: VllmApp) -> None:
    messages = [{"role": "user", "content": [LARGE]}]
    ids = list(stock_prompt(run, vision, messages)["prompt_token_ids"])
    response = post(run, vision, ROUTE, payload(vision, messages, tokens=ids))
    assert response.status_code == 200, response.text
    assert placed(vision) == runs(ids, pad_id(vision)) and placed(vision)[0][1] == 16


def test_a_run_expanded_twice_is_refused_naming_the_image_and_both_lengths(run: Any, vision: VllmApp) -> None:
    """What stacks that send ids with the media get from the engine (each run expanded again): a 400
    naming the image and both lengths, before the engine sees anything, also for a stream."""
    ids = list(stock_prompt(run, vision, TWO)["prompt_token_ids"])
    pad = pad_id(vision)
    (_, _), (second, length) = runs(ids, pad)
    tokens = shifted(ids, second, [pad] * length)  # the second run twice as long
    seen = len(vision.engine.prompts)
    for stream in (False, True):
        response = post(run, vision, ROUTE, payload(vision, TWO, tokens=tokens, stream=stream))
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["param"] == "tokens"
        assert "image 2" in error["message"] and f"has {2 * length} ids" in error["message"]
        assert f"expands this image to {length}" in error["message"]
    assert len(vision.engine.prompts) == seen


def test_a_missing_run_is_refused_with_both_counts(run: Any, vision: VllmApp) -> None:
    """verl's collapse (one placeholder per image) is a length mismatch; a run dropped altogether (ids
    rendered without the image) is a count mismatch: both 400."""
    ids = list(stock_prompt(run, vision, TWO)["prompt_token_ids"])
    pad = pad_id(vision)
    (first, length), _ = runs(ids, pad)
    dropped = ids[:first] + ids[first + length :]
    response = post(run, vision, ROUTE, payload(vision, TWO, tokens=dropped))
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "hold 1 placeholder run(s)" in message and "2 image item(s)" in message, message
    collapsed = ids[: first + 1] + ids[first + length :]
    response = post(run, vision, ROUTE, payload(vision, TWO, tokens=collapsed))
    assert response.status_code == 400 and "has 1 ids" in response.json()["error"]["message"]


def test_a_stream_places_the_images(run: Any, vision: VllmApp) -> None:
    ids = list(stock_prompt(run, vision, ONE)["prompt_token_ids"])
    tokens = shifted(ids, 1, ids[1:3])
    response = post(run, vision, ROUTE, payload(vision, ONE, tokens=tokens, stream=True))
    assert response.status_code == 200, response.text
    assert parse_sse(response.text)[-1] == "[DONE]"
    assert placed(vision) == runs(tokens, pad_id(vision))


def test_a_splice_carries_the_new_images_runs_in_the_bridge(run: Any, vision: VllmApp) -> None:
    """Turn 2 adds an image after an answer to a turn with one, and echoes the answer edited (so vLLM's
    render of the history drifts from the ids): the earlier image's features stay at its run in
    `prefix_tokens`, the new one's land on the run the bridge carries."""
    first = post(
        run,
        vision,
        ROUTE,
        payload(
            vision,
            ONE,
            tokens=list(stock_prompt(run, vision, ONE)["prompt_token_ids"]),
            return_token_ids=True,
        ),
    )
    assert first.status_code == 200, first.text
    answer = first.json()
    prefix = [*answer["prompt_token_ids"], *answer["choices"][0]["token_ids"]]
    messages = [
        *ONE,
        {"role": "assistant", "content": answer["choices"][0]["message"]["content"] + " and more words"},
        {"role": "user", "content": [text("And this one?"), WIDE]},
    ]
    response = post(run, vision, ROUTE, payload(vision, messages, prefix_tokens=prefix))
    assert response.status_code == 200, response.text
    fed = vision.engine.prompts[-1]["prompt_token_ids"]
    assert fed[: len(prefix)] == prefix
    pad = pad_id(vision)
    assert placed(vision) == runs(fed, pad) == [runs(prefix, pad)[0], (runs(fed, pad)[1][0], 8)]
    assert runs(fed, pad)[1][0] >= len(prefix)  # the new image's run is in the bridge
    stock = stock_prompt(run, vision, messages)
    assert vision.engine.prompts[-2]["mm_hashes"] == stock["mm_hashes"]  # the same images, in order


def test_video_is_refused_by_name(run: Any, vision: VllmApp) -> None:
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    messages = [{"role": "user", "content": [text("What happens?"), video]}]
    response = post(run, vision, ROUTE, payload(vision, messages, tokens=[1, 2, 3]))
    assert response.status_code == 400, response.text
    assert "video is not supported with `tokens`" in response.json()["error"]["message"]
