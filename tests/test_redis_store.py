"""What only the Redis store has: a server to lose, keys to lay out, forks, a fleet of clients.

The shared behaviour is in test_store_contract.py, which runs on Redis too.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis_server import RedisServer, free_port

from litellm_budget_plugin import (
    BudgetExceededError,
    BudgetManager,
    ConfigurationError,
    FileStore,
    StoreError,
    StoreUnavailableError,
    budget,
    store_from_url,
)
from litellm_budget_plugin.budget import UserRecord
from litellm_budget_plugin.ledger import LedgerEntry, Usage, check_period, in_period
from litellm_budget_plugin.stores import RecordStore
from litellm_budget_plugin.stores.redis import RedisStore
from litellm_budget_plugin.subjects import GLOBAL, kind_of

T0 = 1_800_000_000.0
T = TypeVar("T")
HOUR = 3600.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


def make_store(url: str, now: float | None = None, project: str = "test") -> RedisStore:
    store = RedisStore(url, project=project)
    if now is not None:
        store.clock = lambda: now  # type: ignore[method-assign]
    return store


# -- many clients crossing a window boundary ----------------------------------------------

WORKER_PROCESSES = 8
THREADS_PER_PROCESS = 4
WINDOWS = 4
CHARGES_PER_WINDOW = 25
COST = 0.125  # a binary fraction: any order of additions gives the exact total


def _charge_windows(url: str, barrier: Any, errors: Any, seed: int) -> None:
    """A worker: in each window, wait for everyone, charge with clocks in that window."""
    try:
        rng = random.Random(seed)
        store = make_store(url)
        for window in range(1, WINDOWS + 1):
            start = T0 + window * HOUR
            barrier.wait()
            for i in range(CHARGES_PER_WINDOW):
                # The first charge of each worker lands exactly on the boundary.
                offset = 0.0 if i == 0 else rng.uniform(0, HOUR - 1)
                store.clock = lambda t=start + offset: t  # type: ignore[method-assign]
                store.charge("fleet", COST, "m")
            barrier.wait()
        store.close()
    except BaseException:
        errors.put(traceback.format_exc())
        barrier.abort()


def _worker_process(url: str, barrier: Any, errors: Any, seed: int) -> None:
    threads = [
        threading.Thread(target=_charge_windows, args=(url, barrier, errors, seed * 100 + i))
        for i in range(THREADS_PER_PROCESS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.redis
def test_no_spend_lost_when_many_clients_cross_a_window_boundary(redis_url: str) -> None:
    """32 clients in 8 processes all roll the window at once, four times: no charge is lost.

    LiteLLM's BudgetManager loses spend here: each client sees the window over, resets the
    record and writes back its own charge over the others'.
    """
    ctx = multiprocessing.get_context("fork")
    workers = WORKER_PROCESSES * THREADS_PER_PROCESS
    barrier = ctx.Barrier(workers + 1, timeout=120)
    errors = ctx.Queue()
    store = make_store(redis_url, T0)
    store.set_budget("fleet", None, "1h")
    store.charge("fleet", 7.0, "m")  # spend of the first window, rolled away at the first boundary
    processes = [
        ctx.Process(target=_worker_process, args=(redis_url, barrier, errors, seed)) for seed in range(WORKER_PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        for window in range(1, WINDOWS + 1):
            barrier.wait()  # everyone crosses the boundary into this window
            barrier.wait()  # everyone has charged
            store.clock = lambda w=window: T0 + w * HOUR + HOUR - 0.5  # type: ignore[method-assign]
            record = store.get("fleet")
            assert record is not None
            assert record["current_cost"] == workers * CHARGES_PER_WINDOW * COST
            assert record["model_cost"] == {"m": workers * CHARGES_PER_WINDOW * COST}
            assert record["last_updated_at"] == T0 + window * HOUR
    except threading.BrokenBarrierError:
        pass  # a worker failed: its error is reported below
    except BaseException:
        barrier.abort()
        raise
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in processes] == [0] * WORKER_PROCESSES


# -- the server's side of reservations ----------------------------------------------------


@pytest.mark.redis
def test_the_call_index_lives_as_long_as_the_hold_and_settle_answers_as_the_file_store(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """An expired hold is still settled by its call id until a write drops it, as the file
    store's journal finds it: the index entry has no TTL of its own, it goes with the hold."""
    stores = [make_store(redis_url), FileStore(tmp_path / "user_cost.json")]
    results = []
    for store in stores:
        store.clock = lambda: T0  # type: ignore[method-assign]
        store.set_budget("alice", 1.0)
        store.reserve("alice", "c1", 0.5, ttl=10)
        store.reserve("alice", "c2", 0.5, ttl=10)
        if isinstance(store, RedisStore):
            assert client.pttl("litellm_budget:test:call:c1") == -1  # no expiry: it goes with the hold
        store.clock = lambda: T0 + 100  # type: ignore[method-assign]
        first = store.settle("c1", 0.25, "m")  # expired, nothing written since: found, charged
        # that write dropped c2's expired hold: nothing finds c2 any more
        later = (store.settle("c2", 0.25, "m"), store.release("c2"), store.settle("c2", 0.25, "m", user="alice"))
        results.append((first, later, store.get("alice")))
        store.close()
    assert results[0] == results[1]
    assert results[0][:2] == (True, (False, False, True))
    assert results[0][2] is not None and results[0][2]["current_cost"] == 0.5
    assert client.keys("litellm_budget:test:call:*") == []


@pytest.mark.redis
def test_settling_or_releasing_removes_the_index_entry(redis_url: str, client: redis.Redis) -> None:
    store = make_store(redis_url, T0)
    store.set_budget("alice", 1.0)
    store.reserve("alice", "c1", 0.1, ttl=60)
    store.reserve("alice", "c2", 0.1, ttl=60)
    store.reserve("alice", "c3", 0.1, ttl=30)
    assert store.settle("c1", 0.05, "m") is True
    assert store.release("c2") is True
    assert not client.exists("litellm_budget:test:call:c1", "litellm_budget:test:call:c2")
    store.clock = lambda: T0 + 31  # type: ignore[method-assign]
    store.charge("alice", 0.01, "m")  # a write drops the expired hold c3 and its entry
    assert not client.exists("litellm_budget:test:call:c3")
    assert "r:c3" not in client.hkeys("litellm_budget:test:user:alice")
    assert store.delete("alice") is True
    assert client.keys("litellm_budget:test:*") == ["litellm_budget:test:ledger"]  # history outlives the user


# -- Redis going away ---------------------------------------------------------------------


@pytest.mark.redis
def test_redis_down_names_the_url_and_work_resumes_when_it_returns(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cret-pw") as server:
        store = RedisStore(server.url, project="p", timeout=2)
        store.set_budget("alice", 10.0)
        store.charge("alice", 1.0, "m")
        server.stop()
        for attempt in (
            lambda: store.charge("alice", 1.0, "m"),
            lambda: store.reserve("alice", "c1", 1.0, ttl=60),
            lambda: store.get("alice"),
        ):
            with pytest.raises(StoreUnavailableError) as info:
                attempt()
            message = str(info.value)
            assert f"Redis at redis://127.0.0.1:{server.port}/0 cannot be reached" in message
            assert "s3cret-pw" not in message and "s3cret-pw" not in repr(store)
            assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
        server.start()  # same port, empty: nothing was saved
        assert store.get("alice") is None
        store.set_budget("alice", 10.0)
        assert store.charge("alice", 2.0, "m")["current_cost"] == 2.0
        store.close()


@pytest.mark.redis
def test_nothing_listening_is_unavailable_quickly() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="cannot be reached"):
        store.set_budget("alice", 1.0)
    assert time.monotonic() - started < 2  # no retries with back-off
    store.close()


@pytest.mark.redis
def test_a_key_of_another_type_is_a_store_error(redis_url: str, client: redis.Redis) -> None:
    client.set("litellm_budget:test:user:alice", "not a hash")
    store = make_store(redis_url)
    with pytest.raises(StoreError, match="WRONGTYPE") as info:
        store.charge("alice", 1.0, "m")
    assert not isinstance(info.value, StoreUnavailableError)
    assert client.get("litellm_budget:test:user:alice") == "not a hash"


# -- fork ---------------------------------------------------------------------------------


def _charge_in_child(store: RedisStore, results: Any, worker: int) -> None:
    try:
        inherited = store._client
        for i in range(100):
            store.charge("alice", 0.5, "m", call_id=f"child-{worker}-{i}")
        results.put((store._pid == os.getpid(), store._client is not inherited))
    except BaseException:
        results.put(traceback.format_exc())


@pytest.mark.redis
def test_a_forked_child_gets_its_own_client(redis_url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    store = make_store(redis_url)
    store.set_budget("alice", None)
    store.charge("alice", 0.5, "m")  # the parent's pool now holds an open connection
    results = ctx.Queue()
    children = [ctx.Process(target=_charge_in_child, args=(store, results, n)) for n in range(4)]
    for child in children:
        child.start()
    for i in range(100):  # the parent keeps using its connection meanwhile
        store.charge("alice", 0.5, "m", call_id=f"parent-{i}")
    for child in children:
        child.join(timeout=60)
    assert [results.get(timeout=5) for _ in children] == [(True, True)] * 4
    assert store.get("alice")["current_cost"] == 0.5 * (1 + 100 + 4 * 100)  # type: ignore[index]


# -- key layout ---------------------------------------------------------------------------


@pytest.mark.redis
def test_key_layout_is_namespaced_by_project(redis_url: str, client: redis.Redis) -> None:
    first = make_store(redis_url, T0, project="chatbot")
    second = make_store(redis_url, T0, project="chatbot:user:x")  # ':' is quoted, no clash
    first.set_budget("x", 5.0, "daily")
    first.charge("x", 1.0, "gpt-4o", call_id="c0")
    first.reserve("x", "c1", 1.0, ttl=60)
    second.set_budget("x", 50.0)
    second.charge("x", 20.0, "gpt-4o")
    assert sorted(client.keys("*")) == [
        "litellm_budget:chatbot%3Auser%3Ax:ledger",
        "litellm_budget:chatbot%3Auser%3Ax:user:x",
        "litellm_budget:chatbot%3Auser%3Ax:users",
        "litellm_budget:chatbot:call:c1",
        "litellm_budget:chatbot:ledger",
        "litellm_budget:chatbot:user:x",
        "litellm_budget:chatbot:users",
    ]
    assert [entry.cost for entry in first.ledger()] == [1.0]
    assert [entry.cost for entry in second.ledger()] == [20.0]
    assert client.hgetall("litellm_budget:chatbot:user:x") == {
        "total_budget": "5",
        "current_cost": "1",
        "created_at": "1800000000",
        "last_updated_at": "1800000000",
        "duration": "1",
        "m:gpt-4o": "1",
        "r:c1": "1 1800000060",
        "applied": '[["c0","1800000000"]]',
    }
    assert first.get("x")["current_cost"] == 1.0  # type: ignore[index]
    assert second.get("x")["current_cost"] == 20.0  # type: ignore[index]
    assert list(second.all()) == ["x"] and second.all()["x"]["total_budget"] == 50.0
    assert second.release("c1") is False  # another project's call
    assert second.delete("x") is True
    assert first.get("x") is not None


@pytest.mark.redis
def test_store_from_url_and_manager_pick_the_project(redis_url: str) -> None:
    store = store_from_url(redis_url, project="app")
    assert isinstance(store, RedisStore) and store.prefix == "litellm_budget:app:"
    tls = store_from_url("rediss://u:pw@example.invalid:6380/2")
    assert isinstance(tls, RedisStore) and tls.project == "default"
    assert repr(tls) == "RedisStore('rediss://u@example.invalid:6380/2', project='default')"
    one, two = BudgetManager("one", store=redis_url), BudgetManager("two", store=redis_url)
    one.create_budget(10.0, "alice")
    two.create_budget(20.0, "alice")
    one.update_cost("alice", model="gpt-4o-mini", input_text="hello", output_text="world")
    assert one.get_current_cost("alice") > 0 and two.get_current_cost("alice") == 0.0
    assert (one.get_total_budget("alice"), two.get_total_budget("alice")) == (10.0, 20.0)
    for closable in (store, tls, one, two):
        closable.close()


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"pip install litellm_budget_plugin\[redis\]"):
        store_from_url("redis://localhost:6379/0")


def test_bad_project_and_url_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="project"):
        RedisStore("redis://localhost:6379/0", project=" ")
    with pytest.raises(ConfigurationError, match="bad Redis URL"):
        RedisStore("redis://localhost:notaport/0")


# -- the same arithmetic as budget.py -----------------------------------------------------


@pytest.mark.redis
def test_applied_ids_are_pruned_like_the_file_store(redis_url: str, tmp_path: Path) -> None:
    limit = budget.APPLIED_ID_LIMIT
    last = budget.APPLIED_ID_SLACK * limit  # one more id than the list holds before a prune
    stores = [make_store(redis_url, T0), FileStore(tmp_path / "user_cost.json")]
    for store in stores:
        store.clock = lambda: T0  # type: ignore[method-assign]
        store.set_budget("alice", None)
        for i in range(last + 1):
            store.clock = lambda i=i: T0 + i  # type: ignore[method-assign]
            store.charge("alice", 0.25, "m", call_id=f"c{i}")
    redis_record, file_record = (store.get("alice") for store in stores)
    assert redis_record == file_record
    assert redis_record is not None and len(redis_record["applied"]) == limit
    assert f"c{last - limit}" not in redis_record["applied"] and f"c{last - limit + 1}" in redis_record["applied"]
    stale = T0 + last + budget.APPLIED_ID_SLACK * budget.APPLIED_ID_TTL_SECONDS
    for store in stores:
        store.clock = lambda: stale  # type: ignore[method-assign]
        store.charge("alice", 0.25, "m", call_id="new")  # drops the ids charged too long ago
        record = store.charge("alice", 0.25, "m", call_id=f"c{last}")  # forgotten: charged again
        assert set(record["applied"]) == {"new", f"c{last}"}
        assert record["current_cost"] == 0.25 * (last + 3)
        store.close()


# The clock's steps: mostly within a hold's life, sometimes past hours, days, a month.
STEPS = [0.0, 1.0, 7.0, 60.0, 300.0, 1800.0, 3600.0, 5000.0, 30_000.0, 200_000.0, 2_000_000.0]
STEP_WEIGHTS = [6, 6, 3, 3, 2, 1, 1, 1, 0.5, 0.5, 0.1]
USERS = ["alice", "bob", "carol"]
OTHERS = ["team:red", "team:blue", "tag:a", "tag:b", GLOBAL]
ZONES = [None, None, "Europe/Paris", "America/New_York"]
TAGS = ["tag:a", "tag:b", "tag:c"]  # a call's tags (usage=): tag:c has no budget


def _random_windows(rng: random.Random) -> list[dict[str, Any]]:
    """Windows, some of them overlapping or calendar ones without a calendar length (refused)."""
    windows = []
    for _ in range(rng.randrange(3)):
        window: dict[str, Any] = {
            "budget": rng.choice([0.5, 2.0, 10.0]),
            "duration": rng.choice([None, "1h", "daily", "weekly", "monthly"]),
        }
        if zone := rng.choice(ZONES):
            window["timezone"] = zone
        if rng.random() < 0.4:
            window["model"] = rng.choice(["a", "p/a"])  # one model, with or without its provider
        windows.append(window)
    return windows


def _random_fields(rng: random.Random) -> dict[str, Any]:
    return rng.choice(
        [
            {"team": rng.choice(["red", "blue", None])},
            {"timezone": rng.choice(ZONES)},
            {"windows": _random_windows(rng)},
            {"windows": None},
            {"duration": rng.choice(["daily", "weekly", "1h", None]), "timezone": rng.choice(ZONES)},
            {"current_cost": rng.choice([0.0, 0.5])},
        ]
    )


def _random_operation(rng: random.Random) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    user = rng.choice(USERS)
    key = rng.choice(USERS + OTHERS)  # a budget to configure
    call_id = f"{user}-{rng.randrange(3)}"  # call ids are never shared between users
    cost = rng.choice([0.0, 0.1, 0.25, 0.3, 1.0, 2.5, 1e-9])
    default = rng.choice([None, {"total_budget": 3.0, "duration": "2h"}])
    model = rng.choice(["a", "b", "p/a", "a-2024-08-06", "b-20241022"])
    others = rng.sample(OTHERS, rng.choice([0, 0, 1, 2]))
    usage = rng.choice([None, Usage(rng.randrange(9), rng.randrange(9), tuple(rng.sample(TAGS, rng.randrange(3))))])
    operations: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("set_budget", (key, rng.choice([None, 1.0, 5.0]), rng.choice([None, "1h", 0.5, "daily"])), {}),
        ("set_budget", (key, rng.choice([1.0, 5.0]), "daily"), {"fields": _random_fields(rng)}),
        ("set_fields", (key, _random_fields(rng)), {}),
        ("charge", (user, cost, model), {"call_id": rng.choice([None, call_id]), "subjects": others, "usage": usage}),
        ("charge", (user, cost, "a"), {"default": default}),
        ("reserve", (user, call_id, cost, rng.choice([60, 600, 4000])), {"default": default, "subjects": others}),
        ("reserve", (user, call_id, cost, 600), {"model": model, "subjects": others}),
        ("reserve", (user, call_id, cost, 60, "soft"), {"subjects": others}),
        ("reserve", (user, call_id, cost, 600), {"at_least": 0.05, "model": model, "subjects": others}),
        ("settle", (call_id, cost, model), {"user": rng.choice([None, user]), "usage": usage}),
        ("release", (call_id,), {"user": rng.choice([None, user])}),
        ("reset", (key,), {}),
        ("roll", (key,), {}),
        ("delete", (key,), {}),
        ("put", (user, {"total_budget": 2.0, "current_cost": cost, "note": "imported"}), {}),
    ]
    return rng.choices(operations, weights=[2, 2, 3, 4, 2, 4, 3, 2, 2, 4, 4, 1, 1, 1, 1])[0]


def _rounded(value: Any) -> Any:
    """A value with its floats rounded: the script sums holds in another order than Python."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_rounded(item) for item in value)
    return value


def _outcome(store: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return _rounded(getattr(store, name)(*args, **kwargs))
    except BudgetExceededError as exc:
        return _rounded(("over", exc.subject, exc.spend, exc.budget, exc.estimate, exc.reserved, exc.window))
    except Exception as exc:
        return type(exc).__name__


class ContractStore(RecordStore):
    """The contract's arithmetic and nothing more: base.RecordStore over a dict."""

    def __init__(self) -> None:
        self.records: dict[str, UserRecord] = {}
        self.calls: dict[str, str] = {}  # call id -> the record settle finds it by
        self.entries: list[LedgerEntry] = []

    def _read(self, fn: Callable[[dict[str, UserRecord]], T]) -> T:
        return fn(self.records)

    def _update(self, user: str, fn: Callable[[UserRecord | None], tuple[UserRecord | None, T]]) -> T:
        new, result = fn(self.records.get(user))
        self._keep({user: new})
        return result

    def _update_many(
        self,
        fn: Callable[[Mapping[str, UserRecord]], tuple[Mapping[str, UserRecord | None], T]],
        written: Callable[[T], None] | None = None,
    ) -> T:
        changed, result = fn(self.records)
        self._keep(changed)
        if written is not None:
            written(result)
        return result

    def _record_charges(self, entries: list[LedgerEntry]) -> None:
        self.entries += entries

    def ledger(self, since: float | None = None, until: float | None = None) -> Iterator[LedgerEntry]:
        return iter(in_period(self.entries, *check_period(since, until)))

    def _keep(self, changed: Mapping[str, UserRecord | None]) -> None:
        """Keep the records, and the call index as the file store's journal and the Redis
        store's call keys keep it: a call's user, else (its user's hold gone meanwhile) the
        first other budget written since that still holds it."""
        for key, record in changed.items():
            for call_id in self.records.get(key, {}).get("reservations", {}):
                if self.calls.get(call_id) == key:
                    del self.calls[call_id]
            if record is None:
                self.records.pop(key, None)
                continue
            self.records[key] = record
            for call_id in record.get("reservations", {}):
                if (kind_of(key) == "user" and key != GLOBAL) or call_id not in self.calls:
                    self.calls[call_id] = key

    def _user_of_call(self, call_id: str) -> str | None:
        return self.calls.get(call_id)

    def close(self) -> None:
        pass


@pytest.mark.redis
@pytest.mark.parametrize("reference", ["file", "contract"])
@pytest.mark.parametrize("seed", range(int(os.environ.get("MIRROR_SEEDS", "5"))))
def test_random_operations_give_pythons_results(redis_url: str, tmp_path: Path, seed: int, reference: str) -> None:
    """Budget arithmetic is in Lua for Redis and in budget.py / reservations.py for the others:
    they must agree, teams, tags, more windows and calendar ones included; so must the ledger
    entries, made in Lua and in Python."""
    rng = random.Random(seed)
    now = T0
    redis_store = make_store(redis_url, project=f"seed{seed}")
    python_store = FileStore(tmp_path / "user_cost.json") if reference == "file" else ContractStore()
    clock: Callable[[], float] = lambda: now  # noqa: E731
    redis_store.clock = python_store.clock = clock  # type: ignore[method-assign]
    for step in range(400):
        now += rng.choices(STEPS, weights=STEP_WEIGHTS)[0]
        name, args, kwargs = _random_operation(rng)
        expected = _outcome(python_store, name, args, kwargs)
        assert _outcome(redis_store, name, args, kwargs) == expected, (step, name, args, kwargs)
        assert _rounded(redis_store.all()) == _rounded(python_store.all()), (step, name, args, kwargs)
    kept = now - 80 * 86400.0  # within both stores' retention
    assert list(redis_store.ledger(kept)) == list(python_store.ledger(kept))
    assert len(list(redis_store.ledger())) > 20
    redis_store.close()
    python_store.close()
