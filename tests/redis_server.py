"""A throwaway redis-server for tests: from PATH, on a free local port, saving nothing.

``redis-server --port 0`` does not pick a port, so one is found by binding a socket; if
another process takes it before the server binds, the start is retried on another.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

INSTALL_HINT = "apt-get install redis-server"


def redis_server_binary() -> str:
    """The redis-server on PATH, or skip the test saying how to install it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"redis-server is not on PATH: {INSTALL_HINT} (or deselect with -m 'not redis')")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; ``start`` again after ``stop`` reuses the same port."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        keep_port = self.port != 0
        for _ in range(5):
            if not keep_port:
                self.port = free_port()
            # fmt: off
            command = [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / f"redis-{self.port}.log"),
            ]
            # fmt: on
            if self.password:
                command += ["--requirepass", self.password]
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
            if self._wait_until_ready():
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start; see the logs in {self.directory}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _wait_until_ready(self, timeout: float = 10.0) -> bool:
        """Until the server answers PING (or, with a password, asks for one)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
