"""BudgetManager with budgets beyond a user's: teams, tags, more windows, calendar resets.

Every test runs on a real FileStore (the ``manager`` fixture of conftest); bad input is a
ConfigurationError naming the bad value, and the store is left as it was.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import litellm
import pytest

from litellm_budget_plugin import BudgetExceededError, BudgetManager, ConfigurationError, FileStore

PARIS = ZoneInfo("Europe/Paris")
NOON = datetime(2026, 3, 28, 12, 0, tzinfo=PARIS).timestamp()


def at(manager: BudgetManager, now: float) -> BudgetManager:
    cast(FileStore, manager.store).clock = lambda: now
    return manager


def test_a_team_budget_is_a_record_and_a_user_joins_it(manager: BudgetManager) -> None:
    team = manager.create_budget(total_budget=50, user="team:red", duration="monthly")
    alice = manager.create_budget(5, "alice", "daily", team="red")

    assert team["total_budget"] == 50 and team["duration"] == 28
    assert alice["team"] == "red" and alice["total_budget"] == 5
    assert set(manager.get_users()) == {"team:red", "alice"}

    manager.update_cost("alice", model="gpt-4o-mini", input_text="hello", output_text="hi there")

    cost = manager.get_current_cost("alice")
    assert cost > 0 and manager.get_current_cost("team:red") == pytest.approx(cost)  # charged to both


def test_windows_and_a_timezone_are_set_in_one_write_and_each_counts(manager: BudgetManager) -> None:
    at(manager, NOON)
    record = manager.create_budget(
        5,
        "alice",
        "daily",
        timezone="Europe/Paris",
        windows=[
            {"budget": 100, "duration": "monthly", "timezone": "Europe/Paris"},
            {"budget": 1, "duration": "daily", "model": "gpt-4o"},
        ],
    )

    assert record["timezone"] == "Europe/Paris"
    assert record["last_updated_at"] == datetime(2026, 3, 28, tzinfo=PARIS).timestamp()  # local midnight
    month, cap = record["windows"]
    assert (month["budget"], month["duration"], month["spend"]) == (100, 28, 0.0)
    assert month["start"] == datetime(2026, 3, 1, tzinfo=PARIS).timestamp()  # the 1st of the month
    assert (cap["model"], cap["duration"]) == ("gpt-4o", 1)

    manager.update_cost("alice", model="gpt-4o", input_text="hello " * 50, output_text="hi " * 50)
    manager.update_cost("alice", model="gpt-4o-mini", input_text="hello", output_text="hi")

    windows = manager.user_dict["alice"]["windows"]
    spent = manager.get_current_cost("alice")
    assert windows[0]["spend"] == pytest.approx(spent)  # every call counts in the month
    assert 0 < windows[1]["spend"] < spent  # the gpt-4o cap counts gpt-4o only
    with pytest.raises(BudgetExceededError) as refused:  # the cap refuses gpt-4o past $1
        manager.store.reserve("alice", "c1", 1.0, ttl=60, model="gpt-4o")
    assert refused.value.window == "$1 daily on gpt-4o"


def test_create_budget_again_keeps_the_team_and_windows_unless_given(manager: BudgetManager) -> None:
    manager.create_budget(5, "alice", "daily", team="red", windows=[{"budget": 100, "duration": "monthly"}])
    manager.update_cost("alice", model="gpt-4o-mini", input_text="hello", output_text="hi")
    spent = manager.get_current_cost("alice")

    again = manager.create_budget(8, "alice", "daily")  # LiteLLM's call: only the budget changes

    assert again["team"] == "red" and again["windows"][0]["budget"] == 100
    assert again["current_cost"] == spent and again["windows"][0]["spend"] == pytest.approx(spent)
    moved = manager.create_budget(8, "alice", "daily", team="blue", windows=[{"budget": 50, "duration": "30d"}])
    assert moved["team"] == "blue" and [w["budget"] for w in moved["windows"]] == [50]


def test_user_dict_sets_a_team_and_windows_through_to_the_store(manager: BudgetManager) -> None:
    manager.create_budget(5, "alice", "daily")

    manager.user_dict["alice"]["team"] = "red"
    manager.user_dict["alice"]["windows"] = [{"budget": 9, "duration": "weekly"}]

    record = manager.store.get("alice")
    assert record is not None and record["team"] == "red" and record["windows"][0]["budget"] == 9
    with pytest.raises(ConfigurationError, match="team must not be empty"):
        manager.user_dict["alice"]["team"] = ""
    assert manager.store.get("alice") == record


def test_user_dict_drops_a_team_windows_or_timezone(manager: BudgetManager) -> None:
    manager.create_budget(5, "alice", "daily", team="red", timezone="UTC", windows=[{"budget": 9, "duration": "7d"}])

    for field in ("team", "windows", "timezone"):
        del manager.user_dict["alice"][field]

    record = manager.user_dict["alice"]
    assert "team" not in record and "windows" not in record and "timezone" not in record
    with pytest.raises(ConfigurationError, match="cannot delete field 'total_budget'"):
        del manager.user_dict["alice"]["total_budget"]


def test_update_cost_charges_the_calls_own_team_and_tags(manager: BudgetManager) -> None:
    manager.create_budget(5, "alice")
    manager.create_budget(1, "tag:search")

    manager.update_cost(
        "alice", model="gpt-4o-mini", input_text="hello", output_text="hi", team="blue", tags=["search", "beta"]
    )

    cost = manager.get_current_cost("alice")
    for key in ("team:blue", "tag:search"):  # a team without a budget is tracked
        assert manager.get_current_cost(key) == pytest.approx(cost)
    assert manager.get_total_budget("team:blue") is None
    assert manager.store.get("tag:beta") is None  # a tag without a budget is not


def test_litellms_own_class_reads_team_and_window_records(
    tmp_path: Path, manager: BudgetManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager.create_budget(50, "team:red", "monthly", windows=[{"budget": 5, "duration": "daily", "model": "gpt-4o"}])
    manager.create_budget(5, "alice", "daily", team="red")
    manager.save_data()
    (tmp_path / "litellm").mkdir()
    (tmp_path / "litellm" / "user_cost.json").write_text((tmp_path / "user_cost.json").read_text())
    monkeypatch.chdir(tmp_path / "litellm")
    before = set(threading.enumerate())
    theirs = litellm.BudgetManager(project_name="test_project")
    for thread in set(threading.enumerate()) - before:
        thread.join(10)

    assert theirs.get_total_budget("team:red") == 50
    assert theirs.user_dict["alice"]["team"] == "red"
    assert theirs.user_dict["team:red"]["windows"][0]["model"] == "gpt-4o"


BAD: dict[str, tuple[Callable[[BudgetManager], object], str]] = {
    "unknown kind": (lambda m: m.create_budget(5, "foo:bar"), "unknown subject kind 'foo'"),
    "team without a name": (lambda m: m.create_budget(5, "team:"), "names no team"),
    "timezone that does not exist": (
        lambda m: m.create_budget(5, "alice", "daily", timezone="Mars/Olympus"),
        "timezone 'Mars/Olympus' does not exist",
    ),
    "timezone without a calendar duration": (
        lambda m: m.create_budget(5, "alice", "10d", timezone="Europe/Paris"),
        "day, week, month or year",
    ),
    "two windows of the same length": (
        lambda m: m.create_budget(
            5, "alice", windows=[{"budget": 1, "duration": "weekly"}, {"budget": 2, "duration": "7d"}]
        ),
        "two windows of the same length",
    ),
    "a window as long as the main one": (
        lambda m: m.create_budget(5, "alice", "daily", windows=[{"budget": 1, "duration": "1d"}]),
        "overlaps the main window",
    ),
    "a window without a budget": (
        lambda m: m.create_budget(5, "alice", windows=[{"duration": "weekly"}]),
        "window 0 needs a budget",
    ),
    "windows not a list": (lambda m: m.create_budget(5, "alice", windows={"budget": 1}), "must be a list"),  # type: ignore[arg-type]
    "a team name that is empty": (lambda m: m.create_budget(5, "alice", team=""), "team must not be empty"),
    "a team name that is blank": (lambda m: m.create_budget(5, "alice", team="  "), "must name a team"),
    "a team that is not text": (lambda m: m.create_budget(5, "alice", team=7), "team must be a string"),  # type: ignore[arg-type]
    "tags not strings": (
        lambda m: m.update_cost("alice", model="gpt-4o-mini", input_text="a", output_text="b", tags=["ok", 3]),
        "tags must be strings, got int 3",
    ),
    "tags as one string": (
        lambda m: m.update_cost("alice", model="gpt-4o-mini", input_text="a", output_text="b", tags="search"),
        "tags must be a list of strings",
    ),
    "too many tags": (
        lambda m: m.update_cost(
            "alice", model="gpt-4o-mini", input_text="a", output_text="b", tags=[f"t{i}" for i in range(40)]
        ),
        "at most 32 tags",
    ),
    "a call's team that is empty": (
        lambda m: m.update_cost("alice", model="gpt-4o-mini", input_text="a", output_text="b", team=""),
        "team must not be empty",
    ),
}


@pytest.mark.parametrize(("call", "message"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, manager: BudgetManager, call: Callable[[BudgetManager], object], message: str
) -> None:
    manager.create_budget(5, "alice", "weekly", team="red")
    manager.create_budget(50, "team:red", "monthly")
    manager.update_cost("alice", model="gpt-4o-mini", input_text="hello", output_text="hi")
    before = manager.store.all()
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(ConfigurationError, match=message):
        call(manager)

    assert manager.store.all() == before
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_the_file_keeps_litellms_shape_with_the_new_fields(tmp_path: Path, manager: BudgetManager) -> None:
    manager.create_budget(5, "alice", "daily", team="red", windows=[{"budget": 9, "duration": "weekly"}])
    manager.save_data()

    written: dict[str, Any] = json.loads((tmp_path / "user_cost.json").read_text())

    alice = written["alice"]
    assert {"total_budget", "current_cost", "model_cost", "duration", "created_at", "last_updated_at"} <= set(alice)
    assert alice["team"] == "red" and alice["windows"][0]["budget"] == 9
