"""The drop-in BudgetManager, checked against LiteLLM's own class where they should agree.

LiteLLM's ``litellm.BudgetManager`` always works on ``./user_cost.json`` and saves from
background threads; :func:`litellm_manager` runs it in a folder of its own and waits for
those threads, so nothing it writes lands elsewhere or after the test.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import filelock
import litellm
import pytest
from litellm import completion

from litellm_budget_plugin import (
    BudgetManager,
    ConfigurationError,
    FileStore,
    StoreCorruptError,
    StoreError,
    StoreLockTimeout,
    UnknownModelError,
    UnknownUserError,
    register_price,
)
from litellm_budget_plugin.stores import STORE_ENV

PUBLIC_METHODS = [
    "create_budget",
    "projected_cost",
    "get_total_budget",
    "update_cost",
    "get_current_cost",
    "get_model_cost",
    "is_valid_user",
    "get_users",
    "reset_cost",
    "reset_on_duration",
    "update_budget_all_users",
    "save_data",
]
T0 = 1_800_000_000.0
DAY = 86_400.0


def join_litellm_saves() -> None:
    """Wait for the save threads LiteLLM's BudgetManager starts after each change."""
    for thread in threading.enumerate():
        if thread.name.endswith("(save_data)"):
            thread.join()


@contextmanager
def litellm_manager(folder: Path) -> Iterator[Any]:
    """LiteLLM's own BudgetManager, working on ``folder/user_cost.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield litellm.BudgetManager(project_name="test_project")
    finally:
        join_litellm_saves()
        os.chdir(previous)


def set_clock(manager: BudgetManager, now: float) -> None:
    cast(FileStore, manager.store).clock = lambda: now


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv(STORE_ENV, raising=False)
    return folder


@pytest.fixture
def manager(workdir: Path) -> Iterator[BudgetManager]:
    made = BudgetManager(project_name="test_project")
    yield made
    made.close()


@pytest.fixture
def private_model() -> Iterator[str]:
    """A model name litellm has no price for; any price registered for it is removed after."""
    name = f"private-model-{uuid.uuid4().hex[:8]}"
    yield name
    litellm.model_cost.pop(name, None)


def mock_response(model: str = "gpt-4o-mini", text: str = "Hello!") -> Any:
    return completion(model=model, messages=[{"role": "user", "content": "Hi"}], mock_response=text)


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- the same API as LiteLLM's class ------------------------------------------------------


# Keyword-only parameters of ours beyond LiteLLM's (budgets of teams, tags, more windows).
EXTRA_KEYWORDS = {"create_budget": ["team", "windows", "timezone"], "update_cost": ["team", "tags"]}


@pytest.mark.parametrize("name", PUBLIC_METHODS)
def test_same_method_parameters_as_litellm(name: str) -> None:
    theirs = inspect.signature(getattr(litellm.BudgetManager, name)).parameters
    ours = inspect.signature(getattr(BudgetManager, name)).parameters
    mine = [(p.name, p.kind) for p in ours.values()]
    extra = EXTRA_KEYWORDS.get(name, [])
    assert mine[: len(theirs)] == [(p.name, p.kind) for p in theirs.values()]
    assert mine[len(theirs) :] == [(keyword, inspect.Parameter.KEYWORD_ONLY) for keyword in extra]
    assert all(ours[keyword].default is None for keyword in extra)  # not given: as LiteLLM's
    for param in theirs:
        if param != "created_at":  # LiteLLM's default is the import time; ours is None (call time)
            assert ours[param].default == theirs[param].default


def test_constructor_accepts_litellms_arguments() -> None:
    theirs = list(inspect.signature(litellm.BudgetManager).parameters.values())
    ours = list(inspect.signature(BudgetManager).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[: len(theirs)]] == [(p.name, p.kind, p.default) for p in theirs]
    assert [(p.name, p.kind) for p in ours[len(theirs) :]] == [("store", inspect.Parameter.KEYWORD_ONLY)]


def run_seed_scenario(manager: Any, response: Any, started: float) -> list[Any]:
    """One sequence of LiteLLM's API, recording what each call returns at the time.

    (LiteLLM returns its live dicts, which later calls change: each result is copied.)
    """
    calls: list[Callable[[], Any]] = [
        lambda: manager.create_budget(total_budget=10, user="alice"),
        lambda: manager.create_budget(total_budget=5, user="bob", duration="weekly", created_at=started),
        lambda: manager.is_valid_user("alice"),
        lambda: manager.is_valid_user("carol"),
        lambda: manager.get_users(),
        lambda: manager.get_total_budget("bob"),
        lambda: manager.update_cost(
            user="bob", model="gpt-3.5-turbo", input_text="hello world", output_text="it's a sunny day"
        ),
        lambda: manager.update_cost(user="alice", completion_obj=response),
        lambda: manager.get_current_cost("alice"),
        lambda: manager.get_model_cost("alice"),
        lambda: manager.get_current_cost("bob"),
        lambda: manager.reset_cost("bob"),
        lambda: manager.get_current_cost("bob"),
        lambda: manager.save_data(),
    ]
    return [copy.deepcopy(call()) for call in calls]


def assert_superset(ours: object, theirs: object) -> None:
    """Every key LiteLLM returns is there with the same value; we may return more keys."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict)
        for key, value in theirs.items():
            assert key in ours, key
            assert_superset(ours[key], value)
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-12)
    else:
        assert ours == theirs


def test_same_results_as_litellm(tmp_path: Path, workdir: Path) -> None:
    response, started = mock_response(), time.time() - 60
    with litellm_manager(tmp_path / "litellm") as theirs:
        expected = run_seed_scenario(theirs, response, started)
    ours = BudgetManager(project_name="test_project")
    got = run_seed_scenario(ours, response, started)
    assert len(got) == len(expected)
    for mine, reference in zip(got, expected, strict=True):
        assert_superset(mine, reference)
    assert got[8] == pytest.approx(litellm.completion_cost(completion_response=response), rel=1e-12)
    assert got[10] > 0
    ours.close()


def test_reads_a_file_written_by_litellms_budget_manager(tmp_path: Path, workdir: Path) -> None:
    response = mock_response()
    with litellm_manager(workdir) as theirs:
        theirs.create_budget(total_budget=10, user="alice")
        theirs.create_budget(total_budget=5, user="bob", duration="daily", created_at=time.time() - 60)
        theirs.update_cost(user="alice", completion_obj=response)
        theirs.update_cost(user="bob", model="gpt-3.5-turbo", input_text="hello", output_text="world")
        theirs.user_dict["alice"]["team"] = "research"  # extra fields are allowed
        theirs.save_data()
        reference = json.loads(json.dumps(theirs.user_dict))
    written = (workdir / "user_cost.json").read_bytes()

    ours = BudgetManager(project_name="test_project")
    assert sorted(ours.get_users()) == ["alice", "bob"]
    for user in ("alice", "bob"):
        assert ours.get_total_budget(user) == reference[user]["total_budget"]
        assert ours.get_current_cost(user) == reference[user]["current_cost"]
        assert ours.get_model_cost(user) == reference[user]["model_cost"]
    assert ours.user_dict["bob"]["duration"] == 1
    assert ours.user_dict["bob"]["created_at"] == reference["bob"]["created_at"]
    assert (workdir / "user_cost.json").read_bytes() == written  # reading changed nothing

    # ...and LiteLLM's class reads the file back after we change it, extra fields kept.
    ours.update_cost(user="alice", completion_obj=mock_response())
    ours.save_data()
    ours.close()
    with litellm_manager(workdir) as theirs_again:
        alice = theirs_again.user_dict["alice"]
    assert alice["current_cost"] == pytest.approx(2 * reference["alice"]["current_cost"])
    assert alice["team"] == "research"


def test_every_change_is_visible_to_another_manager_at_once(workdir: Path) -> None:
    first = BudgetManager(project_name="test_project")
    second = BudgetManager(project_name="test_project")  # opened before the changes
    first.create_budget(total_budget=1, user="alice")
    first.update_cost(user="alice", completion_obj=mock_response())
    assert second.get_current_cost("alice") == first.get_current_cost("alice") > 0
    one_call = second.get_current_cost("alice")
    second.update_cost(user="alice", completion_obj=mock_response())
    assert first.get_current_cost("alice") == pytest.approx(2 * one_call)
    first.close()
    second.close()


def test_same_response_is_charged_once(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=1, user="alice")
    response = mock_response()
    manager.update_cost(user="alice", completion_obj=response)
    manager.update_cost(user="alice", completion_obj=response)  # a repeated callback
    assert manager.get_current_cost("alice") == pytest.approx(response._hidden_params["response_cost"])


# -- LiteLLM's faults, fixed -------------------------------------------------------------


def test_created_at_defaults_to_the_time_of_the_call(manager: BudgetManager) -> None:
    set_clock(manager, T0)
    first = manager.create_budget(total_budget=1, user="alice", duration="daily")
    set_clock(manager, T0 + 500)
    second = manager.create_budget(total_budget=1, user="bob", duration="daily")
    assert (first["created_at"], first["last_updated_at"]) == (T0, T0)
    assert (second["created_at"], second["last_updated_at"]) == (T0 + 500, T0 + 500)


def test_created_at_default_follows_the_real_clock(manager: BudgetManager) -> None:
    before = time.time()
    record = manager.create_budget(total_budget=1, user="alice", duration="daily")
    assert before <= record["created_at"] <= time.time()
    # LiteLLM's default was fixed when litellm was imported, before this test started.
    assert inspect.signature(litellm.BudgetManager.create_budget).parameters["created_at"].default < before


def test_reset_cost_persists(manager: BudgetManager) -> None:
    manager.create_budget(total_budget=1, user="alice")
    manager.update_cost(user="alice", completion_obj=mock_response())
    assert manager.reset_cost("alice")["user"]["current_cost"] == 0
    reopened = BudgetManager(project_name="test_project")
    assert reopened.get_current_cost("alice") == 0
    assert reopened.get_model_cost("alice") == {}
    assert reopened.get_total_budget("alice") == 1
    reopened.close()


def test_projected_cost_counts_list_content(tmp_path: Path, manager: BudgetManager) -> None:
    model = "gpt-4o-mini"
    manager.create_budget(total_budget=1, user="alice")
    manager.update_cost(user="alice", completion_obj=mock_response())
    spent = manager.get_current_cost("alice")
    text = [{"role": "user", "content": "Describe this picture"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Describe this picture"}]}]
    image_part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with_image = [{"role": "user", "content": [*parts[0]["content"], image_part]}]

    from_text = manager.projected_cost(model, text, "alice")
    assert from_text > spent
    assert manager.projected_cost(model, parts, "alice") == pytest.approx(from_text)
    image_cost = manager.projected_cost(model, with_image, "alice") - from_text
    # at least OpenAI's smallest image (85 tokens); here a high-detail upper bound
    assert image_cost >= 85 * litellm.model_cost[model]["input_cost_per_token"]

    with litellm_manager(tmp_path / "litellm") as theirs:
        theirs.create_budget(total_budget=1, user="alice")
        with pytest.raises(TypeError):
            theirs.projected_cost(model, parts, "alice")  # LiteLLM joins contents as strings


def test_projected_cost_counts_chat_framing_as_litellm_token_counter(tmp_path: Path, manager: BudgetManager) -> None:
    """As litellm.token_counter(messages=...) counts: 3 per request, 3 per message, its role,
    1 per name. LiteLLM's own projected_cost counts the joined contents only, without that framing."""
    model = "gpt-4o-mini"
    price = litellm.model_cost[model]["input_cost_per_token"]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "alice", "content": "Hello there, how are you?"},
    ]
    manager.create_budget(total_budget=1, user="alice")
    ours = manager.projected_cost(model, messages, "alice")
    assert ours == pytest.approx(litellm.token_counter(model=model, messages=messages) * price, rel=1e-12)
    with litellm_manager(tmp_path / "litellm") as theirs:
        theirs.create_budget(total_budget=1, user="alice")
        joined_only = theirs.projected_cost(model, messages, "alice")
    assert ours - joined_only >= (3 + 2 * 3 + 1) * price * (1 - 1e-9)


def test_projected_cost_counts_tool_calls(manager: BudgetManager) -> None:
    model = "gpt-4o-mini"
    price = litellm.model_cost[model]["input_cost_per_token"]
    manager.create_budget(total_budget=1, user="alice")
    question = {"role": "user", "content": "What is the weather in Paris?"}

    def tool_call(arguments: dict[str, Any]) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
                }
            ],
        }

    short = tool_call({"city": "Paris"})
    long = tool_call({"city": "Paris", "units": "celsius", "details": ["wind", "rain", "humidity"] * 20})
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"}

    base = manager.projected_cost(model, [question], "alice")
    with_short = manager.projected_cost(model, [question, short], "alice")
    with_long = manager.projected_cost(model, [question, long], "alice")
    with_answer = manager.projected_cost(model, [question, short, answer], "alice")
    arguments_tokens = litellm.token_counter(model=model, text=short["tool_calls"][0]["function"]["arguments"])
    assert with_short - base >= (3 + arguments_tokens) * price * (1 - 1e-9)
    assert with_long - with_short >= 100 * price
    assert with_answer > with_short


# -- unknown users, durations, bad input --------------------------------------------------

UNKNOWN_USER_CALLS: dict[str, Callable[[BudgetManager], object]] = {
    "get_total_budget": lambda m: m.get_total_budget("ghost"),
    "get_current_cost": lambda m: m.get_current_cost("ghost"),
    "get_model_cost": lambda m: m.get_model_cost("ghost"),
    "projected_cost": lambda m: m.projected_cost("gpt-4o-mini", [{"role": "user", "content": "hi"}], "ghost"),
    "update_cost(text)": lambda m: m.update_cost(
        user="ghost", model="gpt-4o-mini", input_text="hi", output_text="hello"
    ),
    "update_cost(response)": lambda m: m.update_cost(user="ghost", completion_obj=mock_response()),
    "reset_cost": lambda m: m.reset_cost("ghost"),
    "reset_on_duration": lambda m: m.reset_on_duration("ghost"),
}


@pytest.mark.parametrize("call", UNKNOWN_USER_CALLS.values(), ids=UNKNOWN_USER_CALLS.keys())
def test_unknown_user_gets_a_clear_error(manager: BudgetManager, call: Callable[[BudgetManager], object]) -> None:
    manager.create_budget(total_budget=1, user="alice")
    with pytest.raises(UnknownUserError) as info:
        call(manager)
    assert isinstance(info.value, KeyError)  # LiteLLM raised a bare KeyError: old handlers still work
    assert info.value.user == "ghost"
    assert str(info.value) == "unknown user 'ghost': create a budget for it first (create_budget)"
    assert manager.get_users() == ["alice"]


@pytest.mark.parametrize("name", ["daily", "weekly", "monthly", "yearly"])
def test_named_durations_count_days_as_litellm_does(tmp_path: Path, manager: BudgetManager, name: str) -> None:
    with litellm_manager(tmp_path / "litellm") as theirs:
        expected = theirs.create_budget(total_budget=1, user="alice", duration=name)["duration"]
    assert manager.create_budget(total_budget=1, user="alice", duration=name)["duration"] == expected


@pytest.mark.parametrize(("duration", "seconds"), [("1h", 3600.0), ("30d", 30 * DAY), ("1mo", 30 * DAY)])
def test_window_of_a_duration_resets_the_spend(manager: BudgetManager, duration: str, seconds: float) -> None:
    set_clock(manager, T0)
    record = manager.create_budget(total_budget=1, user="alice", duration=duration)
    assert record["duration"] * DAY == pytest.approx(seconds)
    manager.update_cost(user="alice", model="gpt-4o-mini", input_text="hello", output_text="world")
    spent = manager.get_current_cost("alice")
    assert spent > 0

    set_clock(manager, T0 + seconds - 1)
    assert manager.get_current_cost("alice") == spent
    set_clock(manager, T0 + seconds)
    assert manager.get_current_cost("alice") == 0  # rolled lazily, no cron job
    assert manager.get_model_cost("alice") == {}
    assert manager.user_dict["alice"]["last_updated_at"] == T0 + seconds


def test_eager_reset_persists_the_roll(workdir: Path, manager: BudgetManager) -> None:
    set_clock(manager, T0)
    manager.create_budget(total_budget=1, user="alice", duration="1h")
    manager.create_budget(total_budget=1, user="bob")  # no duration: never reset
    for user in ("alice", "bob"):
        manager.update_cost(user=user, model="gpt-4o-mini", input_text="hello", output_text="world")
    spent = manager.get_current_cost("bob")

    set_clock(manager, T0 + 2.5 * 3600)
    manager.update_budget_all_users()
    manager.save_data()
    on_disk = json.loads((workdir / "user_cost.json").read_bytes())
    assert on_disk["alice"]["current_cost"] == 0
    assert on_disk["alice"]["last_updated_at"] == T0 + 2 * 3600  # start + k x duration
    assert on_disk["bob"]["current_cost"] == spent

    set_clock(manager, T0 + 3.5 * 3600)
    manager.update_cost(user="alice", model="gpt-4o-mini", input_text="hello", output_text="world")
    manager.reset_on_duration("alice")
    assert manager.get_current_cost("alice") > 0  # charged after this window began


BAD_BUDGETS: dict[str, tuple[dict[str, Any], str]] = {
    "negative budget": ({"total_budget": -1}, "total_budget must not be negative"),
    "NaN budget": ({"total_budget": math.nan}, "total_budget must be finite"),
    "infinite budget": ({"total_budget": math.inf}, "total_budget must be finite"),
    "text budget": ({"total_budget": "10"}, "total_budget must be a number"),
    "unknown duration": ({"duration": "fortnightly"}, "unknown duration 'fortnightly'"),
    "zero duration": ({"duration": "0h"}, "duration .0h. is out of range"),
    "negative created_at": ({"created_at": -5.0}, "created_at is out of range"),
    "empty user": ({"user": ""}, "user id must not be empty"),
    "blank user": ({"user": "  "}, "user id must not be empty"),
    "no user": ({"user": None}, "user id must be a string"),
    "number user": ({"user": 42}, "user id must be a string"),
}


@pytest.mark.parametrize("target", ["alice", "bob"], ids=["known user", "new user"])
@pytest.mark.parametrize(("bad", "message"), BAD_BUDGETS.values(), ids=BAD_BUDGETS.keys())
def test_bad_budget_is_refused_and_changes_nothing(
    workdir: Path, manager: BudgetManager, target: str, bad: dict[str, Any], message: str
) -> None:
    manager.create_budget(total_budget=5, user="alice", duration="daily")
    manager.update_cost(user="alice", completion_obj=mock_response())
    before_records, before_files = manager.user_dict, files_in(workdir)
    arguments = {"total_budget": 1, "user": target, "duration": "weekly", **bad}
    with pytest.raises(ConfigurationError, match=message):
        manager.create_budget(**arguments)
    assert manager.user_dict == before_records
    assert files_in(workdir) == before_files


def test_bad_update_cost_changes_nothing(workdir: Path, manager: BudgetManager) -> None:
    manager.create_budget(total_budget=5, user="alice")
    before = files_in(workdir)
    with pytest.raises(ConfigurationError, match="completion_obj"):
        manager.update_cost(user="alice")
    with pytest.raises(ConfigurationError, match="user id must not be empty"):
        manager.update_cost(user="", model="gpt-4o-mini", input_text="hi", output_text="hello")
    with pytest.raises(ConfigurationError, match="user id must be a string"):
        manager.update_cost(user=7, completion_obj=mock_response())  # type: ignore[arg-type]
    assert files_in(workdir) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"project_name": ""}, "project_name"),
        ({"project_name": "p", "client_type": "cloud"}, "client_type"),
        ({"project_name": "p", "client_type": "hosted"}, "api_base"),
        ({"project_name": "p", "store": "ftp://example.com/budgets"}, "unknown store scheme 'ftp'"),
    ],
)
def test_bad_constructor_arguments(workdir: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BudgetManager(**kwargs)
    assert list(workdir.iterdir()) == []


# -- choosing the store ------------------------------------------------------------------


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file URL"])
def test_env_var_chooses_the_store_file(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, as_url: bool
) -> None:
    target = tmp_path / "elsewhere" / "budgets.json"
    target.parent.mkdir()
    monkeypatch.setenv(STORE_ENV, f"file://{target}" if as_url else str(target))
    manager = BudgetManager(project_name="test_project")
    manager.create_budget(total_budget=3, user="alice")
    manager.save_data()
    assert json.loads(target.read_bytes())["alice"]["total_budget"] == 3
    assert list(workdir.iterdir()) == []
    # store= wins over the environment
    explicit = BudgetManager(project_name="test_project", store=tmp_path / "explicit.json")
    assert not explicit.is_valid_user("alice")
    manager.close()
    explicit.close()


def test_default_store_is_user_cost_json_in_the_working_directory(workdir: Path, manager: BudgetManager) -> None:
    manager.create_budget(total_budget=3, user="alice")
    manager.save_data()
    assert json.loads((workdir / "user_cost.json").read_bytes())["alice"]["total_budget"] == 3


@pytest.mark.parametrize("via_env", [False, True], ids=["store=", "env var"])
def test_missing_folder_is_a_configuration_error(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, via_env: bool
) -> None:
    target = tmp_path / "missing" / "user_cost.json"
    if via_env:
        monkeypatch.setenv(STORE_ENV, str(target))
    with pytest.raises(ConfigurationError, match="does not exist"):
        BudgetManager(project_name="test_project", store=None if via_env else target)
    assert not target.parent.exists()


def test_directory_as_store_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory"):
        BudgetManager(project_name="test_project", store=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write in a read-only folder")
def test_unwritable_folder_is_a_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="cannot write"):
            BudgetManager(project_name="test_project", store=folder / "user_cost.json")
    finally:
        folder.chmod(0o755)


# -- a store file we refuse ---------------------------------------------------------------

CORRUPT_FILES: dict[str, bytes] = {
    "truncated JSON": b'{"alice": {"total_budget": 10, "current_c',
    "not UTF-8": b'\xff\xfe{"alice": {}}',
    "a list": b'[{"total_budget": 10}]',
}

# Records that fail their check when read: refused for their user only.
BAD_RECORDS: dict[str, tuple[str, bytes]] = {
    "a record that is a number": ("alice", b"10"),
    "a negative budget": ("alice", b'{"total_budget": -1}'),
    "a cost that is text": ("alice", b'{"total_budget": 10, "current_cost": "lots"}'),
    "an empty user id": ("", b'{"total_budget": 1}'),
    "a tiny duration": ("alice", b'{"total_budget": 1, "duration": 1e-320}'),
    "a window past the year 9999": ("alice", b'{"total_budget": 1, "duration": 1, "last_updated_at": 1e15}'),
    "a nan in an extra field": ("alice", b'{"total_budget": 1, "note": NaN}'),
}

ATTEMPTS: dict[str, Callable[[BudgetManager], object]] = {
    "get_users": lambda m: m.get_users(),
    "is_valid_user": lambda m: m.is_valid_user("alice"),
    "create_budget": lambda m: m.create_budget(total_budget=1, user="bob"),
    "update_cost": lambda m: m.update_cost(user="alice", model="gpt-4o-mini", input_text="hi", output_text="hello"),
    "reset_cost": lambda m: m.reset_cost("alice"),
    "update_budget_all_users": lambda m: m.update_budget_all_users(),
    "save_data": lambda m: m.save_data(),
}


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_store_is_refused_and_never_overwritten(workdir: Path, content: bytes) -> None:
    path = workdir / "user_cost.json"
    path.write_bytes(content)
    for name, attempt in ATTEMPTS.items():
        with pytest.raises(StoreCorruptError, match="left untouched"):
            attempt(BudgetManager(project_name="test_project"))
        assert path.read_bytes() == content, f"{name} changed the file"
    assert not (workdir / "user_cost.json.journal").exists()


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_store_is_reported_by_the_constructor(workdir: Path, content: bytes) -> None:
    """As LiteLLM's own BudgetManager fails to load such a file, ours fails when it is made."""
    from litellm_budget_plugin.guard import BudgetGuard

    path = workdir / "user_cost.json"
    path.write_bytes(content)
    with pytest.raises(StoreCorruptError, match=r"user_cost\.json"):
        BudgetManager(project_name="test_project")
    with pytest.raises(StoreCorruptError, match="left untouched"):
        BudgetGuard(str(path))
    assert path.read_bytes() == content


@pytest.mark.parametrize(("user", "record"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_record_is_refused_for_its_user_only(workdir: Path, user: str, record: bytes) -> None:
    """A record written by hand or an older version: its user gets StoreCorruptError, the
    others are read and written as usual, and the record is kept as it is in every fold."""
    path = workdir / "user_cost.json"
    path.write_bytes(
        b'{"carol": {"total_budget": 10, "current_cost": 1.5}, ' + json.dumps(user).encode() + b": " + record + b"}"
    )
    manager = BudgetManager(project_name="test_project")
    assert manager.get_users() == ["carol"]
    assert manager.get_current_cost("carol") == 1.5
    if user:
        with pytest.raises(StoreCorruptError, match="left untouched"):
            manager.get_current_cost(user)
        with pytest.raises(StoreCorruptError, match="left untouched"):
            manager.update_cost(user=user, completion_obj=mock_response())
        with pytest.raises(StoreCorruptError, match="left untouched"):
            manager.create_budget(total_budget=1, user=user)
    manager.update_cost(user="carol", completion_obj=mock_response())
    manager.create_budget(total_budget=1, user="bob")
    manager.update_budget_all_users()
    manager.store.compact()  # type: ignore[attr-defined]
    assert set(manager.get_users()) == {"carol", "bob"}
    assert (
        json.dumps(user) + ": " + json.dumps(json.loads(record.replace(b"NaN", b'"nan"'))).replace('"nan"', "NaN")
        in path.read_text()
    )


def test_a_bad_journal_entry_is_refused_for_its_user_only(workdir: Path, manager: BudgetManager) -> None:
    manager.create_budget(total_budget=10, user="alice")
    manager.create_budget(total_budget=10, user="carol")
    manager.update_cost(user="alice", completion_obj=mock_response())
    journal = workdir / "user_cost.json.journal"
    content = journal.read_bytes() + b'{"u":"alice","r":{"total_budget":"ten"}}\n'
    journal.write_bytes(content)
    reopened = BudgetManager(project_name="test_project")
    assert reopened.get_users() == ["carol"]
    with pytest.raises(StoreCorruptError, match="journal line"):
        reopened.update_cost(user="alice", completion_obj=mock_response())
    reopened.update_cost(user="carol", completion_obj=mock_response())
    assert journal.read_bytes().startswith(content)


def test_a_journal_line_that_is_not_json_is_refused(workdir: Path, manager: BudgetManager) -> None:
    """A line that names no user cannot be set aside: the whole store is refused, untouched."""
    manager.create_budget(total_budget=10, user="alice")
    manager.update_cost(user="alice", completion_obj=mock_response())
    journal = workdir / "user_cost.json.journal"
    content = journal.read_bytes() + b'{"u": 5}\n'
    journal.write_bytes(content)
    snapshot = (workdir / "user_cost.json").read_bytes()
    for attempt in ATTEMPTS.values():
        with pytest.raises(StoreCorruptError, match="bad entry"):
            attempt(BudgetManager(project_name="test_project"))
    assert journal.read_bytes() == content
    assert (workdir / "user_cost.json").read_bytes() == snapshot


def test_torn_last_journal_line_is_dropped(workdir: Path, manager: BudgetManager) -> None:
    """A writer killed mid-line leaves a partial last line; it never returned, so it is not data."""
    manager.create_budget(total_budget=10, user="alice")
    manager.update_cost(user="alice", completion_obj=mock_response())
    spent = manager.get_current_cost("alice")
    journal = workdir / "user_cost.json.journal"
    with journal.open("ab") as out:
        out.write(b'{"u":"alice","r":{"total_budget":10,"current_co')
    reopened = BudgetManager(project_name="test_project")
    assert reopened.get_current_cost("alice") == spent
    reopened.update_cost(user="alice", completion_obj=mock_response())
    lines = journal.read_bytes().splitlines()
    assert all(json.loads(line)["u"] == "alice" for line in lines)
    assert reopened.get_current_cost("alice") == pytest.approx(2 * spent)
    reopened.close()


# -- the lock -----------------------------------------------------------------------------

HOLD_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_held_by_another_process_times_out(workdir: Path) -> None:
    store = FileStore(workdir / "user_cost.json", lock_timeout=0.2)
    manager = BudgetManager(project_name="test_project", store=store)
    manager.create_budget(total_budget=1, user="alice")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store.lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        for attempt in (
            lambda: manager.update_cost(user="alice", completion_obj=mock_response()),
            lambda: manager.get_current_cost("alice"),
            lambda: manager.create_budget(total_budget=9, user="bob"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreLockTimeout, match=r"not obtained within 0\.2 s; nothing was changed") as info:
                attempt()
            assert time.monotonic() - started < 5
            assert isinstance(info.value, TimeoutError)
            assert str(store.lock_path) in str(info.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert manager.get_current_cost("alice") == 0
    assert manager.get_users() == ["alice"]
    manager.update_cost(user="alice", completion_obj=mock_response())  # works once it is free
    assert manager.get_current_cost("alice") > 0
    manager.close()


def test_lock_held_in_this_process_times_out(workdir: Path) -> None:
    store = FileStore(workdir / "user_cost.json", lock_timeout=0.1)
    manager = BudgetManager(project_name="test_project", store=store)
    manager.create_budget(total_budget=1, user="alice")
    with filelock.FileLock(str(store.lock_path)), pytest.raises(StoreLockTimeout):
        manager.reset_cost("alice")
    manager.close()


# -- prices -------------------------------------------------------------------------------


def test_unknown_model_is_named_and_register_price_fixes_it(manager: BudgetManager, private_model: str) -> None:
    manager.create_budget(total_budget=1, user="alice")
    messages = [{"role": "user", "content": "hello world"}]
    for attempt in (
        lambda: manager.update_cost(user="alice", model=private_model, input_text="hello world", output_text="hi"),
        lambda: manager.update_cost(user="alice", completion_obj=mock_response(f"openai/{private_model}")),
        lambda: manager.projected_cost(private_model, messages, "alice"),
    ):
        with pytest.raises(UnknownModelError) as info:
            attempt()
        assert info.value.model == private_model
        assert repr(private_model) in str(info.value) and "register_price" in str(info.value)
    assert manager.get_current_cost("alice") == 0

    register_price(private_model, input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    manager.update_cost(user="alice", model=private_model, input_text="hello world", output_text="hi")
    # LiteLLM's own count of the same messages (cl100k_base, as for gpt-3.5-turbo)
    prompt = litellm.token_counter(model="gpt-3.5-turbo", messages=messages)
    answer = litellm.token_counter(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    assert manager.get_current_cost("alice") == pytest.approx(prompt * 1e-6 + answer * 2e-6, rel=1e-12)
    assert manager.get_model_cost("alice") == {private_model: manager.get_current_cost("alice")}
    assert manager.projected_cost(private_model, messages, "alice") == pytest.approx(
        manager.get_current_cost("alice") + prompt * 1e-6, rel=1e-12
    )
