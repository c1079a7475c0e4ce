"""vLLM's own in-flight count (`--enable-server-load-tracking`, `GET /load`) on the token route.

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
