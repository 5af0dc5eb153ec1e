"""What only the Redis store's ledger has: a stream trimmed as it grows, ids from clocks that may
disagree, entries written by hand, reads in pages, and the script agreeing with Python.

The ledger's contract (entries, subjects, periods) is in test_ledger_contract.py, which runs on
Redis too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from redis_server import free_port

from litellm_budget_plugin import ConfigurationError, FileStore, StoreError, StoreUnavailableError
from litellm_budget_plugin.ledger import LedgerEntry, Usage, encode
from litellm_budget_plugin.stores import BudgetStore, _redis_ledger
from litellm_budget_plugin.stores.redis import RedisStore

pytestmark = pytest.mark.redis

T0 = 1_800_000_000.0
DAY = 86400.0
KEY = "litellm_budget:test:ledger"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def stores(redis_url: str) -> Iterator[list[RedisStore]]:
    made: list[RedisStore] = []
    yield made
    for store in made:
        store.close()


def make(stores: list[RedisStore], url: str, now: float = T0, **options: object) -> RedisStore:
    store = RedisStore(url, project="test", **options)  # type: ignore[arg-type]
    at(store, now)
    stores.append(store)
    return store


def stream(client: redis.Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(KEY))


def at(store: BudgetStore, now: float) -> BudgetStore:
    store.clock = lambda: now  # type: ignore[attr-defined]
    return store


def test_the_script_and_python_write_the_same_entries(redis_url: str, stores: list[RedisStore], tmp_path: Path) -> None:
    """The same operations on a file store (entries made in Python) and a Redis store (in Lua)."""
    odd = 'tag:é/"\\\n\u2028 x'  # what JSON escapes, and what cjson escapes that Python does not

    def run(store: BudgetStore) -> list[LedgerEntry]:
        at(store, T0 + 0.1)
        store.set_budget("alice", 10.0, fields={"team": "red/é"})
        store.set_budget("team:red/é", None)
        store.set_budget("tag:a", 5.0)
        store.set_budget(odd, 5.0)
        store.charge("alice", 0.1 + 0.2, "openai/gpt-4o", call_id="c/1", usage=Usage(10**12, 0, ("tag:a",)))
        at(store, T0 + 1 / 3)
        store.charge("alice", 1e-17, "m", subjects=[odd, "tag:a", "tag:none"], usage=Usage(1, 2, ("tag:z", odd)))
        store.reserve("alice", "c2", 0.5, ttl=60, subjects=["tag:a"])
        at(store, T0 + 2.5e-7)
        store.settle("c2", 123456.789012345678, "m", usage=Usage(3, 4, ("tag:b",)))
        store.charge_later("alice", 0.5, "m", call_id="c3", usage=Usage(7, 8))
        store.charge("team:red/é", 2.0, "m", call_id="c4", usage=Usage(0, 0, ("tag:a",)))
        store.charge("alice", 0.0, "m", call_id="c3", usage=Usage(9, 9))  # charged already
        return list(store.ledger())

    file_store = FileStore(tmp_path / "user_cost.json")
    try:
        expected = run(file_store)
    finally:
        file_store.close()
    got = run(make(stores, redis_url))
    assert got == expected
    assert len(got) == 5
    assert got[1].subjects == ("team:red/é", odd, "tag:a", "tag:z")
    assert [(entry.time, entry.cost) for entry in got] == [(e.time, e.cost) for e in expected]  # exact doubles


def test_entries_go_at_the_redis_servers_time(redis_url: str, stores: list[RedisStore], client: redis.Redis) -> None:
    store = make(stores, redis_url, T0 + 0.1234)  # a client clock a year from the server's
    store.set_budget("alice", None)
    before = time.time()
    store.charge("alice", 0.5, "m", call_id="c1", usage=Usage(1, 2, ("tag:x",)))
    store.charge("alice", 0.5, "m")
    after = time.time()
    ((first_id, first), (second_id, _)) = stream(client)
    for entry_id in (first_id, second_id):
        assert before * 1000 - 1 <= int(entry_id.split(b"-")[0]) <= after * 1000 + 1
    assert first == {b"e": encode(LedgerEntry(T0 + 0.1234, "alice", ("tag:x",), "m", 1, 2, 0.5, "c1")).encode()}


def test_a_client_whose_clock_is_ahead_hides_and_trims_nothing(
    redis_url: str, stores: list[RedisStore], client: redis.Redis
) -> None:
    now = time.time()
    ahead = make(stores, redis_url, now + 400 * DAY, ledger_retention_days=90)  # past any retention
    right = make(stores, redis_url, now)
    right.set_budget("alice", None)
    right.charge("alice", 1.0, "m", call_id="before")
    ahead.charge("alice", 2.0, "m", call_id="ahead")
    right.charge("alice", 3.0, "m", call_id="after")
    assert client.xlen(KEY) == 3  # the client ahead trimmed none of the others' entries
    assert [entry.call_id for entry in right.ledger(now - 60, now + 60)] == ["before", "after"]
    assert [entry.call_id for entry in ahead.ledger(now + 399 * DAY)] == ["ahead"]  # its clock: reads all


def test_retention_trims_entries_older_than_it_by_the_servers_clock(
    redis_url: str, stores: list[RedisStore], client: redis.Redis
) -> None:
    now = time.time()
    old = encode(LedgerEntry(1.0, "alice", (), "m", 0, 0, 0.01, None))
    with client.pipeline() as pipe:  # 250 entries of 1970, at ids of 1970
        for n in range(250):
            pipe.xadd(KEY, {"e": old}, id=f"{1000 + n}-0")
        pipe.execute()
    store = make(stores, redis_url, now, ledger_retention_days=2)
    store.set_budget("alice", None)
    assert len(list(store.ledger(0))) == 250  # what is kept is read
    store.charge("alice", 0.01, "m", call_id="new")
    assert client.xlen(KEY) < 100  # trimmed in whole stream nodes (of 100 entries)
    assert [entry.call_id for entry in store.ledger(0)][-1] == "new"


def test_a_cap_keeps_about_that_many_entries(redis_url: str, stores: list[RedisStore], client: redis.Redis) -> None:
    store = make(stores, redis_url, ledger_max_entries=50)
    store.set_budget("alice", None)
    for n in range(300):
        store.charge("alice", 0.01, "m", call_id=f"c{n}")
    assert 50 <= client.xlen(KEY) <= 150
    assert [entry.call_id for entry in store.ledger()][-50:] == [f"c{n}" for n in range(250, 300)]


def test_no_ledger_writes_no_stream(redis_url: str, stores: list[RedisStore], client: redis.Redis) -> None:
    store = make(stores, redis_url, ledger=False)
    store.set_budget("alice", None)
    store.charge("alice", 1.0, "m", usage=Usage(1, 1))
    store.reserve("alice", "c1", 0.5, ttl=60)
    assert store.settle("c1", 0.5, "m") is True
    assert store.get("alice")["current_cost"] == 1.5  # type: ignore[index]
    assert not client.exists(KEY)
    assert list(store.ledger()) == []


@pytest.mark.parametrize(
    "options",
    [
        {"ledger_retention_days": 0},
        {"ledger_retention_days": 10**6},
        {"ledger_retention_days": "90"},
        {"ledger_max_entries": 0},
        {"ledger_max_entries": True},
        {"ledger_max_entries": 1.5},
    ],
)
def test_bad_ledger_options_are_refused(redis_url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="ledger_"):
        RedisStore(redis_url, **options)  # type: ignore[arg-type]


def test_entries_that_do_not_decode_are_skipped_with_a_warning(
    redis_url: str, stores: list[RedisStore], client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(stores, redis_url)
    store.set_budget("alice", None)
    store.charge("alice", 1.0, "m", call_id="good1")
    ms = int(T0 * 1000)
    client.xadd(KEY, {"e": "[1800000000.0,"}, id=f"{ms}-5")  # torn
    client.xadd(KEY, {"e": b"\xff\xfe"}, id=f"{ms}-6")  # not UTF-8
    client.xadd(KEY, {"e": '[1800000000.0,"bob",[],"m",0,0,-1,null]'}, id=f"{ms}-7")  # a negative cost
    client.xadd(KEY, {"other": "x"}, id=f"{ms}-8")  # not an entry's field
    client.xadd(KEY, {"e": " "}, id=f"{ms}-9")
    client.xadd(KEY, {"e": encode(LedgerEntry(T0, "carol", (), "m", 0, 0, 2.0, None)), "x": "y"}, id=f"{ms}-10")
    store.charge("alice", 1.0, "m", call_id="good2")
    with caplog.at_level(logging.WARNING, logger="litellm_budget_plugin.stores.redis"):
        assert [entry.call_id for entry in store.ledger()] == ["good1", "good2"]
    assert "skipped 6 unreadable ledger entries" in caplog.text


def test_reads_go_page_by_page(
    redis_url: str, stores: list[RedisStore], monkeypatch: pytest.MonkeyPatch, client: redis.Redis
) -> None:
    store = make(stores, redis_url)
    store.set_budget("alice", None)
    for n in range(10):
        at(store, T0 + n).charge("alice", 1.0, "m", call_id=f"c{n}")
    monkeypatch.setattr(_redis_ledger, "LEDGER_PAGE", 3)
    commands: list[object] = []
    execute: Callable[..., object] = redis.Redis.execute_command

    def counted(self: redis.Redis, *args: object, **options: object) -> object:
        commands.append(args[0])
        return execute(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counted)
    assert [entry.call_id for entry in store.ledger()] == [f"c{n}" for n in range(10)]
    assert commands.count("XRANGE") == 4
    assert [entry.call_id for entry in store.ledger(T0 + 2, T0 + 8)] == [f"c{n}" for n in range(2, 8)]
    reader = store.ledger()
    assert next(reader).call_id == "c0"  # a page at a time: stopping early reads no more
    # a clock a year from the server's (this test's) reads the whole stream for every period
    assert commands.count("XRANGE") == 4 + 4 + 1


def test_a_ledger_that_cannot_be_written_leaves_the_charge_written_and_logs(
    redis_url: str, stores: list[RedisStore], client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(stores, redis_url)
    store.set_budget("alice", None)
    client.set(KEY, "not a stream")
    with caplog.at_level(logging.ERROR, logger="litellm_budget_plugin.stores.redis"):
        record = store.charge("alice", 1.0, "m", call_id="c1")
        store.reserve("alice", "c2", 0.5, ttl=60)
        assert store.settle("c2", 0.5, "m") is True
    assert record["current_cost"] == 1.0
    assert store.get("alice")["current_cost"] == 1.5  # type: ignore[index]
    assert caplog.text.count("a charge was written but not its ledger entry") == 2
    assert "WRONGTYPE" in caplog.text
    with pytest.raises(StoreError, match="WRONGTYPE"):
        list(store.ledger())


def test_a_calendar_period_asked_for_gives_one_entry(redis_url: str, stores: list[RedisStore]) -> None:
    store = make(stores, redis_url)
    store.set_budget("alice", 5.0, "daily", fields={"timezone": "Europe/Paris"})
    fresh = make(stores, redis_url)  # has met no timezone: the script asks, and runs again
    fresh.charge("alice", 1.0, "m", call_id="c1")
    assert [entry.call_id for entry in fresh.ledger()] == ["c1"]


def test_an_unreachable_server_fails_the_read(stores: list[RedisStore]) -> None:
    store = make(stores, f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    with pytest.raises(StoreUnavailableError):
        store.ledger()  # the server's time is read first
