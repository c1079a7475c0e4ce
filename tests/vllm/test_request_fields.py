"""Request fields a vLLM release adds to its chat request behave on the token route as on the stock route.

The token request model extends the running vLLM's own `ChatCompletionRequest`, so a new field is accepted
by construction; these tests hold its effect to the stock route's. Each runs where the running release has
the field (vLLM 0.34.0 added all four) and is skipped, with that reason, where it does not.
"""

from __future__ import annotations

from typing import Any

import pytest
from vllm_tokens_patch_testbed.harness import VllmApp, normalize, parse_sse
from vllm_tokens_patch_testbed.vllm_suite import ADAPTER, MESSAGES, ROUTE, STOCK, body, drifted, post


@pytest.fixture(scope="module")
def served(build: Any) -> VllmApp:
    """An app of its own: the suite's session app answers 501 once the unpatch tests have run."""
    return build()  # type: ignore[no-any-return]


def needs(field: str) -> None:
    """Skip where this vLLM's chat request (the token model's base) has no such field."""
    if field not in ADAPTER.request_base.resolve().model_fields:
        pytest.skip(f"this vLLM's chat request has no `{field}` (added in vLLM 0.34.0)")


def choice_of(response: Any, stream: bool) -> dict[str, Any]:
    """The first choice (JSON) or the first chunk (SSE), and its `prompt_text`."""
    if stream:
        first = parse_sse(response.text)[0]
        return {"prompt_text": first.get("prompt_text")}
    return {"prompt_text": response.json().get("prompt_text")}


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_text_is_the_text_of_the_ids_the_engine_is_fed(
    run: Any, served: VllmApp, stream: bool, mode: dict[str, Any]
) -> None:
    needs("return_prompt_text")
    extra = {"return_prompt_text": True, "stream": stream}
    stock = post(run, served, STOCK, body(served, **extra))
    assert stock.status_code == 200, stock.text
    stock_text = choice_of(stock, stream)["prompt_text"]
    assert isinstance(stock_text, str) and stock_text, stock.text[:300]

    ids = served.chat_ids(MESSAGES)
    same = post(run, served, ROUTE, body(served, tokens=ids, **extra, **mode))
    assert same.status_code == 200, same.text
    assert choice_of(same, stream)["prompt_text"] == served.tokenizer.decode(ids, skip_special_tokens=False)
    if not mode:  # the render's own text where the ids are the render's ids
        assert choice_of(same, stream)["prompt_text"] == stock_text

    other = drifted(ids)
    changed = post(run, served, ROUTE, body(served, tokens=other, **extra, **mode))
    assert changed.status_code == 200, changed.text
    text = choice_of(changed, stream)["prompt_text"]
    assert text == served.tokenizer.decode(other, skip_special_tokens=False) and text != stock_text
    assert served.engine.prompts[-1]["prompt_token_ids"] == other

    quiet = post(run, served, ROUTE, body(served, tokens=other, stream=stream, **mode))
    assert choice_of(quiet, stream)["prompt_text"] is None  # not asked: as on the stock route


@pytest.mark.parametrize("stream", [False, True])
def test_weight_versions_come_back_as_on_the_stock_route(
    run: Any, served: VllmApp, stream: bool, mode: dict[str, Any]
) -> None:
    needs("return_weight_versions")
    for asked in (True, False):
        extra = {"return_weight_versions": asked, "stream": stream}
        stock = post(run, served, STOCK, body(served, **extra))
        tokens = post(run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), **extra, **mode))
        assert stock.status_code == tokens.status_code == 200, tokens.text
        if stream:
            assert normalize(parse_sse(tokens.text)) == normalize(parse_sse(stock.text))
            spans = [
                c.get("weight_versions")
                for e in parse_sse(tokens.text)
                if e != "[DONE]"
                for c in e["choices"]
            ]
        else:
            assert normalize(tokens.json()) == normalize(stock.json())
            spans = [tokens.json()["choices"][0].get("weight_versions")]
        assert any(spans) is asked, spans


def test_session_id_reaches_the_engine_as_on_the_stock_route(
    run: Any, served: VllmApp, mode: dict[str, Any]
) -> None:
    needs("session_id")
    stock = post(run, served, STOCK, body(served, session_id="rollout-7"))
    stock_kwargs = served.engine.generate_kwargs[-1]
    tokens = post(
        run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), session_id="rollout-7", **mode)
    )
    assert stock.status_code == tokens.status_code == 200, tokens.text
    assert served.engine.generate_kwargs[-1]["session_id"] == stock_kwargs["session_id"] == "rollout-7"


def test_mm_payload_is_ignored_on_generation_as_on_the_stock_route(
    run: Any, served: VllmApp, mode: dict[str, Any]
) -> None:
    needs("mm_payload")
    for value, status in (("none", 200), ("tensors", 200), ("bogus", 400)):
        stock = post(run, served, STOCK, body(served, mm_payload=value))
        tokens = post(
            run, served, ROUTE, body(served, tokens=served.chat_ids(MESSAGES), mm_payload=value, **mode)
        )
        assert stock.status_code == tokens.status_code == status, (value, tokens.text)
        if status == 200:
            assert normalize(tokens.json())["choices"] == normalize(stock.json())["choices"]
