"""Writes through ``BudgetManager.user_dict``, as LiteLLM's code makes them, on every store.

LiteLLM's class keeps a live dict: ``manager.user_dict[user]["current_cost"] = 0`` changes
what later calls see and what ``save_data()`` writes. Ours applies each such write to the
store at once, for the fields written and no others.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from litellm_budget_plugin import BudgetManager, ConfigurationError, UnknownUserError
from litellm_budget_plugin.stores import BudgetStore

DAY = 86_400


@pytest.fixture
def two_managers(store_factory: Callable[[], BudgetStore]) -> Iterator[tuple[BudgetManager, BudgetManager]]:
    """Two managers on one store, as two processes of an app would have."""
    yield (
        BudgetManager("contract", store=store_factory()),
        BudgetManager("contract", store=store_factory()),
    )


def charge(manager: BudgetManager, user: str) -> None:
    manager.update_cost(user=user, model="gpt-4o-mini", input_text="hello", output_text="world")


def test_field_writes_are_seen_by_later_calls_and_other_managers(
    two_managers: tuple[BudgetManager, BudgetManager],
) -> None:
    app, other = two_managers
    app.create_budget(total_budget=10, user="alice", duration="daily")
    charge(app, "alice")
    assert app.get_current_cost("alice") > 0

    app.user_dict["alice"]["current_cost"] = 0
    app.user_dict["alice"]["total_budget"] = 20
    assert app.get_current_cost("alice") == 0
    assert other.get_total_budget("alice") == 20
    assert other.user_dict["alice"]["current_cost"] == 0


def test_a_stale_view_writes_only_the_fields_it_changes(two_managers: tuple[BudgetManager, BudgetManager]) -> None:
    app, other = two_managers
    app.create_budget(total_budget=10, user="alice")
    view = app.user_dict["alice"]  # read before the other process charges
    charge(other, "alice")
    charged = other.get_current_cost("alice")
    assert view["current_cost"] == 0 < charged

    view["total_budget"] = 5
    assert app.get_current_cost("alice") == charged  # the stale 0 was not written back
    assert app.get_total_budget("alice") == 5
    assert view["current_cost"] == charged  # the view shows the record as written
    assert view["model_cost"] == other.get_model_cost("alice")


def test_moving_the_window_start_back_resets_the_spend(two_managers: tuple[BudgetManager, BudgetManager]) -> None:
    """LiteLLM's own scenario: last_updated_at a day back, then update_budget_all_users."""
    app, _ = two_managers
    app.create_budget(total_budget=10, user="alice", duration="daily")
    charge(app, "alice")
    app.user_dict["alice"]["last_updated_at"] -= DAY
    app.update_budget_all_users()
    assert app.get_current_cost("alice") == 0
    assert app.get_model_cost("alice") == {}


def test_several_fields_at_once_and_duration(two_managers: tuple[BudgetManager, BudgetManager]) -> None:
    app, other = two_managers
    app.create_budget(total_budget=10, user="alice")
    charge(app, "alice")
    app.user_dict["alice"].update(current_cost=1, model_cost={}, duration="weekly")
    assert other.user_dict["alice"] == {**app.user_dict["alice"], "current_cost": 1, "model_cost": {}, "duration": 7}
    del app.user_dict["alice"]["duration"]
    assert "duration" not in other.user_dict["alice"]
    app.user_dict["alice"]["total_budget"] = None  # no limit
    assert other.get_total_budget("alice") is None


def test_adding_replacing_and_deleting_users(two_managers: tuple[BudgetManager, BudgetManager]) -> None:
    app, other = two_managers
    app.user_dict["bob"] = {"total_budget": 5}  # as LiteLLM's create_budget writes it
    assert other.get_total_budget("bob") == 5
    assert other.get_current_cost("bob") == 0
    charge(app, "bob")
    app.user_dict["bob"] = {"total_budget": 7, "current_cost": 1, "duration": 1}
    assert (other.get_total_budget("bob"), other.get_current_cost("bob")) == (7, 1)
    del app.user_dict["bob"]
    assert not other.is_valid_user("bob")
    with pytest.raises(KeyError):
        del app.user_dict["bob"]


def test_a_write_to_a_user_deleted_meanwhile_raises(two_managers: tuple[BudgetManager, BudgetManager]) -> None:
    app, other = two_managers
    app.create_budget(total_budget=10, user="alice")
    view = app.user_dict["alice"]
    del other.user_dict["alice"]
    with pytest.raises(UnknownUserError, match="alice"):
        view["total_budget"] = 5
    assert not other.is_valid_user("alice")  # not brought back half-made


BAD_WRITES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "unknown field": (lambda d: d["alice"].__setitem__("colour", "x"), r"field 'colour' of user 'alice'"),
    "negative cost": (lambda d: d["alice"].__setitem__("current_cost", -1), r"'current_cost' of user 'alice'.*negat"),
    "NaN budget": (lambda d: d["alice"].__setitem__("total_budget", float("nan")), r"'total_budget'.*finite"),
    "text budget": (lambda d: d["alice"].__setitem__("total_budget", "10"), r"'total_budget'.*number"),
    "bool cost": (lambda d: d["alice"].__setitem__("current_cost", True), r"'current_cost'.*number"),
    "bad duration": (lambda d: d["alice"].__setitem__("duration", "fortnightly"), r"'duration' of user 'alice'"),
    "one bad field of two": (
        lambda d: d["alice"].update(total_budget=1, current_cost=-1),
        r"'current_cost' of user 'alice'",
    ),
    "model_cost in place": (lambda d: d["alice"]["model_cost"].__setitem__("gpt-4o", 0), r"assign the whole dict"),
    "bad model_cost": (lambda d: d["alice"].__setitem__("model_cost", {"gpt-4o": -1}), r"model_cost.*'gpt-4o'"),
    "deleting a field": (lambda d: d["alice"].__delitem__("current_cost"), r"cannot delete field 'current_cost'"),
    "a record that is not a dict": (lambda d: d.__setitem__("bob", 5), r"user_dict\['bob'\] must be a dict"),
    "a bad record": (lambda d: d.__setitem__("bob", {"total_budget": -5}), r"user 'bob'.*negative"),
    "two records, one bad": (
        lambda d: d.update(bob={"total_budget": 1}, carol={"total_budget": "lots"}),
        r"user 'carol'",
    ),
}


@pytest.mark.parametrize(("write", "message"), BAD_WRITES.values(), ids=BAD_WRITES.keys())
def test_a_write_that_cannot_be_made_raises_and_changes_nothing(
    two_managers: tuple[BudgetManager, BudgetManager], write: Callable[[dict[str, Any]], object], message: str
) -> None:
    app, other = two_managers
    app.create_budget(total_budget=10, user="alice", duration="daily")
    charge(app, "alice")
    before = other.user_dict
    with pytest.raises(ConfigurationError, match=message):
        write(app.user_dict)
    assert other.user_dict == before


def test_views_are_dicts_and_their_copies_are_plain(tmp_path: Path) -> None:
    manager = BudgetManager("p", store=tmp_path / "user_cost.json")
    manager.create_budget(total_budget=10, user="alice")
    view = manager.user_dict
    assert isinstance(view, dict) and isinstance(view["alice"], dict)
    assert json.loads(json.dumps(view)) == view
    assert type(dict(view)) is dict and type(view.copy()) is dict
    for made in (copy.deepcopy(view), pickle.loads(pickle.dumps(view))):
        assert type(made) is dict and type(made["alice"]) is dict and type(made["alice"]["model_cost"]) is dict
        made["alice"]["total_budget"] = 1  # changes only the copy
    assert manager.get_total_budget("alice") == 10
    manager.close()


def test_returned_records_write_through_too(tmp_path: Path) -> None:
    """LiteLLM returns its live dict from create_budget, update_cost and reset_cost."""
    manager = BudgetManager("p", store=tmp_path / "user_cost.json")
    manager.create_budget(total_budget=10, user="alice")["total_budget"] = 12
    assert manager.get_total_budget("alice") == 12
    manager.reset_cost("alice")["user"]["current_cost"] = 2
    assert manager.get_current_cost("alice") == 2
    manager.close()


def test_numbers_are_kept_as_given_in_user_cost_json(tmp_path: Path) -> None:
    path = tmp_path / "user_cost.json"
    manager = BudgetManager("p", store=path)
    manager.create_budget(total_budget=10, user="alice", duration="daily", created_at=1_700_000_000)
    manager.user_dict["bob"] = {"total_budget": 3}
    manager.user_dict["bob"]["current_cost"] = 1
    manager.save_data()
    saved = json.loads(path.read_text())
    assert saved["alice"]["total_budget"] == 10 and type(saved["alice"]["total_budget"]) is int
    assert type(saved["alice"]["duration"]) is int and type(saved["alice"]["created_at"]) is int
    assert type(saved["bob"]["total_budget"]) is int and type(saved["bob"]["current_cost"]) is int
    assert '"total_budget": 10,' in path.read_text()
    manager.reset_cost("alice")
    manager.save_data()
    assert json.loads(path.read_text())["alice"]["current_cost"] == 0  # as LiteLLM's reset_cost writes it
    manager.close()
