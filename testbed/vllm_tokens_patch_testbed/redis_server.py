"""A throwaway `redis-server` (Debian's `redis-server` package) on a free loopback port: no persistence,
stopped at the end. For the conversation memory's Redis store behind a router."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

INSTALL = "apt-get install -y redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """Start one; yield its `redis://127.0.0.1:PORT/0` URL; stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"redis-server is not on PATH: {INSTALL}")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(
            [*command, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 15
            while not _answers(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {server.stderr.read() if server.stderr else ''}"
                    )
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
