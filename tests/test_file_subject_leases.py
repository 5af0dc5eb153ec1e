"""FileStore leases for calls checked against several budgets (user + team + tags + model caps).

A second FileStore on the same path stands for another process where only what is in the
files matters; where processes must really run at once (or change a record meanwhile), they
are forked. Writes are counted by the journal's appends (test_file_subjects' CountingJournal).
"""

# ruff: noqa: F811  (fixtures imported from test_file_subjects are parameters here)

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
from test_deferred_charges import Clock
from test_file_subjects import counting, holds, open_store, path, quiet_flusher, run_workers, spend  # noqa: F401 (fixtures)

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.errors import BudgetRefusal

TAGS = ("tag:search", "tag:beta")
MODEL = "gpt-4o"
CAP = {"budget": 50.0, "duration": "daily", "model": MODEL}
FORK = multiprocessing.get_context("fork")


def every_budget(store: FileStore, team_budget: float = 100.0, tag_budget: float = 100.0) -> None:
    """alice in team red, with a cap on gpt-4o; both tags with a budget."""
    store.set_budget("team:red", team_budget)
    store.set_budget("alice", 100.0, "monthly", fields={"team": "red", "windows": [CAP]})
    for tag in TAGS:
        store.set_budget(tag, tag_budget)


def held(store: FileStore, key: str) -> float:
    return sum(hold["amount"] for hold in holds(store, key).values())


def warm(store: FileStore, n: int = 2, prefix: str = "warm") -> None:
    """Calls of 0.01 in a row: the second finds its lease hot and takes spare."""
    for i in range(n):
        store.admit("alice", f"{prefix}-{i}", 0.01, 60, model=MODEL, subjects=TAGS)


# --- no write per call -------------------------------------------------------------------------


def test_calls_checked_against_every_budget_are_admitted_from_the_lease_without_a_write(
    open_store, quiet_flusher
) -> None:
    store, other = open_store(), open_store()
    every_budget(store)
    warm(store)
    journal = counting(store)

    for i in range(20):
        assert store.admit("alice", f"c{i}", 0.01, 60, model=MODEL, subjects=TAGS) == 0.01

    assert journal.appends == 0
    lease = holds(other, "alice")
    for key in ("alice", "team:red", *TAGS):  # one lease, the same hold in every budget
        assert {hold_id: hold["amount"] for hold_id, hold in holds(other, key).items()} == {
            hold_id: hold["amount"] for hold_id, hold in lease.items()
        }, key
        assert held(other, key) >= 22 * 0.01 * (1 - 1e-9), key
    assert next(iter(lease.values()))["model"] == MODEL  # counted in alice's gpt-4o cap only
    assert "model" not in next(iter(holds(other, "team:red").values()))  # the team has no cap


def test_their_charges_land_in_every_budget_in_one_write(open_store, quiet_flusher) -> None:
    store, other = open_store(), open_store()
    every_budget(store)
    warm(store)
    for i in range(20):
        store.admit("alice", f"c{i}", 0.01, 60, model=MODEL, subjects=TAGS)
    journal = counting(store)

    for i in range(20):
        store.charge_later("alice", 0.005, MODEL, call_id=f"c{i}", held=0.01, subjects=TAGS)
    store.charge_later("alice", 0.005, MODEL, call_id="c0", held=0.01, subjects=TAGS)  # a repeat: once only
    store.flush()

    assert journal.appends == 1
    for key in ("alice", "team:red", *TAGS):
        assert spend(other, key) == pytest.approx(20 * 0.005), key
    record = other.get("alice")
    assert record is not None
    assert record["windows"][0]["spend"] == pytest.approx(20 * 0.005)
    assert len(record["applied"]) == 20


# --- all or nothing ----------------------------------------------------------------------------


@pytest.mark.parametrize(("refuser", "window"), [("tag:beta", ""), ("team:red", ""), ("alice", "$1 daily on gpt-4o")])
def test_a_refusal_names_the_budget_and_leaves_no_more_held_anywhere(open_store, refuser, window) -> None:
    store, other = open_store(), open_store()
    every_budget(store)
    warm(store)
    before = {key: held(other, key) for key in ("alice", "team:red", *TAGS)}
    if refuser == "alice":
        store.set_fields("alice", {"windows": [{**CAP, "budget": 1.0}]})
    else:
        store.set_budget(refuser, 1.0)

    with pytest.raises(BudgetRefusal) as refused:
        store.admit("alice", "big", 0.99, 60, model=MODEL, subjects=TAGS)

    assert (refused.value.subject, refused.value.window) == (refuser, window)
    store.flush()
    for key, amount in before.items():  # the spare given back, the two calls still held
        assert held(other, key) <= amount + 1e-12, key
        assert held(other, key) == pytest.approx(0.02), key


def test_spare_never_takes_a_budget_past_its_limit_across_processes(open_store, path) -> None:
    """Forked processes admit from their leases until refused; every call is charged its full hold."""
    store = open_store()
    every_budget(store, team_budget=1.0, tag_budget=100.0)

    def work(index: int, results: Any) -> None:
        mine = FileStore(path)
        admitted = 0.0
        for n in range(500):
            try:
                amount = mine.admit("alice", f"p{index}-{n}", 0.003, 60, model=MODEL, subjects=TAGS)
            except BudgetRefusal as refusal:
                assert refusal.subject == "team:red"
                break
            admitted += amount
            mine.charge_later("alice", amount, MODEL, call_id=f"p{index}-{n}", held=amount, subjects=TAGS)
        mine.close()
        results.put(admitted)

    results = FORK.Queue()
    workers = [FORK.Process(target=work, args=(index, results)) for index in range(4)]
    admitted = sum(run_workers(workers, results))

    reader = open_store()
    assert admitted <= 1.0 * (1 + 1e-12)
    assert spend(reader, "team:red") == pytest.approx(admitted)
    assert spend(reader, "team:red") > 0.9  # the spare of shared budgets shrinks near their end
    for key in ("alice", "team:red", *TAGS):
        assert holds(reader, key) == {}, key


# --- the run: 32 calls of 4 users in 4 processes, a team budget for 10 ------------------

WORST, COST = 0.1, 0.09
USERS = ("u0", "u1", "u2", "u3")


def _four_users_calls(path: str, worker: int, start: Any, admitted_all: Any, results: Any) -> None:
    """Warm each user's lease, then admit 8 calls at once (threads), wait for every process,
    and end each call as the guard does."""
    store = FileStore(path)
    for user in USERS:  # two small calls each, in a row: leases hot, with spare while it is plenty
        for n in range(2):
            call_id = f"warm-{worker}-{user}-{n}"
            store.admit(user, call_id, 0.001, 60, model=MODEL, subjects=TAGS)
            store.charge_later(user, 0.001, MODEL, call_id=call_id, held=0.001, subjects=TAGS)
    store.flush()
    start.wait(60)
    admitted: list[str] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        user, call_id = USERS[(worker + n) % len(USERS)], f"w{worker}-{n}"
        try:
            held = store.admit(user, call_id, WORST, 60, model=MODEL, subjects=TAGS)
        except BudgetRefusal:
            return
        with lock:
            admitted.append(call_id)
        assert held == WORST

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    admitted_all.wait(30)
    for call_id in admitted:
        store.settle(call_id, COST, MODEL)
    store.close()
    results.put(len(admitted))


def test_four_processes_with_leases_admit_at_most_what_the_team_covers(open_store, path) -> None:
    store = open_store()
    warm_spend = 4 * 4 * 2 * 0.001
    store.set_budget("team:red", 10 * WORST + warm_spend)
    for user in USERS:
        store.set_budget(user, 10.0, fields={"team": "red", "windows": [CAP]})
    for tag in TAGS:
        store.set_budget(tag, 100.0)
    start, admitted_all, results = FORK.Barrier(4), FORK.Barrier(4), FORK.Queue()
    workers = [
        FORK.Process(target=_four_users_calls, args=(str(path), worker, start, admitted_all, results))
        for worker in range(4)
    ]
    admitted = sum(run_workers(workers, results))

    reader = open_store()
    assert 1 <= admitted <= 10
    assert spend(reader, "team:red") == pytest.approx(warm_spend + admitted * COST)
    assert spend(reader, "team:red") <= 10 * WORST + warm_spend
    for key in (*USERS, "team:red", *TAGS):
        assert holds(reader, key) == {}, key


# --- changes made elsewhere ---------------------------------------------------------------------


def _move_alice_to_blue(path: str) -> None:
    store = FileStore(path)
    store.set_fields("alice", {"team": "blue"})
    store.close()


def test_a_team_change_by_another_process_applies_within_about_a_second(open_store, path) -> None:
    store, reader = open_store(), open_store()
    every_budget(store)
    store.set_budget("team:blue", 100.0)
    warm(store)
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        store.admit("alice", f"c{calls}", 0.001, 60, model=MODEL, subjects=TAGS)
        store.charge_later("alice", 0.001, MODEL, call_id=f"c{calls}", held=0.001, subjects=TAGS)

    for _ in range(50):  # admitted from the lease's spare
        call()
    child = FORK.Process(target=_move_alice_to_blue, args=(str(path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    changed_at, red_before = time.monotonic(), spend(reader, "team:red")

    while spend(reader, "team:blue") == 0 and holds(reader, "team:blue") == {}:  # calls keep coming
        assert time.monotonic() - changed_at < 10, "the change never applied"
        call()
    applied_after = time.monotonic() - changed_at

    assert applied_after < 1.5
    store.flush()
    for _ in range(5):  # from now on nothing more in red
        call()
    store.flush()
    red_after = spend(reader, "team:red")
    for _ in range(5):
        call()
    store.flush()
    assert spend(reader, "team:red") == red_after >= red_before
    assert spend(reader, "team:blue") > 0


def test_no_spare_is_held_past_a_window_reset(open_store, quiet_flusher) -> None:
    clock = Clock()
    store, other = open_store(), open_store()
    store.clock = other.clock = clock  # type: ignore[method-assign]
    every_budget(store)
    clock.now += 86_400 - 30  # the cap's day ends in 30 s: less than a call's lease and the horizon
    warm(store, n=3)
    assert held(other, "alice") == pytest.approx(0.03)  # each call held on its own account, no spare

    clock.now += 31  # a new day
    warm(store, n=3, prefix="next-day")
    assert held(other, "alice") > 0.06 + 0.01  # spare again, ending before the next reset
    lease = max(holds(other, "alice").values(), key=lambda hold: hold["amount"])
    assert lease["expires_at"] <= clock.now + 86_400


def test_calls_without_a_user_lease_a_teams_budget_as_a_shared_one(open_store) -> None:
    """A team keeping the lease of calls without a user (budget_scope(team=...)) lends spare as
    a shared budget does, not half of what is left: its members' calls still fit."""
    store = open_store()
    store.set_budget("team:red", 10.0)
    store.set_budget("alice", 100.0, fields={"team": "red"})
    for i in range(3):
        store.admit("team:red", f"team-{i}", 1.0, 60)
    assert held(store, "team:red") < 3.0 + 1.0  # 1/32 of the 7 left is less than a call: no spare

    admitted = 0
    for i in range(10):
        try:
            store.admit("alice", f"alice-{i}", 1.0, 60)
        except BudgetRefusal:
            break
        admitted += 1

    assert admitted == 7  # 10 - the 3 in flight
