"""No byte string turns the token route into a 5xx (README "Errors"): hostile bodies by name, then fuzzed.

The route decodes its own body (msgspec, for speed), so everything FastAPI's decoder does for the stock
route is its job too: a body that is not JSON, not an object, nested 100,000 deep or 20 MB long is a 400
in this vLLM's own error format before any stream opens, and nothing is logged with a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm_tokens_patch_testbed.harness import VllmApp
from vllm_tokens_patch_testbed.vllm_errors import assert_vllm_error, error_info
from vllm_tokens_patch_testbed.vllm_suite import MESSAGES, ROUTE, STOCK, TOO_LONG_MESSAGES, body

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def served(build: Any) -> VllmApp:
    """An app of its own: the suite's session app answers 501 once the unpatch tests have run."""
    return build()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def invalid_like(run: Any, served: VllmApp) -> dict[str, Any]:
    """This vLLM's own body for a request that fails validation, from its stock route."""
    response = run(served.client.post(STOCK, json={"model": served.args.model, "messages": "not a list"}))
    assert response.status_code == 400, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def too_long_like(run: Any, served: VllmApp) -> dict[str, Any]:
    """This vLLM's own body for a prompt past `max_model_len`, from its stock route."""
    response = run(served.client.post(STOCK, json=body(served, TOO_LONG_MESSAGES)))
    assert response.status_code == 400, response.text
    return response.json()  # type: ignore[no-any-return]


class Tracebacks:
    """Every log record, from any logger, that carries an exception (vLLM's loggers do not propagate)."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self._handle = logging.Logger.handle

    def __call__(self, logger: logging.Logger, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text:
            self.records.append(record)
        self._handle(logger, record)


def spying() -> Any:
    spy = Tracebacks()
    return spy, mock.patch.object(logging.Logger, "handle", autospec=True, side_effect=spy)


@pytest.fixture(scope="module")
def stock_refusal_logs(run: Any, served: VllmApp) -> set[str]:
    """What this vLLM logs with a traceback when its stock route refuses a too-long prompt: older releases
    (0.10) log every render refusal with `logger.exception`, so the token route's refusals may log it too."""
    spy, patch = spying()
    with patch:
        assert run(served.client.post(STOCK, json=body(served, TOO_LONG_MESSAGES))).status_code == 400
    return {record.getMessage() for record in spy.records}


@pytest.fixture
def tracebacks(stock_refusal_logs: set[str]) -> Iterator[Tracebacks]:
    spy, patch = spying()
    with patch:
        yield spy
    unexpected = [r.getMessage() for r in spy.records if r.getMessage() not in stock_refusal_logs]
    assert not unexpected, unexpected


def send(run: Any, app: VllmApp, raw: bytes, path: str = ROUTE) -> Any:
    return run(app.client.post(path, content=raw, headers=JSON))


def valid(app: VllmApp, **fields: Any) -> dict[str, Any]:
    return body(app, tokens=app.chat_ids(MESSAGES), max_tokens=2, **fields)


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def raw_field(app: VllmApp, stream: bool, field: str, raw: str, **fields: Any) -> str:
    """A valid body whose `field` is the raw JSON text `raw` (which json.dumps could not write)."""
    return json.dumps({**valid(app, stream=stream, **fields), field: "@RAW@"}).replace('"@RAW@"', raw, 1)


def ids_after(app: VllmApp, stream: bool, first: str) -> str:
    """The token ids with a raw JSON number `first` in front."""
    return raw_field(app, stream, "tokens", f"[{first}, {', '.join(map(str, app.chat_ids(MESSAGES)))}]")


HUGE = 20_000_000
NAMED: dict[str, Any] = {
    "nested-100000-deep-tokens": lambda app, s: raw_field(app, s, "tokens", nested(100_000)),
    "nested-5000-deep-template-kwargs": lambda app, s: raw_field(
        app, s, "chat_template_kwargs", '{"x": ' + nested(5000) + "}"
    ),
    "nested-5000-deep-message-content": lambda app, s: raw_field(
        app, s, "messages", '[{"role": "user", "content": ' + nested(5000, '"x"') + "}]"
    ),
    "invalid-utf8": lambda app, s: (
        json.dumps(valid(app, stream=s)).encode().replace(b'"user"', b'"us\xffer"')
    ),
    "lone-surrogate": lambda app, s: raw_field(
        app, s, "messages", '[{"role": "user", "content": "\\ud800"}]'
    ),
    "huge-integer": lambda app, s: ids_after(app, s, "9" * 5000),
    "integer-past-int64": lambda app, s: ids_after(app, s, "9" * 30),
    "float-overflow": lambda app, s: ids_after(app, s, "1e400"),
    "nan-literal": lambda app, s: raw_field(app, s, "temperature", "NaN"),
    "infinity-literal": lambda app, s: ids_after(app, s, "Infinity"),
    "top-level-list": lambda app, s: json.dumps([valid(app, stream=s)]),
    "top-level-string": lambda app, s: '"tokens"',
    "top-level-number": lambda app, s: "1",
    "top-level-null": lambda app, s: "null",
    "empty-body": lambda app, s: "",
    "whitespace-body": lambda app, s: " \n\t ",
    "trailing-garbage": lambda app, s: json.dumps(valid(app, stream=s)) + "}",
    "truncated": lambda app, s: json.dumps(valid(app, stream=s))[:-7],
    "20mb-of-brackets": lambda app, s: "[" * HUGE,
    "20mb-token-list": lambda app, s: json.dumps({**valid(app, stream=s), "tokens": [1] * (HUGE // 3)}),
    "20mb-string": lambda app, s: json.dumps({**valid(app, stream=s), "user": "m" * HUGE}),
}
SERVED = {"20mb-string"}
"""Hostile in size only: a valid request, served (200) as the stock route serves it."""
REFUSED = {"20mb-token-list", "integer-past-int64"}
"""Well-formed JSON the route's own checks refuse (past `max_model_len`, out of vocabulary): a refusal in
the format of the stock route's length refusal."""


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(NAMED))
def test_a_hostile_body_is_a_400_in_vllms_format(
    run: Any,
    served: VllmApp,
    invalid_like: dict[str, Any],
    too_long_like: dict[str, Any],
    tracebacks: Tracebacks,
    case: str,
    stream: bool,
) -> None:
    raw = NAMED[case](served, stream)
    raw = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    seen = len(served.engine.prompts)
    response = send(run, served, raw)
    if case in SERVED:
        assert response.status_code == 200, response.text[:300]
        return
    like = too_long_like if case in REFUSED else invalid_like
    info = assert_vllm_error(response, 400, like=like)
    assert info["type"] == error_info(like)["type"], info
    assert len(response.text) < 20_000, "the error must not echo the body"
    assert len(served.engine.prompts) == seen, "nothing may reach the engine"
    healthy = send(run, served, json.dumps(valid(served)).encode())
    assert healthy.status_code == 200, healthy.text


def test_duplicate_keys_take_the_last_value_as_the_stock_decoder_does(
    run: Any, served: VllmApp, tracebacks: Tracebacks
) -> None:
    ids = served.chat_ids(MESSAGES)
    text = json.dumps(valid(served)).replace(
        '"tokens": [', f'"tokens": {json.dumps(ids[:-1])}, "tokens": [', 1
    )
    assert json.loads(text)["tokens"] == ids  # the stdlib decoder FastAPI uses keeps the last
    response = send(run, served, text.encode())
    assert response.status_code == 200, response.text
    assert served.engine.prompts[-1]["prompt_token_ids"] == ids


# --- fuzzed -------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["model", "messages", "tokens", "prefix_tokens", "stream", "max_tokens", "temperature", "n", "tools"]
FIELDS += ["vllm_tokens_patch_verify", "logit_bias", "stop", "chat_template_kwargs", "stream_options"]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """A valid body with one to three byte-level edits: cut, insert, duplicate, or wrap in deep nesting."""
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["cut", "insert", "duplicate", "nest"]))
        if kind == "cut":
            del raw[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            raw[at:at] = draw(
                st.sampled_from([b"[", b"]", b"{", b"}", b",", b'"', b"\\", b"\xff", b"NaN", b"1e999"])
            )
        elif kind == "duplicate":
            raw[at:at] = raw[at : at + draw(st.integers(1, 16))]
        else:
            depth = draw(st.sampled_from([2, 50, 5000, 50_000]))
            raw[at:at] = b"[" * depth
    return bytes(raw)


def bodies(app: VllmApp) -> st.SearchStrategy[bytes]:
    base = json.dumps(valid(app)).encode()
    streamed = json.dumps(valid(app, stream=True)).encode()
    fields = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)
    reshaped = fields.map(lambda extra: json.dumps({**valid(app), **extra}, allow_nan=True).encode())
    return st.one_of(st.binary(max_size=64), mutated(base), mutated(streamed), reshaped)


def test_no_fuzzed_body_gets_a_5xx_or_a_traceback(run: Any, served: VllmApp, tracebacks: Tracebacks) -> None:
    """Bounded and deterministic (a fixed seed, 300 bodies: seconds in CI)."""
    outcomes: dict[int, int] = {}

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=bodies(served))
    def check(raw: bytes) -> None:
        response = send(run, served, raw)
        outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
        assert response.status_code < 500, (raw[:200], response.status_code, response.text[:300])
        if response.status_code != 200:
            assert response.headers["content-type"].startswith("application/json"), response.headers
            assert isinstance(error_info(response.json())["message"], str)

    check()
    assert outcomes.get(400, 0) > 50 and outcomes.get(200, 0) > 5, outcomes  # both kinds were exercised
