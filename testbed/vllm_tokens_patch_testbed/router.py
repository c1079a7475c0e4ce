"""Start and stop a real router (vllm-router, sglang-router) on 127.0.0.1 in front of given workers.

Both routers take the same core flags (`--worker-urls`, `--policy`, `--api-key`, `--prometheus-port`); the
command before them differs (`vllm-router`, `sglang-router launch`). The router runs in its own process
group and logs to a file, like `serve.VllmServer`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from vllm_tokens_patch_testbed.serve import free_port

ROUTER_ENV = "VLLM_ROUTER"
"""The `vllm-router` executable (`nox -s router-<X>` installs it in a venv of its own and sets this)."""


def vllm_router_command() -> list[str]:
    executable = os.environ.get(ROUTER_ENV)
    if not executable:
        raise RuntimeError(f"{ROUTER_ENV} is not set: run the router e2e through `nox -s router-<X>`")
    return [executable]


class Router:
    """`COMMAND --host 127.0.0.1 --port P --worker-urls ... --policy POLICY [--api-key K] *args`."""

    def __init__(
        self,
        command: Sequence[str],
        workers: Sequence[str],
        *,
        log_path: Path,
        api_key: str | None = None,
        policy: str = "round_robin",
        args: Sequence[str] = (),
        startup_timeout: float = 120.0,
    ) -> None:
        self.port = free_port()
        self.command = [
            *command,
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--worker-urls", *workers),
            *("--policy", policy),
            *("--prometheus-port", str(free_port())),  # both default to a fixed port: two routers collide
            *(("--api-key", api_key) if api_key is not None else ()),
            *args,
        ]
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Router:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        log.write(("$ " + " ".join(self.command) + "\n").encode())
        log.flush()
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Ready when its `/v1/models` answers 200 or 401 (it needs a healthy worker behind it for that)."""
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=5) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                if error.code == 401:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"router not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
