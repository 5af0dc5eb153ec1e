"""The Redis store's budgets beyond the user's: teams, tags, the global budget, more windows,
per-model caps and calendar windows, held and charged in one script call, on a real server.

The shared behaviour is in test_subjects_contract.py (every store); the Lua arithmetic is
compared with Python's in test_redis_store.py (random operations).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from redis_server import RedisServer

from litellm_budget_plugin import ConfigurationError
from litellm_budget_plugin.errors import BudgetRefusal
from litellm_budget_plugin.stores.redis import RedisStore
from litellm_budget_plugin.subjects import GLOBAL

pytestmark = pytest.mark.redis

T0 = 1_800_000_000.0
PARIS = ZoneInfo("Europe/Paris")
HOUR = 3600.0


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """A local time in Paris, as seconds since 1970."""
    return datetime(year, month, day, hour, minute, second, tzinfo=PARIS).timestamp()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        client.flushall()
        yield client


@pytest.fixture
def store(redis_server: RedisServer, client: redis.Redis) -> Iterator[RedisStore]:
    made = at(RedisStore(redis_server.url, project="subjects"), T0)
    yield made
    made.close()


def at(store: RedisStore, now: float) -> RedisStore:
    store.clock = lambda: now  # type: ignore[method-assign]
    return store


def holds(store: RedisStore) -> dict[str, list[str]]:
    return {key: sorted(record.get("reservations", {})) for key, record in store.all().items()}


# -- one atomic admission -----------------------------------------------------------------


def test_a_team_refusal_leaves_no_hold_on_the_user(store: RedisStore) -> None:
    store.set_budget("team:red", 1.0)
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("tag:search", 5.0)
    store.reserve("alice", "c1", 0.75, 60, subjects=["tag:search"])
    before = store.all()
    with pytest.raises(BudgetRefusal) as info:
        store.reserve("alice", "c2", 0.5, 60, subjects=["tag:search"])
    refusal = info.value
    assert (refusal.subject, refusal.spend, refusal.budget, refusal.estimate) == ("team:red", 0.0, 1.0, 0.5)
    assert refusal.reserved == 0.75 and refusal.window == ""
    assert store.all() == before  # nothing held anywhere for c2
    assert holds(store) == {"alice": ["c1"], "team:red": ["c1"], "tag:search": ["c1"]}


def test_a_tag_refusal_comes_after_the_user_and_team_fit(store: RedisStore) -> None:
    """The call's own team (subjects=) and tags are checked too; the first that refuses is named."""
    store.set_budget("alice", 10.0)
    store.set_budget("team:blue", 10.0)
    store.set_budget("tag:a", 0.25)
    with pytest.raises(BudgetRefusal) as info:
        store.reserve("alice", "c1", 0.5, 60, subjects=["team:blue", "tag:a"])
    assert info.value.subject == "tag:a"
    assert holds(store) == {"alice": [], "team:blue": [], "tag:a": []}


def test_the_held_amount_is_the_least_any_budget_leaves(store: RedisStore) -> None:
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 1.0)
    store.charge("team:red", 0.75, "m")
    record = store.reserve("alice", "c1", 1.0, 60, at_least=0.1)
    assert record["reservations"]["c1"]["amount"] == 0.25
    assert store.get("team:red")["reservations"]["c1"]["amount"] == 0.25  # type: ignore[index]
    with pytest.raises(BudgetRefusal) as info:  # 0.25 held of 1: less than 0.5 is left
        store.admit("alice", "c2", 1.0, 60, at_least=0.5)
    assert info.value.subject == "team:red"


def test_charge_lands_in_every_budget_that_held_it_and_tags_without_records_are_left_out(
    store: RedisStore, client: redis.Redis
) -> None:
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 5.0)
    store.set_budget("tag:b", 5.0)
    held = store.reserve("alice", "c1", 1.0, 60, model="gpt-4o", subjects=["tag:a", "tag:b"])
    assert held["reservations"]["c1"] == {"amount": 1.0, "expires_at": T0 + 60, "also": ["team:red", "tag:a", "tag:b"]}
    assert set(store.all()) == {"alice", "team:red", "tag:b"}  # tags without a record hold nothing
    assert client.get("litellm_budget:subjects:call:c1") == "alice"  # the index names the user
    assert store.settle("c1", 0.5, "gpt-4o") is True  # found from the call id alone
    records = store.all()
    assert set(records) == {"alice", "team:red", "tag:b"}  # tag:a has no budget: not tracked
    for key in records:
        assert records[key]["current_cost"] == 0.5 and records[key]["model_cost"] == {"gpt-4o": 0.5}, key
        assert "reservations" not in records[key]
    assert "c1" in records["alice"]["applied"]  # only the user's record remembers the call
    assert "applied" not in records["team:red"] and "applied" not in records["tag:b"]
    assert not client.exists("litellm_budget:subjects:call:c1")
    assert store.settle("c1", 0.5, "gpt-4o") is False
    store.charge("alice", 0.25, "m", subjects=["tag:c", "team:blue"])  # a charge without a hold
    assert {key: record["current_cost"] for key, record in store.all().items()} == {
        "alice": 0.75,
        "team:red": 0.75,  # the user's team
        "team:blue": 0.25,  # the call's own team: tracked without a limit
        "tag:b": 0.5,
    }
    assert store.get("team:blue")["total_budget"] is None  # type: ignore[index]


def test_release_drops_the_holds_of_every_budget(store: RedisStore, client: redis.Redis) -> None:
    store.set_budget("alice", 10.0, fields={"team": "red"})
    store.set_budget("team:red", 5.0)
    store.set_budget("tag:a", 5.0)
    store.reserve("alice", "c1", 1.0, 60, subjects=["tag:a"])
    store.reserve("alice", "c2", 1.0, 60)
    assert store.release("c1") is True
    assert holds(store) == {"alice": ["c2"], "team:red": ["c2"], "tag:a": []}
    assert not client.exists("litellm_budget:subjects:call:c1")
    assert client.get("litellm_budget:subjects:call:c2") == "alice"
    assert store.release("c1") is False


def test_the_global_budget_is_admitted_with_litellms_soft_rule(store: RedisStore) -> None:
    store.set_budget(GLOBAL, 1.0)
    store.set_budget("alice", 10.0)
    store.reserve("alice", "c1", 0.75, 60, subjects=[GLOBAL])
    store.reserve("alice", "c2", 0.75, 60, subjects=[GLOBAL])  # 0.75 held < 1: admitted
    with pytest.raises(BudgetRefusal) as info:
        store.reserve("alice", "c3", 0.01, 60, subjects=[GLOBAL])
    assert info.value.subject == GLOBAL and info.value.reserved == 1.5


def test_forty_threads_on_a_team_budget_admit_exactly_what_fits(store: RedisStore, redis_server: RedisServer) -> None:
    """Forty users of one team reserve at once: the team budget covers ten worst cases."""
    store.set_budget("team:red", 1.25)
    for i in range(40):
        store.set_budget(f"u{i}", 1.0, fields={"team": "red"})
    barrier = threading.Barrier(40)
    admitted: list[str] = []
    refused: list[str] = []

    def call(i: int) -> None:
        own = at(RedisStore(redis_server.url, project="subjects"), T0)
        barrier.wait()
        try:
            own.reserve(f"u{i}", f"c{i}", 0.125, 60)
            admitted.append(f"c{i}")
        except BudgetRefusal as exc:
            assert exc.subject == "team:red"
            refused.append(f"u{i}")
        own.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 10 and len(refused) == 30
    assert sorted(holds(store)["team:red"]) == sorted(admitted)
    for user in refused:
        assert "reservations" not in store.get(user)  # type: ignore[operator]
    for call_id in admitted:
        assert store.settle(call_id, 0.125, "m") is True
    team = store.get("team:red")
    assert team is not None and team["current_cost"] == 1.25 <= team["total_budget"]  # type: ignore[operator]
    assert all("reservations" not in record for record in store.all().values())


# -- more windows, per-model caps -----------------------------------------------------------


def test_a_model_cap_counts_only_its_model(store: RedisStore) -> None:
    store.set_budget("alice", 10.0, fields={"windows": [{"budget": 1.0, "duration": "daily", "model": "gpt-4o"}]})
    held = store.reserve("alice", "c1", 0.75, 60, model="gpt-4o")
    assert held["reservations"]["c1"]["model"] == "gpt-4o"
    store.reserve("alice", "c2", 5.0, 60, model="gpt-4o-mini")  # another model: the cap does not count it
    with pytest.raises(BudgetRefusal) as info:
        store.reserve("alice", "c3", 0.5, 60, model="gpt-4o")
    assert (info.value.subject, info.value.window) == ("alice", "$1 daily on gpt-4o")
    assert (info.value.spend, info.value.budget, info.value.reserved) == (0.0, 1.0, 0.75)
    store.settle("c1", 0.5, "gpt-4o")
    store.settle("c2", 3.0, "gpt-4o-mini")
    record = store.get("alice")
    assert record is not None and record["current_cost"] == 3.5
    assert record["windows"][0]["spend"] == 0.5
    store.reserve("alice", "c3", 0.5, 60, model="gpt-4o")  # 0.5 + 0.5 fits the cap


def test_a_rolling_window_rolls_in_the_script(store: RedisStore) -> None:
    """$5 an hour and $100 a week on one user: each window keeps its own spend and reset."""
    store.set_budget("alice", 100.0, "weekly", fields={"windows": [{"budget": 5.0, "duration": "1h"}]})
    store.charge("alice", 4.0, "m")
    with pytest.raises(BudgetRefusal) as info:
        store.reserve("alice", "c1", 2.0, 60)
    assert info.value.window == "$5 per 0.0416667 days"
    at(store, T0 + 2.5 * HOUR)
    record = store.charge("alice", 2.0, "m")  # the hour rolled: written by the script
    assert record["windows"][0] == {"budget": 5.0, "spend": 2.0, "start": T0 + 2 * HOUR, "duration": 1 / 24}
    assert record["current_cost"] == 6.0


def test_overlapping_windows_are_refused_and_nothing_changes(store: RedisStore) -> None:
    store.set_budget("alice", 10.0, "daily")
    before = store.all()
    for fields in (
        {"windows": [{"budget": 1.0, "duration": "daily"}]},  # the main window's length
        {"windows": [{"budget": 1.0, "duration": "weekly"}, {"budget": 2.0, "duration": "7d"}]},
    ):
        with pytest.raises(ConfigurationError, match="overlaps"):
            store.set_fields("alice", fields)
        with pytest.raises(ConfigurationError, match="overlaps"):
            store.set_budget("alice", 5.0, "daily", fields=fields)
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.set_fields("alice", {"timezone": "Mars/Olympus"})
    assert store.all() == before


def test_setting_windows_keeps_their_spend_while_charges_run(store: RedisStore, redis_server: RedisServer) -> None:
    """set_fields reads and rewrites the record under WATCH: charges made meanwhile are kept,
    and a window given again keeps its spend (budget.with_fields)."""
    store.set_budget("alice", None, fields={"windows": [{"budget": 1000.0, "duration": "weekly"}]})
    stop = threading.Event()

    def charge(worker: int) -> None:
        own = at(RedisStore(redis_server.url, project="subjects"), T0)
        for i in range(100):
            own.charge("alice", 0.125, "m", call_id=f"w{worker}-{i}")
        own.close()

    def configure() -> None:
        own = at(RedisStore(redis_server.url, project="subjects"), T0)
        budget = 1000.0
        while not stop.is_set():
            budget += 1
            own.set_fields("alice", {"windows": [{"budget": budget, "duration": "weekly"}]})
        own.close()

    chargers = [threading.Thread(target=charge, args=(n,)) for n in range(4)]
    configurer = threading.Thread(target=configure)
    configurer.start()
    for thread in chargers:
        thread.start()
    for thread in chargers:
        thread.join()
    stop.set()
    configurer.join()
    record = store.get("alice")
    assert record is not None and record["current_cost"] == 4 * 100 * 0.125
    assert record["windows"][0]["spend"] == 4 * 100 * 0.125 and record["windows"][0]["budget"] > 1000.0


# -- calendar windows ---------------------------------------------------------------------


def test_a_calendar_day_resets_at_midnight_in_paris_across_a_dst_day(redis_server: RedisServer) -> None:
    """The team's day is Paris's: 28 March 2027 lasts 23 hours. Each step uses a new client, so
    each first meets the calendar window without its period and asks for it."""

    def at_paris(*when: int) -> RedisStore:
        return at(RedisStore(redis_server.url, project="paris"), paris(*when))

    assert paris(2027, 3, 29) - paris(2027, 3, 28) == 23 * HOUR
    at_paris(2027, 3, 27, 23, 30).set_budget("team:red", 1.0, "daily", fields={"timezone": "Europe/Paris"})
    at_paris(2027, 3, 27, 23, 30).set_budget("alice", 10.0, fields={"team": "red"})
    at_paris(2027, 3, 27, 23, 30).charge("alice", 0.75, "m")
    with pytest.raises(BudgetRefusal) as info:
        at_paris(2027, 3, 27, 23, 59, 59).reserve("alice", "c0", 0.5, 60)
    assert info.value.subject == "team:red"
    at_paris(2027, 3, 28, 0, 0).reserve("alice", "c1", 0.5, 60)  # midnight: a new day
    team = at_paris(2027, 3, 28, 0, 0).get("team:red")
    assert team is not None and team["current_cost"] == 0.0 and team["last_updated_at"] == paris(2027, 3, 28)
    at_paris(2027, 3, 28, 0, 10).settle("c1", 0.75, "m")
    # 23:50 local is 22h50 later: a rolling day would have reset at 01:00 UTC+2
    late = at_paris(2027, 3, 28, 23, 50)
    with pytest.raises(BudgetRefusal):
        late.reserve("alice", "c2", 0.5, 60)
    assert late.get("team:red")["current_cost"] == 0.75  # type: ignore[index]
    next_day = at_paris(2027, 3, 29, 0, 0, 1)
    record = next_day.roll("team:red")
    assert record["current_cost"] == 0.0 and record["last_updated_at"] == paris(2027, 3, 29)


def test_a_calendar_month_window_and_the_fall_back_day(redis_server: RedisServer) -> None:
    """A monthly window in Paris beside a rolling main one: resets on the 1st at local midnight,
    after a 25-hour last Sunday of October."""
    store = at(RedisStore(redis_server.url, project="month"), paris(2027, 10, 31, 12))
    store.set_budget(
        "alice", None, fields={"windows": [{"budget": 2.0, "duration": "monthly", "timezone": "Europe/Paris"}]}
    )
    assert store.get("alice")["windows"][0]["start"] == paris(2027, 10, 1)  # type: ignore[index]
    store.charge("alice", 1.5, "m")
    at(store, paris(2027, 10, 31, 23, 59))
    with pytest.raises(BudgetRefusal) as info:
        store.reserve("alice", "c1", 1.0, 60)
    assert info.value.window == "$2 monthly (calendar, Europe/Paris)"
    at(store, paris(2027, 11, 1))
    record = store.charge("alice", 1.0, "m")
    assert record["windows"][0]["start"] == paris(2027, 11, 1) and record["windows"][0]["spend"] == 1.0
    assert record["current_cost"] == 2.5  # the main window never resets
    assert paris(2027, 11, 1) - paris(2027, 10, 31) == 25 * HOUR


def test_a_record_changed_to_another_timezone_is_asked_for_again(store: RedisStore) -> None:
    """A client that knows one timezone's period meets another: the script asks, nothing is
    written by the first try, the second writes once."""
    store.set_budget("alice", 5.0, "daily", fields={"timezone": "Europe/Paris"})
    store.charge("alice", 1.0, "m")
    store.set_fields("alice", {"timezone": "Asia/Tokyo"})
    at(store, datetime(2027, 1, 16, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp())
    record: dict[str, Any] = dict(store.charge("alice", 1.0, "m", call_id="once"))
    assert record["current_cost"] == 1.0 and list(record["applied"]) == ["once"]
    assert record["last_updated_at"] == datetime(2027, 1, 16, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
