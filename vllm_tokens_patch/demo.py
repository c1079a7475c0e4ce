"""Show retokenization drift and its fix: one multi-turn rollout through both chat routes.

    python -m vllm_tokens_patch.demo --base-url http://127.0.0.1:8000/v1 --model MODEL [--api-key KEY]

Each turn samples through the token route fed with the exact history (previous prompt ids + sampled ids +
template glue), and asks the stock route to render the same conversation from text. The table shows how
many positions of the stock route's prompt differ from the sampled history (drift) and that the token
route's engine prompt equals it (0). `nox -s demo` starts a CPU `vllm serve` with a tiny model for it.
Needs `httpx`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vllm_tokens_patch.client import TokenChatClient, differing_positions

USER_TURNS = (
    "Hello! Tell me a story about a robot that learns to paint.",
    "What happened next?",
    "And how did it end?",
    "Summarize it in one sentence.",
    "Thank you. One more detail, please.",
    "Last question: what is the moral?",
)


@dataclass(frozen=True)
class Turn:
    turn: int
    prompt_len: int
    stock_prompt_len: int
    stock_differing: int
    """Positions where the stock route's re-rendered prompt differs from the sampled history."""
    token_route_differing: int
    """Positions where the engine prompt on the token route differs from the sampled history (0)."""
    verification: str


def rollout(
    client: TokenChatClient, turns: int = 4, max_tokens: int = 24, temperature: float = 1.0, seed: int = 0
) -> list[Turn]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": USER_TURNS[0]}]
    tokens = client.tokenize_chat(messages, add_generation_prompt=True)
    report = []
    for turn in range(1, turns + 1):
        sampled, headers = client.chat_tokens(
            messages, tokens, max_tokens=max_tokens, temperature=temperature, seed=seed + turn
        )
        stock = client.chat(messages, max_tokens=1, temperature=0)
        report.append(
            Turn(
                turn=turn,
                prompt_len=len(tokens),
                stock_prompt_len=len(stock["prompt_token_ids"]),
                stock_differing=differing_positions(tokens, stock["prompt_token_ids"]),
                token_route_differing=differing_positions(tokens, sampled["prompt_token_ids"]),
                verification=headers.get("x-vllm-tokens-verification", "?"),
            )
        )
        choice = sampled["choices"][0]
        messages.append({"role": "assistant", "content": choice["message"].get("content") or ""})
        user_message = USER_TURNS[turn % len(USER_TURNS)]
        tokens = client.next_prompt(tokens, choice["token_ids"], messages, user_message)
        messages.append({"role": "user", "content": user_message})
    return report


def format_table(report: Sequence[Turn]) -> str:
    header = (
        "| turn | prompt length (sampled history) | stock route prompt length "
        "| stock route: positions differing | token route: positions differing | header |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for t in report:
        lines.append(
            f"| {t.turn} | {t.prompt_len} | {t.stock_prompt_len} | {t.stock_differing} "
            f"| {t.token_route_differing} | {t.verification} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines after the table")
    args = parser.parse_args(argv)
    client = TokenChatClient(args.base_url, args.model, api_key=args.api_key)
    try:
        report = rollout(client, turns=args.turns, max_tokens=args.max_tokens)
    finally:
        client.close()
    print(format_table(report))
    if args.json:
        import json

        for row in report:
            print(json.dumps(asdict(row)))
    return 0 if all(t.token_route_differing == 0 for t in report) else 1


if __name__ == "__main__":
    sys.exit(main())
