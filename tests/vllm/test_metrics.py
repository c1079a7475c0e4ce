"""The plugin's Prometheus metrics on vLLM's own `/metrics` (this release's real app, fake engine).

Metrics live once per process and this suite builds several apps in one process, so every count is read
as the change over a scripted sequence."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm_tokens_patch_testbed.harness import VllmApp
from vllm_tokens_patch_testbed.images import image_part
from vllm_tokens_patch_testbed.vllm_suite import (
    ADAPTER,
    ANSWER,
    FIRST_TURN,
    MAX_MODEL_LEN,
    MESSAGES,
    ROUTE,
    STOCK,
    LoggerRecords,
    body,
    drifted,
    hang_up_while_prefilling,
    post,
    rendered,
)

from vllm_tokens_patch import metrics, settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def served(build: Any) -> VllmApp:
    """`vllm serve MODEL --enable-auto-tool-choice --tool-call-parser hermes` (the suite's `rendered` sends
    tools), built here: earlier tests `unpatch()`, which takes the route off older apps."""
    app: VllmApp = build("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    return app


def scrape(run: Any, app: VllmApp) -> tuple[str, Samples]:
    """`GET /metrics` as vLLM serves it: the text and our samples, keyed by (name, sorted labels)."""
    response = run(app.client.get("/metrics"))
    assert response.status_code == 200, response.text
    return response.text, samples_of(response.text)


def samples_of(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(metrics.PREFIX) and not sample.name.endswith("_created")
    }


def delta(before: Samples, after: Samples) -> Samples:
    """What changed (series that did not change are left out)."""
    changes = {name: value - before.get(name, 0.0) for name, value in after.items()}
    return {name: change for name, change in changes.items() if change}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (metrics.PREFIX + name, tuple(sorted(labels.items())))


def test_every_series_is_on_vllms_metrics_documented_and_named_by_convention(
    run: Any, served: VllmApp
) -> None:
    text, samples = scrape(run, served)
    families = {
        family.name: family
        for family in text_string_to_metric_families(text)
        if family.name.startswith(metrics.PREFIX) and not family.name.endswith("_created")
    }
    assert set(families) == {
        metrics.PREFIX + name
        for name in (
            "requests",
            "verifications",
            "refusals",
            "splices",
            "first_mismatch_position",
            "memory_lookups",
            "memory_records",
            "memory_evictions",
        )
    }, sorted(families)
    for family in families.values():
        assert family.documentation, family.name
        assert family.type == ("histogram" if family.name.endswith("_position") else "counter")
    counters = {name for name, _ in samples if not name.endswith(("_bucket", "_sum", "_count"))}
    assert counters and all(name.endswith("_total") for name in counters), counters
    for route in metrics.ROUTES:  # every known series is listed (at its count, 0 at start-up)
        for mode in metrics.MODES:
            for outcome in metrics.OUTCOMES:
                assert key("requests_total", route=route, mode=mode, outcome=outcome) in samples
    for reason in metrics.REASONS:
        assert key("refusals_total", reason=reason) in samples
    assert {key("splices_total", close=c) for c in metrics.CLOSES} <= set(samples)
    assert {key("verifications_total", result=r) for r in metrics.RESULTS} <= set(samples)
    assert {key("memory_lookups_total", result=r) for r in metrics.MEMORY_RESULTS} <= set(samples)


def test_a_scripted_sequence_is_counted_exactly(run: Any, served: VllmApp) -> None:
    ids = served.chat_ids(MESSAGES)
    history, new = [*FIRST_TURN, ANSWER], [{"role": "user", "content": "And tomorrow?"}]
    so_far = rendered(run, served, history, False)  # ... <|im_end|> \n (on the stock route: not counted)
    fast = {"vllm_tokens_patch_verify": False}
    video = {
        "type": "video_url",
        "video_url": {"url": "data:video/mp4;base64,AAAA"},
    }  # refused on every release
    multimodal = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, video]}]
    script: list[tuple[dict[str, Any], int]] = [
        (body(served, tokens=ids), 200),  # match
        (body(served, tokens=drifted(ids)), 200),  # mismatch at len(ids) - 1
        (body(served, tokens=[ids[0] - 1 if ids[0] else 1, *ids[1:]], stream=True), 200),  # at 0, streamed
        (body(served, tokens=drifted(ids), **fast), 200),  # skipped
        (body(served, tokens=[1, 10**6]), 400),
        (body(served, tokens=[1] * (MAX_MODEL_LEN + 10)), 400),
        (body(served, multimodal, tokens=[1, 2, 3]), 400),
        (body(served, tokens=[1, 2, 3], truncate_prompt_tokens=2), 400),
        (body(served, tokens=[1, 2, 3], kv_transfer_params={"prompt_token_ids": [1, 2, 3]}), 400),
        (body(served, tokens=[]), 400),  # does not parse: mode unknown
        (body(served, [*history, *new], prefix_tokens=so_far[:-1], **fast), 200),  # close sampled
        (body(served, [*history, *new], prefix_tokens=so_far[:-2], **fast), 200),  # close added
        (
            body(
                served,
                history,
                prefix_tokens=so_far[:-2],
                continue_final_message=True,
                add_generation_prompt=False,
                **fast,
            ),
            200,
        ),  # no bridge: close none
        (body(served, FIRST_TURN, prefix_tokens=[1, 2, 3]), 400),  # no assistant message to splice at
    ]
    _, before = scrape(run, served)
    for payload, status in script:
        response = post(run, served, ROUTE, payload)
        assert response.status_code == status, (payload, response.text)
    _, after = scrape(run, served)

    last = float(len(ids) - 1)
    position = "first_mismatch_position"
    observed = (0.0, last)
    bounds = [*((bound, str(bound)) for bound in metrics.POSITION_BUCKETS), (float("inf"), "+Inf")]
    buckets = {
        key(f"{position}_bucket", le=label): float(sum(value <= bound for value in observed))
        for bound, label in bounds
    }
    assert delta(before, after) == {
        key("requests_total", route="tokens", mode="tokens", outcome="ok"): 4,
        key("requests_total", route="tokens", mode="tokens", outcome="refused"): 5,
        key("requests_total", route="tokens", mode="unknown", outcome="refused"): 1,
        key("requests_total", route="tokens", mode="prefix_tokens", outcome="ok"): 3,
        key("requests_total", route="tokens", mode="prefix_tokens", outcome="refused"): 1,
        key("verifications_total", result="match"): 1,
        key("verifications_total", result="mismatch"): 2,
        key("verifications_total", result="skipped"): 4,
        **{key("refusals_total", reason=reason): 1 for reason in REFUSED_ONCE},
        **{key("splices_total", close=close): 1 for close in ("sampled", "added", "none")},
        key(f"{position}_count"): 2,
        key(f"{position}_sum"): last,
        **{bucket: count for bucket, count in buckets.items() if count},
    }


REFUSED_ONCE = (
    "out_of_vocabulary",
    "context_length",
    "multimodal",
    "truncate_prompt_tokens",
    "kv_transfer_params",
    "invalid_request",
    "splice",
)
"""The refusal reasons the scripted sequence above hits once each."""


@pytest.fixture
def mismatch_log_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    limit = 2
    monkeypatch.setenv("VLLM_TOKENS_PATCH_MISMATCH_LOG", str(limit))
    settings.current.cache_clear()  # a fresh budget for this process, as at start-up
    yield limit
    monkeypatch.undo()
    settings.current.cache_clear()


def test_mismatches_past_the_log_limit_are_only_counted(
    run: Any, served: VllmApp, plugin_logs: LoggerRecords, mismatch_log_limit: int
) -> None:
    ids = served.chat_ids(MESSAGES)
    _, before = scrape(run, served)
    logger = logging.getLogger("vllm.tokens_patch")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # the suppressed ones are still there at DEBUG
    try:
        for number in range(mismatch_log_limit + 3):
            payload = body(served, tokens=drifted(ids), request_id=f"drift-{number}")
            response = post(run, served, ROUTE, payload)
            assert response.headers["x-vllm-tokens-verification"] == "mismatch"
    finally:
        logger.setLevel(level)
    _, after = scrape(run, served)
    warnings = plugin_logs.messages(logging.WARNING)
    assert len(warnings) == mismatch_log_limit + 1, warnings
    assert [("drift-0" in w, "drift-1" in w) for w in warnings[:2]] == [(True, False), (False, True)]
    note = warnings[-1]
    assert f"VLLM_TOKENS_PATCH_MISMATCH_LOG={mismatch_log_limit}" in note and metrics.MISMATCH_SERIES in note
    debug = plugin_logs.messages(logging.DEBUG)
    assert all(any(f"drift-{n}" in m and "first difference" in m for m in debug) for n in (2, 3, 4))
    counted = delta(before, after)[key("verifications_total", result="mismatch")]
    assert counted == mismatch_log_limit + 3


def test_another_app_in_the_process_shares_the_metrics(run: Any, build: Any, served: VllmApp) -> None:
    """Tests (and a re-imported module) create the metrics again in one process: no "Duplicated timeseries",
    and both apps' `/metrics` show the same counts."""
    created = metrics.get()
    other = build()
    assert metrics.get() is created
    response = post(run, other, ROUTE, body(other, tokens=drifted(other.chat_ids(MESSAGES))))
    assert response.status_code == 200, response.text
    assert scrape(run, other)[1] == scrape(run, served)[1]
    kept = metrics._metrics
    metrics._metrics = None  # as a second copy of the module would start
    try:
        again = metrics.get()
        assert again is not None and created is not None and again.requests is created.requests
    finally:
        metrics._metrics = kept


SERVER = """
import asyncio, json, sys
from pathlib import Path
from vllm_tokens_patch_testbed.harness import build_vllm_app
from vllm_tokens_patch.settings import Settings

async def main(model, read):
    app = await build_vllm_app(Path(model))
    ids = app.chat_ids([{"role": "user", "content": "Hello"}])
    url = Settings.route_path
    body = {"model": app.args.model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
    statuses = [
        (await app.client.post(url, json={**body, "tokens": [*ids[:-1], ids[-1] - 1]})).status_code,
        (await app.client.post(url, json={**body, "tokens": [1, 10**6]})).status_code,
    ]
    text = (await app.client.get("/metrics")).text if read else ""
    print("RESULT " + json.dumps({"statuses": statuses, "metrics": text}))

asyncio.run(main(sys.argv[1], sys.argv[2] == "read"))
"""


def test_api_servers_sharing_a_multiprocess_dir_add_up(model_dir: Path, tmp_path: Path) -> None:
    """`--api-server-count 2`: vLLM sets PROMETHEUS_MULTIPROC_DIR before it starts each API server; each
    server's metrics go there, and vLLM's `/metrics` in either one sums them (here: the second, after the
    first one served and exited)."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    results = []
    for read in ("no", "read"):
        done = subprocess.run(
            [sys.executable, "-c", SERVER, str(model_dir), read],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,  # not the checkout: `python -c` would import the package from the current dir
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        results.append(json.loads(line[len("RESULT ") :]))
    assert [r["statuses"] for r in results] == [[200, 400], [200, 400]]
    samples = samples_of(results[-1]["metrics"])
    assert samples[key("requests_total", route="tokens", mode="tokens", outcome="ok")] == 2
    assert samples[key("requests_total", route="tokens", mode="tokens", outcome="refused")] == 2
    assert samples[key("verifications_total", result="mismatch")] == 2
    assert samples[key("refusals_total", reason="out_of_vocabulary")] == 2
    assert samples[key("first_mismatch_position_count")] == 2


def test_a_400_from_vllms_own_handlers_counts_as_refused(run: Any, served: VllmApp) -> None:
    """An image for the text model: the client gets a 400 on every release. vLLM's render returns it, or
    raises a `ValueError` (0.29+: answered by the handler the app has for it, so counted `refused`, not
    `error`), or the route refuses it where it cannot place images. Where the app has no handler for
    `ValueError` but its catch-all one, Starlette answers and then re-raises it for the server to log as a
    server error, and the count says `error` if vLLM raised."""
    picture = [{"type": "text", "text": "What is this?"}, image_part(56, 56)]
    tokens = served.chat_ids([{"role": "user", "content": "What is this?"}])
    _, before = scrape(run, served)
    response = post(run, served, ROUTE, body(served, [{"role": "user", "content": picture}], tokens=tokens))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"], response.text
    _, after = scrape(run, served)
    refused_here = {} if ADAPTER.places_media else {key("refusals_total", reason="multimodal"): 1}
    counted = {
        outcome: {key("requests_total", route="tokens", mode="tokens", outcome=outcome): 1, **refused_here}
        for outcome in ("refused", "error")
    }
    if ValueError in served.app.exception_handlers:  # vLLM 0.27+
        assert delta(before, after) == counted["refused"]
    else:
        assert delta(before, after) in (counted["refused"], counted["error"])


def test_a_client_gone_before_the_first_event_counts_as_disconnected(run: Any, served: VllmApp) -> None:
    """Not `ok` (nothing was answered), nor a refusal or an error of the server's."""
    payload = body(served, tokens=served.chat_ids(MESSAGES), stream=True)
    _, before = scrape(run, served)
    run(hang_up_while_prefilling(served, ROUTE, payload))
    _, after = scrape(run, served)
    assert delta(before, after) == {
        key("requests_total", route="tokens", mode="tokens", outcome="disconnected"): 1,
        key("verifications_total", result="match"): 1,
    }


def test_the_stock_path_counts_its_token_requests_apart(run: Any, stocked: VllmApp) -> None:
    """`VLLM_TOKENS_PATCH_STOCK_ROUTE=1`: token bodies on vLLM's chat route count as `route="stock"`; plain
    stock requests are not ours to count."""
    ids = stocked.chat_ids(MESSAGES)
    _, before = scrape(run, stocked)
    for payload, status in (
        ({"tokens": ids}, 200),
        ({"tokens": [1, -1]}, 400),
        ({}, 200),
    ):
        response = run(stocked.client.post(STOCK, json={**body(stocked), **payload}))
        assert response.status_code == status, (payload, response.text)
    _, after = scrape(run, stocked)
    assert delta(before, after) == {
        key("requests_total", route="stock", mode="tokens", outcome="ok"): 1,
        key("requests_total", route="stock", mode="unknown", outcome="refused"): 1,
        key("refusals_total", reason="invalid_request"): 1,
        key("verifications_total", result="match"): 1,
    }
