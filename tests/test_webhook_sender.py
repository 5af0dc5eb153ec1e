"""WebhookSender against a receiver on loopback: order, retries, a full queue, refusals, closing;
and the signature scheme receivers verify."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from waiting import wait_until
from webhook_receiver import Receiver, free_port

from litellm_budget_plugin.alerts import WebhookSender, check_webhook_url, sign, verify_signature
from litellm_budget_plugin.errors import ConfigurationError


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def quick(url: str, **options: float) -> WebhookSender:
    return WebhookSender(url, **{"backoff": 0.01, "max_backoff": 0.05, **options})  # type: ignore[arg-type]


def event(n: int) -> dict[str, object]:
    return {"event": "threshold_crossed", "id": f"e{n}", "n": n}


def test_events_arrive_in_order_with_their_headers(receiver: Receiver) -> None:
    sender = quick(receiver.url)
    for n in range(5):
        sender.send(event(n))
    assert sender.flush()
    assert [e["n"] for e in receiver.events()] == list(range(5))
    headers = receiver.received[0].headers
    assert headers["x-litellm-budget-event"] == "threshold_crossed" and headers["x-litellm-budget-event-id"] == "e0"
    assert "x-litellm-budget-signature" not in headers  # no secret, no signature
    sender.close()


def test_a_full_queue_drops_its_oldest_waiting_event(receiver: Receiver) -> None:
    receiver.gate.clear()
    sender = quick(receiver.url, max_queue=3, timeout=30)
    sender.send(event(0))
    wait_until(lambda: receiver.waiting == 1)  # e0 is being delivered
    started = time.monotonic()
    for n in range(1, 6):
        sender.send(event(n))  # never blocks
    assert time.monotonic() - started < 10  # a queue append each, whatever the receiver does
    assert sender.dropped == 2
    receiver.gate.set()
    assert sender.flush()
    assert [e["n"] for e in receiver.events()] == [0, 3, 4, 5]
    sender.close()


def test_a_refusing_receiver_is_not_retried(receiver: Receiver) -> None:
    receiver.status = 400
    sender = quick(receiver.url)
    sender.send(event(0))
    sender.send(event(1))
    assert sender.flush()
    assert receiver.answered == [400, 400] and sender.failed == 2 and sender.sent == 0
    sender.close()


def test_an_event_is_given_up_after_retry_for(receiver: Receiver) -> None:
    receiver.status = 500
    sender = quick(receiver.url, retry_for=2.0)
    sender.send(event(0))
    sender.send(event(1))
    assert sender.flush(30)
    assert sender.failed == 2 and len(receiver.answered) >= 3  # retried, then given up
    sender.close()


def test_close_gives_up_at_its_deadline_when_the_receiver_is_down() -> None:
    sender = quick(f"http://127.0.0.1:{free_port()}/hook")
    sender.send(event(0))
    started = time.monotonic()
    sender.close(timeout=0.5)
    assert time.monotonic() - started < 30
    wait_until(lambda: sender.pending() == 0 and sender.failed == 1)
    sender.send(event(1))  # after close: counted, not sent
    assert sender.failed == 2


def test_signatures() -> None:
    body = b'{"event":"budget_exceeded"}'
    header = sign("s", body, 1_000)
    assert verify_signature("s", header, body, now=1_000)
    assert verify_signature("s", header, body.decode(), now=1_299)
    assert not verify_signature("s", header, body, now=1_301)  # too old: a replay
    assert not verify_signature("t", header, body, now=1_000)
    assert not verify_signature("s", header, body + b" ", now=1_000)
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature("s", rotated, body, now=1_000)
    for bad in ("", "t=x,v1=ab", "v1=ab", "t=1000", "t=1000,v1=\udcff", None):
        assert not verify_signature("s", bad, body, now=1_000)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "https://hooks.example.com/a?b=c", "http://[::1]:80/"])
def test_webhook_urls_accepted(url: str) -> None:
    assert check_webhook_url(url) == url


@pytest.mark.parametrize(
    "url", ["", "hooks.example.com", "file:///etc/x", "ws://h/x", "http://", "http://h:99999/", "http://h x/", None]
)
def test_webhook_urls_refused(url: object) -> None:
    with pytest.raises(ConfigurationError, match="alert_webhook"):
        check_webhook_url(url)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"max_queue": 0}, "max_queue"),
        ({"max_queue": True}, "max_queue"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retry_for": float("inf")}, "retry_for"),
        ({"backoff": 0}, "backoff"),
        ({"backoff": 2.0, "max_backoff": 1.0}, "max_backoff"),
        ({"secret": ""}, "alert_secret"),
    ],
)
def test_bad_sender_options_are_refused(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        WebhookSender("http://127.0.0.1:9/alerts", **options)  # type: ignore[arg-type]
