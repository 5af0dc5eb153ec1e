"""Webhook delivery for alerts: a background sender that never blocks its caller, and signatures.

:class:`WebhookSender` POSTs JSON events, one at a time and in order, from a daemon thread. Its
queue is bounded: when it is full the oldest waiting event is dropped, with a warning, so a
receiver that is down for long costs memory bounded by ``max_queue``, and the caller never
waits. An event that fails with a connection error, a timeout, 408, 425, 429 or 5xx is retried
with exponential backoff and jitter (``Retry-After`` is honoured, up to ``max_backoff``) for up
to ``retry_for`` seconds, the events behind it waiting their turn; another 4xx or a redirect
drops it with a warning (a retry would be refused the same way).

A retry after a timeout may deliver an event twice: receivers dedupe on its ``id``.

Signatures: with a secret, each request carries ``X-Litellm-Budget-Signature: t=<unix
seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the secret>``; :func:`verify_signature`
checks one (Stripe's scheme: the timestamp bounds replays, several ``v1=`` allow a secret's
rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Litellm-Budget-Signature"
EVENT_HEADER = "X-Litellm-Budget-Event"
EVENT_ID_HEADER = "X-Litellm-Budget-Event-Id"
SIGNATURE_TOLERANCE = 300.0  # seconds a signature's timestamp may be from the receiver's clock
MAX_URL_CHARS = 2048

# A receiver's answers worth retrying: it is busy, down or restarting.
_RETRIED = frozenset({408, 425, 429})
_DROP_WARNING_EVERY = 60.0  # seconds between warnings about dropped events

Outcome = Literal["sent", "rejected", "retry"]


def check_webhook_url(url: object, name: str = "alert_webhook") -> str:
    """An ``http://`` or ``https://`` URL with a host, or ConfigurationError naming ``name``."""
    if isinstance(url, str) and len(url) <= MAX_URL_CHARS and url.isprintable() and " " not in url:
        try:
            parts = urlsplit(url)
            _port = parts.port  # a port that is not a number raises here
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            usable = False
        if usable:
            return url
    raise ConfigurationError(f"{name} must be an http:// or https:// URL with a host, got {url!r:.200}")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (``X-Litellm-Budget-Signature``) signs ``body`` (the raw request body,
    as received) with ``secret``, at a time within ``tolerance`` seconds of ``now``.

    >>> header = sign("s3cret", b'{"event":"budget_reset"}', 1_700_000_000)
    >>> verify_signature("s3cret", header, b'{"event":"budget_reset"}', now=1_700_000_060)
    True
    >>> verify_signature("other", header, b'{"event":"budget_reset"}', now=1_700_000_060)
    False
    """
    if not header or not secret:
        return False
    raw = body.encode() if isinstance(body, str) else body
    stamp: str | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            stamp = value
        elif key == "v1":
            macs.append(value.strip())
    try:
        timestamp = int(stamp or "")
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, raw).encode()
    return any(hmac.compare_digest(expected, mac.encode("utf-8", "surrogateescape")) for mac in macs)


def _seconds(name: str, value: object, least: float, most: float) -> float:
    """A WebhookSender duration: a number of seconds from ``least`` to ``most`` (NaN is neither)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not least <= value <= most:
        raise ConfigurationError(f"{name} must be a number of seconds from {least:g} to {most:g}, got {value!r}")
    return float(value)


class WebhookSender:
    """Deliver JSON events to ``url`` from a daemon thread (started by the first event).

    :param secret: signs each request (see :func:`sign`); None sends no signature.
    :param timeout: seconds for each request (connect, read, write).
    :param retry_for: seconds an event is retried for before it is given up.
    :param backoff: the first retry's delay in seconds; each retry doubles it, up to
        ``max_backoff``, and a random part (half of it) keeps senders from retrying in step.
    :param max_queue: events waiting at most; the oldest is dropped when one more comes.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout: float = 5.0,
        retry_for: float = 600.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        max_queue: int = 1000,
    ) -> None:
        self.url = check_webhook_url(url)
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ConfigurationError("alert_secret must be a non-empty string")
        self.secret = secret
        self.timeout = _seconds("timeout", timeout, 0.001, 600.0)
        self.retry_for = _seconds("retry_for", retry_for, 0.0, 7 * 86400.0)
        self.backoff = _seconds("backoff", backoff, 0.001, 3600.0)
        self.max_backoff = _seconds("max_backoff", max_backoff, self.backoff, 86400.0)
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or not 1 <= max_queue <= 1_000_000:
            raise ConfigurationError(f"max_queue must be a whole number from 1 to 1000000, got {max_queue!r}")
        self.max_queue = max_queue
        self.sent = 0  # events delivered
        self.failed = 0  # events given up (refused by the receiver, retried for too long, closed)
        self.dropped = 0  # events dropped from a full queue
        self._reset_for_process()

    def _reset_for_process(self) -> None:
        """Fresh state for this process: a forked child neither owns its parent's thread nor
        sends its parent's events."""
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._events: deque[dict[str, Any]] = deque()
        self._current: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = float("inf")  # monotonic time close() gives up at
        self._failing = False
        self._last_drop_warning = float("-inf")

    def __repr__(self) -> str:
        return f"WebhookSender({self.url!r})"

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue ``event`` for delivery; never blocks, never raises."""
        if self._pid != os.getpid():
            self._reset_for_process()
        with self._cond:
            if self._closing:
                self.failed += 1
                logger.warning("alert webhook sender is closed: %s event not sent", event.get("event"))
                return
            if len(self._events) >= self.max_queue:
                self._events.popleft()
                self.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_warning >= _DROP_WARNING_EVERY:
                    self._last_drop_warning = now
                    logger.warning(
                        "alert webhook %s: %d event(s) waiting, the oldest dropped (%d dropped so far)",
                        self.url,
                        self.max_queue,
                        self.dropped,
                    )
            self._events.append(dict(event))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="litellm-budget-webhook", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        """Events not delivered yet (waiting, or being delivered)."""
        with self._cond:
            return len(self._events) + (self._current is not None)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for every queued event to be delivered or given up."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._events and self._current is None, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop; later events are not sent."""
        with self._cond:
            if self._pid != os.getpid():
                return
            self._closing = True
            self._deadline = min(self._deadline, time.monotonic() + timeout)
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout + 1.0)
        left = self.pending()
        if left:
            logger.warning("alert webhook %s: %d event(s) not delivered before closing", self.url, left)

    # -- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._events or self._closing)
                    if not self._events or time.monotonic() >= self._deadline:
                        self.failed += len(self._events)
                        self._events.clear()
                        self._cond.notify_all()
                        return
                    event = self._current = self._events.popleft()
                try:
                    self._deliver(client, event)
                except Exception:  # a bug here must not kill the sender: the next event is sent
                    self.failed += 1
                    logger.exception("alert webhook %s: sending an event failed", self.url)
                finally:
                    with self._cond:
                        self._current = None
                        self._cond.notify_all()

    def _deliver(self, client: httpx.Client, event: dict[str, Any]) -> None:
        first = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome, wait_at_least = self._post(client, event)
            if outcome == "sent":
                self.sent += 1
                if self._failing:
                    self._failing = False
                    logger.info("alert webhook %s answers again", self.url)
                return
            if outcome == "rejected":
                self.failed += 1
                return
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            delay = max(delay / 2 + random.uniform(0, delay / 2), min(wait_at_least, self.max_backoff))
            if time.monotonic() + delay - first > self.retry_for or not self._wait(delay):
                self.failed += 1
                logger.warning(
                    "alert webhook %s: %s event %s given up after %d attempt(s)",
                    self.url,
                    event.get("event"),
                    event.get("id"),
                    attempt,
                )
                return

    def _wait(self, delay: float) -> bool:
        """Sleep ``delay`` seconds before a retry; False if close()'s deadline comes first."""
        with self._cond:
            until = time.monotonic() + delay
            if until >= self._deadline:
                self._cond.wait_for(lambda: time.monotonic() >= self._deadline, self._deadline - time.monotonic())
                return False
            self._cond.wait_for(lambda: time.monotonic() >= self._deadline, delay)
            return time.monotonic() < self._deadline

    def _post(self, client: httpx.Client, event: dict[str, Any]) -> tuple[Outcome, float]:
        """One attempt: its outcome, and the least delay the receiver asked for before a retry."""
        import httpx

        sent_at = time.time()
        body = json.dumps({**event, "sent_at": sent_at}, allow_nan=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: str(event.get("event", "")),
            EVENT_ID_HEADER: str(event.get("id", "")),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(sent_at))
        timeout = max(0.1, min(self.timeout, self._deadline - time.monotonic()))
        try:
            response = client.post(self.url, content=body, headers=headers, timeout=timeout)
        except httpx.TransportError as exc:
            self._note_failure(f"{type(exc).__name__}: {exc}")
            return "retry", 0.0
        status = response.status_code
        if 200 <= status < 300:
            return "sent", 0.0
        if status in _RETRIED or status >= 500:
            self._note_failure(f"HTTP {status}")
            return "retry", _retry_after(response.headers.get("Retry-After"))
        logger.warning(
            "alert webhook %s refused %s event %s with HTTP %d: not retried",
            self.url,
            event.get("event"),
            event.get("id"),
            status,
        )
        return "rejected", 0.0

    def _note_failure(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            logger.warning("alert webhook %s cannot be reached (%s): retrying with backoff", self.url, why)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value or 0))
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides
