"""What a token-in request costs on vLLM's real app, against the stock chat route, in one process.

vLLM's real app (arg parser, engine config, renderer/tokenizer, `build_app`, middlewares, routes) around
the fake engine of the behaviour suite (`vllm_tokens_patch_testbed.harness`), so the engine costs nothing
and what is measured is HTTP parsing, validation, chat-template rendering, tokenization and response
building. Every request goes through the app's in-process httpx ASGI client; bodies are JSON-encoded once,
outside the timed region, so client-side encoding is not counted. Each case is one request kind for the
same prompt:

  stock-without-plugin  POST /v1/chat/completions on vLLM as if the plugin were absent: a second app whose
                        serving object calls the original render method. The class attribute
                        `OpenAIServingChat.render_chat_request` is the plugin's wrapt wrapper
                        (`PatchWrapper`, its `__wrapped__` is vLLM's function); an instance attribute
                        `serving.render_chat_request = MethodType(original, serving)` shadows it (wrapt's
                        FunctionWrapper is a non-data descriptor). `check_bypass` proves it with a
                        profiler hook: the wrapper runs for a request on the plugin app and not on this one.
  stock-with-plugin     POST /v1/chat/completions on the plugin-patched app (the wrapper's pass-through).
  tokens-default        POST /v1/chat/completions/tokens, `tokens` = the rendered ids (verification: match).
  tokens-fast           the same with `"vllm_tokens_patch_verify": false` (skips render + tokenization
                        where the plugin supports it; the `verification` header seen is recorded).
  stock-kvtp            POST /v1/chat/completions with `kv_transfer_params.prompt_token_ids` (vLLM's own
                        reuse branch, >= 0.27).
  completions-ids       POST /v1/completions with `prompt` = the ids: no template, no tokenizer (the limit).
  stock-opt-in          POST /v1/chat/completions, the stock body, on a third app built with
                        `VLLM_TOKENS_PATCH_STOCK_ROUTE=1` (the dispatch in front of vLLM's route reads the
                        body, finds no token field and replays it): what the opt-in costs a plain request.
  stock-path-fast       the same app and path with `tokens` and `"vllm_tokens_patch_verify": false`: the
                        fast path through the stock path. (The third app serves 2 of every round's
                        requests, so its caches are colder than the others': a pessimistic measure.)
  tokens-splice         (multi-turn sizes only) POST /v1/chat/completions/tokens with `prefix_tokens` = the
                        ids of the history before the last user message, cut where the model stopped
                        sampling (after `<|im_end|>`), on the fast path: the server renders only the
                        stand-ins that give the new turn, never the history.
  memory-record         POST /v1/chat/completions, the stock body, on a fourth app built with
                        `VLLM_TOKENS_PATCH_MEMORY=local`: the lookup misses, the engine's ids are captured
                        and the branch is stored (a SQLite file): what recording costs a request.
  memory-reuse          (multi-turn sizes only) the same app, a stock body whose history up to its last
                        assistant message was recorded (sent once before the rounds): the lookup hits, the
                        recorded ids are spliced in (the server's default verification, so vLLM also
                        renders `messages` to compare), and the new branch is recorded.
  memory-reuse-fast     (multi-turn sizes only) the same with `"vllm_tokens_patch_verify": false` in the
                        stock body (not a token field: a hit passes it on to the splice), so a hit is a
                        fast-path splice plus the lookup and the recording.

Rounds send every case once (the baseline `--baseline-copies` times, so that both apps serve the same
share of requests), in a random order (seeded), after warm-up rounds; wall time (perf_counter)
and process CPU time (process_time, all threads) are taken around each request. The machine is shared,
so results are ratios of medians to stock-without-plugin, never absolute claims. Also measured: the
start-up cost of `import vllm_tokens_patch.plugin` + `register()` in fresh interpreters that have
already imported vllm (as engine-core and worker processes have), and which modules it adds there.
Writes results.json (raw samples + meta), results.md and route_cost.png into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import inspect
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpe_model import build_bpe_model  # benchmarks/, next to this script
from vllm_tokens_patch_testbed.harness import VllmApp, build_vllm_app

from vllm_tokens_patch.client import token_route
from vllm_tokens_patch.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent

MAX_MODEL_LEN = 40960
MAX_TOKENS = 4
FAKE_ANSWER = "Hello there"
"""What the fake engine answers (its default script), within MAX_TOKENS ids for both tokenizers."""
BASELINE = "stock-without-plugin"
CASES = ("stock-without-plugin", "stock-with-plugin", "tokens-default", "tokens-fast", "stock-kvtp")
CASES += ("completions-ids", "stock-opt-in", "stock-path-fast", "tokens-splice", "memory-record")
CASES += ("memory-reuse", "memory-reuse-fast")
MEMORY_CASES = ("memory-record", "memory-reuse", "memory-reuse-fast")
"""Cases whose engine prompt is not the rendered ids (`memory-reuse`: the recorded ids + the bridge) or
that are answered otherwise than the others: their expected engine ids are learnt from one probe request."""
SIZES = {"1k": 1024, "4k": 4096, "16k": 16384, "32k": 32768, "multi-turn-8k": 8192, "multi-turn-32k": 32768}
"""Target rendered prompt tokens; `multi-turn-*`: 66 alternating user/assistant messages + a new user one."""
TURN_MESSAGES = 66
TOKENIZERS = {
    "tiny-1k": "vllm_tokens_patch.tiny_model: byte-level BPE, VOCAB_SIZE 1024 (fewer ids trained)",
    "bpe-65k": "anthropic==0.34.2 anthropic/tokenizer.json: byte-level BPE, 65k vocab, + ChatML specials",
}
_WORDS = (
    "the policy samples tokens while a trainer computes importance ratios over every turn of a long "
    'conversation; tools return JSON such as {"city": "Paris", "temp": 21.5} and the assistant '
    "reasons step by step before it answers. Numbers 0 7 42 1999 2026 3.14159, code like def f(x): "
    "return x ** 2, paths /usr/lib/python3.12, URLs https://example.org/a?b=c, and words: weather "
    "retokenization drift bijection template separator reward rollout gradient sampler kernel cache "
    "latency throughput server client request response stream header middleware validation"
)
WORDS = _WORDS.split()


# --- prompts -------------------------------------------------------------------------------------------


def _text(rng: random.Random, words: int) -> str:
    out = []
    for index in range(words):
        word = rng.choice(WORDS)
        out.append(word.capitalize() if index % 11 == 0 else word)
        if index % 17 == 16:
            out.append(rng.choice([".", ",", ";", "!", "?", "\n"]))
    return " ".join(out)


def _fit(app: VllmApp, target: int, make: Any) -> list[dict[str, str]]:
    """`make(scale)` -> messages, scaled until the rendered prompt is within 1% of `target` tokens."""
    scale = 0.25  # a first guess well below `target`: stays under the tokenizer's max length
    for _ in range(8):
        messages = make(scale)
        length = len(app.chat_ids(messages))
        if abs(length - target) <= target * 0.01:
            break
        scale *= target / length
    return messages


def conversation(app: VllmApp, size: str, seed: int) -> list[dict[str, str]]:
    target = SIZES[size]
    if size.startswith("multi-turn-"):
        count = TURN_MESSAGES
        weights = [random.Random(seed + i).uniform(0.3, 1.7) for i in range(count)]
        roles = ["user" if i % 2 == 0 else "assistant" for i in range(count)]
        per_message = target / (count + 1)

        def make(scale: float) -> list[dict[str, str]]:
            history = [
                {
                    "role": role,
                    "content": _text(random.Random(seed + i), max(1, round(scale * per_message * w))),
                }
                for i, (role, w) in enumerate(zip(roles, weights, strict=True))
            ]
            return [*history, {"role": "user", "content": "And what happens next?"}]
    else:

        def make(scale: float) -> list[dict[str, str]]:
            return [{"role": "user", "content": _text(random.Random(seed), max(1, round(scale * target)))}]

    return _fit(app, target, make)


# --- the two apps -------------------------------------------------------------------------------------


def bypass_plugin(app: VllmApp) -> None:
    """Make this app's serving object call vLLM's original render method (the plugin as if absent)."""
    from vllm_tokens_patch.plugin import PatchWrapper

    serving = app.app.state.openai_serving_chat
    wrapper = inspect.getattr_static(type(serving), "render_chat_request")
    assert isinstance(wrapper, PatchWrapper), f"render_chat_request is not patched: {wrapper!r}"
    serving.render_chat_request = types.MethodType(wrapper.__wrapped__, serving)


async def check_bypass(plugin_app: VllmApp, stock_app: VllmApp, body: bytes) -> dict[str, int]:
    """The plugin's render wrapper runs for a stock request on the plugin app, and not on the other."""
    serving = plugin_app.app.state.openai_serving_chat
    code = inspect.getattr_static(type(serving), "render_chat_request")._self_wrapper.__code__
    counts = {}
    for name, app in (("plugin", plugin_app), ("stock", stock_app)):
        calls = 0

        def profile(frame: Any, event: str, arg: Any) -> None:
            nonlocal calls
            if event == "call" and frame.f_code is code:
                calls += 1

        sys.setprofile(profile)
        try:
            response = await app.client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
        finally:
            sys.setprofile(None)
        assert response.status_code == 200, response.text
        counts[name] = calls
    assert counts["plugin"] >= 1 and counts["stock"] == 0, f"wrapper calls per app: {counts}"
    return counts


# --- measurement --------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    app: VllmApp
    path: str
    body: bytes
    stream: bool
    expected: list[int] | None = None
    """The engine prompt every request of this case must produce (None: the rendered ids)."""


def splice_prefix(app: VllmApp, messages: list[dict[str, str]]) -> list[int] | None:
    """The ids of the history before the new user message, as sampled: ending with `<|im_end|>`."""
    if len(messages) < 2 or messages[-2]["role"] != "assistant":
        return None
    text = app.tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=False, tokenize=False)
    history = list(app.tokenizer.encode(text, add_special_tokens=False))
    assert history[-2] == app.tokenizer.convert_tokens_to_ids("<|im_end|>"), "ChatML ends a turn so"
    return history[:-1]


def reuse_messages(messages: list[dict[str, str]], answer: str) -> list[dict[str, str]] | None:
    """`messages` with its last assistant message replaced by what the fake engine answers, so that the
    history before the new user message is a conversation the memory app recorded (None: single turn)."""
    if len(messages) < 3 or messages[-2]["role"] != "assistant":
        return None
    return [*messages[:-2], {"role": "assistant", "content": answer}, messages[-1]]


def make_cases(
    stock: VllmApp,
    plugin: VllmApp,
    opted: VllmApp,
    remembering: VllmApp,
    messages: list[dict[str, str]],
    ids: list[int],
    streams: list[bool],
    prefix: list[int] | None,
) -> list[Case]:
    cases = []
    route = token_route()  # where the plugin app mounted it (`VLLM_TOKENS_PATCH_ROUTE` or the default)
    for stream in streams:
        base = {"model": plugin.args.model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": stream}
        bodies = {
            "stock-without-plugin": (stock, "/v1/chat/completions", base),
            "stock-with-plugin": (plugin, "/v1/chat/completions", base),
            "tokens-default": (plugin, route, {**base, "tokens": ids}),
            "tokens-fast": (
                plugin,
                route,
                {**base, "tokens": ids, "vllm_tokens_patch_verify": False},
            ),
            "stock-kvtp": (
                plugin,
                "/v1/chat/completions",
                {**base, "kv_transfer_params": {"prompt_token_ids": ids}},
            ),
            "completions-ids": (
                plugin,
                "/v1/completions",
                {"model": plugin.args.model, "prompt": ids, "max_tokens": MAX_TOKENS, "stream": stream},
            ),
            "stock-opt-in": (opted, "/v1/chat/completions", base),
            "stock-path-fast": (
                opted,
                "/v1/chat/completions",
                {**base, "tokens": ids, "vllm_tokens_patch_verify": False},
            ),
        }
        bodies["memory-record"] = (remembering, "/v1/chat/completions", base)
        if prefix is not None:
            bodies["tokens-splice"] = (
                plugin,
                route,
                {**base, "prefix_tokens": prefix, "vllm_tokens_patch_verify": False},
            )
        reuse = reuse_messages(messages, FAKE_ANSWER)
        if reuse is not None:
            bodies["memory-reuse"] = (remembering, "/v1/chat/completions", {**base, "messages": reuse})
            bodies["memory-reuse-fast"] = (
                remembering,
                "/v1/chat/completions",
                {**base, "messages": reuse, "vllm_tokens_patch_verify": False},
            )
        for name in CASES:
            if name not in bodies:
                continue
            app, path, payload = bodies[name]
            # One encoded body per case: every request is parsed afresh by the server (vLLM pops
            # `kv_transfer_params` from its request object, never from these bytes).
            cases.append(
                Case(name + ("+stream" if stream else ""), app, path, json.dumps(payload).encode(), stream)
            )
    return cases


async def send(case: Case, ids: list[int], headers_seen: dict[str, set[str]]) -> tuple[float, float]:
    ids = case.expected if case.expected is not None else ids
    cpu0, wall0 = time.process_time(), time.perf_counter()
    response = await case.app.client.post(
        case.path, content=case.body, headers={"content-type": "application/json"}
    )
    wall1, cpu1 = time.perf_counter(), time.process_time()
    assert response.status_code == 200, f"{case.name}: {response.status_code} {response.text[:500]}"
    if case.stream:
        assert response.text.rstrip().endswith("data: [DONE]"), f"{case.name}: {response.text[-300:]}"
    engine = case.app.engine
    assert engine.prompts[-1]["prompt_token_ids"] == ids, f"{case.name}: the engine got other ids"
    engine.prompts.clear()
    engine.sampling_params.clear()
    if case.name.startswith("memory-"):
        memory = response.headers.get("x-vllm-tokens-memory", "<none>")
        headers_seen.setdefault(case.name, set()).add("hit" if memory.startswith("hit") else memory)
        assert memory.startswith("hit") == case.name.startswith("memory-reuse"), f"{case.name}: {memory}"
    if "tokens" in case.name:
        verification = response.headers.get("x-vllm-tokens-verification", "<none>")
        headers_seen.setdefault(case.name, set()).add(verification)
        if case.name.startswith("tokens-default"):
            assert verification == "match", f"{case.name}: verification {verification}"
    return round((wall1 - wall0) * 1000, 4), round((cpu1 - cpu0) * 1000, 4)


def rounds_for(tokens: int, args: argparse.Namespace) -> int:
    """`--rounds` up to a 4k-token target, then fewer in proportion (at least `--min-rounds`)."""
    return max(min(args.min_rounds, args.rounds), round(args.rounds * min(1.0, 4096 / tokens)))


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    medians = {
        name: {"wall_ms": statistics.median(s["wall_ms"]), "cpu_ms": statistics.median(s["cpu_ms"])}
        for name, s in samples.items()
    }
    summary: dict[str, Any] = {}
    for name, median in medians.items():
        suffix = "+stream" if name.endswith("+stream") else ""
        base = medians[BASELINE + suffix]
        summary[name] = {
            **median,
            "wall_ratio": median["wall_ms"] / base["wall_ms"],
            "cpu_ratio": median["cpu_ms"] / base["cpu_ms"],
        }
    extra = {}
    for suffix in {"+stream" if name.endswith("+stream") else "" for name in medians}:
        for label, top, bottom in (
            ("tokens-fast / stock-kvtp", "tokens-fast", "stock-kvtp"),
            ("stock-with-plugin / stock-without-plugin", "stock-with-plugin", "stock-without-plugin"),
        ):
            a, b = medians[top + suffix], medians[bottom + suffix]
            extra[label + suffix] = {k.replace("_ms", "_ratio"): a[k] / b[k] for k in ("wall_ms", "cpu_ms")}
    return {"cases": summary, "ratios": extra}


async def learn_memory_cases(remembering: VllmApp, messages: list[dict[str, str]], cases: list[Case]) -> None:
    """Record the history `memory-reuse` extends (one stock request of it), then probe each memory case
    once for the engine prompt every later request must produce."""
    reuse = reuse_messages(messages, FAKE_ANSWER)
    if reuse is not None:
        history = {"model": remembering.args.model, "messages": messages[:-2], "max_tokens": MAX_TOKENS}
        recorded = await remembering.client.post("/v1/chat/completions", json=history)
        assert recorded.json()["choices"][0]["message"]["content"] == FAKE_ANSWER, recorded.text[:300]
    for case in cases:
        if case.name.split("+")[0] in MEMORY_CASES:
            response = await case.app.client.post(
                case.path, content=case.body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text[:300]
            case.expected = list(case.app.engine.prompts[-1]["prompt_token_ids"])


async def measure(
    stock: VllmApp,
    plugin: VllmApp,
    opted: VllmApp,
    remembering: VllmApp,
    size: str,
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, Any]:
    messages = conversation(plugin, size, args.seed)
    ids = plugin.chat_ids(messages)
    prefix = splice_prefix(plugin, messages)
    streams = [False, True] if args.stream else [False]
    cases = make_cases(stock, plugin, opted, remembering, messages, ids, streams, prefix)
    await learn_memory_cases(remembering, messages, cases)
    rounds = rounds_for(SIZES[size], args)
    samples: dict[str, dict[str, list[float]]] = {c.name: {"wall_ms": [], "cpu_ms": []} for c in cases}
    headers_seen: dict[str, set[str]] = {}
    began = time.perf_counter()
    # Five of the six cases go to the plugin app: left at that, the stock app's caches are colder and
    # its requests measure ~4% slower than the same request on the plugin app (an A/A check). Sending
    # the baseline `--baseline-copies` times per round (all measured) gives both apps the same share.
    copies = [c for c in cases if c.name.startswith(BASELINE)] * (args.baseline_copies - 1)
    for round_index in range(args.warmup + rounds):
        order = cases + copies
        rng.shuffle(order)
        for case in order:
            wall, cpu = await send(case, ids, headers_seen)
            if round_index >= args.warmup:
                samples[case.name]["wall_ms"].append(wall)
                samples[case.name]["cpu_ms"].append(cpu)
    print(f"  {size}: {len(ids)} tokens, {rounds} rounds in {time.perf_counter() - began:.0f} s", flush=True)
    return {
        "size": size,
        "messages": len(messages),
        "prompt_tokens": len(ids),
        "rounds": rounds,
        "warmup": args.warmup,
        "verification_headers": {name: sorted(seen) for name, seen in headers_seen.items()},
        **summarize(samples),
        "samples": samples,
    }


async def build_with(model: Path, name: str, value: str) -> VllmApp:
    """The plugin app with the setting `name` (read when the route mounts)."""
    from vllm_tokens_patch import settings

    os.environ[name] = value
    settings.current.cache_clear()
    try:
        return await build_vllm_app(model, max_model_len=MAX_MODEL_LEN)
    finally:
        del os.environ[name]
        settings.current.cache_clear()


async def run_tokenizer(name: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    stock = await build_vllm_app(model, max_model_len=MAX_MODEL_LEN)
    plugin = await build_vllm_app(model, max_model_len=MAX_MODEL_LEN)
    opted = await build_with(model, "VLLM_TOKENS_PATCH_STOCK_ROUTE", "1")
    remembering = await build_with(model, "VLLM_TOKENS_PATCH_MEMORY", "local")
    bypass_plugin(stock)
    probe = {"model": plugin.args.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    wrapper_calls = await check_bypass(plugin, stock, json.dumps(probe).encode())
    rng = random.Random(args.seed)
    results = []
    try:
        for size in args.sizes:
            measured = await measure(stock, plugin, opted, remembering, size, args, rng)
            results.append({"tokenizer": name, **measured})
    finally:
        for app in (stock, plugin, opted, remembering):
            await app.client.aclose()
    footprint = await memory_footprint(
        plugin, [s for s in args.sizes if s.startswith("multi-turn-")], args.seed
    )
    return {
        "tokenizer": name,
        "vocab_size": len(plugin.tokenizer),
        "wrapper_calls_per_stock_request": wrapper_calls,
        "results": results,
        "memory_footprint": footprint,
    }


# --- memory footprint ---------------------------------------------------------------------------------


async def memory_footprint(app: VllmApp, sizes: list[str], seed: int) -> list[dict[str, Any]]:
    """What the local store holds per 1,000 recorded turns whose histories are these sizes: each entry is a
    turn's full ids (this size's rendered conversation, its tail varied per turn so no two are equal),
    without and with logprobs for the sampled ids (the last 256)."""
    from vllm_tokens_patch.memory_store import Entry, SqliteStore

    rows = []
    for size in sizes:
        ids = app.chat_ids(conversation(app, size, seed))
        for logprobs in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                store = SqliteStore(Path(tmp) / "memory.sqlite3")
                began = time.perf_counter()
                for turn in range(1000):
                    turn_ids = (*ids[:-8], *((ids[-8 + i] + turn) % len(app.tokenizer) for i in range(8)))
                    values = (*[None] * (len(turn_ids) - 256), *[-0.5] * 256) if logprobs else None
                    entry = Entry(
                        turn_ids, ((len(turn_ids) - 256, len(turn_ids)),), values, None, time.time()
                    )
                    await store.put(turn.to_bytes(32, "big"), entry)
                seconds = time.perf_counter() - began
                stats = await store.stats()
                await store.close()
                file_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
            rows.append(
                {
                    "size": size,
                    "ids_per_turn": len(ids),
                    "logprobs": logprobs,
                    "entries_mb": stats.bytes / 1e6,
                    "file_mb": file_bytes / 1e6,
                    "put_ms": seconds,  # per put: seconds * 1000 / 1000 turns
                }
            )
    return rows


# --- start-up -----------------------------------------------------------------------------------------

STARTUP_CODE = """
import json, sys, time
began = time.perf_counter()
import vllm
import_vllm_ms = (time.perf_counter() - began) * 1000
before = set(sys.modules)
cpu0, wall0 = time.process_time(), time.perf_counter()
import vllm_tokens_patch.plugin
vllm_tokens_patch.plugin.register()
wall1, cpu1 = time.perf_counter(), time.process_time()
added = sorted(set(sys.modules) - before)
print(json.dumps({"wall_ms": (wall1 - wall0) * 1000, "cpu_ms": (cpu1 - cpu0) * 1000, "added": added,
                  "import_vllm_ms": import_vllm_ms}))
"""


def measure_startup(runs: int) -> dict[str, Any]:
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", STARTUP_CODE], capture_output=True, text=True, check=True, env=os.environ
        )
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    added = samples[-1]["added"]
    heavy = [m for m in added if m.split(".")[0] == "fastapi" or m.startswith("vllm.entrypoints")]
    return {
        "runs": runs,
        "median_wall_ms": statistics.median(s["wall_ms"] for s in samples),
        "median_cpu_ms": statistics.median(s["cpu_ms"] for s in samples),
        "wall_ms": [s["wall_ms"] for s in samples],
        "cpu_ms": [s["cpu_ms"] for s in samples],
        "median_import_vllm_wall_ms": statistics.median(s["import_vllm_ms"] for s in samples),
        "modules_added": added,
        "fastapi_or_entrypoints_added": heavy,
    }


# --- outputs ------------------------------------------------------------------------------------------


def _cell(entry: dict[str, float] | None) -> str:
    return "-" if entry is None else f"{entry['cpu_ratio']:.2f} ({entry['wall_ratio']:.2f})"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"vLLM {meta['vllm']}, Python {meta['python']}, {meta['machine']}, {meta['date']}; fake engine, "
        f"one process, cases in random order per round ({BASELINE} sent {meta['baseline_copies']}x per "
        f"round); max_tokens={MAX_TOKENS}.",
        "",
        f"Values: median CPU time ratio (median wall time ratio) to `{BASELINE}` (POST "
        "/v1/chat/completions with the plugin's wrapper bypassed). Shared machine: compare ratios only.",
    ]
    for tokenizer in report["tokenizers"]:
        name = tokenizer["tokenizer"]
        for suffix in dict.fromkeys(
            "+stream" if "+stream" in n else "" for n in tokenizer["results"][0]["cases"]
        ):
            names = [n + suffix for n in CASES[1:]]
            lines += [
                "",
                f"### {name} ({TOKENIZERS[name]}){' streamed' if suffix else ''}",
                "",
                f"| size | prompt tokens | rounds | {BASELINE} CPU ms (wall ms) | "
                + " | ".join(names)
                + " | tokens-fast / stock-kvtp | with / without plugin |",
                "|---" * (6 + len(names)) + "|",
            ]
            for r in tokenizer["results"]:
                base = r["cases"][BASELINE + suffix]
                ratios = r["ratios"]
                lines.append(
                    f"| {r['size']} | {r['prompt_tokens']} | {r['rounds']} "
                    f"| {base['cpu_ms']:.1f} ({base['wall_ms']:.1f}) | "
                    + " | ".join(_cell(r["cases"].get(n)) for n in names)
                    + f" | {_cell(ratios['tokens-fast / stock-kvtp' + suffix])} "
                    f"| {_cell(ratios['stock-with-plugin / stock-without-plugin' + suffix])} |"
                )
        footprint = tokenizer.get("memory_footprint") or []
        if footprint:
            lines += [
                "",
                f"Conversation memory, local store, per 1,000 recorded turns ({name}):",
                "",
                "| history | ids per turn | logprobs | entries MB | file MB | ms per put |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {f['size']} | {f['ids_per_turn']} | {'yes' if f['logprobs'] else 'no'} "
                f"| {f['entries_mb']:.1f} | {f['file_mb']:.1f} | {f['put_ms']:.2f} |"
                for f in footprint
            ]
        seen = tokenizer["results"][0]["verification_headers"]
        lines += [
            "",
            "Verification header seen: " + ", ".join(f"{k}: {'/'.join(v)}" for k, v in sorted(seen.items())),
        ]
    startup = report.get("startup")
    if startup:
        lines += [
            "",
            "### Start-up (fresh interpreter that has imported vllm)",
            "",
            f"`import vllm_tokens_patch.plugin` + `register()`: median {startup['median_cpu_ms']:.1f} ms CPU "
            f"({startup['median_wall_ms']:.1f} ms wall; `import vllm` before it: "
            f"{startup['median_import_vllm_wall_ms']:.0f} ms wall) over {startup['runs']} processes; "
            f"{len(startup['modules_added'])} modules added, under fastapi / vllm.entrypoints: "
            f"{', '.join(startup['fastapi_or_entrypoints_added']) or 'none'}.",
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    tokenizers = report["tokenizers"]
    figure, axes = plt.subplots(1, len(tokenizers), figsize=(6.5 * len(tokenizers), 4.6), squeeze=False)
    names = CASES[1:]
    width = 0.8 / len(names)
    for axis, tokenizer in zip(axes[0], tokenizers, strict=True):
        results = tokenizer["results"]
        for index, name in enumerate(names):
            xs = [i + (index - (len(names) - 1) / 2) * width for i in range(len(results))]
            heights = [r["cases"][name]["cpu_ratio"] if name in r["cases"] else 0.0 for r in results]
            axis.bar(xs, heights, width, label=name)
        axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(results)), [f"{r['size']}\n{r['prompt_tokens']} tok" for r in results])
        axis.set_ylabel(f"median CPU time / {BASELINE}")
        axis.set_title(f"{tokenizer['tokenizer']} (vocab {tokenizer['vocab_size']})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    figure.suptitle(
        f"Request cost vs stock /v1/chat/completions, vLLM {report['meta']['vllm']} (fake engine)"
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- main ---------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    import vllm

    import vllm_tokens_patch

    tokenizers = [t for t in args.tokenizers if t != "bpe-65k" or args.tokenizer_json]
    if tokenizers != args.tokenizers:
        print("no --tokenizer-json: skipping bpe-65k")
    report: dict[str, Any] = {"tokenizers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in tokenizers:
            model_dir = Path(tmp) / name
            if name == "tiny-1k":
                build_tiny_model(model_dir, with_weights=False, max_position_embeddings=MAX_MODEL_LEN)
            else:
                build_bpe_model(model_dir, Path(args.tokenizer_json), max_position_embeddings=MAX_MODEL_LEN)
            print(f"{name}:", flush=True)
            report["tokenizers"].append(await run_tokenizer(name, model_dir, args))
    if args.startup_runs:
        report["startup"] = measure_startup(args.startup_runs)
    report["meta"] = {
        "vllm": vllm.__version__,
        "vllm_tokens_patch": getattr(vllm_tokens_patch, "__version__", None),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tokenizers": {name: TOKENIZERS[name] for name in tokenizers},
        "tokenizer_json": args.tokenizer_json,
        "max_model_len": MAX_MODEL_LEN,
        "max_tokens": MAX_TOKENS,
        "seed": args.seed,
        "baseline_copies": args.baseline_copies,
        "argv": sys.argv[1:],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "results.md").write_text(text)
    plot(report, out / "route_cost.png")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="measured rounds up to 4k prompt tokens")
    parser.add_argument("--min-rounds", type=int, default=100, help="floor for longer prompts")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first, per size")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--tokenizers", nargs="+", choices=list(TOKENIZERS), default=list(TOKENIZERS))
    parser.add_argument("--tokenizer-json", help="the 65k BPE's tokenizer.json (from anthropic==0.34.2)")
    parser.add_argument(
        "--baseline-copies", type=int, default=5, help="stock-without-plugin requests per round"
    )
    parser.add_argument("--stream", action="store_true", help="also run every case with stream: true")
    parser.add_argument("--startup-runs", type=int, default=7, help="fresh processes for start-up (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "bench"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
