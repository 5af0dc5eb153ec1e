"""BudgetGuard(alert_webhook=...): alert events reach a receiver on loopback, each once per
budget and window, signed, in order, and a receiver that is down, failing or hanging never
slows or fails a call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import litellm
import pytest
from waiting import wait_until
from webhook_receiver import Receiver

from litellm_budget_plugin import BudgetExceededError, BudgetManager
from litellm_budget_plugin.alerts import SIGNATURE_HEADER, verify_signature
from litellm_budget_plugin.errors import ConfigurationError
from litellm_budget_plugin.guard import BudgetGuard

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]
SECRET = "whsec-test"
Register = Callable[[BudgetGuard], BudgetGuard]


def ask(user: str) -> None:
    litellm.completion(model=MODEL, messages=MESSAGES, mock_response="hello", user=user)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def alerting(manager: BudgetManager, register: Register, url: str, **options: object) -> BudgetGuard:
    guard = register(BudgetGuard(manager, mode="soft", alert_webhook=url, alert_secret=SECRET, **options))  # type: ignore[arg-type]
    assert guard.alerts is not None
    guard.alerts.sender.backoff, guard.alerts.sender.max_backoff = 0.02, 0.2  # a test's patience
    return guard


def call_cost(manager: BudgetManager) -> float:
    """What one call costs (a user tracked without a budget, which alerts nothing)."""
    ask("probe")
    wait_until(lambda: manager.get_current_cost("probe") > 0)
    return manager.get_current_cost("probe")


def spend_to_alerts(manager: BudgetManager) -> None:
    """alice's budget is 5.5 calls (soft mode): call 5 reaches 80%, call 6 95%, call 7 is refused."""
    manager.create_budget(5.5 * call_cost(manager), "alice", duration="daily")
    for _ in range(6):
        ask("alice")
    for _ in range(2):
        with pytest.raises(BudgetExceededError):
            ask("alice")


def kinds(receiver: Receiver) -> list[tuple[str, object]]:
    return [(event["event"], event.get("threshold")) for event in receiver.events()]


EXPECTED = [("threshold_crossed", 80.0), ("threshold_crossed", 95.0), ("budget_exceeded", None)]


def test_thresholds_and_the_first_refusal_are_each_sent_once(
    manager: BudgetManager, register: Register, receiver: Receiver
) -> None:
    guard = alerting(manager, register, receiver.url)
    assert guard.alerts is not None
    spend_to_alerts(manager)
    wait_until(lambda: len(receiver.events()) >= 3)
    assert guard.alerts.flush()
    assert kinds(receiver) == EXPECTED
    crossed, _, exceeded = receiver.events()
    cost = manager.get_current_cost("probe")
    assert crossed["subject"] == "alice" and crossed["entity_type"] == "user" and crossed["entity_id"] == "alice"
    # the spend read when the crossing was seen: call 5's, or call 6's if both were charged by then
    assert 0.8 * 5.5 * cost <= crossed["spend"] <= 6 * cost * 1.000001
    assert crossed["budget"] == pytest.approx(5.5 * cost)
    assert crossed["window"] == "" and crossed["window_end"] == pytest.approx(crossed["window_start"] + 86_400)
    assert crossed["model"] and crossed["project"] is None and crossed["sent_at"] >= crossed["occurred_at"] - 1
    assert exceeded["spend"] == pytest.approx(6 * cost) and exceeded["estimate"] > 0
    assert len({event["id"] for event in receiver.events()}) == 3
    guard.alerts.close()


def test_events_are_signed_with_the_shared_secret(
    manager: BudgetManager, register: Register, receiver: Receiver
) -> None:
    guard = alerting(manager, register, receiver.url)
    spend_to_alerts(manager)
    wait_until(lambda: len(receiver.received) >= 3)
    for request in receiver.received:
        header = request.headers[SIGNATURE_HEADER.lower()]
        assert header.startswith("t=") and ",v1=" in header
        assert verify_signature(SECRET, header, request.body)
        assert not verify_signature("another secret", header, request.body)
        assert not verify_signature(SECRET, header, request.body.replace(b"alice", b"alicf"))
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-litellm-budget-event"] == request.event["event"]
    assert guard.alerts is not None
    guard.alerts.close()


def test_a_new_window_sends_budget_reset_and_arms_the_thresholds_again(
    manager: BudgetManager, register: Register, receiver: Receiver
) -> None:
    guard = alerting(manager, register, receiver.url)
    spend_to_alerts(manager)
    wait_until(lambda: len(receiver.events()) >= 3)
    assert guard.alerts is not None and guard.alerts.flush(60)  # every refusal checked before the clock moves
    first_window = receiver.events()[0]["window_start"]
    now = time.time()
    guard.store.clock = lambda: now + 86_400 + 60  # type: ignore[attr-defined]
    for _ in range(5):  # the new window's 80%
        ask("alice")
    wait_until(lambda: len(receiver.events()) >= 5)
    assert guard.alerts is not None and guard.alerts.flush()
    reset, crossed = receiver.events()[3:]
    assert reset["event"] == "budget_reset" and reset["previous_window_start"] == first_window
    assert reset["window_start"] > first_window and reset["previous_spend"] == pytest.approx(
        6 * manager.get_current_cost("probe")
    )
    assert (crossed["event"], crossed["threshold"], crossed["window_start"]) == (
        "threshold_crossed",
        80.0,
        reset["window_start"],
    )
    guard.alerts.close()


@pytest.mark.parametrize("down", ["port closed", "answers 503"])
def test_a_receiver_that_is_down_gets_the_events_in_order_when_it_comes_back(
    manager: BudgetManager, register: Register, down: str
) -> None:
    receiver = Receiver()
    if down == "answers 503":
        receiver.status = 503
        receiver.start()
    guard = alerting(manager, register, receiver.url)
    assert guard.alerts is not None
    started = time.monotonic()
    spend_to_alerts(manager)  # every call goes through while the receiver is down
    calls_took = time.monotonic() - started
    wait_until(lambda: guard.alerts is not None and guard.alerts.sender.pending() == 3)
    if down == "answers 503":
        wait_until(lambda: receiver.answered.count(503) >= 2)  # retried
        receiver.status = 200
    else:
        receiver.start()
    try:
        wait_until(lambda: len(receiver.events()) >= 3)
        assert kinds(receiver) == EXPECTED
        # the receiver has the last event a moment before the sender counts its answer
        wait_until(lambda: guard.alerts is not None and guard.alerts.sender.sent == 3)
        assert guard.alerts.sender.failed == 0
    finally:
        receiver.stop()
        guard.alerts.close()
    assert calls_took < 60  # nothing waited on the receiver (the backoff alone is seconds)


def test_a_hanging_receiver_never_holds_up_a_call(
    manager: BudgetManager, register: Register, receiver: Receiver
) -> None:
    receiver.gate.clear()  # every request waits, unanswered
    guard = alerting(manager, register, receiver.url)
    assert guard.alerts is not None
    guard.alerts.sender.timeout = 120.0  # no retry while the test holds the request
    spend_to_alerts(manager)
    wait_until(lambda: receiver.waiting == 1)  # the first event is stuck in the receiver
    ask("probe")  # and calls go on, at once
    assert receiver.waiting == 1 and not receiver.received
    receiver.gate.set()
    wait_until(lambda: len(receiver.events()) >= 3)
    assert kinds(receiver) == EXPECTED
    guard.alerts.close()


def test_alerts_for_a_team_a_user_belongs_to(manager: BudgetManager, register: Register, receiver: Receiver) -> None:
    guard = alerting(manager, register, receiver.url, alert_thresholds=[50])
    cost = call_cost(manager)
    manager.store.set_budget("team:red", 3.5 * cost)
    manager.store.set_budget("alice", 100 * cost, fields={"team": "red"})
    for _ in range(2):
        ask("alice")
    wait_until(lambda: len(receiver.events()) >= 1)
    assert guard.alerts is not None and guard.alerts.flush()
    [event] = receiver.events()
    assert (event["subject"], event["entity_type"], event["entity_id"], event["threshold"]) == (
        "team:red",
        "team",
        "red",
        50.0,
    )
    guard.alerts.close()


def test_the_older_alert_threshold_still_calls_on_alert(
    manager: BudgetManager, register: Register, receiver: Receiver
) -> None:
    seen: list[str] = []
    guard = alerting(manager, register, receiver.url, alert_threshold=0.5, on_alert=lambda user, *_: seen.append(user))
    spend_to_alerts(manager)
    wait_until(lambda: seen == ["alice"] and len(receiver.events()) >= 3)
    assert guard.alerts is not None
    guard.alerts.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alert_webhook": "ftp://hooks.example/x"}, "alert_webhook.*ftp://hooks.example/x"),
        ({"alert_webhook": "hooks.example/x"}, "alert_webhook.*hooks.example/x"),
        ({"alert_webhook": "http:///no-host"}, "alert_webhook"),
        ({"alert_webhook": "http://h:port/x"}, "alert_webhook"),
        ({"alert_webhook": 5}, "alert_webhook"),
        ({"alert_webhook": "http://h", "alert_thresholds": [0]}, r"alert_thresholds.*\(0, 100\]"),
        ({"alert_webhook": "http://h", "alert_thresholds": [101]}, "alert_thresholds"),
        ({"alert_webhook": "http://h", "alert_thresholds": ["80"]}, "alert_thresholds"),
        ({"alert_webhook": "http://h", "alert_thresholds": [True]}, "alert_thresholds"),
        ({"alert_webhook": "http://h", "alert_thresholds": range(1, 13)}, "at most 10"),
        ({"alert_webhook": "http://h", "alert_secret": " "}, "alert_secret"),
        ({"alert_secret": "s"}, "need alert_webhook"),
    ],
)
def test_bad_alert_options_are_refused_before_the_store_is_opened(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BudgetGuard(tmp_path / "b.json", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "b.json").exists()


def test_thresholds_are_deduplicated_and_sorted(tmp_path: Path) -> None:
    guard = BudgetGuard(tmp_path / "b.json", alert_webhook="https://hooks.example/x", alert_thresholds=(95, 80, 95.0))
    assert guard.alerts is not None and guard.alerts.tracker.thresholds == (80.0, 95.0)
    assert BudgetGuard(tmp_path / "b.json").alerts is None
    guard.alerts.close()
    guard.store.close()
