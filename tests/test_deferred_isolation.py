"""One bad write never takes other work with it (issue 12).

The file store writes the charges of many users in one write. A charge that cannot be
applied or written (its change raises anything at all, or its record cannot be encoded) is
taken out of that write and tried again with the next ones, then given up and reported; every
other user's charge is written. A write the disk refuses keeps every charge for later.

Failures are injected into the real store in one place, :meth:`FileStore._charge_change` of a
subclass, which builds the change a charge makes: the charges of one user (``mallory``) raise
an unexpected exception, or give a record JSON cannot encode. Everything else is the real
store, its queue and its files, read back by fresh stores and by LiteLLM's own BudgetManager.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import resource
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import litellm
import pytest
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, FileStore, budget
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.errors import StoreError
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.stores import _deferred as deferred_module
from litellm_budget_plugin.stores._deferred import CHARGE_ATTEMPTS
from litellm_budget_plugin.stores._journal import Journal

GOOD_USERS = ("alice", "bob", "carol", "dave", "erin")
BROKEN = "mallory"
MESSAGES = [{"role": "user", "content": "hi"}]
Change = Callable[[Mapping[str, UserRecord]], tuple[dict[str, UserRecord], UserRecord]]


class OneUserBreaks(FileStore):
    """The real file store, except that applying a charge to ``mallory`` raises an unexpected
    exception (``how="raises"``) or gives a record JSON cannot encode (``how="unencodable"``),
    the first ``failures`` times it is tried (every time by default)."""

    def __init__(self, path: Path, how: str = "raises", failures: float = math.inf) -> None:
        super().__init__(path)
        self.how, self.failures_left, self.tries = how, failures, 0

    def _charge_change(self, user: str, *args: Any, **kwargs: Any) -> Change:
        change = super()._charge_change(user, *args, **kwargs)
        if user != BROKEN:
            return change

        def breaks(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], UserRecord]:
            self.tries += 1
            if self.failures_left <= 0:
                return change(records)
            self.failures_left -= 1
            if self.how == "raises":
                raise RuntimeError(f"injected failure charging {user}")
            changed, updated = change(records)
            poisoned: Any = {**updated, "note": math.inf}  # what json.dumps(allow_nan=False) refuses
            return {**changed, user: poisoned}, poisoned

        return breaks

    def _charge_batch(self, records: Any, users: Mapping[str, UserRecord], charges: Any) -> dict[str, UserRecord]:
        """A batch of leased calls' charges holding mallory's fails too: they are then applied one by one."""
        if BROKEN in users and self.failures_left > 0:
            raise RuntimeError(f"injected failure charging a batch with {BROKEN}")
        return super()._charge_batch(records, users, charges)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "user_cost.json"


@pytest.fixture
def slow_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushers started from now on first wake after a minute: only the test applies charges."""
    monkeypatch.setattr(deferred_module, "FLUSH_DELAY_SECONDS", 60.0)


@pytest.fixture
def stores(path: Path) -> Iterator[list[FileStore]]:
    """Stores a test opens, closed at its end."""
    made: list[FileStore] = []
    yield made
    for store in made:
        store.close()


def open_breaking(stores: list[FileStore], path: Path, **kwargs: Any) -> OneUserBreaks:
    store = OneUserBreaks(path, **kwargs)
    stores.append(store)
    for user in (*GOOD_USERS, BROKEN):
        store.set_budget(user, 10.0)
    return store


def charge_everyone(store: FileStore) -> dict[str, float]:
    """Two charges for each good user and one for mallory, all deferred; what each good user owes."""
    owed = {}
    for n, user in enumerate(GOOD_USERS, start=1):
        store.charge_later(user, 0.01 * n, "gpt-4o-mini", call_id=f"{user}-1")
        store.charge_later(user, 0.001 * n, "gpt-4o-mini", call_id=f"{user}-2")
        owed[user] = 0.011 * n
    store.charge_later(BROKEN, 0.5, "gpt-4o-mini", call_id="mallory-1")
    return owed


def on_disk(path: Path) -> dict[str, UserRecord]:
    """The records as another process reads them now."""
    reader = FileStore(path)
    try:
        return reader.all()
    finally:
        reader.close()


def assert_written(path: Path, owed: dict[str, float], mallory_spend: float = 0.0) -> None:
    records = on_disk(path)
    for user, spend in owed.items():
        assert records[user]["current_cost"] == pytest.approx(spend), user
        assert set(records[user]["applied"]) == {f"{user}-1", f"{user}-2"}
    assert records[BROKEN]["current_cost"] == mallory_spend


def pending(store: FileStore) -> int:
    with store._deferred_lock:
        return len(store._deferred)


# --- a batch is applied per record ------------------------------------------------------------


@pytest.mark.parametrize("how", ["raises", "unencodable"])
def test_a_charge_that_cannot_be_written_leaves_every_other_charge_written_and_is_reported(
    path, stores, slow_flusher, how, caplog
) -> None:
    store = open_breaking(stores, path, how=how)
    owed = charge_everyone(store)

    store.flush()

    assert_written(path, owed)  # every other user's charges, in that same write
    assert pending(store) == 1  # mallory's waits for the next writes
    assert store.failed_charges == ()
    with caplog.at_level(logging.WARNING, logger=deferred_module.__name__):
        for _ in range(CHARGE_ATTEMPTS - 1):
            store.flush()

    assert store.tries == CHARGE_ATTEMPTS
    assert pending(store) == 0
    [failed] = store.failed_charges
    assert (failed.user, failed.cost, failed.model, failed.call_id) == (BROKEN, 0.5, "gpt-4o-mini", "mallory-1")
    assert ("RuntimeError" if how == "raises" else "ValueError") in failed.error
    [given_up] = [r for r in caplog.records if r.levelno == logging.ERROR and "given up" in r.getMessage()]
    for part in ("'mallory'", "$0.5", "mallory-1", "gpt-4o-mini", failed.error):
        assert part in given_up.getMessage()
    store.flush()  # nothing loops: no more tries, no more reports
    store.charge("alice", 0.25, "m")
    assert store.tries == CHARGE_ATTEMPTS and len(store.failed_charges) == 1
    records = on_disk(path)
    assert records["alice"]["current_cost"] == pytest.approx(owed["alice"] + 0.25)
    assert records[BROKEN]["current_cost"] == 0.0


def test_a_charge_that_fails_once_is_written_by_the_next_write_and_not_reported(path, stores, slow_flusher) -> None:
    store = open_breaking(stores, path, failures=1)
    owed = charge_everyone(store)

    store.flush()
    assert on_disk(path)[BROKEN]["current_cost"] == 0.0
    store.flush()

    assert_written(path, owed, mallory_spend=0.5)
    assert store.failed_charges == ()
    assert pending(store) == 0


def test_litellms_own_budget_manager_reads_every_other_charge(path, stores, slow_flusher, monkeypatch) -> None:
    store = open_breaking(stores, path)
    owed = charge_everyone(store)
    store.flush()
    store.compact()  # the JSON file LiteLLM reads is current

    monkeypatch.chdir(path.parent)
    theirs = litellm.BudgetManager(project_name="isolation")

    for user, spend in owed.items():
        assert theirs.get_current_cost(user) == pytest.approx(spend)
    assert theirs.get_current_cost(BROKEN) == 0.0


# --- the operation that carries the batch answers on its own merits ---------------------------


def test_an_operation_carrying_a_failing_charge_succeeds_and_writes_the_others(path, stores, slow_flusher) -> None:
    store = open_breaking(stores, path)
    owed = charge_everyone(store)

    created = store.set_budget("frank", 2.0, "30d")  # carries the batch in its write

    assert created["total_budget"] == 2.0
    assert on_disk(path)["frank"]["total_budget"] == 2.0
    assert_written(path, owed)


def test_a_refused_operation_still_writes_the_others_charges(path, stores, slow_flusher) -> None:
    store = open_breaking(stores, path)
    owed = charge_everyone(store)

    with pytest.raises(BudgetExceededError):
        store.reserve("alice", "too-big", 100.0, ttl=60)

    assert_written(path, owed)
    assert "too-big" not in on_disk(path)["alice"].get("reservations", {})


def test_an_operation_whose_own_record_cannot_be_written_fails_alone(path, stores, slow_flusher) -> None:
    """What a duration parsed to infinity did to create_budget (issue 12, finding 2): its
    record could not be encoded, and the write it failed had taken the pending charges."""
    store = open_breaking(stores, path)
    owed = charge_everyone(store)

    def unencodable(old: UserRecord | None) -> tuple[UserRecord, None]:
        record: Any = {**budget.new_record(1.0, None, time.time()), "duration": math.inf}
        return record, None

    with pytest.raises(StoreError, match="record of 'frank' cannot be written"):
        store._update("frank", unencodable)

    assert "frank" not in on_disk(path)
    assert "frank" not in store.all()  # nor in this process's copy
    assert_written(path, owed)


# --- holds ------------------------------------------------------------------------------------


def test_the_hold_of_a_charge_given_up_stays_until_it_expires(path, stores, slow_flusher) -> None:
    store = open_breaking(stores, path)
    store.admit("alice", "a1", 0.2, ttl=600)
    store.admit(BROKEN, "m1", 0.2, ttl=600)
    store.charge_later("alice", 0.1, "m", call_id="a1", held=0.2)
    store.charge_later(BROKEN, 0.1, "m", call_id="m1", held=0.2)

    store.close()  # gives the leases' spare back, and writes what it can

    assert [f.call_id for f in store.failed_charges] == ["m1"]
    records = on_disk(path)
    assert records["alice"]["current_cost"] == pytest.approx(0.1)
    assert sum(h["amount"] for h in records["alice"].get("reservations", {}).values()) == 0.0  # charged: no hold
    assert records[BROKEN]["current_cost"] == 0.0
    holds = list(records[BROKEN]["reservations"].values())
    assert sum(h["amount"] for h in holds) == pytest.approx(0.2)  # not charged, so still held...
    assert min(h["expires_at"] for h in holds) > time.time() + 500  # ...until it expires


def test_guarded_calls_of_other_users_are_all_charged_when_one_users_charge_breaks(
    path, stores, slow_flusher, register
) -> None:
    """The issue's run: guarded calls for several users, one of whose charges cannot be made."""
    store = open_breaking(stores, path)
    register(BudgetGuard(store))
    costs: dict[str, float] = {}
    for user in (*GOOD_USERS, BROKEN):
        response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user=user, mock_response="hi")
        costs[user] = response._hidden_params["response_cost"]
    assert all(cost > 0 for cost in costs.values())

    store.flush()
    records = on_disk(path)
    for user in GOOD_USERS:
        assert records[user]["current_cost"] == pytest.approx(costs[user])
    store.close()  # gives the leases' spare back; mallory's charge is tried until given up

    records = on_disk(path)
    for user in GOOD_USERS:
        assert records[user]["current_cost"] == pytest.approx(costs[user])
        assert sum(h["amount"] for h in records[user].get("reservations", {}).values()) == 0.0
    assert records[BROKEN]["current_cost"] == 0.0
    assert [f.user for f in store.failed_charges] == [BROKEN]
    assert sum(h["amount"] for h in records[BROKEN]["reservations"].values()) > 0  # its call stays held


# --- a write that fails keeps everything ------------------------------------------------------


@contextmanager
def disk_full(path: Path) -> Iterator[None]:
    """No file of this process may grow past the journal's size (EFBIG, a real write error)."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.with_name(path.name + ".journal").stat().st_size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)


def test_a_write_the_disk_refuses_keeps_every_charge_for_a_later_write(path, stores, slow_flusher) -> None:
    store = open_breaking(stores, path, failures=0)  # nothing breaks but the disk
    owed = charge_everyone(store)
    before = on_disk(path)

    with disk_full(path):
        for _ in range(CHARGE_ATTEMPTS + 2):  # failed writes count no try
            with pytest.raises(StoreError, match="cannot write journal"):
                store.set_budget("frank", 1.0)  # the operation that carried them hears of it
            with pytest.raises(StoreError):
                store.flush()

    assert on_disk(path) == before
    store.flush()
    assert_written(path, owed, mallory_spend=0.5)
    assert "frank" not in on_disk(path)
    assert store.failed_charges == ()


class JournalWithABug(Journal):
    """A journal whose next ``bugs`` writes fail with something no record causes."""

    bugs = 2

    def write(self, working: dict[str, UserRecord | None], now: float) -> bool:
        if JournalWithABug.bugs:
            JournalWithABug.bugs -= 1
            raise RuntimeError("a bug in writing")
        return super().write(working, now)


def test_an_unexpected_write_error_is_a_store_error_and_keeps_every_charge(path, stores, slow_flusher) -> None:
    store = open_breaking(stores, path, failures=0)
    owed = charge_everyone(store)
    store._journal.__class__ = JournalWithABug  # the store's own journal, with one method changed

    with pytest.raises(StoreError, match="a bug in writing"):
        store.set_budget("frank", 1.0)
    with pytest.raises(StoreError, match="a bug in writing"):
        store.flush()
    store.flush()

    assert_written(path, owed, mallory_spend=0.5)
    assert store.failed_charges == ()


def test_the_flusher_retries_a_failing_write_until_the_disk_takes_it(path, stores, caplog) -> None:
    store = open_breaking(stores, path, failures=0)
    with caplog.at_level(logging.WARNING, logger=deferred_module.__name__), disk_full(path):
        owed = charge_everyone(store)
        wait_until(lambda: caplog.text.count("will retry") >= 2)  # the flusher tried, and again
    wait_until(lambda: pending(store) == 0)
    assert_written(path, owed, mallory_spend=0.5)


# --- the flush at process end -----------------------------------------------------------------


def _charge_everyone_in_a_child(path: str) -> None:
    charge_everyone(OneUserBreaks(Path(path)))  # written by the finalizer as the child ends


def test_a_process_ending_writes_every_other_charge(path, stores) -> None:
    open_breaking(stores, path)
    child = multiprocessing.get_context("fork").Process(target=_charge_everyone_in_a_child, args=(str(path),))
    child.start()
    child.join(30)

    assert child.exitcode == 0
    assert_written(path, {user: 0.011 * n for n, user in enumerate(GOOD_USERS, start=1)})
