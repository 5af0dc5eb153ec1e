"""One suite, every store: the same cases run on each entry of conftest.STORE_FIXTURES.

Time is controlled through ``store.clock`` (a callable giving seconds since the epoch),
which every store honours, so no test sleeps to cross a window or a lease.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from litellm_budget_plugin import BudgetExceededError, ConfigurationError, UnknownUserError
from litellm_budget_plugin.stores import BudgetStore, FileStore

T0 = 1_800_000_000.0


def at(store: BudgetStore, now: float) -> BudgetStore:
    store.clock = lambda: now  # type: ignore[attr-defined]
    return store


def test_set_budget_then_read(store: BudgetStore) -> None:
    at(store, T0)
    record = store.set_budget("alice", 10.0, "daily")
    assert record["total_budget"] == 10.0
    assert record["duration"] == 1.0
    got = store.get("alice")
    assert got is not None and got["current_cost"] == 0.0 and got["created_at"] == T0
    assert store.get("bob") is None
    assert list(store.all()) == ["alice"]


def test_charge_accumulates_per_model(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0)
    store.charge("alice", 0.25, "gpt-4o-mini")
    record = store.charge("alice", 0.5, "gpt-4o")
    assert record["current_cost"] == pytest.approx(0.75)
    assert record["model_cost"] == {"gpt-4o-mini": 0.25, "gpt-4o": 0.5}


def test_charge_with_same_call_id_applies_once(store: BudgetStore) -> None:
    store.set_budget("alice", 10.0)
    store.charge("alice", 1.0, "m", call_id="c1")
    store.charge("alice", 1.0, "m", call_id="c1")
    assert store.get("alice")["current_cost"] == 1.0  # type: ignore[index]


def test_charge_later_is_seen_by_the_next_operation_and_applied_once(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    seen: list[float] = []
    store.charge_later("alice", 0.25, "m", call_id="c1", then=lambda record: seen.append(record["current_cost"]))
    store.charge_later("alice", 0.25, "m", call_id="c1")  # the same call again: not charged twice
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c2", 0.8, 60)  # the charge counts before the next reservation
    assert store.get("alice")["current_cost"] == 0.25  # type: ignore[index]
    assert seen == [0.25]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_charge_later_refuses_bad_costs_at_once(store: BudgetStore, bad: float) -> None:
    store.set_budget("alice", 1.0)
    with pytest.raises(ConfigurationError, match="cost"):
        store.charge_later("alice", bad, "m", call_id="c1")
    assert store.get("alice")["current_cost"] == 0.0  # type: ignore[index]


def test_charge_unknown_user_needs_a_default(store: BudgetStore) -> None:
    with pytest.raises(UnknownUserError):
        store.charge("ghost", 1.0, "m")
    assert store.get("ghost") is None
    record = store.charge("ghost", 1.0, "m", default={"total_budget": None, "duration": None})
    assert record["total_budget"] is None and record["current_cost"] == 1.0


def test_window_rolls_lazily_at_fixed_boundaries(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 10.0, "1h")
    store.charge("alice", 4.0, "m")
    at(store, T0 + 3599)
    assert store.get("alice")["current_cost"] == 4.0  # type: ignore[index]
    at(store, T0 + 3600 * 2.5)
    record = store.get("alice")
    assert record is not None and record["current_cost"] == 0.0
    assert record["last_updated_at"] == T0 + 7200  # start + k x duration, not the read time
    store.charge("alice", 1.0, "m")
    assert store.get("alice")["current_cost"] == 1.0  # type: ignore[index]


def test_strict_reservation_refuses_what_does_not_fit(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.5, "m")
    store.reserve("alice", "c1", 0.3, ttl=60)
    with pytest.raises(BudgetExceededError) as info:
        store.reserve("alice", "c2", 0.3, ttl=60)
    assert (info.value.user, info.value.spend, info.value.budget) == ("alice", 0.5, 1.0)
    assert info.value.estimate == 0.3 and info.value.reserved == pytest.approx(0.3)
    assert "c2" not in store.get("alice").get("reservations", {})  # type: ignore[union-attr]


def test_soft_reservation_admits_while_under_budget(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.5, "m")
    store.reserve("alice", "c1", 0.4, ttl=60, mode="soft")  # 0.5 < 1
    store.reserve("alice", "c2", 0.4, ttl=60, mode="soft")  # 0.5 + 0.4 < 1
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c3", 0.01, ttl=60, mode="soft")  # 0.5 + 0.8 >= 1


def test_settle_charges_actual_and_frees_hold(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.reserve("alice", "c1", 0.9, ttl=60)
    assert store.settle("c1", 0.1, "m") is True
    assert store.settle("c1", 0.1, "m") is False  # already applied
    record = store.get("alice")
    assert record is not None and record["current_cost"] == pytest.approx(0.1)
    assert not record.get("reservations")
    store.reserve("alice", "c2", 0.9, ttl=60)  # the hold of c1 is gone


def test_release_frees_hold_without_charge(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.reserve("alice", "c1", 0.9, ttl=60)
    assert store.release("c1") is True
    assert store.release("c1") is False
    assert store.get("alice")["current_cost"] == 0.0  # type: ignore[index]
    store.reserve("alice", "c2", 1.0, ttl=60)


def test_expired_reservation_stops_counting(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 1.0)
    store.reserve("alice", "c1", 0.9, ttl=30)
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c2", 0.9, ttl=30)
    at(store, T0 + 31)
    store.reserve("alice", "c2", 0.9, ttl=30)


def test_settle_after_lease_expired_still_charges_with_user(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 1.0)
    store.reserve("alice", "c1", 0.5, ttl=10)
    at(store, T0 + 100)
    assert store.settle("c1", 0.2, "m", user="alice") is True
    assert store.get("alice")["current_cost"] == pytest.approx(0.2)  # type: ignore[index]


def test_settle_after_a_hold_expired_answers_as_the_file_store_does(store: BudgetStore, tmp_path: Path) -> None:
    """By call id alone, an expired hold nobody wrote over is still found and charged; once a
    write of the record dropped it, nothing finds it. Every store answers as the file store."""
    (tmp_path / "reference").mkdir()
    reference = FileStore(tmp_path / "reference" / "user_cost.json")
    answers = []
    for each in (reference, store):
        at(each, T0)
        each.set_budget("alice", 1.0, fields={"team": "red"})
        each.set_budget("team:red", 1.0)
        each.reserve("alice", "c1", 0.5, ttl=10)
        each.reserve("alice", "c2", 0.25, ttl=10)
        at(each, T0 + 100)
        first = each.settle("c1", 0.2, "m")
        then = (each.settle("c2", 0.1, "m"), each.release("c2"), each.settle("c2", 0.1, "m", user="alice"))
        answers.append((first, then, *(each.get(key)["current_cost"] for key in ("alice", "team:red"))))  # type: ignore[index]
    reference.close()
    assert answers[1] == answers[0]
    assert answers[0] == (True, (False, False, True), pytest.approx(0.3), pytest.approx(0.3))


def test_reset_keeps_budget_and_holds(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.7, "m")
    store.reserve("alice", "c1", 0.2, ttl=60)
    record = store.reset("alice")
    assert record["current_cost"] == 0.0 and record["model_cost"] == {}
    assert "c1" in record.get("reservations", {})
    with pytest.raises(UnknownUserError):
        store.reset("ghost")


def test_set_budget_on_known_user_keeps_spend(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.7, "m")
    record = store.set_budget("alice", 5.0, "weekly")
    assert record["current_cost"] == pytest.approx(0.7) and record["total_budget"] == 5.0


def test_put_and_delete(store: BudgetStore) -> None:
    store.put("bob", {"total_budget": 3, "current_cost": 1})  # type: ignore[typeddict-item]
    assert store.get("bob")["current_cost"] == 1.0  # type: ignore[index]
    assert store.delete("bob") is True
    assert store.delete("bob") is False
    assert store.get("bob") is None


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "1", True])
def test_bad_amounts_change_nothing(store: BudgetStore, bad: object) -> None:
    store.set_budget("alice", 1.0)
    with pytest.raises(ConfigurationError):
        store.charge("alice", bad, "m")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        store.set_budget("alice", bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        store.reserve("alice", "c1", bad, ttl=60)  # type: ignore[arg-type]
    record = store.get("alice")
    assert record is not None and record["current_cost"] == 0.0 and record["total_budget"] == 1.0
    assert not record.get("reservations")


@pytest.mark.parametrize("bad", ["", "   ", None, 42])
def test_bad_user_ids_are_refused(store: BudgetStore, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="user id"):
        store.set_budget(bad, 1.0)  # type: ignore[arg-type]
    assert store.all() == {}


def test_unknown_duration_is_refused(store: BudgetStore) -> None:
    with pytest.raises(ConfigurationError, match="unknown duration 'fortnightly'"):
        store.set_budget("alice", 1.0, "fortnightly")
    assert store.get("alice") is None


def test_two_handles_see_each_others_changes(store_factory: Callable[[], BudgetStore]) -> None:
    first, second = store_factory(), store_factory()
    first.set_budget("alice", 10.0)
    second.charge("alice", 1.0, "m")
    first.charge("alice", 2.0, "m")
    assert second.get("alice")["current_cost"] == 3.0  # type: ignore[index]
    assert first.settle("unknown-call", 1.0, "m") is False


def test_concurrent_reservations_admit_exactly_what_fits(store: BudgetStore) -> None:
    """100 threads race for a budget that covers 5 holds: exactly 5 get one."""
    store.set_budget("alice", 5.0)
    admitted: list[str] = []
    barrier = threading.Barrier(100)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.reserve("alice", f"call-{i}", 1.0, ttl=60)
            admitted.append(f"call-{i}")
        except BudgetExceededError:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 5
    assert sorted(store.get("alice").get("reservations", {})) == sorted(admitted)  # type: ignore[union-attr]


# --- admit: strict reservations that charge_later or release end -------------------------------


def held(store: BudgetStore, user: str = "alice") -> float:
    record = store.get(user)
    assert record is not None
    return sum(hold["amount"] for hold in record.get("reservations", {}).values())


def test_admit_holds_the_call_for_every_handle_until_charge_later_charges_it_once(
    store_factory: Callable[[], BudgetStore],
) -> None:
    store, other = store_factory(), store_factory()
    store.set_budget("alice", 1.0)

    store.admit("alice", "c1", 0.4, ttl=60)

    assert held(store) >= 0.4
    assert held(other) >= 0.4  # another handle (another process) sees the hold at once
    store.charge_later("alice", 0.25, "m", call_id="c1")
    store.charge_later("alice", 0.25, "m", call_id="c1")  # the same call again: charged once
    record = store.get("alice")
    assert record is not None and record["current_cost"] == pytest.approx(0.25)
    assert record["model_cost"] == {"m": pytest.approx(0.25)}
    store.admit("alice", "c2", 0.75, ttl=60)  # nothing of c1 is held any more: the rest fits
    with pytest.raises(BudgetExceededError):
        store.admit("alice", "c3", 0.01, ttl=60)
    assert other.get("alice")["current_cost"] == pytest.approx(0.25)  # type: ignore[index]


def test_admit_then_release_frees_the_hold_without_a_charge(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.admit("alice", "c1", 0.9, ttl=60)
    with pytest.raises(BudgetExceededError):
        store.admit("alice", "c2", 0.2, ttl=60)

    assert store.release("c1", user="alice") is True

    assert store.release("c1", user="alice") is False
    assert store.release("never-admitted") is False
    store.admit("alice", "c2", 1.0, ttl=60)  # the whole budget is free again
    assert store.get("alice")["current_cost"] == 0.0  # type: ignore[index]


def test_admit_over_budget_is_refused_and_changes_nothing(store_factory: Callable[[], BudgetStore]) -> None:
    store, other = store_factory(), store_factory()
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.5, "m")
    store.admit("alice", "c1", 0.3, ttl=60)
    before = other.get("alice")

    with pytest.raises(BudgetExceededError) as info:
        store.admit("alice", "c2", 0.3, ttl=60)

    assert (info.value.user, info.value.spend, info.value.budget) == ("alice", 0.5, 1.0)
    assert info.value.estimate == 0.3 and info.value.reserved == pytest.approx(0.3)
    assert other.get("alice") == before
    with pytest.raises(BudgetExceededError):  # refusing once did not hold anything for it
        other.admit("alice", "c3", 0.21, ttl=60)
    other.admit("alice", "c3", 0.2, ttl=60)


def test_admit_for_an_unknown_user_needs_a_default(store: BudgetStore) -> None:
    with pytest.raises(UnknownUserError):
        store.admit("ghost", "c1", 0.1, ttl=60)
    assert store.get("ghost") is None
    store.admit("ghost", "c1", 0.1, ttl=60, default={"total_budget": 1.0, "duration": None})
    record = store.get("ghost")
    assert record is not None and record["total_budget"] == 1.0
    assert sum(hold["amount"] for hold in record.get("reservations", {}).values()) >= 0.1


@pytest.mark.parametrize(
    ("call_id", "amount", "ttl", "problem"),
    [
        ("c1", -0.1, 60, "amount"),
        ("c1", math.nan, 60, "amount"),
        ("", 0.1, 60, "call id"),
        ("c1", 0.1, 0, "ttl"),
        ("c1", 0.1, -1, "ttl"),
    ],
)
def test_admit_refuses_bad_input_and_changes_nothing(
    store: BudgetStore, call_id: str, amount: float, ttl: float, problem: str
) -> None:
    store.set_budget("alice", 1.0)
    before = store.get("alice")
    with pytest.raises(ConfigurationError, match=problem):
        store.admit("alice", call_id, amount, ttl=ttl)
    assert store.get("alice") == before


def test_settle_by_call_id_ends_an_admitted_call(store_factory: Callable[[], BudgetStore]) -> None:
    store, other = store_factory(), store_factory()
    store.set_budget("alice", 1.0)
    store.admit("alice", "c1", 0.4, ttl=60)
    store.admit("alice", "c2", 0.4, ttl=60)

    assert store.settle("c1", 0.1, "m") is True  # found by its call id alone

    assert store.settle("c1", 0.1, "m") is False  # charged once
    assert other.get("alice")["current_cost"] == pytest.approx(0.1)  # type: ignore[index]
    assert 0.4 <= held(other) <= 0.5 + 1e-9  # c2 (with a lease's spare of 0.1, on a file); c1 gone
    store.admit("alice", "c3", 0.5, ttl=60)  # 0.1 spent + 0.4 held + 0.5 fits exactly


# --- at_least: a call holds what is left when its whole amount does not fit -----------------


def hold_of(record: object, call_id: str) -> float:
    assert isinstance(record, dict)
    return float(record["reservations"][call_id]["amount"])


def test_reserve_at_least_holds_the_amount_when_it_fits(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    record = store.reserve("alice", "c1", 0.4, ttl=60, at_least=0.1)
    assert hold_of(record, "c1") == 0.4


def test_reserve_at_least_holds_what_is_left_when_the_amount_does_not_fit(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.5, "m")
    store.reserve("alice", "c1", 0.25, ttl=60)
    record = store.reserve("alice", "c2", 0.9, ttl=60, at_least=0.1)
    assert hold_of(record, "c2") == pytest.approx(0.25)
    assert hold_of(store.get("alice"), "c2") == hold_of(record, "c2")  # what every handle sees
    with pytest.raises(BudgetExceededError):  # nothing is left now
        store.reserve("alice", "c3", 0.9, ttl=60, at_least=1e-9)


def test_reserve_at_least_refuses_when_not_even_that_fits_and_changes_nothing(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.8, "m")
    before = store.get("alice")
    with pytest.raises(BudgetExceededError) as info:
        store.reserve("alice", "c1", 0.9, ttl=60, at_least=0.21)
    assert (info.value.spend, info.value.budget, info.value.estimate) == (0.8, 1.0, 0.9)
    assert store.get("alice") == before


def test_soft_reserve_at_least_holds_what_is_left_but_never_less_than_at_least(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.7, "m")
    assert hold_of(store.reserve("alice", "c1", 0.2, ttl=60, mode="soft", at_least=0.1), "c1") == 0.2
    # 0.1 is left: held in full, though more was asked
    assert hold_of(store.reserve("alice", "c2", 0.5, ttl=60, mode="soft", at_least=0.05), "c2") == pytest.approx(0.1)
    # spend and holds reach the budget (0.7 + 0.2 + 0.1): refused, as without at_least
    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "c3", 0.5, ttl=60, mode="soft", at_least=0.05)
    store.release("c2", user="alice")  # 0.1 left again, less than at_least: soft admits at_least
    assert hold_of(store.reserve("alice", "c4", 0.5, ttl=60, mode="soft", at_least=0.15), "c4") == 0.15


def test_admit_at_least_returns_what_it_holds(store_factory: Callable[[], BudgetStore]) -> None:
    store, other = store_factory(), store_factory()
    store.set_budget("alice", 1.0)
    assert store.admit("alice", "c1", 0.5, ttl=60, at_least=0.1) == 0.5
    assert other.admit("alice", "c2", 0.9, ttl=60, at_least=0.1) == pytest.approx(0.5)
    with pytest.raises(BudgetExceededError):
        store.admit("alice", "c3", 0.9, ttl=60, at_least=0.01)
    assert held(other) == pytest.approx(1.0)
    store.charge_later("alice", 0.2, "m", call_id="c1")  # c1 ends: 0.3 of its hold is free again
    assert store.admit("alice", "c4", 0.9, ttl=60, at_least=0.1) == pytest.approx(0.3)


def test_admit_at_least_refuses_bad_input(store: BudgetStore) -> None:
    store.set_budget("alice", 1.0)
    before = store.get("alice")
    for bad in (-0.1, math.nan, math.inf, "0.1"):
        with pytest.raises(ConfigurationError, match="at_least"):
            store.admit("alice", "c1", 0.5, ttl=60, at_least=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="at_least"):
            store.reserve("alice", "c1", 0.5, ttl=60, at_least=bad)  # type: ignore[arg-type]
    assert store.get("alice") == before


def test_concurrent_admits_at_least_never_hold_more_than_the_budget(store: BudgetStore) -> None:
    """40 threads each ask for 0.3 of a 1.0 budget, taking 0.05 or more: the holds add up to it."""
    store.set_budget("alice", 1.0)
    got: list[float] = []
    barrier = threading.Barrier(40)

    def attempt(i: int) -> None:
        barrier.wait()
        with contextlib.suppress(BudgetExceededError):
            got.append(store.admit("alice", f"call-{i}", 0.3, ttl=60, at_least=0.05))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == pytest.approx(1.0)
    assert all(0.05 <= amount <= 0.3 for amount in got)
    assert sorted(got)[1:] == [0.3] * (len(got) - 1)  # only the last one admitted was cut short
    assert held(store) == pytest.approx(1.0)
