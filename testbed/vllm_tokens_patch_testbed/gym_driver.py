"""NeMo-Gym 0.7.0's own model server (`VLLMModel`) driving multi-turn rollouts against a real server URL.

Runs in a venv with nemo-gym installed (Python 3.13; `nox -s gym-<X>` builds it):

    python -m vllm_tokens_patch_testbed.gym_driver --base-url http://HOST:PORT/v1 --model MODEL
        [--api-key KEY] [--out results.json] [--no-request-prompt-and-generation-token-ids]

Nothing of Gym is re-implemented. The driver builds Gym's model-server app exactly as Gym's launcher does
(`VLLMModel(config, server_client).setup_webserver()`, with a global config that enables Gym's training
token capture, so Gym's `_CaptureMiddleware`, lineage store and token store run) and plays the agent: it
posts each turn to that app's `/ng-rollout/<rollout>/training-token-capture/v1/chat/completions` and echoes
the assistant message Gym returns into the next turn's history (the way Gym's own tests echo it). Gym then
resolves the parent call, adds `required_prefix_token_ids` (`supply_prefix_token_ids: true`), posts to
`{base_url}/chat/completions`, and runs its own prefix check (`_verify_generation_prefix`). The app runs
in-process through httpx's ASGI transport, so an exception Gym raises reaches this driver as raised.

The only thing added to Gym is an observer around its outbound HTTP call (`nemo_gym.openai_utils.request`)
that records what was sent and the server's `x-vllm-tokens-*` response headers and returns the response
unchanged: Gym itself reads no response header.

Turns: see TURNS (normal turns, a truncated one, a tool result). The rollout stops at the first turn Gym
raises on, as a real rollout would. One JSON object per turn is printed; `--out` also gets the list. Exit
status 0 whatever Gym did: the caller judges; the observer also records what the server returned (the
prompt's length and where it leaves the requested prefix), which Gym reads but does not report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import Any

HEADER_PREFIX = "x-vllm-tokens"
GYM_MODEL_SERVER = "policy_model"
SEED = 1234
"""Per-request sampling seed: a random-weight model then samples the same (drifting) ids on every run."""

TURNS: list[dict[str, Any]] = [
    {"kind": "normal", "user": "What is the weather in Paris?", "params": {"max_tokens": 16}},
    {"kind": "normal", "user": "And in Rome?", "params": {"max_tokens": 16}},
    {"kind": "truncated", "user": "Tell me a story about a robot.", "params": {"max_tokens": 2}},
    {"kind": "tool_result", "tool_result": '{"temperature": 21}', "params": {"max_tokens": 16}},
    {"kind": "normal", "user": "Which is warmer?", "params": {"max_tokens": 16}},
]
"""A normal turn (the root), a normal turn (the first prefix), a truncated turn (`finish_reason: "length"`),
a tool result right after it (the server must close the unfinished turn), a user turn after the tool."""
TOOL_CALL_ID = "call_0"
"""A random-weight model calls no tool; the tool message answers a call id of its own (as `nox -s demo`)."""


def _first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where `a` and `b` differ (the shorter length if one is a prefix of the other)."""
    common = min(len(a), len(b))
    differing = (i for i in range(common) if a[i] != b[i])
    return next(differing, None if len(a) == len(b) else common)


def _exchange_summary(
    sent: dict[str, Any], status: int, headers: dict[str, str], answer: dict[str, Any] | None
) -> dict[str, Any]:
    """One POST to the server: what Gym sent, the server's headers, and how the returned prompt relates to
    the prefix Gym asked for (read from the body Gym itself then reads)."""
    prefix = sent.get("required_prefix_token_ids")
    prompt = (answer or {}).get("prompt_token_ids")
    return {
        "status": status,
        "returned_prompt_len": len(prompt) if isinstance(prompt, list) else None,
        "prompt_vs_prefix_first_difference": (
            _first_difference(prompt[: len(prefix)], prefix)
            if isinstance(prompt, list) and isinstance(prefix, list)
            else None
        ),
        "sent_keys": sorted(sent),
        "sent_required_prefix_len": len(prefix) if isinstance(prefix, list) else None,
        "sent_required_prefix": prefix,
        "sent_message_token_ids": [
            i
            for i, m in enumerate(sent.get("messages") or [])
            if isinstance(m, dict) and "prompt_token_ids" in m
        ],
        "headers": headers,
    }


async def rollout(
    base_url: str, model: str, api_key: str, *, request_prompt_and_generation_token_ids: bool = True
) -> list[dict[str, Any]]:
    """Run TURNS through Gym's own app against `base_url`; one result dict per turn that ran."""
    import httpx
    from nemo_gym import openai_utils
    from nemo_gym.config_types import BaseServerConfig
    from nemo_gym.server_utils import (
        GlobalAIOHTTPAsyncClientConfig,
        ServerClient,
        is_global_aiohttp_client_setup,
        set_global_aiohttp_client,
    )
    from nemo_gym.token_id_capture import TokenCaptureStore
    from omegaconf import OmegaConf
    from responses_api_models.vllm_model.app import VLLMModel, VLLMModelConfig

    capture_dir = tempfile.mkdtemp(prefix="gym-token-capture-")
    # What Gym's launcher would hand its model server: training token capture on, file store + lineage.
    global_config = OmegaConf.create({"token_id_capture": {"enabled": True, "dir": capture_dir}})
    config = VLLMModelConfig(
        host="127.0.0.1",
        port=0,
        entrypoint="app.py",
        name=GYM_MODEL_SERVER,
        base_url=base_url,
        api_key=api_key,
        model=model,
        return_token_id_information=True,
        request_prompt_and_generation_token_ids=request_prompt_and_generation_token_ids,
        supply_prefix_token_ids=True,
        uses_reasoning_parser=False,
    )
    server_client = ServerClient(
        head_server_config=BaseServerConfig(host="127.0.0.1", port=0), global_config_dict=global_config
    )
    if not is_global_aiohttp_client_setup():  # as nemo_gym.server_utils.setup_server_client does
        set_global_aiohttp_client(cfg=GlobalAIOHTTPAsyncClientConfig.model_validate(global_config))
    gym_model = VLLMModel(config=config, server_client=server_client)
    app = gym_model.setup_webserver()

    exchanges: list[dict[str, Any]] = []
    gym_request = openai_utils.request

    async def observed_request(**kwargs: Any) -> Any:
        response = await gym_request(**kwargs)
        if str(kwargs.get("url", "")).endswith("/chat/completions"):
            headers = {
                k.lower(): v for k, v in response.headers.items() if k.lower().startswith(HEADER_PREFIX)
            }
            # aiohttp keeps the body once read: Gym's own read below gets the same bytes.
            answer = await response.json() if response.status == 200 else None
            exchanges.append(
                _exchange_summary(dict(kwargs.get("json") or {}), response.status, headers, answer)
            )
        return response

    openai_utils.request = observed_request

    rollout_id = f"gym-e2e-{uuid.uuid4().hex[:8]}"
    path = f"/ng-rollout/{rollout_id}/training-token-capture/v1/chat/completions"
    store = TokenCaptureStore(capture_dir)
    history: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gym", timeout=600) as client:
            for number, turn in enumerate(TURNS, start=1):
                if "user" in turn:
                    history.append({"role": "user", "content": turn["user"]})
                else:
                    history.append(
                        {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": turn["tool_result"]}
                    )
                body = {"messages": history, "temperature": 1.0, "seed": SEED, **turn["params"]}
                result: dict[str, Any] = {"turn": number, "kind": turn["kind"], "messages": len(history)}
                seen = len(exchanges)
                try:
                    response = await client.post(path, json=body)
                except Exception as error:  # Gym raised inside its app: report it, never hide it
                    result["gym_error"] = {"type": type(error).__name__, "message": str(error)}
                    result["gym_traceback"] = traceback.format_exc(limit=-3)
                    response = None
                result["server"] = exchanges[seen:]
                if response is not None:
                    result["gym_status"] = response.status_code
                    if response.status_code != 200:
                        result["gym_error"] = {
                            "type": f"HTTP {response.status_code}",
                            "message": response.text,
                        }
                entries = [e for e in store.read_entries(rollout_id) if e.response_id is not None]
                if response is not None and response.status_code == 200:
                    served = response.json()
                    choice = served["choices"][0]
                    message = {k: v for k, v in choice["message"].items() if v is not None}
                    result["finish_reason"] = choice.get("finish_reason")
                    result["prompt_len"] = len(message.get("prompt_token_ids") or [])
                    result["generation_len"] = len(message.get("generation_token_ids") or [])
                    entry = next((e for e in entries if e.response_id == served.get("id")), None)
                    if entry is not None:  # Gym's own record of this call
                        result["prefix_requested"] = entry.prefix_requested
                        result["prefix_supplied"] = entry.prefix_supplied
                        result["parent_resolution"] = str(entry.parent_resolution)
                    history.append(message)
                prefix_sent = any(e["sent_required_prefix_len"] for e in result["server"])
                if "gym_error" in result:
                    result["prefix_check"] = (
                        "failed" if "required_prefix_token_ids" in str(result["gym_error"]) else "error"
                    )
                elif result.get("prefix_supplied"):
                    result["prefix_check"] = "passed"
                else:
                    result["prefix_check"] = "not requested" if not prefix_sent else "unproven"
                for exchange in result["server"]:
                    exchange.pop("sent_required_prefix", None)  # long; the length is kept
                results.append(result)
                shown = {k: v for k, v in result.items() if k != "gym_traceback"}  # the traceback: --out
                print(json.dumps(shown, sort_keys=True), flush=True)
                if "gym_error" in result:
                    break
    finally:  # Gym closes its global aiohttp client itself, at exit
        openai_utils.request = gym_request
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--base-url", required=True, help="the server's OpenAI base URL, e.g. http://HOST:8000/v1"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--no-request-prompt-and-generation-token-ids",
        dest="request_ids",
        action="store_false",
        help="Gym's shipped training default (no `return_token_ids` sent); default: inline-prefix mode",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(
        rollout(
            args.base_url, args.model, args.api_key, request_prompt_and_generation_token_ids=args.request_ids
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
