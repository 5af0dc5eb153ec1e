"""litellm-budget with teams, tags and windows: set, show (by kind, a team with its members),
--json, import; bad options exit 2 naming the bad value, and change nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from server_thread import ServerThread, directory_stores
from test_cli import _cli_process, _without_litellm, records, run

from litellm_budget_plugin import FileStore
from litellm_budget_plugin.cli import EXIT_OK, EXIT_UNKNOWN_USER, EXIT_USAGE
from litellm_budget_plugin.subjects import GLOBAL


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "budgets.json"


def cli(store_path: Path, *args: str) -> str:
    result = run(*args, "--store", str(store_path))
    assert result.exit_code == EXIT_OK, result.output + result.stderr
    return result.output


def charge(store_path: Path, key: str, cost: float, model: str = "gpt-4o-mini") -> None:
    store = FileStore(store_path)
    try:
        store.charge(key, cost, model)
    finally:
        store.close()


@pytest.fixture
def red(store_path: Path) -> Path:
    """Team red ($50 a month) with alice and carol, bob in no team, a tag and the global budget."""
    cli(store_path, "set", "team:red", "50", "--duration", "monthly")
    cli(store_path, "set", "alice", "5", "--duration", "daily", "--team", "red", "--window", "100/monthly@Europe/Paris")
    cli(store_path, "set", "carol", "7", "--team", "red")
    cli(store_path, "set", "bob", "3", "--model-cap", "gpt-4o=1/daily")
    cli(store_path, "set", "tag:search", "10")
    cli(store_path, "set", GLOBAL, "1000")
    charge(store_path, "alice", 2.0)
    charge(store_path, "carol", 0.5)
    charge(store_path, "bob", 0.25, "gpt-4o")
    return store_path


def test_set_a_team_and_a_user_in_it(store_path: Path) -> None:
    assert cli(store_path, "set", "team:red", "50", "--duration", "monthly") == (
        "team:red: budget $50.00 monthly, spent $0.00\n"
    )
    assert cli(store_path, "set", "alice", "5", "--duration", "daily", "--team", "red") == (
        "alice: budget $5.00 daily, spent $0.00, team red\n"
    )

    written = records(store_path)
    assert written["team:red"]["total_budget"] == 50 and written["team:red"]["duration"] == 28
    assert written["alice"]["team"] == "red"


def test_set_windows_model_caps_and_a_calendar_main_window(store_path: Path) -> None:
    output = cli(
        store_path,
        *("set", "alice", "5", "--duration", "daily", "--timezone", "Europe/Paris"),
        *("--window", "100/monthly@Europe/Paris", "--window", "20/weekly", "--model-cap", "gpt-4o=1/daily"),
        *("--model-cap", "vertex_ai/claude@20240620=2.5/1h"),  # a model name with '@' in it
    )

    assert output == (
        "alice: budget $5.00 daily (calendar, Europe/Paris), spent $0.00, windows: "
        "$100 monthly (calendar, Europe/Paris), $20 weekly, $1 daily on gpt-4o, "
        "$2.5 per 0.0416667 days on vertex_ai/claude@20240620\n"
    )
    alice = records(store_path)["alice"]
    assert alice["timezone"] == "Europe/Paris"
    assert [(w["budget"], w["duration"], w.get("timezone"), w.get("model")) for w in alice["windows"]] == [  # type: ignore[union-attr]
        (100, 28, "Europe/Paris", None),
        (20, 7, None, None),
        (1, 1, None, "gpt-4o"),
        (2.5, pytest.approx(1 / 24), None, "vertex_ai/claude@20240620"),
    ]


def test_set_keeps_the_team_and_windows_unless_told(red: Path) -> None:
    cli(red, "set", "alice", "8", "--duration", "daily")
    alice = records(red)["alice"]
    assert alice["team"] == "red" and alice["windows"][0]["spend"] == pytest.approx(2.0)  # type: ignore[index]
    assert alice["current_cost"] == pytest.approx(2.0)

    cli(red, "set", "alice", "8", "--duration", "daily", "--window", "90/monthly@Europe/Paris")
    assert records(red)["alice"]["windows"][0]["spend"] == pytest.approx(2.0)  # type: ignore[index]
    cli(red, "set", "alice", "8", "--duration", "daily", "--no-team", "--no-windows")
    assert not {"team", "windows"} & set(records(red)["alice"])


def test_show_groups_budgets_by_kind_with_their_windows_and_teams(red: Path) -> None:
    lines = cli(red, "show").splitlines()

    headings = [line.split()[0] for line in lines if line and line.split()[0] in ("USER", "TEAM", "TAG", "GLOBAL")]
    assert headings == ["USER", "TEAM", "TAG", "GLOBAL"]
    assert lines[0].split() == ["USER", "TEAM", "SPENT", "BUDGET", "USED", "NEXT", "RESET"]
    assert lines[1].split()[:5] == ["alice", "red", "$2.00", "$5.00", "40.0%"]
    assert lines[2].split()[:7] == ["+", "$100", "monthly", "(calendar,", "Europe/Paris)", "$2.00", "$100.00"]
    assert lines[3].split()[:4] == ["bob", "-", "$0.25", "$3.00"]
    assert lines[4].split()[:8] == ["+", "$1", "daily", "on", "gpt-4o", "$0.25", "$1.00", "25.0%"]
    assert lines[5].split()[:3] == ["carol", "red", "$0.50"] and lines[5].split()[-1] == "never"
    team = lines[lines.index("") + 1 :]
    assert team[0].split() == ["TEAM", "SPENT", "BUDGET", "USED", "NEXT", "RESET", "MEMBERS"]
    assert team[1].split()[:4] == ["team:red", "$2.50", "$50.00", "5.0%"] and team[1].split()[-1] == "2"
    assert any(line.split()[:2] == ["tag:search", "$0.00"] for line in lines)
    assert any(line.split()[:3] == [GLOBAL, "$0.00", "$1,000.00"] for line in lines)


def test_show_a_team_lists_its_members_spend(red: Path) -> None:
    lines = cli(red, "show", "team:red").splitlines()

    assert lines[0].split()[0] == "TEAM" and lines[1].split()[:3] == ["team:red", "$2.50", "$50.00"]
    members = lines[lines.index("") + 1 :]
    members = members[: members.index("")] if "" in members else members  # the team's closed windows follow
    assert members[0].split() == ["MEMBER", "SPENT", "BUDGET", "USED", "NEXT", "RESET"]
    assert [line.split()[0] for line in members[1:]] == ["alice", "+", "carol"]  # not bob
    assert members[1].split()[1:3] == ["$2.00", "$5.00"] and members[3].split()[1:3] == ["$0.50", "$7.00"]

    shown = json.loads(cli(red, "show", "team:red", "--json"))
    assert set(shown) == {"team:red", "alice", "carol"}
    assert shown["team:red"]["current_cost"] == pytest.approx(2.5)
    assert shown["alice"]["team"] == "red"


def test_show_a_team_without_a_budget_and_an_unknown_one(red: Path) -> None:
    cli(red, "set", "dan", "1", "--team", "blue")

    blue = cli(red, "show", "team:blue")
    assert "team:blue: no budget" in blue and "dan" in blue
    assert "no users name team 'green'" in cli(red, "set", "team:green", "5") + cli(red, "show", "team:green")
    ghost = run("show", "team:ghost", "--store", str(red))
    assert ghost.exit_code == EXIT_UNKNOWN_USER and "team:ghost" in ghost.stderr


def test_show_json_keeps_its_shape_and_gives_each_window_its_reset(red: Path) -> None:
    shown = json.loads(cli(red, "show", "--json"))

    assert set(shown) == {"alice", "bob", "carol", "team:red", "tag:search", GLOBAL}
    alice = shown["alice"]
    assert alice["total_budget"] == 5 and alice["team"] == "red" and "reservations" not in alice
    assert alice["next_reset"] == pytest.approx(alice["last_updated_at"] + 86_400)
    month = alice["windows"][0]
    assert month["spend"] == pytest.approx(2.0) and month["next_reset"] > month["start"] + 27 * 86_400
    assert shown["carol"]["next_reset"] is None
    assert json.loads(cli(red, "show", "bob", "--json"))["bob"]["windows"][0]["model"] == "gpt-4o"


BAD_SETS: dict[str, tuple[list[str], str]] = {
    "unknown kind": (["foo:bar", "1"], "unknown subject kind 'foo'"),
    "a team without a name": (["team:", "1"], "names no team"),
    "unknown window duration": (["alice", "1", "--window", "100/fortnightly"], "--window '100/fortnightly'"),
    "window budget not a number": (["alice", "1", "--window", "lots/daily"], "--window 'lots/daily': BUDGET"),
    "negative window budget": (["alice", "1", "--window", "-5/daily"], "--window '-5/daily'"),
    "window timezone that does not exist": (
        ["alice", "1", "--window", "1/daily@Mars/Olympus"],
        "timezone 'Mars/Olympus' does not exist",
    ),
    "window timezone on 10 days": (["alice", "1", "--window", "1/10d@Europe/Paris"], "--window '1/10d@Europe/Paris'"),
    "two windows of one length": (
        ["alice", "1", "--window", "1/weekly", "--window", "2/7d"],
        "--window '2/7d' overlaps --window '1/weekly'",
    ),
    "a window as long as the main one": (
        ["alice", "1", "--duration", "daily", "--window", "3/1d"],
        "--window '3/1d' overlaps the main window",
    ),
    "a model cap without a model": (["alice", "1", "--model-cap", "1/daily"], "--model-cap '1/daily'"),
    "a model cap with an empty model": (["alice", "1", "--model-cap", "=1/daily"], "MODEL=BUDGET"),
    "two caps of one model and length": (
        ["alice", "1", "--model-cap", "m=1/daily", "--model-cap", "m=2/24h"],
        "for model 'm'",
    ),
    "two caps of one model under a provider prefix": (
        ["alice", "1", "--model-cap", "gpt-4o=1/daily", "--model-cap", "openai/gpt-4o=2/daily"],
        "overlaps",
    ),
    "main timezone that does not exist": (
        ["alice", "1", "--duration", "daily", "--timezone", "Mars/Olympus"],
        "'Mars/Olympus' does not exist",
    ),
    "main timezone on 10 days": (["alice", "1", "--duration", "10d", "--timezone", "UTC"], "day, week, month or year"),
    "main timezone that never resets": (["alice", "1", "--timezone", "UTC"], "a timezone needs a duration"),
    "an empty team": (["alice", "1", "--team", ""], "team must not be empty"),
    "a blank team": (["alice", "1", "--team", "  "], "must name a team"),
    "--team and --no-team": (["alice", "1", "--team", "red", "--no-team"], "contradict"),
    "--no-windows and --window": (["alice", "1", "--no-windows", "--window", "1/weekly"], "--no-windows"),
    "nine windows": (["alice", "1", *[f"--window={i}/{i}h" for i in range(1, 10)]], "at most 8 windows"),
}


@pytest.mark.parametrize(("args", "message"), BAD_SETS.values(), ids=BAD_SETS.keys())
def test_bad_set_options_exit_2_naming_the_value_and_change_nothing(red: Path, args: list[str], message: str) -> None:
    before = records(red)

    result = run("set", *args, "--store", str(red))

    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert records(red) == before


def test_import_accepts_teams_tags_and_windows_and_refuses_unknown_kinds(tmp_path: Path, store_path: Path) -> None:
    source = tmp_path / "user_cost.json"
    window = {"budget": 5, "duration": 1, "model": "gpt-4o"}
    team = {"total_budget": 50, "duration": 28, "timezone": "UTC", "windows": [window]}
    alice = {"total_budget": 5, "current_cost": 1.5, "team": "red", "duration": 1, "created_at": time.time() - 60}
    # no created_at: LiteLLM's default, 0; a calendar window east of UTC starts at 1970 then
    tokyo = {"total_budget": 5, "windows": [{"budget": 1, "duration": "daily", "timezone": "Asia/Tokyo"}]}
    source.write_text(json.dumps({"team:red": team, "alice": alice, "tag:search": {"total_budget": 3}, "dave": tokyo}))

    assert "imported 4 budget(s)" in cli(store_path, "import", str(source))
    written = records(store_path)
    assert written["alice"]["team"] == "red" and written["alice"]["current_cost"] == 1.5
    assert written["team:red"]["windows"][0]["model"] == "gpt-4o"  # type: ignore[index]

    source.write_text(json.dumps({"amy": {"total_budget": 1}, "foo:bar": {"total_budget": 1}}))
    refused = run("import", str(source), "--store", str(store_path))
    assert refused.exit_code == EXIT_USAGE and "unknown subject kind 'foo'" in refused.stderr
    assert "nothing was imported" in refused.stderr and records(store_path) == written


def test_help_documents_the_window_syntax() -> None:
    text = run("set", "--help").output
    for part in ("BUDGET[/DURATION][@ZONE]", "100/monthly@Europe/Paris", "--model-cap", "gpt-4o=1/daily", "--team"):
        assert part in text, part
    assert "team:NAME" in run("show", "--help").output


def test_teams_and_windows_over_a_budget_server(tmp_path: Path) -> None:
    with ServerThread(directory_stores(tmp_path)) as server:
        url = ["--store", server.url, "--project", "p"]
        assert run("set", "team:red", "50", "--duration", "monthly", *url).exit_code == EXIT_OK
        made = run("set", "alice", "5", "--team", "red", "--model-cap", "gpt-4o=1/daily", *url)
        assert made.exit_code == EXIT_OK, made.stderr
        shown = run("show", "team:red", *url).output
        bad = run("set", "alice", "5", "--window", "1/daily@Mars/Olympus", *url)
    assert "team:red" in shown and "alice" in shown and "$1 daily on gpt-4o" in shown
    assert bad.exit_code == EXIT_USAGE and "Mars/Olympus" in bad.stderr
    assert records(tmp_path / "p.json")["alice"]["team"] == "red"


def test_set_and_show_a_team_do_not_import_litellm(store_path: Path) -> None:
    for args in (
        ["set", "alice", "5", "--team", "red", "--window", "9/weekly@UTC", "--store", str(store_path)],
        ["show", "team:red", "--store", str(store_path)],
        ["show", "--store", str(store_path)],
    ):
        finished = _cli_process(*args)
        assert finished.returncode == EXIT_OK, (args, finished.stderr)
        _without_litellm(finished.stderr)
