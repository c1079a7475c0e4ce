"""Show retokenization drift and its fix: one multi-turn rollout, one request per turn, in splice mode.

    python -m vllm_tokens_patch.demo --base-url http://127.0.0.1:8000/v1 --model MODEL [--api-key KEY]

Turn 1 samples through vLLM's stock route (`return_token_ids`). Every later turn sends the ids so far
(`prefix_tokens`) and the whole conversation to the token route, which splices the new messages on with the
model's chat template; one turn is cut short by `max_tokens` and one answers with a tool result. For each
turn the table shows that the engine's prompt starts with exactly the ids so far (0 positions changed),
how many ids the server added (the bridge), and how many positions of the prompt the stock route renders
from the same conversation differ from it (the drift). `nox -s demo` starts a CPU `vllm serve` for it.
Needs `httpx` (the `[client]` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vllm_tokens_patch.client import Sampled, TokenChatClient, differing_positions
from vllm_tokens_patch.headers import SPLICE_HEADER, VERIFICATION_HEADER

TURNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("user", {"role": "user", "content": "Hello! Tell me a story about a robot that learns to paint."}),
    ("user", {"role": "user", "content": "What happened next? Be long."}),
    ("user after a truncated turn", {"role": "user", "content": "You were cut off. And how did it end?"}),
    ("tool result", {"role": "tool", "tool_call_id": "call_0", "content": '{"moral": "keep painting"}'}),
    ("user", {"role": "user", "content": "Summarize it in one sentence."}),
)
TRUNCATED_TURN = 2
"""The turn whose answer is cut by `max_tokens` (so the next turn must close it)."""


@dataclass(frozen=True)
class Turn:
    turn: int
    new: str
    prompt_len: int
    bridge_len: int
    close: str
    """`sampled`: the model's own stop id closed its turn; `added`: the server closed it; `-`: turn 1."""
    finish_reason: str | None
    stock_prompt_len: int
    stock_differing: int
    """Positions where the stock route's re-render of the conversation differs from the engine's prompt."""
    prefix_changed: int
    """Positions of the ids so far that the engine's prompt changed (0: the prefix is fed verbatim)."""
    verification: str


def _close(headers: dict[str, str]) -> str:
    fields = dict(part.strip().split("=", 1) for part in headers.get(SPLICE_HEADER, "").split(";") if part)
    return fields.get("close", "-")


def rollout(client: TokenChatClient, turns: int = 4, max_tokens: int = 24, seed: int = 0) -> list[Turn]:
    messages: list[dict[str, Any]] = []
    previous: Sampled | None = None
    report = []
    for turn in range(1, turns + 1):
        new, message = TURNS[(turn - 1) % len(TURNS)]
        messages.append(message)
        params = {
            "max_tokens": 6 if turn == TRUNCATED_TURN else max_tokens,
            "temperature": 1.0,
            "seed": seed + turn,
        }
        if previous is None:
            sampled = client.chat(messages, **params)
            prefix: list[int] = []
        else:
            sampled = client.next_turn(messages, previous, **params)
            prefix = previous.ids
        prompt = sampled.prompt_ids
        stock = client.chat(messages, max_tokens=1, temperature=0).prompt_ids
        report.append(
            Turn(
                turn=turn,
                new=new,
                prompt_len=len(prompt),
                bridge_len=len(prompt) - len(prefix),
                close=_close(sampled.headers),
                finish_reason=sampled.finish_reason,
                stock_prompt_len=len(stock),
                stock_differing=differing_positions(prompt, stock),
                prefix_changed=differing_positions(prefix, prompt[: len(prefix)]),
                verification=sampled.headers.get(VERIFICATION_HEADER, "-"),
            )
        )
        messages.append(sampled.assistant_message())
        previous = sampled
    return report


def format_table(report: Sequence[Turn]) -> str:
    lines = [
        "| turn | new message | prompt length | ids the server added | turn closed by | finish | "
        "stock route prompt length | stock route: positions differing | prefix positions changed | header |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in report:
        lines.append(
            f"| {t.turn} | {t.new} | {t.prompt_len} | {t.bridge_len} | {t.close} | {t.finish_reason} "
            f"| {t.stock_prompt_len} | {t.stock_differing} | {t.prefix_changed} | {t.verification} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--turns", type=int, default=len(TURNS))
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines after the table")
    args = parser.parse_args(argv)
    with TokenChatClient(args.base_url, args.model, api_key=args.api_key) as client:
        report = rollout(client, turns=args.turns, max_tokens=args.max_tokens)
    print(format_table(report))
    if args.json:
        import json

        for row in report:
            print(json.dumps(asdict(row)))
    return 0 if all(t.prefix_changed == 0 for t in report) else 1


if __name__ == "__main__":
    sys.exit(main())
