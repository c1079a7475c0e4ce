"""What the token route costs over the stock chat route, measured side by side in one process.

vLLM's real app (arg parser, config, tokenizer, build_app, middlewares) with the fake engine of the
behaviour suite, so the engine costs nothing and what remains is HTTP parsing, rendering, our
validation/comparison/swap and response building. Requests alternate between the two routes so that
machine noise hits both alike; the result is reported as ratios of medians, never as absolute claims.
Writes results.json, results.md and overhead.png into the output directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "vllm"), str(ROOT / "tests" / "support")]

from harness import VllmApp, build_vllm_app  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

MAX_MODEL_LEN = 4096


def messages_of(words: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(["word"] * words)}]


async def measure(app: VllmApp, words: int, rounds: int, stream: bool) -> dict[str, Any]:
    messages = messages_of(words)
    tokens = app.chat_ids(messages)
    base = {"model": app.args.model, "messages": messages, "max_tokens": 4, "stream": stream}
    payloads = {
        "stock": ("/v1/chat/completions", base),
        "tokens": ("/v1/chat/completions/tokens", {**base, "tokens": tokens}),
    }
    samples: dict[str, list[float]] = {name: [] for name in payloads}
    for round_index in range(rounds + 10):
        order = list(payloads) if round_index % 2 == 0 else list(reversed(payloads))
        for name in order:
            path, payload = payloads[name]
            began = time.perf_counter()
            response = await app.client.post(path, json=payload)
            elapsed = time.perf_counter() - began
            assert response.status_code == 200, response.text
            if round_index >= 10:  # warm-up rounds are dropped
                samples[name].append(elapsed * 1000)
    stock, ours = statistics.median(samples["stock"]), statistics.median(samples["tokens"])
    return {
        "prompt_tokens": len(tokens),
        "stream": stream,
        "rounds": rounds,
        "median_ms": {"stock": stock, "tokens": ours},
        "p90_ms": {name: statistics.quantiles(values, n=10)[-1] for name, values in samples.items()},
        "ratio_tokens_over_stock": ours / stock,
        "samples_ms": samples,
    }


def write_outputs(results: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        f"vLLM {meta['vllm']}, Python {meta['python']}, {meta['rounds']} alternating rounds per case "
        f"(fake engine; ratios of medians, same process, same run)",
        "",
        "| prompt tokens | stream | stock median (ms) | token route median (ms) | token / stock |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['prompt_tokens']} | {r['stream']} | {r['median_ms']['stock']:.2f} "
            f"| {r['median_ms']['tokens']:.2f} | {r['ratio_tokens_over_stock']:.3f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [f"{r['prompt_tokens']} tok\n{'stream' if r['stream'] else 'json'}" for r in results]
    axis.bar(range(len(results)), [r["ratio_tokens_over_stock"] for r in results], color="#4c72b0")
    axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(results)), labels)
    axis.set_ylabel("median latency, token route / stock route")
    axis.set_title(f"Token route overhead on vLLM {meta['vllm']} (fake engine)")
    figure.tight_layout()
    figure.savefig(out / "overhead.png", dpi=120)


async def main_async(args: argparse.Namespace) -> None:
    import vllm

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(
            Path(tmp) / "tiny", with_weights=False, max_position_embeddings=MAX_MODEL_LEN
        )
        app = await build_vllm_app(model, max_model_len=MAX_MODEL_LEN)
        results = []
        for words in args.words:
            for stream in (False, True):
                results.append(await measure(app, words, args.rounds, stream))
        await app.client.aclose()
    meta = {
        "vllm": vllm.__version__,
        "python": platform.python_version(),
        "rounds": args.rounds,
        "machine": platform.machine(),
    }
    write_outputs(results, Path(args.out), meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--words", type=int, nargs="+", default=[8, 300, 1200])
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "bench"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
