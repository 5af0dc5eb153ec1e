"""The README's example of a team, a tag, a model cap and two windows is true: the JSON it shows
is a store file this package reads and enforces, and LiteLLM's own class reads; the Python it
shows writes records of that shape."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import litellm
import pytest

from litellm_budget_plugin import BudgetExceededError, BudgetManager, FileStore

README = Path(__file__).resolve().parents[1] / "README.md"
NOON = datetime(2026, 12, 6, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()


def example() -> dict[str, dict[str, object]]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- subjects-example -->\s*```json\n(.*?)```", text, re.S)
    assert match is not None, "the README lost its subjects example"
    loaded: dict[str, dict[str, object]] = json.loads(match.group(1))
    return loaded


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    path = tmp_path / "user_cost.json"
    path.write_text(json.dumps(example()), encoding="utf-8")
    opened = FileStore(path)
    opened.clock = lambda: NOON  # type: ignore[method-assign]
    return opened


def test_the_readme_example_is_read_as_it_says(store: FileStore) -> None:
    alice = store.get("alice")

    assert alice is not None and alice["team"] == "red" and alice["current_cost"] == 1.25
    assert [window["spend"] for window in alice["windows"]] == [31.5, 1.0]
    assert store.get("team:red")["current_cost"] == 212.4  # type: ignore[index]
    store.close()


def test_the_readme_example_is_enforced_window_by_window(store: FileStore) -> None:
    with pytest.raises(BudgetExceededError) as capped:
        store.reserve("alice", "c1", 0.01, ttl=60, model="gpt-4o")  # the $1 gpt-4o cap is spent
    store.reserve("alice", "c2", 3.0, ttl=60, model="gpt-4o-mini", subjects=["tag:search"])
    with pytest.raises(BudgetExceededError) as daily:
        store.reserve("alice", "c3", 1.0, ttl=60, model="gpt-4o-mini")  # $5 a day: 1.25 + 3 held

    assert (capped.value.subject, capped.value.window) == ("alice", "$1 daily on gpt-4o")
    assert (daily.value.subject, daily.value.window) == ("alice", "")
    assert store.get("team:red")["reservations"]["c2"]["amount"] == 3.0  # type: ignore[index]
    assert store.get("tag:search")["reservations"]["c2"]["amount"] == 3.0  # type: ignore[index]
    store.close()


def test_litellms_own_class_reads_the_readme_example(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.compact()
    store.close()
    monkeypatch.chdir(store.path.parent)

    theirs = litellm.BudgetManager(project_name="readme")

    assert theirs.get_total_budget("team:red") == 500
    assert theirs.get_current_cost("alice") == 1.25
    assert theirs.get_model_cost("tag:search") == {"gpt-4o": 3.1}


def test_the_readme_python_writes_records_of_the_example_shape(tmp_path: Path) -> None:
    manager = BudgetManager("my-app", store=tmp_path / "user_cost.json")
    manager.store.clock = lambda: NOON  # type: ignore[attr-defined]
    manager.create_budget(total_budget=500, user="team:red", duration="monthly", timezone="Europe/Paris")
    manager.create_budget(total_budget=20, user="tag:search")
    manager.create_budget(
        total_budget=5,
        user="alice",
        duration="daily",
        timezone="Europe/Paris",
        team="red",
        windows=[
            {"budget": 100, "duration": "monthly", "timezone": "Europe/Paris"},
            {"budget": 1, "duration": "daily", "model": "gpt-4o"},
        ],
    )
    shown = example()

    for key, record in manager.store.all().items():
        assert set(record) == set(shown[key]), key
        assert [set(w) for w in record.get("windows", [])] == [set(w) for w in shown[key].get("windows", [])]  # type: ignore[attr-defined]
    alice = manager.store.get("alice")
    assert (
        alice is not None
        and alice["last_updated_at"] == datetime(2026, 12, 6, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    )
    assert alice["windows"][0]["start"] == datetime(2026, 12, 1, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    manager.close()
