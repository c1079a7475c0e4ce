"""The conversation memory (`VLLM_TOKENS_PATCH_MEMORY=local`) on this release's real app with the fake engine.

An unmodified agent loop: plain Chat Completions bodies on vLLM's own route, the whole history sent back as
text each turn. With memory on, every turn's engine prompt begins with the previous turn's prompt + sampled
ids (read from the fake engine's record, not from the response), whatever the client did to the echoed
assistant message; the export gives the branch back. `served` (memory off) stays exactly stock.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from vllm_tokens_patch_testbed.harness import Script, VllmApp, parse_sse
from vllm_tokens_patch_testbed.vllm_suite import API_KEY, ROUTE, STOCK, TOOLS, body, post

from vllm_tokens_patch.memory import MEMORY_HEADER

EXPORT = ROUTE + "/trajectory"
USER_1 = {"role": "user", "content": "Hello world, how are you today?"}
USER_2 = {"role": "user", "content": "And tomorrow?"}
USER_3 = {"role": "user", "content": "Tell me a story."}


def prompt_of(app: VllmApp) -> list[int]:
    return list(app.engine.prompts[-1]["prompt_token_ids"])


def sampled_of(app: VllmApp) -> list[int]:
    script = app.engine.script
    return list(script.token_ids or app.tokenizer.encode(script.text, add_special_tokens=False))


def turn(run: Any, app: VllmApp, messages: list[dict[str, Any]], **extra: Any) -> tuple[Any, dict[str, Any]]:
    """One stock-route call; the response and the assistant message as the server returned it."""
    response = post(run, app, STOCK, body(app, messages, **extra))
    assert response.status_code == 200, response.text
    if extra.get("stream"):
        events = [e for e in parse_sse(response.text) if isinstance(e, dict) and e.get("choices")]
        content = "".join((e["choices"][0].get("delta") or {}).get("content") or "" for e in events)
        return response, {"role": "assistant", "content": content}
    return response, response.json()["choices"][0]["message"]


def spelled(app: VllmApp, text: str) -> list[int]:
    """`text` sampled one character per id: what a re-tokenization of the text does not give back."""
    ids = [i for c in text for i in app.tokenizer.encode(c, add_special_tokens=False)]
    assert ids != app.tokenizer.encode(text, add_special_tokens=False) and app.tokenizer.decode(ids) == text
    return ids


@pytest.fixture
def fresh(remembering: VllmApp) -> VllmApp:
    """The default script, and a conversation no other test shares (the store lives for the session)."""
    remembering.engine.script = Script(text="Hello there")
    return remembering


@pytest.mark.parametrize("stream", [False, True])
def test_an_agent_loop_reuses_the_exact_ids_every_turn_and_exports_them(
    run: Any, fresh: VllmApp, served: VllmApp, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model samples a non-canonical tokenization each turn, so a re-render drifts: only the reused ids
    keep the prompt's start (the same loop on `served`, memory off, drifts: checked at the end)."""
    fresh.engine.script = Script(text="Hello there", token_ids=spelled(fresh, "Hello there"))
    first = [{**USER_1, "content": f"{USER_1['content']} ({stream})"}]
    response, answer = turn(run, fresh, first, stream=stream)
    assert response.headers[MEMORY_HEADER] == "miss; reason=no_history"
    so_far = prompt_of(fresh) + sampled_of(fresh)
    turns = [(len(prompt_of(fresh)), len(so_far))]
    history = [*first, answer]
    for number, user in enumerate([USER_2, USER_3], start=2):
        response, answer = turn(run, fresh, [*history, user], stream=stream)
        engine = prompt_of(fresh)
        assert engine[: len(so_far)] == so_far, f"turn {number}: the ids so far are not the prompt's start"
        assert response.headers[MEMORY_HEADER] == f"hit; messages={len(history)}; ids={len(so_far)}"
        history = [*history, user, answer]
        so_far = engine + sampled_of(fresh)
        turns.append((len(engine), len(so_far)))
    export = post(run, fresh, EXPORT, {"model": fresh.args.model, "messages": history})
    assert export.status_code == 200, export.text
    got = export.json()
    assert got["token_ids"] == so_far
    assert [(t["prompt_end"], t["sampled_end"]) for t in got["turns"]] == turns
    mask = [0] * len(so_far)
    for start, end in turns:
        mask[start:end] = [1] * (end - start)
    assert got["sampled_mask"] == mask
    assert got["logprobs"] is None
    monkeypatch.setattr(served.engine, "script", fresh.engine.script)
    turn(run, served, history[:-2], stream=stream)
    assert prompt_of(served)[: turns[1][1]] != so_far[: turns[1][1]], "memory off: the stock render drifts"


def test_the_echo_forms_of_real_harnesses_match(run: Any, fresh: VllmApp) -> None:
    """A tool-call turn echoed with `content: null` (openai-agents) or re-serialized arguments and no
    reasoning (LangChain), with extra default fields (vllm-router): the same recorded branch."""
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'
    fresh.engine.script = Script(text=call)
    question = {"role": "user", "content": "What is the weather in Paris? (echo)"}
    _, answer = turn(run, fresh, [question], tools=TOOLS)
    assert answer["tool_calls"], answer
    so_far = prompt_of(fresh) + sampled_of(fresh)
    fresh.engine.script = Script(text="Sunny.")
    (tool_call,) = answer["tool_calls"]
    result = {"role": "tool", "tool_call_id": tool_call["id"], "content": "sunny"}
    arguments = json.dumps(json.loads(tool_call["function"]["arguments"]), indent=1, sort_keys=True)
    echoes = {
        "openai-agents": {**answer, "content": None},
        "langchain": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{**tool_call, "function": {**tool_call["function"], "arguments": arguments}}],
        },
        "vllm-router": {k: v for k, v in answer.items() if v is not None} | {"refusal": None},
    }
    for name, echoed in echoes.items():
        response, _ = turn(run, fresh, [question, echoed, result], tools=TOOLS)
        assert response.headers[MEMORY_HEADER].startswith("hit; messages=2"), (name, response.headers)
        assert prompt_of(fresh)[: len(so_far)] == so_far, name


def answers_of(response: Any, stream: bool) -> list[dict[str, Any]]:
    """Every choice's assistant message, by index (SSE deltas joined per choice)."""
    if not stream:
        return [choice["message"] for choice in sorted(response.json()["choices"], key=lambda c: c["index"])]
    contents: dict[int, str] = {}
    for event in parse_sse(response.text):
        for choice in event.get("choices") or [] if isinstance(event, dict) else []:
            delta = choice.get("delta") or {}
            contents[choice["index"]] = contents.get(choice["index"], "") + (delta.get("content") or "")
    return [{"role": "assistant", "content": contents[index]} for index in sorted(contents)]


@pytest.mark.parametrize("stream", [False, True])
def test_each_of_n_choices_is_its_own_branch(run: Any, fresh: VllmApp, stream: bool) -> None:
    """`n=2` samples two answers: whichever the harness keeps, its next turn reuses that choice's ids."""
    fresh.engine.script = Script(text="Hello there", others=["Sunny and warm."])
    first = [{"role": "user", "content": f"Two answers at once ({stream})."}]
    response, _ = turn(run, fresh, first, n=2, temperature=1.0, stream=stream)
    prompt = prompt_of(fresh)
    answers = answers_of(response, stream)
    assert [a["content"] for a in answers] == ["Hello there", "Sunny and warm."]
    for index, answer in enumerate(answers):
        sampled = fresh.tokenizer.encode(answer["content"], add_special_tokens=False)
        response, _ = turn(run, fresh, [*first, answer, USER_2])
        assert response.headers[MEMORY_HEADER] == f"hit; messages=2; ids={len(prompt) + len(sampled)}", index
        assert prompt_of(fresh)[: len(prompt) + len(sampled)] == prompt + sampled, f"choice {index}'s ids"
        export = post(run, fresh, EXPORT, {"model": fresh.args.model, "messages": [*first, answer]})
        assert export.json()["token_ids"] == prompt + sampled, index


def test_misses_say_why_and_the_stock_answer_is_served(run: Any, fresh: VllmApp) -> None:
    first = [{"role": "user", "content": "A conversation of its own (misses)."}]
    _, answer = turn(run, fresh, first)
    rewritten = [{"role": "user", "content": "Rewritten."}, answer, USER_2]
    response, _ = turn(run, fresh, rewritten)
    assert response.headers[MEMORY_HEADER] == "miss; reason=unknown"
    assert prompt_of(fresh) == fresh.chat_ids(rewritten, tools=TOOLS) or prompt_of(fresh) == fresh.chat_ids(
        rewritten
    )
    with_ids = post(run, fresh, STOCK, body(fresh, [*first, answer, USER_2], tokens=[1, 2, 3]))
    assert with_ids.headers[MEMORY_HEADER] == "miss; reason=token_fields"


def test_a_hit_the_splice_refuses_is_answered_by_vllms_own_route(run: Any, fresh: VllmApp) -> None:
    """The whole recorded conversation sent again (it ends with the assistant message): the splice has
    nothing to add and refuses, so the client, who sent a plain body, gets the stock answer."""
    first = [{"role": "user", "content": "Asked once, then again with the answer (refused)."}]
    _, answer = turn(run, fresh, first)
    response, again = turn(run, fresh, [*first, answer])
    assert response.headers[MEMORY_HEADER] == "miss; reason=refused"
    assert prompt_of(fresh) == fresh.chat_ids([*first, answer])
    assert again["role"] == "assistant"


@pytest.mark.parametrize("field", ["user", "session_id"])
def test_the_same_text_with_different_ids_is_ambiguous_unless_the_session_picks(
    run: Any, fresh: VllmApp, field: str
) -> None:
    """`session_id` (vLLM 0.34's field; read from the body, so older releases pick by it too) or `user`."""
    first = [{"role": "user", "content": f"Twice the same answer, sampled two ways ({field})."}]
    text = "Hello there"
    canonical = fresh.tokenizer.encode(text, add_special_tokens=False)
    by_char = spelled(fresh, text)
    answers = []
    for who, ids in (("alice", canonical), ("bob", by_char)):
        fresh.engine.script = Script(text=text, token_ids=ids)
        _, answer = turn(run, fresh, first, **{field: who})
        answers.append(answer)
        first_prompt = prompt_of(fresh)
    assert answers[0] == answers[1]
    response, _ = turn(run, fresh, [*first, answers[0], USER_2])
    assert response.headers[MEMORY_HEADER] == "miss; reason=ambiguous"
    response, _ = turn(run, fresh, [*first, answers[0], USER_2], **{field: "bob"})
    assert response.headers[MEMORY_HEADER].startswith("hit; messages=2")
    assert prompt_of(fresh)[len(first_prompt) : len(first_prompt) + len(by_char)] == by_char, "bob's ids"
    export = post(run, fresh, EXPORT, {"model": fresh.args.model, "messages": [*first, answers[0]]})
    assert export.status_code == 409, export.text
    export = post(
        run, fresh, EXPORT, {"model": fresh.args.model, "messages": [*first, answers[0]], field: "bob"}
    )
    assert export.json()["token_ids"][-len(by_char) :] == by_char


def test_the_token_route_records_too(run: Any, fresh: VllmApp) -> None:
    first = [{"role": "user", "content": "Sent with tokens (token route)."}]
    ids = fresh.chat_ids(first)
    response = post(run, fresh, ROUTE, body(fresh, first, tokens=ids))
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]
    so_far = ids + sampled_of(fresh)
    response, _ = turn(run, fresh, [*first, answer, USER_2])
    assert response.headers[MEMORY_HEADER].startswith("hit")
    assert prompt_of(fresh)[: len(so_far)] == so_far


def test_an_unknown_transcript_is_a_404_and_the_export_needs_the_key(run: Any, fresh: VllmApp) -> None:
    unknown = [USER_1, {"role": "assistant", "content": "never said"}]
    response = post(run, fresh, EXPORT, {"model": fresh.args.model, "messages": unknown})
    assert response.status_code == 404, response.text
    assert "no recorded conversation" in json.dumps(response.json())
    denied = run(
        fresh.client.post(
            EXPORT,
            json={"model": fresh.args.model, "messages": unknown},
            headers={"Authorization": "Bearer wrong"},
        )
    )
    assert denied.status_code == 401
    assert API_KEY


def test_an_entry_unused_past_the_max_age_is_evicted(run: Any, forgetful: VllmApp) -> None:
    """`VLLM_TOKENS_PATCH_MEMORY_MAX_AGE=1`: reused within the second, gone after it."""
    first = [{"role": "user", "content": "Remember me briefly."}]
    _, answer = turn(run, forgetful, first)
    response, answer_2 = turn(run, forgetful, [*first, answer, USER_2])
    assert response.headers[MEMORY_HEADER].startswith("hit; messages=2")
    time.sleep(1.5)
    response, _ = turn(run, forgetful, [*first, answer, USER_2, answer_2, USER_3])
    assert response.headers[MEMORY_HEADER] == "miss; reason=unknown"
    export = post(run, forgetful, EXPORT, {"model": forgetful.args.model, "messages": [*first, answer]})
    assert export.status_code == 404, export.text


def test_memory_off_is_exactly_stock(run: Any, served: VllmApp) -> None:
    response = post(run, served, STOCK, body(served, [USER_1]))
    assert response.status_code == 200 and MEMORY_HEADER not in response.headers
    assert post(run, served, EXPORT, {"model": served.args.model, "messages": [USER_1]}).status_code == 404
