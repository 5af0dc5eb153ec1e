"""FileStore.charge_later: charges that share the next operation's lock and write.

A second FileStore on the same path stands for another process: it sees only what is in the
files. Where a test must observe the moment between ``charge_later`` and the write, it makes
the flusher wait longer (``slow_flusher``), so that nothing but the test applies the charge.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from waiting import wait_until

from litellm_budget_plugin import BudgetExceededError, FileStore
from litellm_budget_plugin import budget as budget_module
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.errors import ConfigurationError, StoreCorruptError, StoreError
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.stores import _deferred as deferred_module
from litellm_budget_plugin.stores import file as file_module

MESSAGES = [{"role": "user", "content": "hi"}]


class Clock:
    """A clock the test moves by hand, shared by every store of a test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "user_cost.json"


@pytest.fixture
def open_store(path: Path) -> Iterator[Callable[[], FileStore]]:
    """Opens FileStores on ``path``: each one is another process's view of the same store."""
    made: list[FileStore] = []

    def make() -> FileStore:
        store = FileStore(path)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()  # a store the test closed already only logs


@pytest.fixture
def slow_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushers started from now on first wake after a minute: only the test applies charges."""
    monkeypatch.setattr(deferred_module, "FLUSH_DELAY_SECONDS", 60.0)


def journal_entries(store: FileStore) -> list[dict[str, Any]]:
    if not store.journal_path.exists():
        return []
    return [json.loads(line) for line in store.journal_path.read_bytes().splitlines()]


def lines_for(store: FileStore, user: str) -> int:
    return sum(1 for entry in journal_entries(store) if entry["u"] == user)


def spend(store: FileStore, user: str) -> float:
    record = store.get(user)
    assert record is not None
    return record["current_cost"]


def assert_same_record(actual: UserRecord | None, expected: UserRecord | None) -> None:
    """Equal records, with the remembered call ids in the same order (it decides which are pruned)."""
    assert actual == expected
    assert actual is not None and expected is not None
    assert list(actual.get("applied", {}).items()) == list(expected.get("applied", {}).items())


# --- deferring and applying -------------------------------------------------------------------


def test_deferred_charge_is_seen_by_its_own_store_at_once_and_by_others_only_once_written(
    open_store, slow_flusher
) -> None:
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 1.0)
    writer.charge("alice", 0.1, "gpt-4o", call_id="first")
    assert spend(other, "alice") == pytest.approx(0.1)
    journal_before = writer.journal_path.read_bytes()
    charged: list[UserRecord] = []

    writer.charge_later("alice", 0.2, "gpt-4o", call_id="second", then=charged.append)

    assert writer.journal_path.read_bytes() == journal_before
    assert spend(other, "alice") == pytest.approx(0.1)
    assert charged == []
    record = writer.get("alice")  # the same store applies its deferred charges before reading
    assert record is not None and record["current_cost"] == pytest.approx(0.3)
    assert len(charged) == 1
    assert charged[0]["current_cost"] == pytest.approx(0.3)
    assert charged[0]["model_cost"] == {"gpt-4o": pytest.approx(0.3)}
    assert list(charged[0]["applied"]) == ["first", "second"]
    assert_same_record(other.get("alice"), record)  # and that read wrote it


def test_deferred_charge_shares_one_journal_line_with_the_next_reservation(open_store, slow_flusher) -> None:
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 1.0)
    lines_before, alice_before = len(journal_entries(writer)), lines_for(writer, "alice")

    writer.charge_later("alice", 0.25, "gpt-4o", call_id="finished")
    reserved = writer.reserve("alice", "next", 0.5, ttl=60)

    assert lines_for(writer, "alice") == alice_before + 1
    assert len(journal_entries(writer)) == lines_before + 1
    assert reserved["current_cost"] == pytest.approx(0.25)
    seen = other.get("alice")
    assert seen is not None
    assert seen["current_cost"] == pytest.approx(0.25)
    assert list(seen["applied"]) == ["finished"]
    assert seen["reservations"]["next"]["amount"] == pytest.approx(0.5)
    assert_same_record(seen, writer.get("alice"))


def test_deferred_charges_of_several_users_are_one_append_with_the_next_operation(open_store, slow_flusher) -> None:
    writer, other = open_store(), open_store()
    for user in ("alice", "bob", "carol"):
        writer.set_budget(user, 1.0)
    size_before = writer.journal_path.stat().st_size
    writer.charge_later("alice", 0.1, "m", call_id="a1")
    writer.charge_later("bob", 0.2, "m", call_id="b1")
    writer.charge_later("alice", 0.3, "m", call_id="a2")
    assert writer.journal_path.stat().st_size == size_before
    writer.reserve("carol", "c1", 0.5, ttl=60)
    new_lines = writer.journal_path.read_bytes()[size_before:].splitlines()
    assert sorted(json.loads(line)["u"] for line in new_lines) == ["alice", "bob", "carol"]
    assert spend(other, "alice") == pytest.approx(0.4)
    assert spend(other, "bob") == pytest.approx(0.2)
    for user in ("alice", "bob", "carol"):
        assert_same_record(other.get(user), writer.get(user))


def test_flusher_writes_the_charge_when_no_operation_follows(open_store) -> None:
    assert deferred_module.FLUSH_DELAY_SECONDS == 0.05
    assert deferred_module._MAX_FLUSH_DELAY_SECONDS == 1.0
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 1.0)
    charged: list[UserRecord] = []
    writer.charge_later("alice", 0.25, "gpt-4o", call_id="only", then=charged.append)

    deadline = time.monotonic() + 5.0
    while spend(other, "alice") == 0.0:
        assert time.monotonic() < deadline, "the deferred charge never reached the file"
        time.sleep(0.01)

    assert spend(other, "alice") == pytest.approx(0.25)
    deadline = time.monotonic() + 5.0
    while not charged:  # the flusher calls back after letting the lock go
        assert time.monotonic() < deadline, "then() was not called"
        time.sleep(0.01)
    assert len(charged) == 1 and charged[0]["current_cost"] == pytest.approx(0.25)


def test_flusher_keeps_writing_later_charges_after_it_went_idle(open_store) -> None:
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 10.0)
    for n in range(1, 4):
        writer.charge_later("alice", 1.0, "m", call_id=f"call-{n}")
        deadline = time.monotonic() + 5.0
        while spend(other, "alice") < n - 0.5:
            assert time.monotonic() < deadline, f"deferred charge {n} never reached the file"
            time.sleep(0.01)
        assert spend(other, "alice") == pytest.approx(n)


def test_refused_reservation_still_writes_the_deferred_charges_and_nothing_else(open_store, slow_flusher) -> None:
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 1.0)
    writer.reserve("alice", "in-flight", 0.1, ttl=60)
    before = other.get("alice")
    assert before is not None
    lines_before = len(journal_entries(writer))

    writer.charge_later("alice", 0.75, "gpt-4o", call_id="finished")
    with pytest.raises(BudgetExceededError) as info:
        writer.reserve("alice", "too-big", 0.5, ttl=60)

    assert info.value.spend == pytest.approx(0.75)  # the refusal counted the deferred charge
    assert info.value.reserved == pytest.approx(0.1)
    assert len(journal_entries(writer)) == lines_before + 1
    seen = other.get("alice")
    assert seen is not None
    assert seen["current_cost"] == pytest.approx(0.75)
    assert seen["model_cost"] == {"gpt-4o": pytest.approx(0.75)}
    assert list(seen["applied"]) == ["finished"]
    assert seen["reservations"] == before["reservations"]  # no hold for the refused call
    assert "too-big" not in seen["reservations"]
    assert_same_record(seen, writer.get("alice"))
    assert len(journal_entries(writer)) == lines_before + 1


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"cost": -0.5}, "cost must not be negative"),
        ({"cost": math.nan}, "cost must be finite"),
        ({"cost": math.inf}, "cost must be finite"),
        ({"cost": "0.5"}, "cost must be a number"),
        ({"user": ""}, "user id must not be empty"),
        ({"user": "   "}, "user id must not be empty"),
        ({"call_id": ""}, "call id must not be empty"),
    ],
)
def test_bad_charge_later_fails_at_once_and_defers_nothing(open_store, slow_flusher, arguments, problem) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.1, "m", call_id="earlier")
    before = store.get("alice")
    journal_before = store.journal_path.read_bytes()
    charged: list[UserRecord] = []
    call: dict[str, Any] = {"user": "alice", "cost": 0.2, "model": "m", "call_id": "bad", "then": charged.append}

    with pytest.raises(ConfigurationError, match=problem):
        store.charge_later(**{**call, **arguments})

    store.flush()
    assert_same_record(store.get("alice"), before)
    assert store.journal_path.read_bytes() == journal_before
    assert_same_record(other.get("alice"), before)
    assert charged == []
    store.charge("alice", 0.3, "m", call_id="later")  # the store is still usable
    assert spend(other, "alice") == pytest.approx(0.4)


def test_a_charge_made_while_the_store_closes_is_written_or_refused(open_store, slow_flusher) -> None:
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 1e9)
    accepted: list[int] = []
    refused = threading.Event()

    def charge_until_refused() -> None:
        for i in itertools.count():
            try:
                writer.charge_later("alice", 1.0, "m", call_id=f"c{i}")
            except StoreError:
                refused.set()
                return
            accepted.append(i)

    charging = threading.Thread(target=charge_until_refused)
    charging.start()
    wait_until(lambda: len(accepted) > 100)
    writer.close()
    charging.join(10)

    assert refused.is_set()  # charges after the close are refused, loudly
    assert spend(other, "alice") == float(len(accepted))  # and every one accepted is written


def test_close_applies_deferred_charges(open_store, slow_flusher) -> None:
    writer, other = open_store(), open_store()
    writer.set_budget("alice", 1.0)
    charged: list[UserRecord] = []
    writer.charge_later("alice", 0.25, "gpt-4o", call_id="last", then=charged.append)
    writer.charge_later("bob", 0.5, "gpt-4o", call_id="bobs", default={"total_budget": 2.0, "duration": None})
    assert spend(other, "alice") == 0.0

    writer.close()

    assert spend(other, "alice") == pytest.approx(0.25)
    bob = other.get("bob")
    assert bob is not None and bob["current_cost"] == pytest.approx(0.5) and bob["total_budget"] == 2.0
    assert len(charged) == 1


CLOSED_STORE_OPERATIONS: dict[str, Callable[[FileStore], object]] = {
    "get": lambda s: s.get("alice"),
    "all": lambda s: s.all(),
    "set_budget": lambda s: s.set_budget("alice", 2.0),
    "put": lambda s: s.put("alice", budget_module.new_record(1.0, None, 0.0)),
    "delete": lambda s: s.delete("alice"),
    "reset": lambda s: s.reset("alice"),
    "roll": lambda s: s.roll("alice"),
    "charge": lambda s: s.charge("alice", 0.1, "m"),
    "charge_later": lambda s: s.charge_later("alice", 0.1, "m"),
    "reserve": lambda s: s.reserve("alice", "c", 0.1, ttl=60),
    "settle": lambda s: s.settle("c", 0.1, "m"),
    "settle with user": lambda s: s.settle("c", 0.1, "m", user="alice"),
    "release": lambda s: s.release("c"),
    "compact": lambda s: s.compact(),
}


# flush() is left out: with nothing deferred it returns without touching the store, and a closed
# store holds nothing deferred (close applied it, and charge_later refuses).
@pytest.mark.parametrize("operation", CLOSED_STORE_OPERATIONS)
def test_closed_store_refuses_every_operation(open_store, operation) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 1.0)
    store.close()
    journal = store.journal_path.read_bytes()
    with pytest.raises(StoreError, match="closed"):
        CLOSED_STORE_OPERATIONS[operation](store)
    assert store.journal_path.read_bytes() == journal
    assert spend(other, "alice") == 0.0


@pytest.mark.parametrize("order", ["one batch", "flushed between", "then charged at once", "charged at once first"])
def test_charge_later_with_a_repeated_call_id_charges_once(open_store, slow_flusher, order) -> None:
    store, other = open_store(), open_store()
    store.set_budget("alice", 1.0)
    charged: list[UserRecord] = []

    def later() -> None:
        store.charge_later("alice", 0.25, "gpt-4o", call_id="same", then=charged.append)

    if order == "one batch":
        later()
        later()
    elif order == "flushed between":
        later()
        store.flush()
        later()
    elif order == "then charged at once":
        later()
        store.charge("alice", 0.25, "gpt-4o", call_id="same")
    else:
        store.charge("alice", 0.25, "gpt-4o", call_id="same")
        later()
    store.flush()

    for view in (store, other):
        record = view.get("alice")
        assert record is not None
        assert record["current_cost"] == pytest.approx(0.25)
        assert record["model_cost"] == {"gpt-4o": pytest.approx(0.25)}
        assert list(record["applied"]) == ["same"]
    # then() hears of the charge that was made, once; a repeat that charged nothing is silent
    # (an alert must not fire again for it)
    assert len(charged) == (0 if order == "charged at once first" else 1)
    assert all(record["current_cost"] == pytest.approx(0.25) for record in charged)


# --- journal lines ------------------------------------------------------------------------------


@pytest.mark.parametrize("advancing", [False, True], ids=["real clock", "clock past the id ttl"])
def test_journal_lines_replay_to_the_writers_records_through_pruning(open_store, slow_flusher, advancing) -> None:
    clock = Clock()
    writer, reader = open_store(), open_store()
    for store in (writer, reader):
        store.clock = clock  # type: ignore[method-assign]
    writer.set_budget("alice", 1000.0)
    writer.set_budget("bob", 1000.0)
    count = 2 * budget_module.APPLIED_ID_LIMIT + 90
    step = 2.5 * budget_module.APPLIED_ID_TTL_SECONDS / count if advancing else 0.0
    for i in range(count):
        clock.now += step
        if i % 3 == 0:
            writer.charge("alice", 0.01, "m", call_id=f"alice-call-{i:05d}")
        else:  # one deferred charge per write, applied by the next read
            writer.charge_later("alice", 0.01, "m", call_id=f"alice-call-{i:05d}")
            writer.flush()
        if i % 7 == 0:
            writer.charge("bob", 0.01, "m", call_id=f"bob-call-{i:05d}")
        if i % 50 == 0:  # the reader catches up part of the way, at different prunes
            assert_same_record(reader.get("alice"), writer.get("alice"))

    fresh = open_store()
    fresh.clock = clock  # type: ignore[method-assign]
    expected = writer.get("alice")
    assert expected is not None
    assert expected["current_cost"] == pytest.approx(0.01 * count)
    applied = list(expected["applied"])
    assert len(applied) < count  # pruned
    assert applied[-1] == f"alice-call-{count - 1:05d}"
    assert applied == sorted(applied)
    for user in ("alice", "bob"):
        for view in (reader, fresh):
            assert_same_record(view.get(user), writer.get(user))

    sizes = [len(line) for line in writer.journal_path.read_bytes().splitlines()]
    assert len(sizes) >= count
    assert max(sizes) < 2048, f"a journal line of {max(sizes)} bytes carries all remembered call ids"


def test_batches_of_deferred_charges_across_prunes_replay_exactly(open_store, slow_flusher) -> None:
    clock = Clock()
    writer, reader = open_store(), open_store()
    for store in (writer, reader):
        store.clock = clock  # type: ignore[method-assign]
    writer.set_budget("alice", 10_000.0)
    ttl = budget_module.APPLIED_ID_TTL_SECONDS
    n = 0
    for batch in range(60):
        for _ in range(batch % 9 + 1):
            writer.charge_later("alice", 0.01, "m", call_id=f"call-{n:05d}")
            n += 1
        if batch % 11 == 5:
            clock.now += 2.5 * ttl  # the charges were computed before the jump, written after it
        else:
            clock.now += ttl / 40
        if batch % 2:
            writer.reserve("alice", f"hold-{batch}", 0.01, ttl=3e7)
        else:
            writer.flush()
        if batch % 10 == 0:
            assert_same_record(reader.get("alice"), writer.get("alice"))

    fresh = open_store()
    fresh.clock = clock  # type: ignore[method-assign]
    expected = writer.get("alice")
    assert expected is not None and expected["current_cost"] == pytest.approx(0.01 * n)
    for view in (reader, fresh):
        assert_same_record(view.get("alice"), expected)


def applied_after_put(original: dict[str, float], how: str) -> dict[str, float]:
    ids = list(original.items())
    if how == "reordered":
        return dict([ids[2], ids[0], ids[1], *ids[3:]])
    if how == "replaced":
        return {"imported-1": ids[0][1], "imported-2": ids[1][1]}
    if how == "one dropped":
        return dict(ids[1:])
    if how == "new id first":
        return dict([("imported", ids[0][1]), *ids])
    if how == "one appended":
        return dict([*ids, ("imported", ids[-1][1])])
    if how == "time changed":
        return dict([(ids[0][0], ids[0][1] + 1.0), *ids[1:]])
    assert how == "emptied"
    return {}


PUT_CHANGES = [
    "reordered",
    "replaced",
    "one dropped",
    "new id first",
    "one appended",
    "time changed",
    "emptied",
]


@pytest.mark.parametrize("how", PUT_CHANGES)
def test_put_that_rewrites_applied_ids_is_replayed_exactly(open_store, how) -> None:
    writer, reader = open_store(), open_store()
    writer.set_budget("alice", 1.0)
    for call_id in ("a", "b", "c", "d"):
        writer.charge("alice", 0.1, "m", call_id=call_id)
    assert_same_record(reader.get("alice"), writer.get("alice"))
    record = writer.get("alice")
    assert record is not None
    new_applied = applied_after_put(record["applied"], how)
    replacement: UserRecord = {**record, "applied": new_applied}  # type: ignore[typeddict-item]
    if not new_applied:
        del replacement["applied"]

    writer.put("alice", replacement)

    written = writer.get("alice")
    assert written is not None
    assert list(written.get("applied", {}).items()) == list(new_applied.items())
    assert_same_record(reader.get("alice"), written)
    assert_same_record(open_store().get("alice"), written)


# --- compaction --------------------------------------------------------------------------------


def test_compaction_by_one_store_is_noticed_by_another(open_store, path) -> None:
    a, b = open_store(), open_store()
    a.set_budget("alice", 1.0)
    a.charge("alice", 0.1, "m", call_id="before")
    assert_same_record(b.get("alice"), a.get("alice"))

    a.compact()
    assert json.loads(path.read_text())["alice"]["current_cost"] == pytest.approx(0.1)
    assert a.journal_path.read_bytes() == b""
    a.charge("alice", 0.2, "m", call_id="after")

    assert_same_record(b.get("alice"), a.get("alice"))
    assert spend(b, "alice") == pytest.approx(0.3)
    b.charge("alice", 0.3, "m", call_id="from-b")  # b writes to the new journal, which a reads
    assert spend(a, "alice") == pytest.approx(0.6)
    assert_same_record(a.get("alice"), b.get("alice"))


def test_compaction_with_deferred_charges_is_noticed_by_another(open_store, slow_flusher) -> None:
    a, b = open_store(), open_store()
    a.set_budget("alice", 1.0)
    assert b.get("alice") is not None
    a.charge_later("alice", 0.1, "m", call_id="deferred-1")
    a.compact()  # writes the deferred charge, then folds it into the snapshot
    a.charge_later("alice", 0.2, "m", call_id="deferred-2")
    a.flush()
    assert spend(b, "alice") == pytest.approx(0.3)
    assert_same_record(b.get("alice"), a.get("alice"))


@pytest.mark.parametrize("had_snapshot", [False, True])
def test_compact_refuses_a_snapshot_someone_overwrote_with_invalid_json(open_store, path, had_snapshot) -> None:
    a = open_store()
    a.set_budget("alice", 1.0)
    a.charge("alice", 0.1, "m", call_id="one")
    if had_snapshot:
        a.compact()
        a.charge("alice", 0.2, "m", call_id="two")
    garbage = b'{"alice": {"total_budget": 1.0, "current_cost": '

    path.write_bytes(garbage)
    with pytest.raises(StoreCorruptError, match="not valid JSON"):
        a.compact()

    assert path.read_bytes() == garbage
    with pytest.raises(StoreCorruptError):  # and it is not overwritten on a second try either
        a.compact()
    assert path.read_bytes() == garbage


# --- through the guard --------------------------------------------------------------------------


# ``manager`` and ``register`` are in conftest.py.


def test_guarded_sync_call_spend_is_current_when_the_call_returns(manager, register) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))

    response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user="alice", mock_response="hi")

    charged = manager.get_current_cost("alice")  # no waiting
    assert charged > 0
    assert charged == pytest.approx(response._hidden_params["response_cost"])
    record = manager.store.get("alice")
    assert record is not None and not record.get("reservations")
    assert len(record["applied"]) == 1


def test_guarded_call_writes_the_previous_calls_charge_with_its_reservation(manager, register, slow_flusher) -> None:
    manager.create_budget(1.0, "alice")
    register(BudgetGuard(manager))
    store = manager.store
    assert isinstance(store, FileStore)
    other = FileStore(store.path)
    try:
        first = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user="alice", mock_response="hi")
        first_cost = first._hidden_params["response_cost"]
        assert first_cost > 0
        lines_before = lines_for(store, "alice")
        seen = other.get("alice")
        assert seen is not None and seen["current_cost"] == 0.0  # the charge waits for the next operation

        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user="alice", mock_response="hi")

        assert lines_for(store, "alice") == lines_before + 1  # first call's charge + second call's hold
        seen = other.get("alice")
        assert seen is not None and seen["current_cost"] == pytest.approx(first_cost)
        assert len(seen["reservations"]) == 1  # the second call still holds, as far as others know
        assert manager.get_current_cost("alice") == pytest.approx(2 * first_cost)
        assert lines_for(store, "alice") == lines_before + 2
        seen = other.get("alice")
        assert seen is not None and seen["current_cost"] == pytest.approx(2 * first_cost)
        # alice was called for twice in a row: this process holds spare for her next calls...
        assert len(seen["reservations"]) == 1
        time.sleep(file_module.LEASE_IDLE_SECONDS)
        store.flush()  # ...and gives it back at its next write once she has been idle a while
        seen = other.get("alice")
        assert seen is not None and not seen.get("reservations")
        assert seen["current_cost"] == pytest.approx(2 * first_cost)
    finally:
        other.close()


def test_alert_fires_when_the_deferred_charge_is_applied(manager, register, slow_flusher) -> None:
    alerts: list[tuple[str, float, float]] = []
    register(BudgetGuard(manager, alert_threshold=0.5, on_alert=lambda *a: alerts.append(a)))
    manager.create_budget(1.0, "alice")
    manager.store.charge("alice", 0.5 - 1e-9, "m")  # the next call crosses half the budget

    response = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user="alice", mock_response="hi")
    spent = manager.get_current_cost("alice")  # applies the deferred charge, and its alert

    assert response._hidden_params["response_cost"] > 1e-9
    assert spent >= 0.5
    assert alerts == [("alice", spent, 1.0)]
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, user="alice", mock_response="hi")
    assert manager.get_current_cost("alice") > spent
    assert len(alerts) == 1  # crossing once alerts once


def test_a_forked_child_never_applies_its_parents_deferred_charges(path: Path, slow_flusher: None) -> None:
    """The parent applies its own deferred charges; a child that also did would double them."""
    import os

    store = FileStore(path)
    store.set_budget("alice", 10.0)
    store.charge_later("alice", 1.0, "m")  # no call id: nothing would catch a second application
    pid = os.fork()
    if pid == 0:  # the child uses the store, then exits through the interpreter (atexit runs)
        try:
            FileStore(path)  # another handle in the child; and the inherited one:
            store.get("alice")
            store.charge("alice", 0.5, "m")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    store.flush()
    assert FileStore(path).get("alice")["current_cost"] == 1.5  # type: ignore[index]
    store.close()


def test_a_refusal_stays_a_refusal_when_the_deferred_charges_cannot_be_written(path: Path, slow_flusher: None) -> None:
    """Otherwise on_store_error="open" would serve an over-budget call as a store failure."""
    import resource
    import signal

    store = FileStore(path)
    store.set_budget("alice", 1.0)
    store.charge_later("alice", 0.9, "m", call_id="c1")
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (store.journal_path.stat().st_size, limits[1]))  # the disk is full
    try:
        with pytest.raises(BudgetExceededError):
            store.reserve("alice", "c2", 0.5, 60)  # the pending charge counts, and the write fails
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert FileStore(path).get("alice")["current_cost"] == 0.0  # type: ignore[index]  # not written...
    store.flush()  # ...but kept for the next operation
    assert FileStore(path).get("alice")["current_cost"] == 0.9  # type: ignore[index]
    store.close()


def _charge_in_child(path: str) -> None:
    FileStore(path).charge_later("alice", 0.25, "m", call_id="child")


def test_a_multiprocessing_child_applies_its_deferred_charges_before_it_ends(path: Path) -> None:
    """A fork-started child ends with os._exit, past atexit: its own finalizer must flush."""
    import multiprocessing

    FileStore(path).set_budget("alice", 1.0)
    child = multiprocessing.get_context("fork").Process(target=_charge_in_child, args=(str(path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert FileStore(path).get("alice")["current_cost"] == 0.25  # type: ignore[index]


def test_async_calls_never_touch_the_store_file_on_the_event_loop(path: Path) -> None:
    """The event loop may hand a charge to the store's memory (charge_later), but every read or
    write of the file (RecordStore's _read/_update) runs off the loop."""
    import asyncio

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    loops: list[bool] = []
    file_work_on_loop: list[str] = []

    class Observed(FileStore):  # the real store, noting where each operation comes from
        def charge_later(self, *args: Any, **kwargs: Any) -> None:
            loops.append(on_loop())
            super().charge_later(*args, **kwargs)

        def _read(self, fn: Any) -> Any:
            if on_loop():
                file_work_on_loop.append("read")
            return super()._read(fn)

        def _update(self, *args: Any, **kwargs: Any) -> Any:
            if on_loop():
                file_work_on_loop.append("update")
            return super()._update(*args, **kwargs)

    store = Observed(path)
    store.set_budget("alice", 1.0)
    guard = BudgetGuard(store)
    litellm.callbacks.append(guard)
    try:

        async def go() -> None:
            await litellm.acompletion(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="hi", user="alice"
            )
            assert loops == [True]  # queued on the loop before the call returned

        asyncio.run(go())
    finally:
        litellm.callbacks.remove(guard)
    assert len(loops) == 1 and file_work_on_loop == []
    store.flush()
    assert store.get("alice")["current_cost"] > 0  # type: ignore[index]
    store.close()
