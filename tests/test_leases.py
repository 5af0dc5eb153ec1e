"""FileStore.admit: strict-mode calls admitted from a per-process, per-user lease.

A second FileStore on the same path stands for another process: it has its own leases and
sees only what is in the files. Where a test must observe the file between two writes, it
makes the flusher wait a minute (``quiet_flusher``) and, where the spare must outlive a
pause, makes leases slow to call a user idle (``patient_leases``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable

import filelock
import litellm
import pytest
from test_deferred_charges import Clock, lines_for
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, FileStore
from litellm_budget_plugin.budget import LEASE_SPARE_CALLS
from litellm_budget_plugin.errors import StoreLockTimeout, UnknownUserError
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.stores import _admission as admission_module
from litellm_budget_plugin.stores import _deferred as deferred_module
from litellm_budget_plugin.stores import _leases as leases_module
from litellm_budget_plugin.stores import file as file_module

MESSAGES = [{"role": "user", "content": "hi"}]
# admits() in budget.py lets a strict total exceed the budget by this share (float rounding).
TOLERANCE = 1e-12


@pytest.fixture
def open_store(file_store_factory: Callable[[], object]) -> Callable[[], FileStore]:
    """FileStores on one path (conftest's factory, which closes them): one per "process"."""

    def make() -> FileStore:
        store = file_store_factory()
        assert isinstance(store, FileStore)
        return store

    return make


@pytest.fixture
def quiet_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushers started from now on first wake after a minute: only the test writes.
    (test_deferred_charges.py's slow_flusher; a fixture imported from a module trips ruff's F811.)"""
    monkeypatch.setattr(deferred_module, "FLUSH_DELAY_SECONDS", 60.0)


@pytest.fixture
def patient_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease keeps its spare through pauses: only a budget that no longer fits, close()
    or exit take it back."""
    monkeypatch.setattr(leases_module, "LEASE_IDLE_SECONDS", 60.0)


def held(store: FileStore, user: str = "alice") -> float:
    """What ``store`` sees held for the user (every unexpired reservation, leases included)."""
    record = store.get(user)
    assert record is not None
    return sum(hold["amount"] for hold in record.get("reservations", {}).values())


def spent(store: FileStore, user: str = "alice") -> float:
    record = store.get(user)
    assert record is not None
    return record["current_cost"]


def at_least(total: float) -> float:
    """``total`` less float rounding: a hold summed another way may differ in the last bits."""
    return total * (1 - 1e-9)


# --- fewer writes, same spend -------------------------------------------------------------------


def test_sequential_calls_write_far_fewer_lines_and_charge_exactly(open_store) -> None:
    calls = 50
    store, other = open_store(), open_store()
    store.set_budget("alice", 100.0)
    before = lines_for(store, "alice")
    costs = [0.001 * (1 + i % 7) + 1e-7 * i for i in range(calls)]

    for i, cost in enumerate(costs):
        store.admit("alice", f"c{i}", 0.01, 60)
        store.charge_later("alice", cost, "m", call_id=f"c{i}")
    store.flush()

    written = lines_for(store, "alice") - before
    assert 1 <= written <= calls // 5  # without leases: one line per call
    record = other.get("alice")
    assert record is not None
    assert record["current_cost"] == pytest.approx(sum(costs), rel=1e-9)
    assert record["model_cost"] == {"m": pytest.approx(sum(costs), rel=1e-9)}
    assert len(record["applied"]) == calls


def test_spare_is_a_bounded_number_of_calls(open_store, quiet_flusher) -> None:
    """The spare covers LEASE_SPARE_CALLS more calls like the one that regrew the lease, no more."""
    store, other = open_store(), open_store()
    store.set_budget("alice", 1_000.0)
    store.admit("alice", "c0", 0.01, 60)
    assert held(other) == pytest.approx(0.01)  # the first call for alice: no spare
    store.admit("alice", "c1", 0.01, 60)  # called for again at once
    assert held(other) == pytest.approx(0.02 + LEASE_SPARE_CALLS * 0.01)


# --- exact at the edge of the budget, in one process -----------------------------------------


@pytest.mark.parametrize("amount", [0.1, 0.3, 1 / 3, 0.07, 1e-4, 7.0])
def test_admits_exactly_what_fits_near_the_end_of_the_budget(open_store, amount: float) -> None:
    store, other = open_store(), open_store()
    total = 10 * amount
    store.set_budget("alice", total)

    for i in range(10):  # from the lease's spare or by regrowing it: all ten fit
        store.admit("alice", f"c{i}", amount, 60)
    with pytest.raises(BudgetExceededError) as info:
        store.admit("alice", "c10", amount, 60)

    error = info.value
    assert (error.user, error.spend, error.budget) == ("alice", 0.0, total)
    assert error.estimate == amount
    assert error.reserved == pytest.approx(10 * amount, rel=1e-9)
    assert at_least(10 * amount) <= held(other) <= total * (1 + TOLERANCE)

    # Ending calls makes room again, exactly as much as they held or spent.
    store.charge_later("alice", amount / 2, "m", call_id="c0")
    assert store.release("c1", "alice") is True
    store.admit("alice", "c10", amount, 60)  # spend a/2 + 9a in flight: fits
    store.admit("alice", "c11", amount / 2, 60)  # ...and half more, to the budget
    with pytest.raises(BudgetExceededError) as info:
        store.admit("alice", "c12", amount / 100, 60)
    assert info.value.spend == pytest.approx(amount / 2)
    assert info.value.reserved == pytest.approx(9.5 * amount, rel=1e-9)
    assert spent(other) == pytest.approx(amount / 2)
    assert at_least(9.5 * amount) <= held(other) <= total * (1 + TOLERANCE)


# --- what other processes see -------------------------------------------------------------------


def test_calls_admitted_from_spare_are_held_for_other_processes_without_a_write(open_store, quiet_flusher) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    store.admit("alice", "c0", 0.1, 60)
    store.admit("alice", "c1", 0.1, 60)  # called for again at once: the lease takes spare
    journal = store.journal_path.read_bytes()

    for i in range(2, 12):
        store.admit("alice", f"c{i}", 0.1, 60)

    assert store.journal_path.read_bytes() == journal  # admitted from the spare: nothing written
    assert held(other) >= at_least(12 * 0.1)
    for i in range(5):  # ended, not yet written: still held for others, not yet spent
        store.charge_later("alice", 0.05, "m", call_id=f"c{i}")
    assert held(other) >= at_least(12 * 0.1)
    assert spent(other) == 0.0
    store.flush()
    assert spent(other) == pytest.approx(0.25)
    assert held(other) >= at_least(7 * 0.1)  # the 7 calls still in flight stay held
    assert spent(other) + held(other) <= 10.0 * (1 + TOLERANCE)


def test_two_processes_admitting_at_once_never_overspend(open_store) -> None:
    """Threads on two FileStores (two "processes", each with its own leases) admit until refused."""
    total = 1.0
    stores = [open_store(), open_store()]
    stores[0].set_budget("alice", total)
    admitted: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker(store: FileStore, name: str, seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for i in range(1000):
            amount = rng.choice([0.003, 0.007, 0.011, 0.02])
            try:
                store.admit("alice", f"{name}-{i}", amount, 60)
            except BudgetExceededError:
                return
            with lock:
                admitted.append(amount)
            if rng.random() < 0.5:  # ended at its full estimate: spent instead of held
                store.charge_later("alice", amount, "m", call_id=f"{name}-{i}")

    threads = [
        threading.Thread(target=worker, args=(stores[w % 2], f"w{w}", w)) for w in range(6)
    ]  # three threads a process
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)

    assert len(admitted) > 10
    assert sum(admitted) <= total * (1 + TOLERANCE)
    for store in stores:
        store.flush()
    observer = open_store()
    assert spent(observer) + held(observer) <= total * (1 + TOLERANCE)


# --- giving the spare back --------------------------------------------------------------------


def test_spare_is_given_back_by_the_flusher_once_the_user_is_idle(open_store) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    store.admit("alice", "c0", 0.1, 60)
    store.admit("alice", "c1", 0.1, 60)
    assert held(other) > 0.2 + 1e-9  # the lease holds spare beyond its two calls
    store.charge_later("alice", 0.04, "m", call_id="c0")
    store.charge_later("alice", 0.06, "m", call_id="c1")
    store.flush()  # alice was called for a moment ago: the spare is kept, and looked at again later

    # Nothing more is done with ``store``: only its flusher can write.
    wait_until(lambda: not other.get("alice").get("reservations"), timeout=2.0)  # type: ignore[union-attr]
    assert spent(other) == pytest.approx(0.1)


def test_spare_that_no_longer_fits_a_lowered_budget_is_given_back(open_store, quiet_flusher, patient_leases) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    call_twice(store)
    assert spent(other) == pytest.approx(0.2)
    assert held(other) > 0.1  # spare, no call in flight

    other.set_budget("alice", spent(other))  # another process: nothing more for alice
    store.flush()

    assert not other.get("alice").get("reservations")  # type: ignore[union-attr]
    with pytest.raises(BudgetExceededError) as info:
        store.admit("alice", "c2", 0.1, 60)
    assert info.value.spend == pytest.approx(0.2)
    assert info.value.budget == pytest.approx(0.2)
    assert info.value.reserved == 0.0


def test_close_gives_the_spare_back(open_store, quiet_flusher, patient_leases) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    call_twice(store)
    assert held(other) > 0.1  # spare, no call in flight

    store.close()

    assert not other.get("alice").get("reservations")  # type: ignore[union-attr]
    assert spent(other) == pytest.approx(0.2)
    other.admit("alice", "all", 10.0 - 0.2, 60)  # the whole rest of the budget is free


def test_close_keeps_holding_the_calls_still_in_flight(open_store, quiet_flusher, patient_leases) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    for i in range(3):
        store.admit("alice", f"c{i}", 0.1 * (i + 1), 60)
    store.charge_later("alice", 0.1, "m", call_id="c0")
    assert held(other) > 0.6

    store.close()

    assert held(other) == pytest.approx(0.5)  # c1 and c2, never ended, and no spare
    assert spent(other) == pytest.approx(0.1)


def call_twice(store: FileStore, prefix: str = "c") -> None:
    """Two calls of 0.1 for alice in a row, charged and written: her lease keeps spare, nothing in flight."""
    for i in range(2):
        store.admit("alice", f"{prefix}{i}", 0.1, 60)
        store.charge_later("alice", 0.1, "m", call_id=f"{prefix}{i}")
    store.flush()


def _lease_and_leave(path: str) -> None:
    call_twice(FileStore(path), prefix="child-")  # the spare is kept (patient_leases); never closed


def test_a_process_that_ends_gives_its_spare_back(open_store, quiet_flusher, patient_leases) -> None:
    store = open_store()
    store.set_budget("alice", 10.0)
    child = multiprocessing.get_context("fork").Process(target=_lease_and_leave, args=(str(store.path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert spent(store) == pytest.approx(0.2)
    assert not store.get("alice").get("reservations")  # type: ignore[union-attr]


# --- ending calls -------------------------------------------------------------------------------


def test_release_of_a_leased_call_shrinks_the_hold(open_store, quiet_flusher, patient_leases) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    store.admit("alice", "c0", 0.1, 60)  # the first call for alice: held exactly, no spare
    assert held(other) == pytest.approx(0.1)
    assert store.release("c0", "alice") is True
    store.flush()
    assert not other.get("alice").get("reservations")  # type: ignore[union-attr]

    store.admit("alice", "c1", 0.1, 60)  # called for again at once: the lease takes spare
    store.admit("alice", "c2", 0.2, 60)  # admitted from it
    before = held(other)
    assert before > 0.3
    assert store.release("c1", "alice") is True
    store.flush()
    assert held(other) == pytest.approx(before - 0.1)
    assert store.release("c2") is True  # found without its user too
    store.flush()
    assert held(other) == pytest.approx(before - 0.3)

    assert store.release("c2") is False  # ended already
    assert store.release("c1", "alice") is False
    assert store.release("never-admitted") is False
    assert store.release("never-admitted", "alice") is False
    assert spent(other) == 0.0


def test_a_charge_and_the_hold_it_ends_are_one_write(open_store, quiet_flusher) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    store.admit("alice", "c0", 0.5, 60)  # the first call for alice: held exactly, no spare
    assert held(other) == pytest.approx(0.5)
    before = lines_for(store, "alice")

    store.charge_later("alice", 0.2, "m", call_id="c0")
    store.flush()

    assert lines_for(store, "alice") == before + 1
    assert spent(other) == pytest.approx(0.2)
    assert not other.get("alice").get("reservations")  # type: ignore[union-attr]


def test_abandoned_leased_calls_stop_being_held_after_their_ttl(open_store, quiet_flusher, patient_leases) -> None:
    clock = Clock()
    store, other = open_store(), open_store()
    store.clock = other.clock = clock  # type: ignore[method-assign]
    store.set_budget("alice", 1.0)
    store.admit("alice", "c0", 0.25, 0.2)
    store.admit("alice", "c1", 0.25, 0.2)  # both abandoned: never charged nor released
    assert held(other) == pytest.approx(0.5 + 0.25)  # with spare: half the room left

    clock.now += 0.3
    store.flush()  # the lease is refreshed: its calls expired, its spare still fits

    assert held(other) == pytest.approx(0.25)  # the spare only, for another ttl
    store.admit("alice", "c2", 1.0, 60)  # the whole budget: the expired calls are out of the lease
    assert held(other) == pytest.approx(1.0)


def test_a_killed_process_holds_its_leased_calls_until_their_ttl(open_store) -> None:
    store = open_store()
    store.set_budget("alice", 1.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child admits from a lease, gives its spare back, and waits to be killed
        try:
            child = FileStore(store.path)
            for i in range(3):
                child.admit("alice", f"child-{i}", 0.2, 1.0)
            os.write(write_end, b"admitted\n")
            time.sleep(file_module.LEASE_IDLE_SECONDS + 0.01)
            child.flush()  # idle: the hold is rewritten to the calls in flight, with their expiry
            os.write(write_end, b"idle\n")
            signal.pause()
        finally:
            os._exit(1)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.readline() == b"admitted\n"
            assert held(store) >= at_least(0.6)
            assert pipe.readline() == b"idle\n"
        assert held(store) == pytest.approx(0.6)
        with pytest.raises(BudgetExceededError):
            store.admit("alice", "parent-0", 0.5, 60)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    assert held(store) >= at_least(0.6)  # killed: nothing gave the hold back
    wait_until(lambda: not store.get("alice").get("reservations"), timeout=10.0)  # type: ignore[union-attr]
    store.admit("alice", "parent-1", 1.0, 60)  # the whole budget once the child's hold expired


# --- through the guard --------------------------------------------------------------------------


def test_guarded_calls_write_fewer_lines_than_calls_and_charge_their_costs(manager, register) -> None:
    calls = 20
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))  # strict
    store = manager.store
    assert isinstance(store, FileStore)
    before = lines_for(store, "alice")

    costs = []
    for _ in range(calls):
        response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user="alice", mock_response="hello")
        costs.append(response._hidden_params["response_cost"])

    assert all(cost > 0 for cost in costs)
    assert manager.get_current_cost("alice") == pytest.approx(sum(costs), rel=1e-9)
    assert lines_for(store, "alice") - before < calls
    record = store.get("alice")
    assert record is not None and len(record["applied"]) == calls


# --- known bugs -------------------------------------------------------------------------------


def test_a_later_call_with_a_shorter_ttl_does_not_cut_the_hold_of_earlier_calls(open_store, quiet_flusher) -> None:
    clock = Clock()
    store, other = open_store(), open_store()
    store.clock = other.clock = clock  # type: ignore[method-assign]
    store.set_budget("alice", 2.0)
    store.admit("alice", "long", 1.0, 60)
    store.admit("alice", "short", 1.0, 0.2)  # the budget leaves no room for spare

    clock.now += 1  # "short" has expired, "long" has 59 s to go
    store.flush()

    assert held(other) >= 1.0
    with pytest.raises(BudgetExceededError):
        other.admit("alice", "elsewhere", 2.0, 60)


def test_a_deleted_user_is_not_admitted_from_the_spare(open_store, quiet_flusher) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 10.0)
    call_twice(store)
    assert held(other) > 0.1  # spare

    assert other.delete("alice") is True
    store.flush()

    with pytest.raises(UnknownUserError):
        store.admit("alice", "c2", 0.1, 60)


def test_a_charge_made_during_another_threads_write_is_held_until_it_is_written(
    open_store, quiet_flusher, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 1.0)
    store.admit("alice", "c1", 0.5, 60)  # the first call for alice: held exactly, no spare
    inside, go_on = threading.Event(), threading.Event()
    real_or_default = admission_module._or_default

    def pause_in_the_admitting_thread(*args: object) -> object:
        if threading.current_thread().name == "admitting":
            inside.set()
            go_on.wait(10)
        return real_or_default(*args)  # type: ignore[arg-type]

    # A pause inside the write of another call's admission, once it has taken the pending charges.
    monkeypatch.setattr(admission_module, "_or_default", pause_in_the_admitting_thread)
    admitting = threading.Thread(target=lambda: store.admit("alice", "c2", 0.1, 60), name="admitting")
    admitting.start()
    assert inside.wait(10)
    store.charge_later("alice", 0.5, "m", call_id="c1")  # lands in the middle of that write
    go_on.set()
    admitting.join(10)

    record = other.get("alice")
    assert record is not None
    assert record["current_cost"] + held(other) >= 0.5 + 0.1  # c1 spent or still held, and c2 held
    with pytest.raises(BudgetExceededError):
        other.admit("alice", "elsewhere", 0.45, 60)


def test_settle_of_a_leased_call_that_cannot_be_written_is_charged_later(open_store, quiet_flusher) -> None:
    store = FileStore(open_store().path, lock_timeout=0.2)
    try:
        store.set_budget("alice", 1.0)
        store.admit("alice", "c1", 0.4, 60)
        another_process = filelock.FileLock(str(store.lock_path))
        with another_process, pytest.raises(StoreLockTimeout):  # busy: the settle cannot write now
            store.settle("c1", 0.3, "m")
        store.settle("c1", 0.3, "m")  # retried: charged once, whatever the first attempt left
        assert spent(open_store()) == pytest.approx(0.3)
    finally:
        store.close()


def test_a_forked_child_exits_even_if_its_parent_held_the_stores_lock_at_the_fork(open_store) -> None:
    store = open_store()
    store.set_budget("alice", 1.0)
    store.charge_later("alice", 0.1, "m", call_id="pending")  # the store has something to flush at exit
    with store._deferred_lock:  # another thread of the parent is inside the store at the fork
        child = multiprocessing.get_context("fork").Process(target=deferred_module._flush_at_exit)
        child.start()
    child.join(20)
    assert child.exitcode == 0
    assert spent(store) == pytest.approx(0.1)  # the parent's charge, by the parent only


def test_a_process_that_cannot_write_stops_admitting_from_its_spare(open_store, quiet_flusher, patient_leases) -> None:
    clock = Clock()
    store = FileStore(open_store().path, lock_timeout=0.1)
    other = open_store()
    store.clock = other.clock = clock  # type: ignore[method-assign]
    try:
        store.set_budget("alice", 1.0)
        store.admit("alice", "c0", 0.01, 1.0)
        store.admit("alice", "c1", 0.01, 1.0)  # called again at once: spare, held in the file
        another_process = filelock.FileLock(str(store.lock_path))
        with another_process:  # nothing can be written...
            store.admit("alice", "c2", 0.01, 1.0)  # ...and none needs to be: the file holds it

        clock.now += 1.0 + file_module.LEASE_HORIZON_SECONDS  # the file's hold has lapsed, never rewritten
        assert held(other) == 0.0
        with another_process, pytest.raises(StoreLockTimeout):
            store.admit("alice", "c3", 0.01, 1.0)  # not from a spare that the file no longer holds
    finally:
        store.close()
