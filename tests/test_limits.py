"""Every value has a range (limits.py), refused with ConfigurationError on every store, and a
refused value changes nothing for anyone; a record out of range when read is refused for its
user only."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from litellm_budget_plugin import BudgetStore, ConfigurationError, StoreCorruptError, budget, limits

NEST_970: dict[str, Any] = {}
_inner = NEST_970
for _ in range(970):
    _inner["x"] = {}
    _inner = _inner["x"]

BAD_DURATIONS: dict[str, object] = {
    "1e-320 days": 1e-320,
    "a thousandth of a second": "0." + "0" * 300 + "1s",
    "400 digits of days": "9" * 400 + "d",
    "half a second": "0.5s",
    "zero": 0,
    "zero seconds": "0s",
    "negative": -1,
    "infinite": math.inf,
    "NaN": math.nan,
    "101 years": "101y",
    "a million years": "1000000y",
    "36501 days": 36_501,
    "an integer past any double": 10**400,
    "a boolean": True,
    "a list": [1],
    "a long text": "1" * 100 + "d",
}

BAD_AMOUNTS: dict[str, object] = {
    "10**400": 10**400,
    "above the ceiling": 1e16,
    "negative": -0.01,
    "NaN": math.nan,
    "infinite": math.inf,
    "text": "1",
    "a boolean": True,
}

BAD_TIMESTAMPS: dict[str, object] = {
    "negative": -1.0,
    "past the year 3000": 4e10,
    "past the year 9999": 1e15,
    "NaN": math.nan,
    "10**400": 10**400,
}

BAD_TEXTS: dict[str, object] = {
    "empty": "",
    "a lone surrogate": "al\ud800ice",
    "a NUL": "al\x00ice",
    "1025 ASCII bytes": "a" * 1025,
    "513 two-byte characters": "é" * 513,
    "a number": 123,
    "None": None,
}

# record -> why it is refused (put, /v1/put, import, /set_budget all check it)
BAD_RECORDS: dict[str, dict[str, Any]] = {
    "970 levels of nesting": {"total_budget": 1, "note": NEST_970},
    "33 levels of nesting": {"total_budget": 1, "note": json.loads("[" * 33 + "]" * 33)},
    "NaN in an extra field": {"total_budget": 1, "note": {"ratio": math.nan}},
    "infinity in a list": {"total_budget": 1, "note": [1, math.inf]},
    "70 KB of extra fields": {"total_budget": 1, "note": "x" * 70_000},
    "a set in an extra field": {"total_budget": 1, "note": {1, 2}},
    "a tiny duration": {"total_budget": 1, "duration": 1e-320},
    "a far created_at": {"total_budget": 1, "created_at": 1e15},
    "a 7 MB model name": {"total_budget": 1, "model_cost": {"m" * 7_000_000: 0.1}},
    "a lone surrogate model": {"total_budget": 1, "model_cost": {"\udcff": 0.1}},
    "a hold past the year 3000": {"total_budget": 1, "reservations": {"c": {"amount": 0.1, "expires_at": 4e10}}},
    "a huge cost": {"total_budget": 1, "current_cost": 10**400},
}

BAD_FIELDS: dict[str, dict[str, object]] = {
    "tiny duration": {"duration": 1e-320},
    "huge budget": {"total_budget": 10**400},
    "far last_updated_at": {"last_updated_at": 1e15},
    "model name with NUL": {"model_cost": {"a\x00": 1.0}},
}


def bad_ops() -> dict[str, Callable[[BudgetStore], object]]:
    """Every bad input, as a call on a store holding alice and bob."""
    ops: dict[str, Callable[[BudgetStore], object]] = {}
    for name, duration in BAD_DURATIONS.items():
        ops[f"duration {name}"] = lambda s, d=duration: s.set_budget("carol", 1.0, d)  # type: ignore[misc]
        ops[f"duration {name} for a known user"] = lambda s, d=duration: s.set_budget("alice", 1.0, d)  # type: ignore[misc]
        ops[f"default duration {name}"] = lambda s, d=duration: s.charge(  # type: ignore[misc]
            "carol", 0.1, "m", default={"total_budget": 1.0, "duration": d}
        )
    for name, amount in BAD_AMOUNTS.items():
        ops[f"budget {name}"] = lambda s, a=amount: s.set_budget("alice", a)  # type: ignore[misc]
        ops[f"cost {name}"] = lambda s, a=amount: s.charge("alice", a, "m")  # type: ignore[misc]
        ops[f"hold {name}"] = lambda s, a=amount: s.reserve("alice", "c", a, 60.0)  # type: ignore[misc]
    for name, when in BAD_TIMESTAMPS.items():
        ops[f"created_at {name}"] = lambda s, t=when: s.set_budget("alice", 1.0, "daily", t)  # type: ignore[misc]
    for name, text in BAD_TEXTS.items():
        ops[f"user id {name}"] = lambda s, t=text: s.set_budget(t, 1.0)  # type: ignore[misc]
        ops[f"model {name}"] = lambda s, t=text: s.charge("alice", 0.1, t)  # type: ignore[misc]
        if text is not None:
            ops[f"call id {name}"] = lambda s, t=text: s.charge("alice", 0.1, "m", call_id=t)  # type: ignore[misc]
    for name, record in BAD_RECORDS.items():
        ops[f"put {name}"] = lambda s, r=record: s.put("carol", r)  # type: ignore[misc]
        ops[f"put over alice {name}"] = lambda s, r=record: s.put("alice", r)  # type: ignore[misc]
    for name, fields in BAD_FIELDS.items():
        ops[f"set_fields {name}"] = lambda s, f=fields: s.set_fields("alice", f)  # type: ignore[misc]
    for name, ttl in {"zero": 0, "negative": -1, "NaN": math.nan, "ten years": 3.2e8}.items():
        ops[f"ttl {name}"] = lambda s, t=ttl: s.reserve("alice", "c", 0.1, t)  # type: ignore[misc]
    return ops


BAD_OPS = bad_ops()


def test_the_list_of_bad_inputs_is_long() -> None:
    assert len(BAD_OPS) > 120


@pytest.mark.parametrize("attempt", BAD_OPS.values(), ids=BAD_OPS.keys())
def test_a_bad_value_is_refused_and_changes_nothing(
    store: BudgetStore, attempt: Callable[[BudgetStore], object]
) -> None:
    store.set_budget("alice", 5.0, "daily")
    store.charge("alice", 0.25, "gpt", call_id="a1")
    store.set_budget("bob", 2.0)
    before = store.all()
    with pytest.raises(ConfigurationError):
        attempt(store)
    assert store.all() == before


@pytest.mark.parametrize(
    ("duration", "days"),
    [("1s", 1 / 86_400), (1 / 86_400, 1 / 86_400), ("100y", 36_500), (36_500, 36_500), ("yearly", 365)],
)
def test_the_ends_of_the_duration_range_are_accepted(duration: object, days: float) -> None:
    assert budget.parse_duration(duration) == pytest.approx(days)


def test_the_ends_of_the_other_ranges_are_accepted(store: BudgetStore) -> None:
    store.set_budget("a" * limits.MAX_TEXT_BYTES, limits.MAX_AMOUNT, "100y", limits.MAX_TIMESTAMP - 1)
    store.put("carol", {"total_budget": 1, "note": json.loads("[" * 31 + "]" * 31), "size": "x" * 60_000})  # type: ignore[typeddict-unknown-key]
    assert store.get("carol")["note"] == json.loads("[" * 31 + "]" * 31)  # type: ignore[index, typeddict-item]
    assert store.get("a" * limits.MAX_TEXT_BYTES)["total_budget"] == limits.MAX_AMOUNT  # type: ignore[index]


def test_the_error_names_the_value_and_the_problem() -> None:
    with pytest.raises(ConfigurationError, match=r"duration .* is out of range: use 1 second to 100 years"):
        budget.parse_duration("9" * 400 + "d")
    with pytest.raises(ConfigurationError, match="total_budget is out of range"):
        budget.new_record(10**400, None, 0.0)
    with pytest.raises(ConfigurationError, match=r"field 'note.ratio' is nan"):
        budget.check_record("alice", BAD_RECORDS["NaN in an extra field"])
    with pytest.raises(ConfigurationError, match="nested deeper than 32 levels"):
        budget.check_record("alice", BAD_RECORDS["970 levels of nesting"])
    with pytest.raises(ConfigurationError, match=r"user id .* is not valid text"):
        budget.check_user("\ud800")


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 0.5, 86_401, "60", True])
def test_lease_seconds_out_of_range_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        limits.check_lease_seconds(value)


# -- records read back from Redis --------------------------------------------------------


BAD_REDIS_FIELDS: dict[str, dict[str, str]] = {
    "a tiny duration": {"duration": "1e-320"},
    "an infinite budget": {"total_budget": "inf"},
    "a window past the year 9999": {"last_updated_at": "1e15", "duration": "1"},
    "NaN in an extra field": {"extra": '{"note": NaN}'},
    "nesting in an extra field": {"extra": json.dumps({"note": json.loads("[" * 40 + "]" * 40)})},
}


@pytest.mark.parametrize("fields", BAD_REDIS_FIELDS.values(), ids=BAD_REDIS_FIELDS.keys())
def test_a_bad_redis_record_is_refused_for_its_user_only(redis_server: Any, fields: dict[str, str]) -> None:
    import redis

    from litellm_budget_plugin.stores.redis import RedisStore

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
        store = RedisStore(redis_server.url, project="limits")
        store.set_budget("alice", 5.0, "daily")
        store.set_budget("bob", 2.0)
        store.charge("bob", 0.5, "m")
        client.hset(f"{store.prefix}user:alice", mapping=fields)  # written by hand or an older version
    with pytest.raises(StoreCorruptError, match="alice"):
        store.get("alice")
    assert list(store.all()) == ["bob"]
    assert store.get("bob")["current_cost"] == 0.5  # type: ignore[index]
    store.charge("bob", 0.25, "m")
    assert store.get("bob")["current_cost"] == 0.75  # type: ignore[index]
    store.close()


# -- constructors and the manager's arguments --------------------------------------------


@pytest.mark.parametrize("value", [0, -5, math.nan, math.inf, 1e9, 10**400])
def test_the_guard_refuses_a_lease_out_of_range(tmp_path: Path, value: object) -> None:
    from litellm_budget_plugin import BudgetGuard

    with pytest.raises(ConfigurationError, match="lease_seconds"):
        BudgetGuard(str(tmp_path / "user_cost.json"), lease_seconds=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("duration", ["9" * 400 + "d", 1e-320, "0.000001s"])
def test_the_guard_refuses_a_default_duration_out_of_range(tmp_path: Path, duration: object) -> None:
    from litellm_budget_plugin import BudgetGuard

    with pytest.raises(ConfigurationError, match="out of range"):
        BudgetGuard(
            str(tmp_path / "user_cost.json"), unknown_users="create", default_budget=1, default_duration=duration
        )  # type: ignore[arg-type]


MANAGER_BAD_CALLS: dict[str, Callable[[Any], object]] = {
    "update_cost model=123": lambda m: m.update_cost(user="alice", model=123, input_text="a", output_text="b"),
    "update_cost input_text=5": lambda m: m.update_cost(
        user="alice", model="gpt-4o-mini", input_text=5, output_text="b"
    ),
    "update_cost model with NUL": lambda m: m.update_cost(user="alice", model="a\x00", input_text="a", output_text="b"),
    "update_cost user=None": lambda m: m.update_cost(user=None, model="gpt-4o-mini", input_text="a", output_text="b"),
    "projected_cost messages=None": lambda m: m.projected_cost("gpt-4o-mini", None, "alice"),
    "projected_cost messages='hi'": lambda m: m.projected_cost("gpt-4o-mini", "hi", "alice"),
    "projected_cost messages=[1]": lambda m: m.projected_cost("gpt-4o-mini", [1], "alice"),
    "projected_cost model=None": lambda m: m.projected_cost(None, [{"role": "user", "content": "x"}], "alice"),
    "create_budget 10**400": lambda m: m.create_budget(total_budget=10**400, user="alice"),
    "create_budget duration 1e-320": lambda m: m.create_budget(total_budget=1, user="carol", duration=1e-320),
    "create_budget duration of 400 digits": lambda m: m.create_budget(
        total_budget=1, user="carol", duration="9" * 400 + "d"
    ),
}


@pytest.mark.parametrize("call", MANAGER_BAD_CALLS.values(), ids=MANAGER_BAD_CALLS.keys())
def test_the_manager_refuses_bad_arguments_and_changes_nothing(manager: Any, call: Callable[[Any], object]) -> None:
    manager.create_budget(total_budget=5, user="alice", duration="daily")
    manager.create_budget(total_budget=2, user="bob")
    before = manager.store.all()
    with pytest.raises(ConfigurationError):
        call(manager)
    assert manager.store.all() == before


# -- records read from a file, from a deep call stack -------------------------------------


def _at_depth(depth: int, fn: Callable[[], object]) -> object:
    return fn() if depth == 0 else _at_depth(depth - 1, fn)


def test_a_deeply_nested_file_read_from_a_deep_stack_is_a_store_error(tmp_path: Path) -> None:
    """Never a RecursionError: a file nested 970 levels (written by hand) is refused whole,
    with StoreCorruptError, from whatever depth it is read; a record nested deeper than 32
    levels is refused for its user only."""
    from litellm_budget_plugin import FileStore

    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"bob": {"total_budget": 1}, "alice": {"note": ' + b"[" * 970 + b"]" * 970 + b"}}")
    for depth in (0, 400, 900):
        try:
            store = _at_depth(depth, lambda: FileStore(deep))
        except StoreCorruptError:
            continue
        assert isinstance(store, FileStore)
        assert list(store.all()) == ["bob"]
        with pytest.raises(StoreCorruptError, match="nested deeper than 32 levels"):
            store.get("alice")
        store.close()
    shallow = tmp_path / "shallow.json"
    shallow.write_bytes(b'{"bob": {"total_budget": 1}, "alice": {"note": ' + b"[" * 40 + b"]" * 40 + b"}}")
    store = _at_depth(900, lambda: FileStore(shallow))
    assert isinstance(store, FileStore) and list(store.all()) == ["bob"]
    store.close()
