"""A local OpenAI-compatible server for tests: counts requests, fails on demand, streams.

Started on a free loopback port; litellm talks to it as ``openai/<model>`` with
``api_base=server.url``. It answers chat, text completion and embedding requests with
fixed token counts so tests can compute the exact cost litellm will report.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT_TOKENS = 10
COMPLETION_TOKENS = 20
REPLY_WORDS = ["Hello", " from", " the", " fake", " server", "."]


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fail_statuses: list[int] = []  # next requests answer with these statuses
        self.cut_streams = 0  # next streams close the connection after one chunk
        self.stream_delay = 0.0
        self.response_delay = 0.0  # seconds before answering: keeps calls in flight together
        # Billing the request received, off by default (fixed PROMPT_TOKENS / COMPLETION_TOKENS):
        # bill_words: prompt_tokens = whitespace-separated words of every message's content, and
        # completion_tokens = completion_tokens, at most the request's max_(completion_)tokens
        self.bill_words = False
        self.completion_tokens = COMPLETION_TOKENS
        self.echo_service_tier = False  # answer with the request's service_tier
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        with self.lock:
            self.fail_statuses.extend([status] * count)


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with fake.lock:
                fake.requests.append({"path": self.path, "body": body})
                status = fake.fail_statuses.pop(0) if fake.fail_statuses else 200
                cut = body.get("stream") and fake.cut_streams > 0
                if cut:
                    fake.cut_streams -= 1
            if fake.response_delay:
                time.sleep(fake.response_delay)
            if status != 200:
                self._json({"error": {"message": "failing on demand", "type": "server_error"}}, status)
            elif self.path.endswith("/embeddings"):
                inputs = body.get("input")
                items = inputs if isinstance(inputs, list) else [inputs]
                self._json(
                    {
                        "object": "list",
                        "model": body.get("model"),
                        "data": [
                            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))
                        ],
                        "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
                    }
                )
            elif body.get("stream"):
                self._stream(body, cut=bool(cut))
            elif self.path.endswith("/completions") and "chat" not in self.path:
                self._json(
                    {
                        "id": "cmpl-fake",
                        "object": "text_completion",
                        "created": int(time.time()),
                        "model": body.get("model"),
                        "choices": [{"index": 0, "text": "".join(REPLY_WORDS), "finish_reason": "stop"}],
                        "usage": _usage(fake, body),
                    }
                )
            else:
                self._json(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": _usage(fake, body),
                        **_service_tier(fake, body),
                    }
                )

        def _json(self, payload: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, body: dict[str, Any], cut: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            include_usage = (body.get("stream_options") or {}).get("include_usage")
            for index, word in enumerate(REPLY_WORDS):
                self._event(_chunk(body, {"content": word, **({"role": "assistant"} if index == 0 else {})}))
                if cut:
                    return  # the connection closes mid-stream
                if fake.stream_delay:
                    time.sleep(fake.stream_delay)
            self._event(_chunk(body, {}, finish="stop"))
            if include_usage:
                self._event({**_chunk(body, {}), "choices": [], "usage": _usage(fake, body)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, payload: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

    return Handler


def _usage(fake: FakeOpenAI, body: dict[str, Any]) -> dict[str, int]:
    """The usage billed for a request: fixed, or its words when the server bills what it got."""
    if not fake.bill_words:
        prompt, completion = PROMPT_TOKENS, COMPLETION_TOKENS
    else:
        prompt = sum(len(_text(message.get("content")).split()) for message in body.get("messages") or ())
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        completion = fake.completion_tokens if limit is None else min(int(limit), fake.completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _service_tier(fake: FakeOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    return {"service_tier": body["service_tier"]} if fake.echo_service_tier and "service_tier" in body else {}


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake-stream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


@contextmanager
def running() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()
