"""The rollout client against a stand-in server: ChatML renders on the stock route, splices on ours."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from vllm_tokens_patch.client import (
    AsyncTokenChatClient,
    Sampled,
    TokenChatClient,
    TokenRouteError,
    differing_positions,
)
from vllm_tokens_patch.demo import Turn, format_table, rollout
from vllm_tokens_patch.settings import Settings

SPECIAL = {"<|im_start|>": 1000, "<|im_end|>": 1001}
SAMPLED = [104, 105, SPECIAL["<|im_end|>"]]  # "hi" and the stop token


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


def render(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return encode(text + ("<|im_start|>assistant\n" if add_generation_prompt else ""))


class Server:
    """Records every request; answers like vLLM would (the splice: prefix + close + the new turn)."""

    def __init__(self, route: str = Settings.route_path) -> None:
        self.route = route
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((request.url.path, body))
        assert request.headers["authorization"] == "Bearer k"
        headers = {}
        if request.url.path == "/v1/chat/completions":
            prompt = render(body["messages"])
        elif request.url.path == self.route and "prefix_tokens" in body:
            last = max(i for i, m in enumerate(body["messages"]) if m["role"] == "assistant")
            seam = render(body["messages"][last:])[len(encode("<|im_start|>assistant\nhi")) :]
            prefix = body["prefix_tokens"]
            bridge = seam[1:] if prefix[-1] == seam[0] else seam
            prompt = [*prefix, *bridge]
            headers["x-vllm-tokens-splice"] = f"prefix={len(prefix)}; bridge={len(bridge)}; close=sampled"
        elif request.url.path == self.route:
            prompt = body["tokens"]
        else:
            return httpx.Response(404)
        choice = {"token_ids": SAMPLED, "message": {"content": "hi"}, "finish_reason": "stop"}
        return httpx.Response(200, json={"prompt_token_ids": prompt, "choices": [choice]}, headers=headers)


def client_for(server: Server) -> TokenChatClient:
    return TokenChatClient("http://server/v1", "m", api_key="k", transport=httpx.MockTransport(server))


def test_one_request_per_turn_and_the_prefix_is_what_the_engine_saw_and_sampled() -> None:
    server = Server()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a"}]
    with client_for(server) as client:
        first = client.chat(messages, max_tokens=8)
        messages += [first.assistant_message(), {"role": "user", "content": "more"}]
        second = client.next_turn(messages, first, max_tokens=8)
    assert [path for path, _ in server.requests] == ["/v1/chat/completions", Settings.route_path]
    sent = server.requests[1][1]
    assert sent["prefix_tokens"] == first.prompt_ids + SAMPLED == first.ids
    assert "tokens" not in sent and sent["return_token_ids"] is True and sent["max_tokens"] == 8
    assert second.prompt_ids == render(messages)  # the stand-in server's template is append-only
    assert second.headers["x-vllm-tokens-splice"].endswith("close=sampled")


def test_the_route_follows_the_servers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_TOKENS_PATCH_ROUTE", "/v1/tokens-chat")
    server = Server(route="/v1/tokens-chat")
    with client_for(server) as client:
        assert client.chat_tokens([{"role": "user", "content": "a"}], [1, 2]).prompt_ids == [1, 2]
    assert server.requests[0][0] == "/v1/tokens-chat"


def test_the_async_twin_sends_the_same_requests() -> None:
    server = Server()

    async def turns() -> tuple[Sampled, Sampled]:
        client = AsyncTokenChatClient(
            "http://server", "m", api_key="k", transport=httpx.MockTransport(server)
        )
        async with client:
            messages: list[dict[str, Any]] = [{"role": "user", "content": "a"}]
            first = await client.chat(messages)
            messages += [first.assistant_message(), {"role": "user", "content": "more"}]
            return first, await client.next_turn(messages, first.ids)

    first, second = asyncio.run(turns())
    assert [path for path, _ in server.requests] == ["/v1/chat/completions", Settings.route_path]
    assert server.requests[1][1]["prefix_tokens"] == first.ids
    assert second.prompt_ids[: len(first.ids)] == first.ids


def test_assistant_message_keeps_tool_calls() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"choices": [{"message": {"content": None, "tool_calls": [call]}, "token_ids": []}]}
    assert Sampled(body, {}).assistant_message() == {"role": "assistant", "content": "", "tool_calls": [call]}


REASON = "nothing after the last assistant message: add the new messages"
ERROR_ANSWERS = {  # status, body (JSON or bytes) -> message, type, param
    "nested": (
        400,
        {"error": {"message": REASON, "type": "BadRequestError", "param": "prefix_tokens", "code": 400}},
        (REASON, "BadRequestError", "prefix_tokens"),
    ),
    "flat": (  # vLLM 0.10.2's ErrorResponse
        400,
        {"object": "error", "message": REASON, "type": "BadRequestError", "param": None, "code": 400},
        (REASON, "BadRequestError", None),
    ),
    "fastapi-detail": (404, {"detail": "Not Found"}, ("Not Found", None, None)),
    "json-of-another-shape": (500, ["oops"], ('["oops"]', None, None)),
    "not-json": (502, b"upstream connect error\n", ("upstream connect error", None, None)),
    "empty": (503, b"", ("Service Unavailable", None, None)),
}


def answering(status: int, body: Any) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"content-type": "text/plain"})
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("case", sorted(ERROR_ANSWERS))
@pytest.mark.parametrize("twin", ["sync", "async"])
def test_an_error_answer_raises_with_the_servers_reason(case: str, twin: str) -> None:
    """Both clients raise `TokenRouteError` (still an `httpx.HTTPStatusError`) with the server's message,
    type and param from either of vLLM's error shapes, the raw text otherwise; `str()` says it all."""
    status, body, (message, kind, param) = ERROR_ANSWERS[case]
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]

    async def async_turn() -> None:
        async with AsyncTokenChatClient("http://server/v1", "m", transport=answering(status, body)) as client:
            await client.next_turn(messages, [1])

    with pytest.raises(httpx.HTTPStatusError) as raised:
        if twin == "sync":
            with TokenChatClient("http://server/v1", "m", transport=answering(status, body)) as client:
                client.next_turn(messages, [1])
        else:
            asyncio.run(async_turn())
    error = raised.value
    assert isinstance(error, TokenRouteError)
    assert (error.status, error.message, error.type, error.param) == (status, message, kind, param)
    assert error.response.status_code == status and error.request.url.path == Settings.route_path
    reason = httpx.codes.get_reason_phrase(status)
    assert str(error) == f"{status} {reason} from POST http://server{Settings.route_path}: {message}"


@pytest.mark.parametrize(
    ("reference", "other", "count"),
    [([1, 2, 3], [1, 2, 3], 0), ([1, 2, 3], [1, 9, 3], 1), ([1, 2], [1, 2, 3, 4], 2), ([1, 2, 3], [2, 3], 3)],
)
def test_differing_positions(reference: list[int], other: list[int], count: int) -> None:
    assert differing_positions(reference, other) == count


def test_demo_rollout_feeds_the_prefix_verbatim_every_turn() -> None:
    server = Server()
    with client_for(server) as client:
        report = rollout(client, turns=4)
    assert [t.prefix_changed for t in report] == [0, 0, 0, 0]
    assert [t.close for t in report] == ["-", "sampled", "sampled", "sampled"]
    token_requests = [body for path, body in server.requests if path.endswith("/tokens")]
    assert len(token_requests) == 3 and all("prefix_tokens" in body for body in token_requests)


def test_demo_table() -> None:
    row = Turn(2, "user", 30, 12, "sampled", "stop", 33, 12, 0, "mismatch")
    table = format_table([row])
    assert table.splitlines()[2] == "| 2 | user | 30 | 12 | sampled | stop | 33 | 12 | 0 | mismatch |"


def test_without_httpx_the_import_error_names_the_extra() -> None:
    """The client's one dependency is the `[client]` extra: without it, say so (not a bare httpx error)."""
    import subprocess
    import sys

    blocked = "import sys; sys.modules['httpx'] = None; import vllm_tokens_patch.client"
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ImportError: vllm_tokens_patch.client needs httpx, the [client] extra" in done.stderr
    assert "pip install 'vllm-tokens-patch[client]'" in done.stderr
