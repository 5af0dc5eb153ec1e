"""The file store with budgets beyond the user's: every record a call touches (its user, the
user's team, the call's tags, the global budget) changes in one write, or none does.

A second FileStore on the same path stands for another process: it sees only what is in the
files. Writes are counted by the journal's appends (one ``os.write`` each), through a journal
that counts them and otherwise is the store's own.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.errors import BudgetRefusal, StoreCorruptError
from litellm_budget_plugin.stores import _deferred as deferred_module
from litellm_budget_plugin.stores._journal import Journal


class CountingJournal(Journal):
    """The store's journal, counting its appends (each is one write of one or more records)."""

    appends = 0

    def _append(self, lines: bytes) -> None:
        super()._append(lines)
        self.appends += 1


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "user_cost.json"


@pytest.fixture
def open_store(file_store_factory: Callable[[], object], path: Path) -> Callable[[], FileStore]:
    """FileStores on ``path`` (conftest's factory, which closes them), each another process's view."""

    def make() -> FileStore:
        store = file_store_factory()
        assert isinstance(store, FileStore) and store.path == path
        return store

    return make


@pytest.fixture
def quiet_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushers started from now on first wake after a minute: only the test writes."""
    monkeypatch.setattr(deferred_module, "FLUSH_DELAY_SECONDS", 60.0)


def counting(store: FileStore) -> CountingJournal:
    store._journal.__class__ = CountingJournal  # the store's own journal, with one method changed
    assert isinstance(store._journal, CountingJournal)
    return store._journal


def holds(store: FileStore, key: str) -> dict[str, Any]:
    record = store.get(key)
    assert record is not None
    return dict(record.get("reservations", {}))


def spend(store: FileStore, key: str) -> float:
    record = store.get(key)
    assert record is not None
    return record["current_cost"]


def files(path: Path) -> dict[str, bytes]:
    """The store's snapshot and journal as they are on disk."""
    journal = path.with_name(path.name + ".journal")
    return {p.name: p.read_bytes() for p in (path, journal) if p.exists()}


def red_team(store: FileStore, team_budget: float = 1.0) -> None:
    store.set_budget("team:red", team_budget)
    store.set_budget("alice", 10.0, fields={"team": "red"})


# --- one write, all or none ---------------------------------------------------------------------


def test_a_refusal_by_the_team_leaves_no_hold_anywhere_and_writes_nothing(open_store, path) -> None:
    store, other = open_store(), open_store()
    red_team(store, team_budget=1.0)
    store.set_budget("tag:search", 5.0)
    before = files(path)

    with pytest.raises(BudgetRefusal) as refused:
        store.admit("alice", "c1", 1.5, 60, subjects=["tag:search"])

    assert refused.value.subject == "team:red"
    assert files(path) == before
    for key in ("alice", "team:red", "tag:search"):
        assert holds(other, key) == {}


def test_a_call_is_held_in_every_record_in_one_write(open_store) -> None:
    store, other = open_store(), open_store()
    red_team(store)
    journal = counting(store)

    held = store.admit("alice", "c1", 0.4, 60, model="gpt-4o", subjects=["tag:a", "tag:b"])

    assert held == 0.4
    assert journal.appends == 1
    lease = holds(other, "alice")  # the process's lease for such calls: the same hold in each record
    assert [hold["amount"] for hold in lease.values()] == [0.4]
    assert holds(other, "team:red") == lease
    assert other.get("tag:a") is None  # a tag without a budget holds nothing, and is not tracked


def test_a_charge_lands_in_user_team_and_tags_in_one_write(open_store, quiet_flusher) -> None:
    store, other = open_store(), open_store()
    red_team(store)
    store.set_budget("tag:a", 5.0)
    store.admit("alice", "c1", 0.4, 60, subjects=["tag:a", "tag:b"])
    journal = counting(store)

    store.charge_later("alice", 0.25, "gpt-4o", call_id="c1", held=0.4)
    assert journal.appends == 0  # deferred
    store.flush()

    assert journal.appends == 1
    for key in ("alice", "team:red", "tag:a"):
        assert spend(other, key) == pytest.approx(0.25), key
        assert holds(other, key) == {}, key
    assert other.get("tag:b") is None  # a tag without a budget is not tracked


def test_settle_and_release_without_the_user_find_every_hold_from_another_process(open_store) -> None:
    store, other = open_store(), open_store()
    red_team(store)
    store.set_budget("tag:a", 5.0)
    store.reserve("alice", "c1", 0.4, 60, subjects=["tag:a"])  # held under its own id (admit: in a lease)
    store.reserve("alice", "c2", 0.3, 60, subjects=["tag:a"])
    store.compact()  # the snapshot lists team:red before alice: the index must still name alice

    assert other.release("c2") is True
    assert other.settle("c1", 0.1, "m") is True

    third = open_store()
    for key in ("alice", "team:red"):
        assert holds(third, key) == {}
        assert spend(third, key) == pytest.approx(0.1)
    assert spend(third, "tag:a") == pytest.approx(0.1)


def test_set_budget_with_fields_is_one_write(open_store) -> None:
    store, other = open_store(), open_store()
    journal = counting(store)

    store.set_budget("alice", 10.0, "monthly", fields={"team": "red", "windows": [{"budget": 1.0, "duration": 1}]})

    assert journal.appends == 1
    record = other.get("alice")
    assert record is not None
    assert record["team"] == "red" and record["total_budget"] == 10.0
    assert [w["budget"] for w in record["windows"]] == [1.0]


# --- a bad record is never written over ---------------------------------------------------------


@pytest.fixture
def bad_team(path: Path) -> None:
    """A store file whose team record fails its check (edited by hand, say)."""
    good = {"total_budget": 10.0, "current_cost": 0.0, "model_cost": {}, "created_at": 1.0, "last_updated_at": 1.0}
    records = {"alice": {**good, "team": "red"}, "team:red": {**good, "total_budget": "lots"}}
    path.write_text(json.dumps(records))


@pytest.mark.usefixtures("bad_team")
def test_a_bad_team_record_refuses_the_call_and_changes_nothing(open_store, path) -> None:
    store = open_store()
    before = files(path)

    with pytest.raises(StoreCorruptError, match="team:red"):
        store.admit("alice", "c1", 0.1, 60)
    with pytest.raises(StoreCorruptError, match="team:red"):
        store.charge("alice", 0.1, "m", call_id="c2")
    with pytest.raises(StoreCorruptError, match="team:red"):
        store.set_budget("team:red", 5.0)

    assert files(path) == before
    assert holds(store, "alice") == {}


@pytest.mark.usefixtures("bad_team", "quiet_flusher")
def test_a_deferred_charge_to_a_bad_team_is_given_up_and_the_others_land(open_store, path) -> None:
    store = open_store()
    store.set_budget("bob", 10.0)
    store.charge_later("alice", 0.1, "m", call_id="a1")
    store.charge_later("bob", 0.2, "m", call_id="b1")

    for _ in range(deferred_module.CHARGE_ATTEMPTS):
        store.flush()

    assert [(f.user, f.call_id) for f in store.failed_charges] == [("alice", "a1")]
    assert "StoreCorruptError" in store.failed_charges[0].error
    other = open_store()
    assert spend(other, "bob") == pytest.approx(0.2)
    assert spend(other, "alice") == 0.0
    assert json.loads(path.read_text())["team:red"]["total_budget"] == "lots"


# --- leases: still for the plain case, never past a team ---------------------------------------


def test_plain_calls_are_admitted_from_the_lease_without_a_write(open_store, quiet_flusher) -> None:
    store = open_store()
    store.set_budget("alice", 100.0)
    store.admit("alice", "warm-1", 0.01, 60)
    store.admit("alice", "warm-2", 0.01, 60)  # called again soon: the lease takes spare
    journal = counting(store)

    for i in range(20):
        assert store.admit("alice", f"c{i}", 0.01, 60) == 0.01

    assert journal.appends == 0


def test_calls_of_a_user_in_a_team_are_admitted_from_a_lease_held_in_the_team_too(open_store, quiet_flusher) -> None:
    store, other = open_store(), open_store()
    red_team(store, team_budget=100.0)
    store.admit("alice", "warm-1", 0.01, 60)
    store.admit("alice", "warm-2", 0.01, 60)  # called again soon: the lease takes spare
    journal = counting(store)

    for i in range(5):
        store.admit("alice", f"c{i}", 0.01, 60)

    assert journal.appends == 0
    assert holds(other, "team:red") == holds(other, "alice")  # the lease, with its spare, in both
    assert sum(hold["amount"] for hold in holds(other, "team:red").values()) >= 7 * 0.01


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_a_lease_stops_admitting_from_its_spare_once_the_user_joins_a_team(open_store, quiet_flusher, where) -> None:
    store = open_store()
    store.set_budget("alice", 100.0)
    store.set_budget("team:red", 0.05)
    for i in range(3):
        store.admit("alice", f"warm-{i}", 0.01, 60)
    assert sum(h["amount"] for h in holds(open_store(), "alice").values()) > 0.1  # spare held
    setter = store if where == "this process" else open_store()

    setter.set_fields("alice", {"team": "red"})
    if where == "another process":
        store.flush()  # the lease is looked at with its next write (the flusher's, within a second)

    assert store.admit("alice", "in-team-1", 0.04, 60) == 0.04
    with pytest.raises(BudgetRefusal) as refused:
        store.admit("alice", "in-team-2", 0.04, 60)
    assert refused.value.subject == "team:red"
    store.flush()
    assert sum(h["amount"] for h in holds(open_store(), "alice").values()) == pytest.approx(0.03 + 0.04)


# --- the run: 32 calls of 4 users, a team budget for 10 ---------------------------------

WORST, COST, TEAM_CALLS = 0.1, 0.09, 10
USERS = ("u0", "u1", "u2", "u3")


def _calls_in_a_process(path: str, worker: int, calls: int, start: Any, admitted_all: Any, results: Any) -> None:
    """One process's share: admit its calls at once (threads), wait for every process's
    admissions, then end each call as the guard does (charge_later, or settle)."""
    store = FileStore(path)
    start.wait(60)  # every process has started (and imported) before any call
    admitted: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        user, call_id = USERS[(worker + n) % len(USERS)], f"w{worker}-{n}"
        try:
            held = store.admit(user, call_id, WORST, 60)
        except BudgetRefusal:
            return
        with lock:
            admitted.append((user, call_id, held))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    admitted_all.wait(30)  # every call attempted before any ends: all 32 are in flight together
    for n, (user, call_id, held) in enumerate(admitted):
        if n % 2:
            store.settle(call_id, COST, "gpt-4o")
        else:
            store.charge_later(user, COST, "gpt-4o", call_id=call_id, held=held)
    store.close()
    results.put(len(admitted))


def run_workers(workers: Sequence[Any], results: Any) -> list[Any]:
    """Start the worker processes, take one result from each, and check they all ended well."""
    for worker in workers:
        worker.start()
    got = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0, worker
    return got


def test_four_processes_admit_at_most_what_the_team_budget_covers(open_store, path) -> None:
    store = open_store()
    store.set_budget("team:red", TEAM_CALLS * WORST)
    for user in USERS:
        store.set_budget(user, 10.0, fields={"team": "red"})
    context = multiprocessing.get_context("spawn")
    start, admitted_all, results = context.Barrier(4), context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_calls_in_a_process, args=(str(path), worker, 8, start, admitted_all, results))
        for worker in range(4)
    ]
    admitted = sum(run_workers(workers, results))

    reader = open_store()
    assert admitted == TEAM_CALLS  # the budget covers exactly 10 worst cases, all in flight at once
    assert spend(reader, "team:red") == pytest.approx(TEAM_CALLS * COST)
    assert spend(reader, "team:red") <= TEAM_CALLS * WORST
    assert sum(spend(reader, user) for user in USERS) == pytest.approx(TEAM_CALLS * COST)
    for key in (*USERS, "team:red"):
        assert holds(reader, key) == {}, key


# --- a charge that cannot be written takes none of its records with it --------------------------


class TeamRecordBreaks(FileStore):
    """The real file store, except that a charge of ``mallory`` gives a team record JSON cannot
    encode (its user's record is fine): the charge must be written whole or not at all."""

    def _charge_change(self, user: str, *args: Any, **kwargs: Any) -> Any:
        change = super()._charge_change(user, *args, **kwargs)
        if user != "mallory":
            return change

        def breaks(records: Any) -> Any:
            changed, record = change(records)
            return {**changed, "team:red": {**changed["team:red"], "note": float("inf")}}, record

        return breaks


def test_a_charge_whose_team_record_cannot_be_written_leaves_its_user_alone_and_the_others_land(
    path, quiet_flusher
) -> None:
    store = TeamRecordBreaks(path)
    try:
        red_team(store, team_budget=10.0)
        store.set_budget("mallory", 10.0, fields={"team": "red"})
        store.charge_later("alice", 0.1, "m", call_id="a1")
        store.charge_later("mallory", 0.2, "m", call_id="m1")
        store.charge_later("alice", 0.3, "m", call_id="a2")  # built on mallory's team record at first
        journal = counting(store)

        created = store.set_budget("bob", 1.0)  # the operation carrying them answers on its own

        assert created["total_budget"] == 1.0
        assert journal.appends == 1
        reader = FileStore(path)
        try:
            assert spend(reader, "alice") == pytest.approx(0.4)
            assert spend(reader, "team:red") == pytest.approx(0.4)  # alice's two, not mallory's
            assert spend(reader, "mallory") == 0.0
            assert reader.get("bob") is not None
        finally:
            reader.close()
        for _ in range(deferred_module.CHARGE_ATTEMPTS - 1):
            store.flush()
        assert [(f.user, f.call_id) for f in store.failed_charges] == [("mallory", "m1")]
    finally:
        store.close()
