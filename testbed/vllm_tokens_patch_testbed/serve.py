"""Start and stop a real `vllm serve` (vLLM's own console script) on 127.0.0.1, as a user would.

The server runs in its own process group so that stopping it also stops its engine core and API-server
children; its output goes to a log file kept as an artifact. Used by the e2e tests and `nox -s demo`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_LOGGING_LEVEL": "INFO",
}
"""What makes a tiny model fit 2 cores: a 1 GiB KV cache, no hub access."""
CPU_ARGS = ("--enforce-eager", "--max-model-len", "512", "--dtype", "bfloat16")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VllmServer:
    """`vllm serve MODEL --host 127.0.0.1 --port P *args`, started by `with` and always stopped."""

    def __init__(
        self,
        model: Path,
        args: Sequence[str] = (),
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        startup_timeout: float = 900.0,
    ) -> None:
        self.model = model
        self.args = [*CPU_ARGS, *args]
        self.log_path = log_path
        self.env = {**os.environ, **CPU_ENV, **(env or {})}
        self.vllm = Path(sys.executable).parent / "vllm"
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [str(self.vllm), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)]
        command += self.args
        log = self.log_path.open("wb")
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        began = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(1.0)
        raise TimeoutError(f"vllm serve not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
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

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
