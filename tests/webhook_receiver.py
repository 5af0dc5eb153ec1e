"""A webhook receiver on loopback, in a thread of the test process, that records what it gets.

``status`` is what it answers (503: "down"); while ``gate`` is clear it holds each request
unanswered (a hanging receiver); ``stop()`` then ``start()`` again on the same port is a
receiver that went away and came back.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Received:
    """One request: its headers (lower-cased names), raw body and parsed event."""

    def __init__(self, headers: dict[str, str], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self.event: dict[str, Any] = json.loads(body)


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = 200
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0  # requests held at the gate now
        self.answered: list[int] = []  # statuses answered, in order
        self.received: list[Received] = []  # requests answered 2xx, in order
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.stop()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The events received (each id once: a retry after a timeout may repeat one)."""
        with self._lock:
            seen: dict[str, dict[str, Any]] = {}
            for request in self.received:
                seen.setdefault(request.event["id"], request.event)
        return [event for event in seen.values() if kind is None or event["event"] == kind]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.waiting += 1
                receiver.gate.wait(30)
                with receiver._lock:
                    receiver.waiting -= 1
                    status = receiver.status
                    receiver.answered.append(status)
                    if 200 <= status < 300:
                        headers = {name.lower(): value for name, value in self.headers.items()}
                        receiver.received.append(Received(headers, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
