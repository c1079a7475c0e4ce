"""`python -m vllm_tokens_patch doctor [--json]`, `... tiny-model DIR` and `... tiny-vlm DIR` (also the
`vllm-tokens-patch` console script)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-tokens-patch")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="check this environment without starting a server")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random Llama (tokenizer, ChatML template, config, weights) to DIR"
    )
    tiny.add_argument("dir", help="where to write it (created; existing files are overwritten)")
    vlm = commands.add_parser(
        "tiny-vlm",
        help="write a tiny random Qwen2-VL-style vision-language model (with its processor) to DIR",
    )
    vlm.add_argument("dir", help="where to write it (created; existing files are overwritten)")
    args = parser.parse_args(argv)
    if args.command in ("tiny-model", "tiny-vlm"):
        from pathlib import Path

        if args.command == "tiny-vlm":
            from vllm_tokens_patch.tiny_vlm import build_tiny_vlm as build
        else:
            from vllm_tokens_patch.tiny_model import build_tiny_model as build
        print(build(Path(args.dir).expanduser()).resolve())
        return 0

    from vllm_tokens_patch import doctor as checks

    result = checks.report()
    print(json.dumps(checks.as_dict(result), indent=1) if args.json else checks.as_text(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
