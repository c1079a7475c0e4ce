"""What a router passes on to its worker: `nox -s router-probe` (README "Behind a router").

Puts each router (vllm-router, sglang-router; with and without its own `--api-key`) in front of a recording
backend on 127.0.0.1 (stdlib HTTP server: answers every request with a minimal chat completion or SSE
stream and records the method, path, headers and JSON body it got), sends the requests an RL client of
this package sends, and prints, for each: the status the client got, the path the worker got, which
client headers reached it and which extra body fields survived. No vLLM needed: it runs in seconds.

    python -m tools.router_probe --router vllm-router=/path/bin/vllm-router \
        --router "sglang-router=/path/bin/sglang-router launch" [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from vllm_tokens_patch_testbed.router import Router

CLIENT_KEY = "client-key"
ROUTER_KEY = "router-key"
HEADERS = ("authorization", "x-request-id", "x-data-parallel-rank", "x-session-id", "x-custom-probe")
"""The client headers probed: auth, vLLM's request id and DP rank headers, a session-affinity header, and
an arbitrary one."""
TOP_LEVEL = ("tokens", "prefix_tokens", "required_prefix_token_ids", "return_token_ids", "vllm_xargs")
"""Extra top-level body fields probed (`vllm_xargs`: vLLM's own extension field, for comparison)."""
MESSAGE_LEVEL = ("prompt_token_ids", "generation_token_ids")
"""Extra fields on an assistant message (NeMo-Gym's shape)."""
PATHS = ("/v1/chat/completions/tokens", "/v1/chat/completions")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Backend:
    """A worker that records what it gets. It answers `GET /health`, `/v1/models` and any other GET
    with something plausible (routers probe workers before routing), and every POST with a chat
    completion (`stream: true`: two SSE events and `[DONE]`)."""

    def __init__(self) -> None:
        self.received: list[Recorded] = []
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.send_header("x-vllm-tokens-verification", "match")  # does the router keep it?
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/v1/models"):
                    models = {"object": "list", "data": [{"id": "probe", "object": "model", "owned_by": "x"}]}
                    self._answer(200, json.dumps(models).encode(), "application/json")
                else:
                    self._answer(200, b"{}", "application/json")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                headers = {name.lower(): value for name, value in self.headers.items()}
                with backend.lock:
                    backend.received.append(Recorded("POST", self.path, headers, body))
                message = {"role": "assistant", "content": "ok"}
                if isinstance(body, dict) and body.get("stream"):
                    chunk = {
                        "id": "chatcmpl-probe",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "probe",
                        "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}],
                    }
                    events = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                    self._answer(200, events, "text/event-stream")
                    return
                completion = {
                    "id": "chatcmpl-probe",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "probe",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                self._answer(200, json.dumps(completion).encode(), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[Backend]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()

    def take(self) -> list[Recorded]:
        with self.lock:
            received, self.received = self.received, []
        return received


@dataclass
class Observation:
    router: str
    router_api_key: bool
    client_key: str | None
    path: str
    stream: bool
    client_status: int
    worker_paths: list[str]
    response_header_kept: bool
    headers_at_worker: dict[str, str | None] = field(default_factory=dict)
    top_level_kept: list[str] = field(default_factory=list)
    message_level_kept: list[str] = field(default_factory=list)


def request_body(stream: bool) -> dict[str, Any]:
    assistant = {
        "role": "assistant",
        "content": "hi",
        "prompt_token_ids": [1, 2],
        "generation_token_ids": [3],
    }
    return {
        "model": "probe",
        "messages": [{"role": "user", "content": "hello"}, assistant, {"role": "user", "content": "again"}],
        "max_tokens": 4,
        "stream": stream,
        "tokens": [1, 2, 3],
        "prefix_tokens": [1, 2, 3],
        "required_prefix_token_ids": [1, 2, 3],
        "return_token_ids": True,
        "vllm_xargs": {"probe": 1},
    }


def probe(
    name: str, command: list[str], api_key: str | None, client_key: str | None, logs: Path
) -> list[Observation]:
    observations = []
    backend = Backend()
    label = f"{name}{'-api-key' if api_key else ''}"
    with (
        backend.running(),
        Router(command, [backend.url], log_path=logs / f"{label}.log", api_key=api_key) as router,
    ):
        backend.take()
        for number, (path, stream) in enumerate((p, s) for p in PATHS for s in (False, True)):
            headers = {
                **({"authorization": f"Bearer {client_key}"} if client_key else {}),
                "x-request-id": f"probe-request-{number}",
                "x-data-parallel-rank": "0",
                "x-session-id": f"probe-session-{number}",
                "x-custom-probe": "yes",
            }
            response = httpx.post(router.url + path, json=request_body(stream), headers=headers, timeout=30)
            got = [r for r in backend.take() if r.method == "POST"]
            first = got[0] if got else None
            body = first.body if first is not None and isinstance(first.body, dict) else {}
            sent_messages = body.get("messages") or [{}, {}]
            assistant = (
                sent_messages[1] if len(sent_messages) > 1 and isinstance(sent_messages[1], dict) else {}
            )
            observations.append(
                Observation(
                    router=name,
                    router_api_key=api_key is not None,
                    client_key=client_key,
                    path=path,
                    stream=stream,
                    client_status=response.status_code,
                    worker_paths=[r.path for r in got],
                    response_header_kept="x-vllm-tokens-verification" in response.headers,
                    headers_at_worker={h: (first.headers.get(h) if first else None) for h in HEADERS},
                    top_level_kept=[f for f in TOP_LEVEL if f in body],
                    message_level_kept=[f for f in MESSAGE_LEVEL if f in assistant],
                )
            )
    return observations


def header_cell(observation: Observation, header: str) -> str:
    value = observation.headers_at_worker.get(header)
    if not observation.worker_paths:
        return "-"
    if header == "authorization" and observation.client_key is None:
        return "(none sent)" if value is None else f"`{value}`"
    if value is None:
        return "dropped"
    sent = {
        "authorization": f"Bearer {observation.client_key}",
        "x-request-id": "probe-request-",
        "x-data-parallel-rank": "0",
        "x-session-id": "probe-session-",
        "x-custom-probe": "yes",
    }[header]
    return "kept" if value.startswith(sent) else f"`{value}`"


def cells(o: Observation) -> list[str]:
    """One row's cells after router, key and path (the same for JSON and SSE when they agree)."""
    reached = bool(o.worker_paths)
    return [
        str(o.client_status),
        "; ".join(o.worker_paths) or "(not forwarded)",
        ("kept" if o.response_header_kept else "dropped") if reached else "-",
        *(header_cell(o, h) for h in HEADERS),
        (", ".join(o.top_level_kept) or "none") if reached else "-",
        (", ".join(o.message_level_kept) or "none") if reached else "-",
    ]


def markdown(observations: list[Observation]) -> str:
    columns = ["router", "client key", "path", "body", "status", "worker got", "response header", *HEADERS]
    columns += ["top-level fields kept", "message-level fields kept"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    groups: dict[tuple[str, bool, str | None, str], list[Observation]] = {}
    for o in observations:
        groups.setdefault((o.router, o.router_api_key, o.client_key, o.path), []).append(o)
    for (router, api_key, client_key, path), group in groups.items():
        rows = {tuple(cells(o)): o for o in group}
        for row, o in rows.items():
            body = "JSON, SSE" if len(rows) == 1 else ("SSE" if o.stream else "JSON")
            head = [
                router + (f" --api-key {ROUTER_KEY}" if api_key else ""),
                f"`{client_key}`" if client_key else "none",
                path,
                body,
            ]
            lines.append("| " + " | ".join([*head, *row]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", action="append", required=True, help="NAME=COMMAND (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the observations here")
    parser.add_argument("--logs", type=Path, help="router logs (default: a temporary directory)")
    args = parser.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="router-probe-"))
    observations: list[Observation] = []
    for spec in args.router:
        name, _, command = spec.partition("=")
        # No router key; a router key with the client sending none, another one, the same one.
        modes = ((None, CLIENT_KEY), (ROUTER_KEY, None), (ROUTER_KEY, CLIENT_KEY), (ROUTER_KEY, ROUTER_KEY))
        for api_key, client_key in modes:
            observations += probe(name, shlex.split(command), api_key, client_key, logs)
    print(markdown(observations))
    print(
        f"\nA router's own key (`--api-key`) is `{ROUTER_KEY}`; `kept`: the worker got what the client sent."
    )
    print(f"router logs: {logs}")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in observations], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
