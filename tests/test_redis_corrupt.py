"""A Redis record holding a field the store would not write: every operation that reads it
raises StoreCorruptError naming the record, before writing anything to any record."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from litellm_budget_plugin import limits
from litellm_budget_plugin.errors import StoreCorruptError
from litellm_budget_plugin.stores.redis import LUA_FILES, RedisStore

pytestmark = pytest.mark.redis

T0 = 1_800_000_000.0
USER, TEAM, TAG = (
    "litellm_budget:corrupt:user:alice",
    "litellm_budget:corrupt:user:team:red",
    "litellm_budget:corrupt:user:tag:a",
)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        client.flushall()
        yield client


@pytest.fixture
def store(redis_server: RedisServer, client: redis.Redis) -> Iterator[RedisStore]:
    made = RedisStore(redis_server.url, project="corrupt")
    made.clock = lambda: T0  # type: ignore[method-assign]
    made.set_budget("alice", 10.0, fields={"team": "red"})
    made.set_budget("team:red", 10.0, fields={"windows": [{"budget": 5.0, "duration": "daily"}]})
    made.set_budget("tag:a", 10.0)
    made.charge("alice", 0.5, "gpt-4o", call_id="c0", subjects=["tag:a"])
    made.reserve("alice", "c1", 1.0, ttl=60, model="gpt-4o", subjects=["tag:a"])
    yield made
    made.close()


def everything(client: redis.Redis) -> dict[str, Any]:
    """Every key of the server and its value."""
    out: dict[str, Any] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        read = {"hash": client.hgetall, "set": client.smembers, "string": client.get, "stream": client.xrange}
        out[key] = read[kind](key)
    return out


CORRUPTIONS = [
    (USER, "current_cost", "a lot"),
    (USER, "current_cost", "nan"),
    (USER, "created_at", "-5"),
    (USER, "overruns", "1.5"),
    (USER, "m:gpt-4o", "inf"),
    (USER, "r:c1", "garbage"),
    (USER, "r:c1", '1 1800000060 {"also": "team:red"}'),
    (USER, "r:c1", '1 1800000060 {"also": [7]}'),
    (USER, "r:c1", "1 1800000060 [1, 2]"),
    (USER, "applied", "not json"),
    (USER, "applied", '{"c0": "1800000000"}'),
    (USER, "applied", '[["c0", 1800000000]]'),
    (USER, "extra", "[1]"),
    (USER, "team", "team:team:red"),
    (TEAM, "windows", "[{"),
    (TEAM, "windows", '{"budget": "5"}'),
    (TEAM, "windows", '[{"budget": "5", "spend": "x", "start": "1800000000"}]'),
    (TEAM, "windows", '[{"budget": "5", "spend": "0", "start": "1800000000", "duration": 1}]'),
    (TEAM, "team", "blue"),
    (TAG, "total_budget", ""),
    (TAG, "r:c1", "1"),
]


OPERATIONS: list[tuple[str, Callable[[RedisStore], object]]] = [
    ("charge", lambda s: s.charge("alice", 0.25, "gpt-4o", subjects=["tag:a"])),
    ("charge with a call id", lambda s: s.charge("alice", 0.25, "gpt-4o", call_id="c2", subjects=["tag:a"])),
    ("reserve", lambda s: s.reserve("alice", "c2", 0.25, ttl=60, subjects=["tag:a"])),
    ("settle", lambda s: s.settle("c1", 0.25, "gpt-4o")),
]


@pytest.mark.parametrize(("key", "field", "value"), CORRUPTIONS)
@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[name for name, _ in OPERATIONS])
def test_a_corrupt_field_raises_before_any_write(
    store: RedisStore,
    client: redis.Redis,
    key: str,
    field: str,
    value: str,
    name: str,
    operation: Callable[[RedisStore], object],
) -> None:
    client.hset(key, field, value)
    before = everything(client)

    with pytest.raises(StoreCorruptError, match=re.escape(repr(key.rsplit("user:", 1)[1]))):
        operation(store)

    assert everything(client) == before


def test_release_reset_and_roll_of_a_corrupt_record_change_nothing(store: RedisStore, client: redis.Redis) -> None:
    client.hset(TEAM, "current_cost", "?")
    before = everything(client)
    for operation in (lambda: store.release("c1"), lambda: store.reset("team:red"), lambda: store.roll("team:red")):
        with pytest.raises(StoreCorruptError, match="'team:red'"):
            operation()
        assert everything(client) == before
    with pytest.raises(StoreCorruptError):
        store.get("team:red")
    assert "team:red" not in store.all()  # left out of the listing, the others read


def test_a_corrupt_record_can_be_replaced_or_deleted(store: RedisStore, client: redis.Redis) -> None:
    client.hset(USER, "applied", "[")
    store.put("alice", {"total_budget": 2.0, "current_cost": 0.5})  # type: ignore[typeddict-item]
    record = store.get("alice")
    assert record is not None and (record["total_budget"], record["current_cost"]) == (2.0, 0.5)
    assert "applied" not in client.hgetall(USER)  # the bad field went with the record it replaced
    client.hset(USER, "current_cost", "?")
    assert store.delete("alice") is True
    assert not client.exists(USER, "litellm_budget:corrupt:call:c1")


def test_the_script_checks_against_the_same_limits() -> None:
    source = "\n".join(resources.files("litellm_budget_plugin.stores").joinpath(name).read_text() for name in LUA_FILES)
    found = re.search(r"^local MAX_TIMESTAMP = (\S+)$", source, re.MULTILINE)
    assert found is not None and float(found.group(1)) == limits.MAX_TIMESTAMP
    days = re.search(r"^local MIN_DAYS, MAX_DAYS = \(1 - 1e-9\) / 86400, (\S+)$", source, re.MULTILINE)
    assert days is not None and float(days.group(1)) == limits.MAX_DURATION_DAYS
    assert limits.MIN_DURATION_SECONDS == 1.0 and limits.SECONDS_PER_DAY == 86_400
