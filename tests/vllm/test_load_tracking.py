"""vLLM's own in-flight count (`--enable-server-load-tracking`, `GET /load`) on the token route, and a
client hanging up while its stream waits for the engine's first output.

vLLM's chat route is wrapped in `load_aware_call`: +1 when a request comes in, and the -1 is the
`background` task of the response it returns (Starlette runs it once the response is sent). The token route
may send another response than vLLM's stream (a JSON refusal when vLLM's first event is an error); the
count must still come back to 0, as on the stock route. `nox -s soak-0.32.0` measured +1 per refused stream
on a real `vllm serve` before `refuse_failed_stream` carried the task over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from vllm_tokens_patch_testbed.harness import Script, VllmApp
from vllm_tokens_patch_testbed.vllm_suite import hang_up_while_prefilling

from vllm_tokens_patch.settings import Settings

ROUTE = Settings.route_path
STOCK = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hello world, how are you today?"}]
ENGINE_ERROR = "logit_bias token id 99999 is out of vocabulary"


def body(app: VllmApp, **fields: Any) -> dict[str, Any]:
    return {"model": app.args.model, "messages": MESSAGES, "temperature": 0, **fields}


def post(run: Any, app: VllmApp, path: str, payload: dict[str, Any]) -> Any:
    return run(app.client.post(path, json=payload))


@pytest.fixture
def tracked(served: VllmApp) -> Iterator[Any]:
    """`served` with load tracking on (`load_aware_call` reads the flag at call time), from a count of 0."""
    state = served.app.state
    before = {
        name: getattr(state, name, None) for name in ("enable_server_load_tracking", "server_load_metrics")
    }
    state.enable_server_load_tracking = True
    state.server_load_metrics = 0
    yield state
    for name, value in before.items():
        setattr(state, name, value)


@pytest.mark.parametrize("path", [STOCK, ROUTE])
@pytest.mark.parametrize("outcome", ["refused", "streamed", "json"])
def test_the_in_flight_count_comes_back_to_zero(
    run: Any, served: VllmApp, tracked: Any, mode: dict[str, Any], path: str, outcome: str
) -> None:
    fields: dict[str, Any] = {"stream": outcome != "json"}
    if path == ROUTE:
        fields.update(tokens=served.chat_ids(MESSAGES), **mode)
    if outcome == "refused":
        served.engine.script = Script(text="unused", error=ENGINE_ERROR)
    try:
        response = post(run, served, path, body(served, **fields))
    finally:
        served.engine.script = Script(text="Hello there")
    expected = 400 if (outcome, path) == ("refused", ROUTE) else 200  # the stock route streams the error
    assert response.status_code == expected, response.text
    assert tracked.server_load_metrics == 0, f"{path} {outcome}: vLLM's load count was left at +1"


@pytest.mark.parametrize("path", [STOCK, ROUTE])
def test_a_client_gone_before_the_first_output_is_aborted_at_once(
    run: Any, served: VllmApp, tracked: Any, mode: dict[str, Any], path: str
) -> None:
    """vLLM's own route sends its stream's headers at once and Starlette cancels the stream when the
    client leaves, which aborts the request in the engine. The token route holds its headers until vLLM's
    first event (to answer an engine refusal with a 4xx), so it watches for the hang-up itself: the same
    abort, no answer that anyone reads, and vLLM's load count back to 0."""
    fields: dict[str, Any] = {"stream": True}
    if path == ROUTE:
        fields.update(tokens=served.chat_ids(MESSAGES), **mode)
    sent = run(hang_up_while_prefilling(served, path, body(served, **fields)))
    request_id = list(served.engine.ended)[-1]
    assert served.engine.ended[request_id] == "aborted", sent
    assert not [m for m in sent if m["type"] == "http.response.body" and m.get("body")], sent
    left = tracked.server_load_metrics
    assert left == 0, f"{path}: vLLM's load count was left at {left}"
