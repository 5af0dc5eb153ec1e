"""``litellm-budget show USER`` shows what the budget's last windows spent, from the ledger,
which window resets leave alone."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.cli import main
from litellm_budget_plugin.windows import closed_windows

DAY = 86400.0


def show(*args: str) -> str:
    result = CliRunner().invoke(main, ["show", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_show_user_lists_its_closed_windows_spend(tmp_path: Path) -> None:
    path = tmp_path / "user_cost.json"
    now = time.time()
    start = now - 3.5 * DAY  # windows began 3.5, 2.5, 1.5 and 0.5 days ago
    store = FileStore(path)
    store.clock = lambda: start  # type: ignore[method-assign]
    store.set_budget("alice", 10.0, "daily")
    store.set_budget("team:red", 10.0)
    for days_ago, cost in ((3.4, 1.0), (3.3, 0.5), (2.4, 2.0), (1.2, 4.0), (0.2, 0.25)):
        store.clock = lambda days_ago=days_ago: now - days_ago * DAY  # type: ignore[method-assign]
        store.charge("alice", cost, "m", subjects=["team:red"])
    store.close()

    text = show("alice", "--store", str(path))
    assert "closed windows (from the ledger):" in text
    expected = [
        (start + 2 * DAY, start + 3 * DAY, "$4.00"),
        (start + DAY, start + 2 * DAY, "$2.00"),
        (start, start + DAY, "$1.50"),
    ]
    for begin, end, spent in expected:
        assert f"{iso(begin)} to {iso(end)}: {spent}" in text
    view = json.loads(show("alice", "--json", "--store", str(path)))
    assert [w["spend"] for w in view["alice"]["closed_windows"]] == [4.0, 2.0, 1.5]
    team = json.loads(show("team:red", "--json", "--store", str(path)))
    assert "closed_windows" not in team["team:red"]  # a team's budget never resets here


def test_calendar_windows_close_at_calendar_bounds() -> None:
    march_1 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert closed_windows(march_1, 30.0, "UTC", 2) == [
        (datetime(2026, 2, 1, tzinfo=UTC).timestamp(), march_1),
        (datetime(2026, 1, 1, tzinfo=UTC).timestamp(), datetime(2026, 2, 1, tzinfo=UTC).timestamp()),
    ]
    assert closed_windows(march_1, None, None, 3) == []
    assert closed_windows(DAY / 2, 1.0, None, 3) == []  # none before 1970


def test_windows_older_than_the_ledger_keeps_say_so(tmp_path: Path) -> None:
    path = tmp_path / "user_cost.json"
    store = FileStore(path)
    store.clock = lambda: time.time() - 400 * DAY  # type: ignore[method-assign]
    store.set_budget("alice", 10.0, "monthly")
    store.close()
    text = show("alice", "--store", str(path))
    assert "not kept" in text and "windows older than" in text  # not "$0.00": the ledger forgot them
    view = json.loads(show("alice", "--json", "--store", str(path)))
    # the last two months are within the ledger's 90 days (nothing spent), the third is not
    assert [w["spend"] for w in view["alice"]["closed_windows"]] == [0.0, 0.0, None]


def test_a_ledger_that_cannot_be_read_still_shows_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "user_cost.json"
    store = FileStore(path)
    store.set_budget("alice", 10.0, "daily")
    store.close()
    day = datetime.fromtimestamp(time.time() - DAY, UTC).date().isoformat()
    (tmp_path / f"user_cost.json.ledger-{day}").symlink_to(tmp_path / "elsewhere")
    text = show("alice", "--store", str(path))
    assert text.splitlines()[1].split()[:3] == ["alice", "$0.00", "$10.00"]
    assert "the ledger could not be read" in text and "symbolic link" in text
