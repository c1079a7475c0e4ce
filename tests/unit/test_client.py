"""The rollout client against a stand-in server whose `/tokenize` renders ChatML and whose routes echo."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from vllm_tokens_patch.client import TemplateNotSplittable, TokenChatClient, differing_positions
from vllm_tokens_patch.demo import Turn, format_table

SPECIAL = {"<|im_start|>": 1000, "<|im_end|>": 1001}


def encode(text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
        for token, token_id in SPECIAL.items():
            if text.startswith(token, i):
                ids.append(token_id)
                i += len(token)
                break
        else:
            ids.append(ord(text[i]))
            i += 1
    return ids


def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def handler(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if request.url.path == "/tokenize":
        if "messages" in body:
            return httpx.Response(
                200, json={"tokens": encode(render(body["messages"], body["add_generation_prompt"]))}
            )
        return httpx.Response(200, json={"tokens": encode(body["prompt"])})
    if request.url.path == "/v1/chat/completions/tokens":
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(
            200,
            json={
                "prompt_token_ids": body["tokens"],
                "choices": [{"token_ids": [104, 105], "message": {"content": "hi"}}],
            },
            headers={"x-vllm-tokens-verification": "match"},
        )
    return httpx.Response(404)


@pytest.fixture
def client() -> TokenChatClient:
    return TokenChatClient("http://server/v1", "m", api_key="k", transport=httpx.MockTransport(handler))


def test_end_of_turn_ids_come_from_the_template(client: TokenChatClient) -> None:
    assert client.end_of_turn_ids() == encode("<|im_end|>\n")


def test_next_prompt_appends_sampled_ids_glue_and_the_user_turn(client: TokenChatClient) -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "hi"}]
    prompt = encode(render(history[:1], True))
    sampled = [104, 105]  # "hi" without an end-of-turn token (stopped by max_tokens)
    expected = encode(render([*history, {"role": "user", "content": "more"}], True))
    assert client.next_prompt(prompt, sampled, history, "more") == expected
    # the model sampled the end-of-turn token itself: it is not appended twice
    with_eos = [*sampled, SPECIAL["<|im_end|>"]]
    assert client.next_prompt(prompt, with_eos, history, "more") == expected


def test_sampled_ids_are_kept_even_when_text_would_retokenize_differently(client: TokenChatClient) -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "hi"}]
    prompt = encode(render(history[:1], True))
    odd = [7, 7, 7]  # ids the text "hi" would never tokenize to
    ids = client.next_prompt(prompt, odd, history, "more")
    assert ids[len(prompt) : len(prompt) + 3] == odd


def test_chat_tokens_returns_body_and_headers(client: TokenChatClient) -> None:
    body, headers = client.chat_tokens([{"role": "user", "content": "a"}], [1, 2])
    assert body["prompt_token_ids"] == [1, 2]
    assert headers["x-vllm-tokens-verification"] == "match"


def test_a_template_that_rewrites_history_is_reported() -> None:
    def rewriting(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "messages" in body:
            count = len(body["messages"])
            return httpx.Response(200, json={"tokens": [count] * (count + 1)})  # every render differs
        return httpx.Response(200, json={"tokens": [9]})

    client = TokenChatClient("http://server", "m", transport=httpx.MockTransport(rewriting))
    with pytest.raises(TemplateNotSplittable):
        client.end_of_turn_ids()


@pytest.mark.parametrize(
    ("reference", "other", "count"),
    [([1, 2, 3], [1, 2, 3], 0), ([1, 2, 3], [1, 9, 3], 1), ([1, 2], [1, 2, 3, 4], 2), ([1, 2, 3], [2, 3], 3)],
)
def test_differing_positions(reference: list[int], other: list[int], count: int) -> None:
    assert differing_positions(reference, other) == count


def test_demo_table() -> None:
    table = format_table([Turn(1, 10, 10, 0, 0, "match"), Turn(2, 30, 33, 12, 0, "mismatch")])
    assert table.splitlines()[2] == "| 1 | 10 | 10 | 0 | 0 | match |"
    assert table.splitlines()[3] == "| 2 | 30 | 33 | 12 | 0 | mismatch |"
