"""The token fields on vLLM's own chat route (`VLLM_TOKENS_PATCH_STOCK_ROUTE=1`) and NeMo-Gym's dialect.

`stocked` is `served`'s command line with the opt-in; `served` has none. With the opt-in, a body that
carries a token field gets the token route's answer; every other body gets exactly the stock answer.
Without it, the stock route is exactly stock whatever the body carries.
"""

from __future__ import annotations

from typing import Any

import pytest
from vllm_tokens_patch_testbed.harness import VllmApp, normalize, parse_sse
from vllm_tokens_patch_testbed.vllm_suite import (
    ANSWER,
    API_KEY,
    FIRST_TURN,
    MAX_MODEL_LEN,
    MESSAGES,
    ROUTE,
    STOCK,
    TOOLS,
    body,
    drifted,
    post,
    rendered,
)

from vllm_tokens_patch.headers import SPLICE_HEADER, VERIFICATION_HEADER

FOLLOW_UP = {"role": "user", "content": "And tomorrow?"}


def history_ids(run: Any, app: VllmApp) -> tuple[list[int], list[int]]:
    """Turn 1 as the engine saw it: the prompt ids and the sampled ids (ending with `<|im_end|>`)."""
    so_far = rendered(run, app, [*FIRST_TURN, ANSWER], False)  # ... <|im_end|> \n
    prompt = rendered(run, app, FIRST_TURN, True)
    return prompt, so_far[len(prompt) : -1]


def engine_ids(app: VllmApp) -> list[int]:
    return list(app.engine.prompts[-1]["prompt_token_ids"])


# --- off: the stock route is exactly stock ----------------------------------------------------------------

TOKEN_FIELDS = ("tokens", "prefix_tokens", "required_prefix_token_ids")


@pytest.mark.parametrize("field", TOKEN_FIELDS)
def test_without_the_opt_in_the_stock_route_ignores_every_token_field(
    run: Any, served: VllmApp, field: str
) -> None:
    plain = post(run, served, STOCK, body(served, return_token_ids=True))
    plain_ids = engine_ids(served)
    stray = post(run, served, STOCK, body(served, return_token_ids=True, **{field: [1, 2, 3]}))
    assert plain.status_code == stray.status_code == 200, stray.text
    assert engine_ids(served) == plain_ids == served.chat_ids(MESSAGES)
    assert VERIFICATION_HEADER not in stray.headers and SPLICE_HEADER not in stray.headers


def test_without_the_opt_in_gym_message_ids_are_ignored(run: Any, served: VllmApp) -> None:
    prompt, sampled = history_ids(run, served)
    carried = {**ANSWER, "prompt_token_ids": prompt, "generation_token_ids": sampled}
    response = post(run, served, STOCK, body(served, [*FIRST_TURN, carried, FOLLOW_UP], tools=TOOLS))
    assert response.status_code == 200, response.text
    assert SPLICE_HEADER not in response.headers
    assert engine_ids(served) == rendered(run, served, [*FIRST_TURN, ANSWER, FOLLOW_UP], True)


# --- on: a body without token fields is served exactly as stock ------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_with_the_opt_in_a_plain_request_is_answered_as_stock(
    run: Any, served: VllmApp, stocked: VllmApp, stream: bool
) -> None:
    payload = body(served, return_token_ids=True, stream=stream, tools=TOOLS)
    reference = post(run, served, STOCK, payload)
    answer = post(run, stocked, STOCK, {**payload, "model": stocked.args.model})
    assert reference.status_code == answer.status_code == 200, answer.text
    assert engine_ids(stocked) == engine_ids(served)
    assert VERIFICATION_HEADER not in answer.headers
    if stream:
        assert normalize(parse_sse(answer.text)) == normalize(parse_sse(reference.text))
    else:
        assert normalize(answer.json()) == normalize(reference.json())


def test_with_the_opt_in_a_body_that_only_mentions_a_field_name_is_stock(run: Any, stocked: VllmApp) -> None:
    """`"tokens"` as a content string (and `\\u` escapes) makes the body decoded, not a token request."""
    messages = [{"role": "user", "content": "tokens"}, {"role": "user", "content": "caf\u00e9"}]
    raw = json_bytes(body(stocked, messages, return_token_ids=True), ensure_ascii=True)
    assert b'"tokens"' in raw and b"\\u" in raw
    response = run(stocked.client.post(STOCK, content=raw, headers={"content-type": "application/json"}))
    assert response.status_code == 200, response.text
    assert engine_ids(stocked) == stocked.chat_ids(messages)
    assert VERIFICATION_HEADER not in response.headers


def test_with_the_opt_in_an_escaped_field_name_is_still_a_token_request(run: Any, stocked: VllmApp) -> None:
    tokens = drifted(stocked.chat_ids(MESSAGES))
    raw = json_bytes(body(stocked, tokens=tokens)).replace(b'"tokens"', b'"tok\\u0065ns"')
    response = run(stocked.client.post(STOCK, content=raw, headers={"content-type": "application/json"}))
    assert response.status_code == 200, response.text
    assert engine_ids(stocked) == tokens
    assert response.headers[VERIFICATION_HEADER] == "mismatch"


def json_bytes(payload: dict[str, Any], ensure_ascii: bool = False) -> bytes:
    import json

    return json.dumps(payload, ensure_ascii=ensure_ascii).encode()


# --- on: the token route's semantics on the stock path ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_on_the_stock_path_equal_the_token_route(
    run: Any, stocked: VllmApp, stream: bool, mode: dict[str, Any]
) -> None:
    tokens = drifted(stocked.chat_ids(MESSAGES))
    payload = body(stocked, tokens=tokens, return_token_ids=True, stream=stream, **mode)
    ours = post(run, stocked, ROUTE, payload)
    ours_ids = engine_ids(stocked)
    stock = post(run, stocked, STOCK, payload)
    assert ours.status_code == stock.status_code == 200, stock.text
    assert engine_ids(stocked) == ours_ids == tokens
    assert stock.headers[VERIFICATION_HEADER] == ours.headers[VERIFICATION_HEADER]
    assert stock.headers[VERIFICATION_HEADER] == ("skipped" if mode else "mismatch")
    if stream:
        assert normalize(parse_sse(stock.text)) == normalize(parse_sse(ours.text))
    else:
        assert normalize(stock.json()) == normalize(ours.json())
        assert stock.json()["prompt_token_ids"] == tokens


@pytest.mark.parametrize("field", ["prefix_tokens", "required_prefix_token_ids"])
@pytest.mark.parametrize("path", [ROUTE, STOCK])
def test_a_prefix_under_either_name_is_spliced_on_either_path(
    run: Any, stocked: VllmApp, field: str, path: str
) -> None:
    prompt, sampled = history_ids(run, stocked)
    prefix = [*prompt, *sampled]
    messages = [*FIRST_TURN, ANSWER, FOLLOW_UP]
    payload = body(stocked, messages, tools=TOOLS, return_token_ids=True, **{field: prefix})
    response = post(run, stocked, path, payload)
    assert response.status_code == 200, response.text
    fed = engine_ids(stocked)
    assert fed[: len(prefix)] == prefix
    assert fed == rendered(run, stocked, messages, True)
    assert response.json()["prompt_token_ids"] == fed
    assert (
        response.headers[SPLICE_HEADER]
        == f"prefix={len(prefix)}; bridge={len(fed) - len(prefix)}; close=sampled"
    )


@pytest.mark.parametrize("path", [ROUTE, STOCK])
def test_gym_message_ids_give_the_prefix(run: Any, stocked: VllmApp, path: str) -> None:
    """NeMo-Gym's history: the last assistant message carries its call's prompt and sampled ids."""
    prompt, sampled = history_ids(run, stocked)
    carried = {**ANSWER, "prompt_token_ids": prompt, "generation_token_ids": sampled}
    messages = [*FIRST_TURN, carried, FOLLOW_UP]
    response = post(run, stocked, path, body(stocked, messages, tools=TOOLS, return_token_ids=True))
    assert response.status_code == 200, response.text
    fed = engine_ids(stocked)
    assert fed[: len(prompt) + len(sampled)] == [*prompt, *sampled]
    assert fed == rendered(run, stocked, [*FIRST_TURN, ANSWER, FOLLOW_UP], True)
    assert SPLICE_HEADER in response.headers


def test_gym_message_ids_chain_over_turns(run: Any, stocked: VllmApp) -> None:
    """Turn 3 carries turn 1's and turn 2's ids; each call started from the one before."""
    prompt, sampled = history_ids(run, stocked)
    first = {**ANSWER, "prompt_token_ids": prompt, "generation_token_ids": sampled}
    turn2 = [*FIRST_TURN, first, FOLLOW_UP]
    response = post(run, stocked, STOCK, body(stocked, turn2, tools=TOOLS, return_token_ids=True))
    assert response.status_code == 200, response.text
    second = {
        "role": "assistant",
        "content": response.json()["choices"][0]["message"]["content"],
        "prompt_token_ids": response.json()["prompt_token_ids"],
        "generation_token_ids": response.json()["choices"][0]["token_ids"],
    }
    turn3 = [*turn2, second, {"role": "user", "content": "Thanks."}]
    third = post(run, stocked, STOCK, body(stocked, turn3, tools=TOOLS, return_token_ids=True))
    assert third.status_code == 200, third.text
    assert engine_ids(stocked)[: len(second["prompt_token_ids"])] == second["prompt_token_ids"]


BAD_GYM_HISTORIES = {
    "only-the-prompt-ids": ({"prompt_token_ids": [1, 2]}, "without `generation_token_ids`"),
    "negative-generation-id": (
        {"prompt_token_ids": [1, 2], "generation_token_ids": [3, -4]},
        "messages[1].generation_token_ids[1]",
    ),
    "not-a-list": ({"prompt_token_ids": "1 2", "generation_token_ids": [3]}, "messages[1].prompt_token_ids"),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_GYM_HISTORIES))
@pytest.mark.parametrize("path", [ROUTE, STOCK])
def test_bad_gym_message_ids_are_a_400_naming_the_message(
    run: Any, stocked: VllmApp, case: str, path: str, stream: bool
) -> None:
    carried, says = BAD_GYM_HISTORIES[case]
    seen = len(stocked.engine.prompts)
    messages = [*FIRST_TURN, {**ANSWER, **carried}, FOLLOW_UP]
    response = post(run, stocked, path, body(stocked, messages, stream=stream))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert says in response.text, response.text
    assert len(stocked.engine.prompts) == seen


def test_an_inconsistent_gym_history_is_a_400_naming_the_later_message(run: Any, stocked: VllmApp) -> None:
    prompt, sampled = history_ids(run, stocked)
    first = {**ANSWER, "prompt_token_ids": prompt, "generation_token_ids": sampled}
    rewritten = {**ANSWER, "prompt_token_ids": drifted(prompt), "generation_token_ids": sampled}
    messages = [*FIRST_TURN, first, FOLLOW_UP, rewritten, FOLLOW_UP]
    response = post(run, stocked, STOCK, body(stocked, messages))
    assert response.status_code == 400, response.text
    assert "messages[3].prompt_token_ids" in response.text and "messages[1]" in response.text


@pytest.mark.parametrize("path", [ROUTE, STOCK])
@pytest.mark.parametrize(
    "fields",
    [
        {"tokens": [1, 2], "required_prefix_token_ids": [1, 2]},
        {"prefix_tokens": [1, 2], "required_prefix_token_ids": [1, 2]},
    ],
    ids=["tokens+required", "prefix+required"],
)
def test_two_id_fields_are_a_400(run: Any, stocked: VllmApp, path: str, fields: dict[str, Any]) -> None:
    messages = [*FIRST_TURN, ANSWER, FOLLOW_UP]
    response = post(run, stocked, path, body(stocked, messages, **fields))
    assert response.status_code == 400, response.text
    assert "given together" in response.text and all(name in response.text for name in fields)


def test_explicit_ids_win_over_message_ids(run: Any, stocked: VllmApp) -> None:
    carried = {**ANSWER, "prompt_token_ids": [5, 6], "generation_token_ids": [7]}
    tokens = drifted(stocked.chat_ids(MESSAGES))
    response = post(run, stocked, STOCK, body(stocked, [*FIRST_TURN, carried, FOLLOW_UP], tokens=tokens))
    assert response.status_code == 200, response.text
    assert engine_ids(stocked) == tokens


# --- on: auth, the fast path, what vLLM's route still owns --------------------------------------------------


def test_the_stock_path_keeps_vllms_api_key_check(run: Any, stocked: VllmApp) -> None:
    payload = body(stocked, tokens=stocked.chat_ids(MESSAGES))
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        denied = run(stocked.client.post(STOCK, json=payload, headers=headers))
        assert denied.status_code == 401, denied.text
    allowed = run(stocked.client.post(STOCK, json=payload, headers={"Authorization": f"Bearer {API_KEY}"}))
    assert allowed.status_code == 200


def test_a_bad_token_body_on_the_stock_path_is_a_400_before_any_stream(run: Any, stocked: VllmApp) -> None:
    seen = len(stocked.engine.prompts)
    for fields in ({"tokens": [1, -1]}, {"tokens": [1, 10**6]}, {"required_prefix_token_ids": []}):
        response = post(run, stocked, STOCK, body(stocked, stream=True, **fields))
        assert response.status_code == 400, (fields, response.text)
        assert response.headers["content-type"].startswith("application/json")
    assert len(stocked.engine.prompts) == seen


def test_a_malformed_body_naming_a_token_field_is_the_token_routes_400(run: Any, stocked: VllmApp) -> None:
    raw = b'{"tokens": [1, 2, ' + b"[" * 100_000
    response = run(stocked.client.post(STOCK, content=raw, headers={"content-type": "application/json"}))
    assert response.status_code == 400, response.text


def test_other_routes_are_untouched(run: Any, stocked: VllmApp) -> None:
    models = run(stocked.client.get("/v1/models"))
    assert models.status_code == 200
    wrong_method = run(stocked.client.get(STOCK))
    assert wrong_method.status_code == 405


def test_doctor_shows_the_setting_and_checks_the_dispatch_mounts() -> None:
    from vllm_tokens_patch_testbed.doctor_cli import doctor_report
    from vllm_tokens_patch_testbed.vllm_suite import ADAPTER

    from vllm_tokens_patch import settings

    report = doctor_report(env={settings.STOCK_ROUTE: "1"})
    assert report["settings"]["stock_route"] is True and report["ok"] is True
    checks = {check["name"]: check for check in report["checks"]}
    if ADAPTER.route_hook_takes_app:
        assert checks["stock route"]["ok"] is True, checks["stock route"]
        assert "POST /v1/chat/completions takes the token fields" in checks["stock route"]["detail"]
    assert "stock route" not in {c["name"] for c in doctor_report()["checks"]}


# --- what NeMo-Gym needs of the answer (read from its `VLLMModel`) ------------------------------------------


@pytest.mark.parametrize("path", [ROUTE, STOCK])
def test_nemos_dialect_returns_the_prompt_ids_unasked(run: Any, stocked: VllmApp, path: str) -> None:
    """Gym's shipped training config does not ask for `return_token_ids`, and its prefix check fails closed
    without `prompt_token_ids`: NeMo's dialect returns them (both fields: a lone one is "partial" to Gym)."""
    prompt, sampled = history_ids(run, stocked)
    messages = [*FIRST_TURN, ANSWER, FOLLOW_UP]
    payload = body(stocked, messages, tools=TOOLS, required_prefix_token_ids=[*prompt, *sampled])
    answer = post(run, stocked, path, payload).json()
    assert answer["prompt_token_ids"][: len(prompt) + len(sampled)] == [*prompt, *sampled]
    assert answer["choices"][0]["token_ids"]
    told = post(run, stocked, path, {**payload, "return_token_ids": False}).json()
    assert told.get("prompt_token_ids") is None
    plain = post(run, stocked, path, body(stocked, messages, tools=TOOLS, prefix_tokens=[*prompt, *sampled]))
    assert plain.json().get("prompt_token_ids") is None, "only NeMo's dialect implies it"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_nemos_dialect_clamps_the_output_to_the_room_left(run: Any, stocked: VllmApp, field: str) -> None:
    """As NeMo-RL's servers do: the output is cut to the room left (where the stock route answers a 400 or
    clamps, per release); `prefix_tokens` answers as the stock route does."""
    prompt, sampled = history_ids(run, stocked)
    prefix = [*prompt, *sampled]
    messages = [*FIRST_TURN, ANSWER, FOLLOW_UP]
    room = MAX_MODEL_LEN - len(rendered(run, stocked, messages, True))
    payload = body(stocked, messages, tools=TOOLS, **{field: room + 50})
    clamped = post(run, stocked, STOCK, {**payload, "required_prefix_token_ids": prefix})
    assert clamped.status_code == 200, clamped.text
    assert stocked.engine.sampling_params[-1].max_tokens == room
    stock = post(run, stocked, STOCK, payload)  # the same messages, rendered by vLLM: no prefix at all
    plain = post(run, stocked, STOCK, {**payload, "prefix_tokens": prefix})
    assert plain.status_code == stock.status_code, (stock.text, plain.text)  # per release


def test_nemos_dialect_with_no_room_left_says_context_length(run: Any, stocked: VllmApp) -> None:
    """Gym ends a turn as `length` on a 400 that says "context length"."""
    messages = [*FIRST_TURN, ANSWER, FOLLOW_UP]
    payload = body(stocked, messages, required_prefix_token_ids=[1] * (MAX_MODEL_LEN - 3), max_tokens=5)
    response = post(run, stocked, STOCK, payload)
    assert response.status_code == 400 and "context length" in response.text, response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"required_prefix_token_ids": [1, -2]},
        {"required_prefix_token_ids": [1], "tokens": [1]},
        {"messages": [*FIRST_TURN, {**ANSWER, "prompt_token_ids": [1]}, FOLLOW_UP]},
    ],
    ids=["negative", "two-fields", "half-a-bundle"],
)
def test_a_bad_nemo_request_never_reads_as_an_overflow_to_gym(
    run: Any, stocked: VllmApp, fields: dict[str, Any]
) -> None:
    """Gym turns any 400 whose text has "context length" or "max_tokens" into an empty `length` turn; a
    client error must not read like that, even with `max_tokens` in the body."""
    payload = {**body(stocked, [*FIRST_TURN, ANSWER, FOLLOW_UP], max_tokens=7), **fields}
    response = post(run, stocked, STOCK, payload)
    assert response.status_code == 400, response.text
    assert "context length" not in response.text and "max_tokens" not in response.text, response.text


# --- lifecycle (these unpatch: run last) -------------------------------------------------------------------


@pytest.mark.unpatches
def test_unpatch_takes_the_dispatch_away(run: Any, build: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an app of its own (an earlier `unpatches` test may have unpatched `stocked` already)."""
    import vllm_tokens_patch
    from vllm_tokens_patch import settings
    from vllm_tokens_patch.stock_route import StockDispatch

    with monkeypatch.context() as env:
        env.setenv(settings.STOCK_ROUTE, "1")
        settings.current.cache_clear()
        app = build()
    settings.current.cache_clear()
    assert sum(isinstance(route, StockDispatch) for route in app.app.router.routes) == 1
    vllm_tokens_patch.unpatch()
    try:
        assert not any(isinstance(route, StockDispatch) for route in app.app.router.routes)
        response = post(run, app, STOCK, body(app, tokens=drifted(app.chat_ids(MESSAGES))))
        assert response.status_code == 200 and VERIFICATION_HEADER not in response.headers
        assert engine_ids(app) == app.chat_ids(MESSAGES), "vLLM's own render again"
    finally:
        vllm_tokens_patch.register()


@pytest.mark.unpatches
def test_when_the_patch_cannot_apply_token_fields_on_the_stock_path_get_the_501(
    run: Any, build: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never silent: with the opt-in, a token body on the stock path gets the token route's 501 and its
    reason, not vLLM's render of `messages`; a plain body is still served."""
    import dataclasses

    from vllm_tokens_patch_testbed.vllm_suite import ADAPTER

    import vllm_tokens_patch
    from vllm_tokens_patch import settings

    vllm_tokens_patch.unpatch()
    try:
        gone = dataclasses.replace(ADAPTER.render_targets[0].location, qualname="OpenAIServingChat.gone")
        broken = (dataclasses.replace(ADAPTER.render_targets[0], location=gone), *ADAPTER.render_targets[1:])
        monkeypatch.setattr(type(ADAPTER), "render_targets", broken)
        monkeypatch.setenv(settings.STOCK_ROUTE, "1")
        settings.current.cache_clear()
        vllm_tokens_patch.register()
        app = build()
        plain = post(run, app, STOCK, body(app))
        assert plain.status_code == 200, plain.text
        for path in (ROUTE, STOCK):
            refused = post(run, app, path, body(app, tokens=[1, 2, 3]))
            assert refused.status_code == 501, (path, refused.text)
            assert "OpenAIServingChat.gone" in refused.json()["error"]["message"]
    finally:
        vllm_tokens_patch.unpatch()
        monkeypatch.undo()
        settings.current.cache_clear()
        vllm_tokens_patch.register()
