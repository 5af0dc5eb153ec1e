"""Budgets beyond the user's, on every store (conftest.STORE_FIXTURES): teams, tags, more windows,
per-model caps and calendar resets, held and charged in one atomic operation.

Time is the store's clock (``store.clock``), so windows are crossed without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from litellm_budget_plugin import BudgetExceededError, ConfigurationError
from litellm_budget_plugin.stores import BudgetStore
from litellm_budget_plugin.subjects import GLOBAL, MAX_TAGS

PARIS = ZoneInfo("Europe/Paris")
T0 = datetime(2026, 3, 28, 12, 0, tzinfo=PARIS).timestamp()  # the day before Paris moves to summer time


def at(store: BudgetStore, now: float) -> BudgetStore:
    store.clock = lambda: now  # type: ignore[attr-defined]
    return store


def paris(*args: int) -> float:
    return datetime(*args, tzinfo=PARIS).timestamp()  # type: ignore[misc]


def holds(store: BudgetStore, key: str) -> dict[str, float]:
    record = store.get(key)
    assert record is not None, key
    return {call_id: hold["amount"] for call_id, hold in record.get("reservations", {}).items()}


def spend(store: BudgetStore, key: str) -> float:
    record = store.get(key)
    assert record is not None, key
    return record["current_cost"]


def window_spends(store: BudgetStore, key: str) -> list[float]:
    record = store.get(key)
    assert record is not None, key
    return [window["spend"] for window in record.get("windows", [])]


# --- teams and tags ---------------------------------------------------------------------------


def test_a_call_is_held_in_its_user_its_team_and_its_tags_and_charged_to_all(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 5.0, "monthly")
    store.set_budget("tag:search", 3.0)

    store.reserve("alice", "c1", 0.5, ttl=60, subjects=["tag:search"])

    assert holds(store, "alice") == {"c1": 0.5}
    assert holds(store, "team:red") == {"c1": 0.5}
    assert holds(store, "tag:search") == {"c1": 0.5}
    assert store.settle("c1", 0.2, "gpt-4o-mini") is True  # by call id alone: every hold is found
    for key in ("alice", "team:red", "tag:search"):
        assert spend(store, key) == pytest.approx(0.2)
        assert holds(store, key) == {}
    assert store.settle("c1", 0.2, "gpt-4o-mini") is False  # charged once


def test_a_refusal_names_the_budget_that_refused_and_holds_nothing_anywhere(
    store_factory: Callable[[], BudgetStore],
) -> None:
    store, other = at(store_factory(), T0), store_factory()
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 1.0)
    store.set_budget("tag:search", 10.0)
    store.charge("team:red", 0.8, "m")
    before = other.all()

    with pytest.raises(BudgetExceededError) as info:
        store.admit("alice", "c1", 0.3, ttl=60, subjects=["tag:search"])

    assert info.value.subject == "team:red"
    assert (info.value.spend, info.value.budget, info.value.estimate) == (pytest.approx(0.8), 1.0, 0.3)
    assert "team 'red'" in str(info.value)
    assert other.all() == before  # no hold on alice, none on the tag
    store.admit("alice", "c2", 0.2, ttl=60, subjects=["tag:search"])  # what fits the team still goes


def test_charging_a_user_charges_the_team_its_record_names(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 50.0)

    store.charge("alice", 0.25, "gpt-4o")  # LiteLLM's update_cost path: no hold

    assert spend(store, "team:red") == pytest.approx(0.25)
    assert store.get("team:red")["model_cost"] == {"gpt-4o": pytest.approx(0.25)}  # type: ignore[index]


def test_teams_without_a_budget_are_tracked_and_tags_without_one_are_left_out(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 1.0, fields={"team": "blue"})

    store.reserve("alice", "c1", 0.4, ttl=60, subjects=["tag:new"])
    assert store.get("team:blue") is None and store.get("tag:new") is None
    store.settle("c1", 0.1, "m")

    record = store.get("team:blue")
    assert record is not None and record["total_budget"] is None
    assert record["current_cost"] == pytest.approx(0.1)
    assert store.get("tag:new") is None  # apps tag calls for their logs: no record per tag


def test_admit_and_charge_later_with_subjects_charge_each_budget_once(
    store_factory: Callable[[], BudgetStore],
) -> None:
    store, other = store_factory(), store_factory()
    store.set_budget("alice", 1.0)
    store.set_budget("team:red", 1.0)

    held = store.admit("alice", "c1", 0.4, ttl=60, subjects=["team:red"])

    assert held == 0.4
    assert sum(holds(other, "team:red").values()) >= 0.4  # another process sees the team's hold
    store.charge_later("alice", 0.3, "m", call_id="c1", held=0.4, subjects=["team:red"])
    store.charge_later("alice", 0.3, "m", call_id="c1", held=0.4, subjects=["team:red"])
    assert spend(store, "team:red") == pytest.approx(0.3)
    assert spend(other, "alice") == pytest.approx(0.3)
    store.admit("alice", "c2", 0.7, ttl=60, subjects=["team:red"])  # c1's hold is gone from both


def test_release_drops_every_hold_of_the_call(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0, fields={"team": "red"})
    store.set_budget("team:red", 1.0)
    store.reserve("alice", "c1", 0.9, ttl=60)

    assert store.release("c1") is True

    assert holds(store, "alice") == {} and holds(store, "team:red") == {}
    assert spend(store, "team:red") == 0


def test_at_least_holds_the_least_any_budget_has_left(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.set_budget("team:red", 0.3)

    record = store.reserve("alice", "c1", 0.5, ttl=60, at_least=0.1, subjects=["team:red"])

    assert record["reservations"]["c1"]["amount"] == pytest.approx(0.3)
    assert holds(store, "team:red") == {"c1": pytest.approx(0.3)}


def test_the_global_budget_keeps_litellms_soft_rule(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0)
    store.set_budget(GLOBAL, 1.0)
    store.charge(GLOBAL, 0.9, "m")

    store.reserve("alice", "c1", 0.5, ttl=60, subjects=[GLOBAL])  # under budget: admitted (soft)
    with pytest.raises(BudgetExceededError) as info:
        store.reserve("alice", "c2", 0.01, ttl=60, subjects=[GLOBAL])

    assert info.value.subject == GLOBAL


def test_concurrent_calls_for_four_users_of_one_team_admit_exactly_what_the_team_covers(
    store_factory: Callable[[], BudgetStore],
) -> None:
    first = store_factory()
    for user in ("u0", "u1", "u2", "u3"):
        first.set_budget(user, 100.0, fields={"team": "red"})
    first.set_budget("team:red", 1.0)  # ten calls of 0.1
    handles = [store_factory() for _ in range(4)]
    admitted: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(32, timeout=60)

    def call(i: int) -> None:
        store = handles[i % 4]
        start.wait()
        try:
            store.admit(f"u{i % 4}", f"call-{i}", 0.1, ttl=60)
        except BudgetExceededError:
            return
        with lock:
            admitted.append(f"call-{i}")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(admitted) == 10
    for call_id in admitted:  # by the handle that admitted it, as a guard does (a file store's lease holds it)
        handles[int(call_id.split("-")[1]) % 4].settle(call_id, 0.1, "m")
    assert spend(first, "team:red") == pytest.approx(1.0)
    for key in ("u0", "u1", "u2", "u3", "team:red"):
        assert holds(first, key) == {}


# --- more windows, model caps, calendar resets ------------------------------------------------


def test_a_call_must_fit_every_window_and_each_resets_on_its_own(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 5.0, "daily", fields={"windows": [{"budget": 6.0, "duration": "monthly"}]})
    store.charge("alice", 4.0, "m")

    at(store, T0 + 86_400)  # a new day: the daily window is empty, the monthly one is not
    with pytest.raises(BudgetExceededError) as info:
        store.reserve("alice", "c1", 2.5, ttl=60)
    assert info.value.subject == "alice" and info.value.window == "$6 monthly"
    store.reserve("alice", "c2", 2.0, ttl=60)

    record = store.get("alice")
    assert record is not None and record["current_cost"] == 0 and window_spends(store, "alice") == [4.0]


def test_a_model_cap_counts_and_refuses_only_its_model(store: BudgetStore) -> None:
    at(store, T0)
    cap = {"budget": 1.0, "duration": "daily", "model": "gpt-4o"}
    store.set_budget("alice", 10.0, fields={"windows": [cap]})
    store.charge("alice", 0.75, "gpt-4o")
    store.charge("alice", 2.0, "gpt-4o-mini")
    assert window_spends(store, "alice") == [pytest.approx(0.75)]

    with pytest.raises(BudgetExceededError) as info:
        store.reserve("alice", "c1", 0.5, ttl=60, model="gpt-4o")
    assert info.value.window == "$1 daily on gpt-4o"
    store.reserve("alice", "c2", 0.5, ttl=60, model="gpt-4o-mini")  # other models are not capped
    store.reserve("alice", "c3", 0.25, ttl=60, model="gpt-4o")  # what is left of the cap


def test_a_calendar_day_resets_at_local_midnight_and_a_dst_day_lasts_23_hours(store: BudgetStore) -> None:
    at(store, paris(2026, 3, 28, 23, 30))
    store.set_budget("alice", 1.0, "daily", fields={"timezone": "Europe/Paris"})
    store.charge("alice", 0.5, "m")
    at(store, paris(2026, 3, 28, 23, 59))
    assert spend(store, "alice") == 0.5

    at(store, paris(2026, 3, 29, 0, 1))  # local midnight passed: a new day
    record = store.get("alice")
    assert record is not None and record["current_cost"] == 0
    assert record["last_updated_at"] == paris(2026, 3, 29, 0, 0)
    store.charge("alice", 0.25, "m")
    at(store, paris(2026, 3, 29, 23, 59))  # 22 h 58 min later on the clock: the same (23-hour) day
    assert spend(store, "alice") == 0.25
    at(store, paris(2026, 3, 30, 0, 0))
    assert spend(store, "alice") == 0


def test_a_calendar_month_resets_on_the_first(store: BudgetStore) -> None:
    at(store, paris(2026, 1, 31, 20, 0))
    month = {"budget": 100.0, "duration": "monthly", "timezone": "Europe/Paris"}
    store.set_budget("team:red", 5.0, "daily", fields={"windows": [month]})
    store.charge("team:red", 3.0, "m")

    at(store, paris(2026, 2, 1, 0, 0))
    assert window_spends(store, "team:red") == [0]
    at(store, paris(2026, 2, 28, 23, 0))  # rolling 28-day windows would have reset by now; this one has not
    store.charge("team:red", 1.0, "m")
    assert window_spends(store, "team:red") == [1.0]


def test_setting_windows_again_keeps_what_they_spent(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", None, fields={"windows": [{"budget": 5.0, "duration": "daily"}]})
    store.charge("alice", 2.0, "m")

    store.set_fields("alice", {"windows": [{"budget": 8.0, "duration": "daily"}]})

    record = store.get("alice")
    assert record is not None and record["windows"][0]["budget"] == 8.0
    assert window_spends(store, "alice") == [2.0]


# --- what a review found ------------------------------------------------------------------------


def test_a_call_is_charged_to_the_team_that_held_it_when_the_users_team_changes_meanwhile(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 10.0)
    store.set_budget("team:blue", 10.0)
    store.reserve("alice", "c1", 1.0, ttl=60)

    store.set_fields("alice", {"team": "blue"})
    store.settle("c1", 0.5, "m")

    assert spend(store, "team:red") == pytest.approx(0.5) and holds(store, "team:red") == {}
    assert spend(store, "team:blue") == 0


def test_a_repeated_charge_is_not_applied_again_to_a_busy_team(store: BudgetStore) -> None:
    for user in ("a", "b"):
        store.set_budget(user, 1e6, fields={"team": "red"})
    store.charge("a", 1.0, "m", call_id="c0")
    for n in range(300):  # more calls than any record remembers: the team's list would be pruned
        store.charge("b", 0.001, "m", call_id=f"b{n}")

    store.charge("a", 1.0, "m", call_id="c0")  # the same call again (a retried callback)

    assert spend(store, "a") == 1.0
    assert spend(store, "team:red") == pytest.approx(1.3)


def test_a_model_cap_counts_the_model_under_any_provider_prefix_and_calls_of_unknown_model(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget(
        "alice", 10.0, fields={"windows": [{"budget": 1.0, "duration": "daily", "model": "openai/gpt-4o"}]}
    )
    store.charge("alice", 0.75, "gpt-4o")  # litellm charges the call without its provider

    assert window_spends(store, "alice") == [pytest.approx(0.75)]
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c1", 0.5, ttl=60, model="gpt-4o")
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c2", 0.5, ttl=60)  # no model given: every cap counts it


def test_a_window_given_a_timezone_keeps_what_it_spent(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", None, fields={"windows": [{"budget": 5.0, "duration": "daily"}]})
    store.charge("alice", 4.0, "m")

    store.set_fields("alice", {"windows": [{"budget": 5.0, "duration": "daily", "timezone": "Europe/Paris"}]})

    assert window_spends(store, "alice") == [4.0]
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c1", 4.0, ttl=60)


def test_reserving_a_call_again_for_other_tags_drops_the_holds_it_leaves(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0)
    store.set_budget("tag:a", 10.0)
    store.set_budget("tag:b", 10.0)
    store.reserve("alice", "c2", 1.0, ttl=60, subjects=["tag:a"])

    store.reserve("alice", "c2", 1.0, ttl=60, subjects=["tag:b"])

    assert holds(store, "tag:a") == {} and holds(store, "tag:b") == {"c2": 1.0}
    store.release("c2")
    assert holds(store, "tag:b") == {} and holds(store, "alice") == {}


# --- bad input: a clear error, nothing changed ------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "names"),
    [
        (lambda s: s.set_budget("foo:bar", 1.0), "unknown subject kind 'foo'"),
        (lambda s: s.set_budget("team:", 1.0), "names no team"),
        (lambda s: s.reserve("alice", "c9", 0.1, ttl=60, subjects=["foo:bar"]), "unknown subject kind"),
        (lambda s: s.reserve("alice", "c9", 0.1, ttl=60, subjects=[7]), "budget keys \\(strings\\)"),
        (lambda s: s.reserve("alice", "c9", 0.1, ttl=60, subjects="team:red"), "list of budget keys"),
        (
            lambda s: s.reserve("alice", "c9", 0.1, ttl=60, subjects=[f"tag:{i}" for i in range(MAX_TAGS + 3)]),
            "at most",
        ),
        (lambda s: s.set_fields("alice", {"timezone": "Mars/Olympus"}), "'Mars/Olympus' does not exist"),
        (lambda s: s.set_fields("alice", {"timezone": "Europe/Paris", "duration": "10d"}), "day, week, month"),
        (lambda s: s.set_fields("alice", {"windows": [{"budget": 1.0, "duration": "daily"}]}), "overlaps"),
        (
            lambda s: s.set_fields("alice", {"windows": [{"budget": 1.0, "duration": "7d"}] * 2}),
            "two windows of the same length",
        ),
        (lambda s: s.set_fields("alice", {"windows": [{"budget": -1.0, "duration": "7d"}]}), "negative"),
        (lambda s: s.set_fields("alice", {"windows": [{"budget": 1, "every": "day"}]}), "unknown fields"),
        (lambda s: s.set_fields("alice", {"windows": {"budget": 1}}), "must be a list"),
        (lambda s: s.set_fields("alice", {"team": ""}), "team"),
        (lambda s: s.set_fields("alice", {"team": 5}), "must be a string"),
        (lambda s: s.set_fields("alice", {"team": "team:team:"}), "team must name a team"),
        (lambda s: s.reserve("alice", "c9", 0.1, ttl=60, subjects=["bob"]), "not users"),
        (lambda s: s.reserve("alice", "c9", 0.1, ttl=60, subjects=["team:a", "team:b"]), "at most 1 team"),
        (lambda s: s.set_fields("team:red", {"team": "blue"}), "only a user belongs to a team"),
    ],
)
def test_bad_subjects_and_windows_are_refused_and_change_nothing(
    store: BudgetStore, operation: Callable[[BudgetStore], object], names: str
) -> None:
    at(store, T0)
    store.set_budget("alice", 1.0, "daily", fields={"team": "red"})
    store.set_budget("team:red", 1.0)
    before = store.all()

    with pytest.raises(ConfigurationError, match=names):
        operation(store)

    assert store.all() == before
