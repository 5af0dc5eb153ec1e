"""The budget server and HttpStore with teams, tags, more windows and per-model caps.

Requests go through a real socket to a server in this process (tests/server_thread.py) over
one FileStore per project. Every bad body is answered 400 before a store is touched, and the
project's file is left as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from server_thread import ServerThread, directory_stores
from test_server import assert_error, file_records, post

from litellm_budget_plugin import BudgetExceededError, ConfigurationError
from litellm_budget_plugin.stores.http import HttpStore
from litellm_budget_plugin.subjects import MAX_TAGS


@pytest.fixture
def budget_server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(directory_stores(tmp_path)) as running:
        yield running


@pytest.fixture
def red(budget_server: ServerThread) -> HttpStore:
    """Project "p": alice ($1 a day) in team red ($1), bob in no team, tag search ($3)."""
    store = HttpStore(budget_server.url, project_name="p")
    store.set_budget("alice", 1.0, "daily", fields={"team": "red"})
    store.set_budget("team:red", 1.0, "monthly")
    store.set_budget("bob", 5.0)
    store.set_budget("tag:search", 3.0)
    store.charge("team:red", 0.8, "m", call_id="seed")
    return store


def test_a_multi_subject_reserve_refused_by_the_team_names_it_and_holds_nothing(
    budget_server: ServerThread, red: HttpStore
) -> None:
    before = red.all()
    body = {"project_name": "p", "user": "alice", "call_id": "c1", "amount": 0.3, "ttl": 60, "subjects": ["tag:search"]}

    answer = assert_error(post(budget_server.url + "/v1/reserve", body), 402, "budget_exceeded")

    assert (answer["subject"], answer["user"], answer["window"]) == ("team:red", "team:red", "")
    assert (answer["spend"], answer["budget"], answer["estimate"]) == (pytest.approx(0.8), 1.0, 0.3)
    assert "team 'red'" in answer["message"]
    assert red.all() == before  # no hold on alice, none on the tag
    with pytest.raises(BudgetExceededError) as refused:  # the client raises what the server said
        red.admit("alice", "c2", 0.3, ttl=60, subjects=["tag:search"])
    assert (refused.value.subject, refused.value.window, refused.value.estimate) == ("team:red", "", 0.3)
    assert isinstance(refused.value, litellm.BudgetExceededError)
    assert red.all() == before


def test_a_call_is_held_and_charged_in_every_budget_in_one_request(red: HttpStore) -> None:
    held = red.admit("bob", "c1", 0.15, ttl=60, subjects=["team:red", "tag:search"])  # the call's own team

    assert held == 0.15
    for key in ("bob", "team:red", "tag:search"):
        assert red.get(key)["reservations"]["c1"]["amount"] == 0.15  # type: ignore[index]
    red.charge_later("bob", 0.1, "gpt-4o-mini", call_id="c1", held=held, subjects=["team:red", "tag:search"])

    for key, spent in (("bob", 0.1), ("team:red", 0.9), ("tag:search", 0.1)):
        record = red.get(key)
        assert record is not None and record["current_cost"] == pytest.approx(spent), key
        assert record.get("reservations", {}) == {}, key


def test_a_refusal_by_a_window_or_a_model_cap_names_the_window(red: HttpStore) -> None:
    cap = {"budget": 0.5, "duration": "daily", "model": "gpt-4o"}
    red.set_fields("bob", {"windows": [{"budget": 2.0, "duration": "weekly"}, cap]})
    red.charge("bob", 0.4, "gpt-4o")

    with pytest.raises(BudgetExceededError) as capped:
        red.reserve("bob", "c1", 0.2, ttl=60, model="gpt-4o")
    red.reserve("bob", "c2", 0.2, ttl=60, model="gpt-4o-mini")  # other models are not capped
    red.charge("bob", 1.4, "gpt-4o-mini", call_id="c2")
    with pytest.raises(BudgetExceededError) as weekly:
        red.reserve("bob", "c3", 0.3, ttl=60, model="gpt-4o-mini")

    assert (capped.value.subject, capped.value.window, capped.value.budget) == ("bob", "$0.5 daily on gpt-4o", 0.5)
    assert (weekly.value.window, weekly.value.spend) == ("$2 weekly", pytest.approx(1.8))


def test_set_budget_with_fields_is_one_request(red: HttpStore) -> None:
    record = red.set_budget(
        "carol",
        2.0,
        "daily",
        fields={
            "team": "team:red",
            "timezone": "Europe/Paris",
            "windows": [{"budget": 40, "duration": "monthly", "timezone": "Europe/Paris"}],
        },
    )

    assert record["team"] == "red" and record["timezone"] == "Europe/Paris"
    assert record["windows"][0]["duration"] == 28 and record["windows"][0]["spend"] == 0
    assert red.get("carol") == record
    dropped = red.set_fields("carol", {"team": None, "timezone": None, "windows": None})
    assert not {"team", "timezone", "windows"} & set(dropped)


def test_litellms_get_and_set_budget_keep_teams_and_windows(budget_server: ServerThread, red: HttpStore) -> None:
    red.set_fields("alice", {"windows": [{"budget": 9.0, "duration": "weekly"}]})
    red.reserve("alice", "in-flight", 0.1, ttl=600)  # held in alice and team red
    theirs = litellm.BudgetManager("p", client_type="hosted", api_base=budget_server.url)

    assert theirs.user_dict["alice"]["team"] == "red"
    assert theirs.user_dict["alice"]["windows"][0]["budget"] == 9.0
    assert theirs.get_total_budget("team:red") == 1.0

    before = set(threading.enumerate())
    theirs.create_budget(2.0, "bob")  # LiteLLM rewrites bob, sends every record back
    theirs.save_data()
    for thread in set(threading.enumerate()) - before:
        thread.join(10)

    assert red.get("bob")["total_budget"] == 2.0  # type: ignore[index]
    alice, team = red.get("alice"), red.get("team:red")
    assert alice is not None and team is not None
    assert alice["team"] == "red" and alice["windows"][0]["budget"] == 9.0
    assert "in-flight" in alice.get("reservations", {}) and "in-flight" in team.get("reservations", {})


# --- bad bodies: 400, nothing changed ------------------------------------------------------

RESERVE = {"user": "alice", "call_id": "c9", "amount": 0.1, "ttl": 60}
CHARGE = {"user": "alice", "cost": 0.1, "model": "m"}
BAD_BODIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "subjects as one string": ("/v1/reserve", {**RESERVE, "subjects": "team:red"}, "list of budget keys"),
    "an unknown subject kind": ("/v1/reserve", {**RESERVE, "subjects": ["foo:bar"]}, "unknown subject kind 'foo'"),
    "a subject that is a number": ("/v1/reserve", {**RESERVE, "subjects": [7]}, "must be budget keys"),
    "an empty subject": ("/v1/reserve", {**RESERVE, "subjects": [""]}, "must not be empty"),
    "a team without a name": ("/v1/reserve", {**RESERVE, "subjects": ["team:"]}, "names no team"),
    "too many subjects": (
        "/v1/reserve",
        {**RESERVE, "subjects": [f"tag:{i}" for i in range(MAX_TAGS + 3)]},
        "at most",
    ),
    "a model that is a number": ("/v1/reserve", {**RESERVE, "model": 5}, "model must be a string"),
    "an empty model": ("/v1/reserve", {**RESERVE, "model": ""}, "model must not be empty"),
    "charge subjects as an object": ("/v1/charge", {**CHARGE, "subjects": {"team:red": 1}}, "list of budget keys"),
    "charge to an unknown kind": ("/v1/charge", {**CHARGE, "subjects": ["taem:red"]}, "unknown subject kind 'taem'"),
    "a budget for an unknown kind": ("/v1/set_budget", {"user": "foo:bar", "total_budget": 1}, "unknown subject"),
    "a budget for a team without a name": ("/v1/set_budget", {"user": "team: ", "total_budget": 1}, "names no team"),
    "fields that are not an object": ("/v1/set_budget", {"user": "alice", "total_budget": 1, "fields": []}, "object"),
    "a field of no budget": (
        "/v1/set_budget",
        {"user": "alice", "total_budget": 1, "fields": {"colour": "red"}},
        "not a field of a budget",
    ),
    "a timezone that does not exist": (
        "/v1/set_budget",
        {"user": "alice", "total_budget": 1, "duration": "daily", "fields": {"timezone": "Mars/Olympus"}},
        "'Mars/Olympus' does not exist",
    ),
    "a timezone on a 10-day window": (
        "/v1/set_budget",
        {"user": "alice", "total_budget": 1, "duration": "10d", "fields": {"timezone": "Europe/Paris"}},
        "day, week, month or year",
    ),
    "two windows of the same length": (
        "/v1/set_budget",
        {"user": "dan", "total_budget": 1, "fields": {"windows": [{"budget": 1, "duration": "7d"}] * 2}},
        "two windows of the same length",
    ),
    "a window as long as the main one": (
        "/v1/set_fields",
        {"user": "alice", "fields": {"windows": [{"budget": 1, "duration": "1d"}]}},
        "overlaps the main window",
    ),
    "a negative window": (
        "/v1/set_fields",
        {"user": "alice", "fields": {"windows": [{"budget": -1, "duration": "7d"}]}},
        "must not be negative",
    ),
    "a window of unknown fields": (
        "/v1/set_fields",
        {"user": "alice", "fields": {"windows": [{"budget": 1, "every": "day"}]}},
        "unknown fields",
    ),
    "nine windows": (
        "/v1/set_fields",
        {"user": "bob", "fields": {"windows": [{"budget": 1, "duration": f"{d}h"} for d in range(1, 10)]}},
        "at most 8 windows",
    ),
    "an empty team": ("/v1/set_fields", {"user": "alice", "fields": {"team": ""}}, "team must not be empty"),
    "a team that is a number": ("/v1/set_fields", {"user": "alice", "fields": {"team": 5}}, "must be a string"),
    "a record under an unknown kind": ("/v1/put", {"user": "foo:bar", "record": {"total_budget": 1}}, "unknown"),
    "a record with a bad window": (
        "/v1/put",
        {"user": "bob", "record": {"total_budget": 1, "windows": [{"budget": "lots"}]}},
        "must be a number",
    ),
    "litellm's save with an unknown kind": (
        "/set_budget",
        {"user_dict": {"amy": {"total_budget": 1}, "foo:bar": {"total_budget": 1}}},
        "unknown subject kind 'foo'",
    ),
    "litellm's save with an empty team": (
        "/set_budget",
        {"user_dict": {"amy": {"total_budget": 1}, "zed": {"total_budget": 1, "team": ""}}},
        "team must not be empty",
    ),
    "litellm's save with overlapping windows": (
        "/set_budget",
        {"user_dict": {"zed": {"total_budget": 1, "duration": 1, "windows": [{"budget": 2, "duration": 1}]}}},
        "overlaps the main window",
    ),
}


@pytest.mark.parametrize(("path", "body", "message"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_are_refused_with_400_and_change_nothing(
    budget_server: ServerThread, red: HttpStore, tmp_path: Path, path: str, body: dict[str, Any], message: str
) -> None:
    before = file_records(tmp_path / "p.json")

    answer = assert_error(post(budget_server.url + path, {"project_name": "p", **body}), 400, "invalid_request")

    assert message in answer["message"], answer["message"]
    assert file_records(tmp_path / "p.json") == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == ["p.json"]


BAD_CALLS: dict[str, tuple[Callable[[HttpStore], object], str]] = {
    "a budget for an unknown kind": (lambda s: s.set_budget("foo:bar", 1.0), "unknown subject kind"),
    "subjects as one string": (lambda s: s.reserve("alice", "c", 0.1, 60, subjects="team:red"), "list of budget"),
    "a subject that is a number": (lambda s: s.charge("alice", 0.1, "m", subjects=[7]), "must be budget keys"),  # type: ignore[list-item]
    "a model that is a number": (lambda s: s.reserve("alice", "c", 0.1, 60, model=5), "model must be a string"),  # type: ignore[arg-type]
    "a timezone that does not exist": (
        lambda s: s.set_budget("alice", 1.0, "daily", fields={"timezone": "Mars/Olympus"}),
        "does not exist",
    ),
    "a window as long as the main one": (  # found by the server's store, under its lock
        lambda s: s.set_fields("alice", {"windows": [{"budget": 1, "duration": "daily"}]}),
        "overlaps the main window",
    ),
}


@pytest.mark.parametrize(("call", "message"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_http_store_refuses_bad_arguments_and_changes_nothing(
    red: HttpStore, call: Callable[[HttpStore], object], message: str
) -> None:
    before = red.all()

    with pytest.raises(ConfigurationError, match=message):
        call(red)

    assert red.all() == before
