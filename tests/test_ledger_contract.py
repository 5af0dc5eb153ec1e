"""The ledger (issue 14) on every store (conftest.STORE_FIXTURES): an entry for each charge a
store applies, in the same write, and none for a charge it skips.

Time is the store's clock (``store.clock``).
"""

from __future__ import annotations

import pytest

from litellm_budget_plugin import ConfigurationError, UnknownUserError
from litellm_budget_plugin.ledger import LedgerEntry, Usage
from litellm_budget_plugin.stores import BudgetStore

T0 = 1_800_000_000.0  # 2027-01-15 UTC, 08:00
DAY = 86400.0


def at(store: BudgetStore, now: float) -> BudgetStore:
    store.clock = lambda: now  # type: ignore[attr-defined]
    return store


def entries(store: BudgetStore, since: float | None = None, until: float | None = None) -> list[LedgerEntry]:
    return list(store.ledger(since, until))


def test_a_charge_is_recorded_once_with_its_usage(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 10.0)
    assert entries(store) == []
    usage = Usage(120, 30, ("tag:search",))
    store.charge("alice", 0.1 + 0.2, "gpt-4o-mini", call_id="c1", usage=usage)
    store.charge("alice", 0.1 + 0.2, "gpt-4o-mini", call_id="c1", usage=usage)  # charged already: no entry
    store.charge("alice", 0.5, "gpt-4o")  # no usage: no tokens, no tags
    first, second = entries(store)
    assert first == LedgerEntry(T0, "alice", ("tag:search",), "gpt-4o-mini", 120, 30, 0.1 + 0.2, "c1")
    # an HttpStore names a charge without a call id, so that a retry is applied once
    assert second._replace(call_id=None) == LedgerEntry(T0, "alice", (), "gpt-4o", 0, 0, 0.5, None)


def test_a_charge_that_fails_or_changes_nothing_is_not_recorded(store: BudgetStore) -> None:
    at(store, T0)
    with pytest.raises(UnknownUserError):
        store.charge("ghost", 1.0, "m", usage=Usage(1, 1))
    store.set_budget("alice", 1.0)
    store.reserve("alice", "c1", 0.5, ttl=60)
    assert store.release("c1") is True
    assert store.settle("c1", 0.5, "m") is False  # released: nothing to settle
    assert store.settle("nobody", 0.5, "m", usage=Usage(1, 1)) is False
    assert entries(store) == []


def test_settle_records_the_user_its_team_and_its_tags_in_the_order_charged(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 5.0)
    store.set_budget("tag:search", 3.0)
    store.reserve("alice", "c1", 0.5, ttl=60, subjects=["tag:search", "tag:unbudgeted"])
    at(store, T0 + 5)
    usage = Usage(1000, 200, ("tag:unbudgeted", "tag:search", "tag:free", "tag:free"))
    assert store.settle("c1", 0.25, "gpt-4o", usage=usage) is True
    assert store.settle("c1", 0.25, "gpt-4o", usage=usage) is False
    (entry,) = entries(store)
    # the budgets charged first (a tag without a budget is not charged), then the other tags, once each
    assert entry == LedgerEntry(
        T0 + 5, "alice", ("team:red", "tag:search", "tag:unbudgeted", "tag:free"), "gpt-4o", 1000, 200, 0.25, "c1"
    )
    assert entry.teams == ("red",)
    assert entry.tags == ("search", "unbudgeted", "free")


def test_charge_later_is_recorded_once_written(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("bob", 10.0, fields={"team": "blue"})
    store.charge_later("bob", 0.75, "m", call_id="c1", subjects=["tag:x"], usage=Usage(5, 6, ("tag:x",)))
    store.charge_later("bob", 0.75, "m", call_id="c1", usage=Usage(5, 6))  # the same call: one entry
    assert entries(store) == [LedgerEntry(T0, "bob", ("team:blue", "tag:x"), "m", 5, 6, 0.75, "c1")]


def test_a_team_or_tag_charged_on_its_own_is_the_entrys_first_budget(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("tag:batch", None)
    store.charge("tag:batch", 2.0, "m", call_id="b1", usage=Usage(1, 2, ("tag:batch", "tag:nightly")))
    (entry,) = entries(store)
    assert entry == LedgerEntry(T0, "tag:batch", ("tag:nightly",), "m", 1, 2, 2.0, "b1")
    assert entry.tags == ("batch", "nightly")


def test_the_period_includes_since_and_excludes_until(store: BudgetStore) -> None:
    store.set_budget("alice", None)
    times = [T0, T0 + 10, T0 + 10.5, T0 + DAY, T0 + 3 * DAY + 0.25]
    for n, moment in enumerate(times):
        at(store, moment).charge("alice", 1.0, "m", call_id=f"c{n}")

    def period(since: float | None, until: float | None) -> list[float]:
        return [entry.time for entry in entries(store, since, until)]

    assert period(None, None) == times
    assert period(T0 + 10, T0 + DAY) == [T0 + 10, T0 + 10.5]
    assert period(T0 + 10.5, None) == times[2:]
    assert period(None, T0 + 10.5) == times[:2]
    assert period(T0 + 3 * DAY + 0.25, T0 + 3 * DAY + 0.25) == []
    assert period(T0 + DAY + 1, T0 + 3 * DAY) == []
    assert period(T0 + 3 * DAY, T0 + 4 * DAY) == [T0 + 3 * DAY + 0.25]


@pytest.mark.parametrize(("since", "until"), [(T0 + 1, T0), (-1.0, None), (None, float("nan")), ("0", None)])
def test_a_bad_period_is_refused(store: BudgetStore, since: object, until: object) -> None:
    with pytest.raises(ConfigurationError, match="ledger"):
        store.ledger(since, until)  # type: ignore[arg-type]


def test_bad_usage_is_refused_and_charges_nothing(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("alice", 1.0)
    for usage in (Usage(-1, 0), Usage(0, 0, ("search",)), (1, 2)):
        with pytest.raises(ConfigurationError, match="usage"):
            store.charge("alice", 0.5, "m", usage=usage)  # type: ignore[arg-type]
    assert store.get("alice")["current_cost"] == 0.0  # type: ignore[index]
    assert entries(store) == []


def test_history_survives_window_rolls_resets_and_deletes(store: BudgetStore) -> None:
    at(store, T0).set_budget("alice", 10.0, "daily")
    store.charge("alice", 2.0, "m", call_id="day-1")
    at(store, T0 + DAY).charge("alice", 3.0, "m", call_id="day-2")
    store.reset("alice")
    store.delete("alice")
    assert [(item.time, item.cost) for item in entries(store)] == [(T0, 2.0), (T0 + DAY, 3.0)]
    assert [item.cost for item in entries(store, T0 + 1)] == [3.0]
