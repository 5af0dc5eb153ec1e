"""Which alert events a budget's records call for: pure functions of records and now."""

from __future__ import annotations

import pytest

from litellm_budget_plugin import budget
from litellm_budget_plugin.alert_events import AlertTracker, check_thresholds, windows_of
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.errors import BudgetRefusal, ConfigurationError

DAY = 86_400.0
T0 = 1_700_000_000.0


def spent(record: UserRecord, cost: float, now: float, model: str = "gpt-4o-mini") -> UserRecord:
    return budget.charge_many(record, [(cost, model, None, None)], now)


def kinds(events: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["event"], e["window"], e.get("threshold")) for e in events]


def test_each_threshold_once_per_window_and_again_in_the_next() -> None:
    tracker = AlertTracker((80, 95))
    record = budget.new_record(10.0, "daily", T0)
    record = spent(record, 7.9, T0 + 1)
    assert tracker.charged("alice", record, T0 + 1) == []
    record = spent(record, 0.1, T0 + 2)  # 80% exactly
    assert kinds(tracker.charged("alice", record, T0 + 2)) == [("threshold_crossed", "", 80.0)]
    record = spent(record, 2.0, T0 + 3)  # past 95 and 100
    assert kinds(tracker.charged("alice", record, T0 + 3)) == [("threshold_crossed", "", 95.0)]
    assert tracker.charged("alice", record, T0 + 4) == []
    record = spent(record, 9.0, T0 + DAY + 5)  # the next window: 90%
    events = tracker.charged("alice", record, T0 + DAY + 5)
    assert kinds(events) == [("budget_reset", "", None), ("threshold_crossed", "", 80.0)]
    assert events[0]["previous_spend"] == pytest.approx(10.0) and events[0]["previous_window_start"] == T0
    assert events[0]["window_start"] == T0 + DAY and events[0]["window_end"] == T0 + 2 * DAY


def test_a_threshold_is_armed_again_when_spend_falls_below_it() -> None:
    tracker = AlertTracker((50,))
    record = spent(budget.new_record(1.0, None, T0), 0.6, T0)
    assert len(tracker.charged("bob", record, T0)) == 1
    record = budget.reset_spend(record, T0 + 1)  # litellm-budget reset
    assert tracker.charged("bob", record, T0 + 1) == []
    record = spent(record, 0.5, T0 + 2)
    assert kinds(tracker.charged("bob", record, T0 + 2)) == [("threshold_crossed", "", 50.0)]


def test_extra_windows_alert_under_their_own_names() -> None:
    tracker = AlertTracker((80,))
    record = budget.new_record(100.0, "monthly", T0)
    record = budget.with_fields(
        record, budget.check_fields("alice", {"windows": [{"budget": 1.0, "duration": "daily"}]}), T0
    )
    record = spent(record, 0.9, T0 + 1)
    assert kinds(tracker.charged("alice", record, T0 + 1)) == [("threshold_crossed", "$1 daily", 80.0)]
    record = spent(record, 0.9, T0 + DAY + 1)  # the daily window rolled; the monthly did not
    assert kinds(tracker.charged("alice", record, T0 + DAY + 1)) == [
        ("budget_reset", "$1 daily", None),
        ("threshold_crossed", "$1 daily", 80.0),
    ]
    [main, daily] = windows_of(record, T0 + DAY + 1)
    assert (main.label, main.start, main.spend) == ("", T0, pytest.approx(1.8))
    assert (daily.start, daily.end, daily.budget) == (T0 + DAY, T0 + 2 * DAY, 1.0)


def test_budget_exceeded_once_per_window_of_the_refusal() -> None:
    tracker = AlertTracker()
    record = spent(budget.new_record(1.0, "daily", T0), 0.9, T0)
    refusal = BudgetRefusal("team:red", 0.9, 1.0, 0.5)
    [event] = tracker.refused(refusal, record, T0 + 1, project="acme")
    assert (event["event"], event["subject"], event["entity_type"], event["entity_id"]) == (
        "budget_exceeded",
        "team:red",
        "team",
        "red",
    )
    assert event["window_start"] == T0 and event["estimate"] == 0.5 and event["project"] == "acme"
    assert tracker.refused(refusal, record, T0 + 2, project="acme") == []
    assert len(tracker.refused(refusal, record, T0 + 2, project="other")) == 1  # another project's team
    later = budget.current_window(record, T0 + DAY)
    assert kinds(tracker.refused(refusal, later, T0 + DAY)) == [("budget_exceeded", "", None)]  # a fresh tracker key
    assert kinds(tracker.refused(refusal, later, T0 + DAY, project="acme")) == [
        ("budget_reset", "", None),
        ("budget_exceeded", "", None),
    ]


def test_a_denied_user_without_a_budget_alerts_nothing() -> None:
    assert AlertTracker().refused(BudgetRefusal("ghost", 0.0, 0.0, 0.1), None, T0) == []


def test_budgets_without_a_limit_never_alert() -> None:
    tracker = AlertTracker()
    record = spent(budget.new_record(None, "daily", T0), 5.0, T0)
    assert tracker.charged("probe", record, T0) == []
    assert tracker.charged("probe", spent(record, 1.0, T0 + DAY), T0 + DAY) == []


def test_the_tracker_forgets_the_least_recently_seen_budget() -> None:
    tracker = AlertTracker((50,), max_subjects=2)
    record = spent(budget.new_record(1.0, None, T0), 0.6, T0)
    for user in ("a", "b", "a", "c"):  # b is forgotten when c comes
        tracker.charged(user, record, T0)
    assert tracker.charged("a", record, T0) == []
    assert len(tracker.charged("b", record, T0)) == 1


def test_thresholds_checked() -> None:
    assert check_thresholds(80) == (80.0,)
    assert check_thresholds([95, 80, 80.0]) == (80.0, 95.0)
    assert check_thresholds(()) == ()
    for bad in ("80", [0], [100.5], [float("nan")], [None], list(range(1, 12)), object()):
        with pytest.raises(ConfigurationError, match="alert_thresholds"):
            check_thresholds(bad)
