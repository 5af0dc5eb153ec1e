"""The ledger on every store (conftest.STORE_FIXTURES): each charge applied is one entry, in the
same operation as the charge, kept across resets, read back by period."""

from __future__ import annotations

import pytest

from litellm_budget_plugin.ledger import LedgerEntry, Usage
from litellm_budget_plugin.stores import BudgetStore

T0 = 1_796_000_000.0
DAY = 86400.0


def at(store: BudgetStore, now: float) -> BudgetStore:
    store.clock = lambda: now  # type: ignore[attr-defined]
    return store


def test_charges_are_recorded_once_with_budgets_tokens_and_tags(store: BudgetStore) -> None:
    at(store, T0)
    store.set_budget("team:red", 100.0)
    store.set_budget("tag:search", 100.0)
    store.set_budget("alice", 10.0, "daily", fields={"team": "red"})
    tags = ("tag:search", "tag:untracked")
    store.charge("alice", 0.5, "gpt-4o", call_id="c1", subjects=list(tags), usage=Usage(120, 30, tags))
    store.charge("alice", 0.5, "gpt-4o", call_id="c1", subjects=list(tags), usage=Usage(120, 30, tags))
    at(store, T0 + 10)
    store.charge_later("alice", 0.25, "gpt-4o-mini", call_id="c2", usage=Usage(5, 6))
    store.reserve("alice", "c3", 1.0, 60, subjects=["tag:search"])
    assert store.settle("c3", 0.125, "gpt-4o", usage=Usage(7, 8, ("tag:search",)))
    store.charge("bob", 0.0625, "m", default={"total_budget": 1.0, "duration": None})  # no usage, no call id

    entries = list(store.ledger())
    assert [item._replace(call_id=None) if item.user == "bob" else item for item in entries] == [
        LedgerEntry(T0, "alice", ("team:red", "tag:search", "tag:untracked"), "gpt-4o", 120, 30, 0.5, "c1"),
        LedgerEntry(T0 + 10, "alice", ("team:red",), "gpt-4o-mini", 5, 6, 0.25, "c2"),
        LedgerEntry(T0 + 10, "alice", ("team:red", "tag:search"), "gpt-4o", 7, 8, 0.125, "c3"),
        LedgerEntry(T0 + 10, "bob", (), "m", 0, 0, 0.0625, None),
    ]


def test_history_survives_window_rolls_and_resets(store: BudgetStore) -> None:
    at(store, T0).set_budget("alice", 10.0, "daily")
    store.charge("alice", 2.0, "m", call_id="day-1")
    at(store, T0 + DAY).charge("alice", 3.0, "m", call_id="day-2")
    store.reset("alice")
    store.delete("alice")
    assert [(item.time, item.cost) for item in store.ledger()] == [(T0, 2.0), (T0 + DAY, 3.0)]
    assert [item.cost for item in store.ledger(since=T0, until=T0 + DAY)] == [2.0]
    assert [item.cost for item in store.ledger(since=T0 + 1)] == [3.0]
    assert list(store.ledger(since=T0 + 2 * DAY)) == []


def test_a_refused_charge_records_nothing(store: BudgetStore) -> None:
    at(store, T0).set_budget("alice", 10.0)
    with pytest.raises(Exception, match="cost"):
        store.charge("alice", float("nan"), "m", call_id="bad")
    assert list(store.ledger()) == []
