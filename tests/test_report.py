"""litellm-budget report: real charges in a FileStore's ledger, read back through the CLI."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from server_thread import ServerThread, directory_stores

from litellm_budget_plugin import FileStore, reports
from litellm_budget_plugin.cli import EXIT_OK, EXIT_USAGE, main
from litellm_budget_plugin.errors import ConfigurationError
from litellm_budget_plugin.ledger import LedgerEntry, Usage

# Midnight UTC ten days ago: recent enough for the ledger's retention, whenever the tests run.
DAY = 86_400.0
D0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
T0 = D0.timestamp()
FROM, TO = D0.date().isoformat(), (D0 + timedelta(days=4)).date().isoformat()  # days 0 to 4, included

# (day offset in hours, who, cost, model, prompt, completion, tags)
CHARGES: list[tuple[float, str, float, str, int, int, tuple[str, ...]]] = [
    (-30, "alice", 9.0, "gpt-4o", 1, 1, ()),  # before --from
    (10, "alice", 1.0, "gpt-4o-mini", 100, 20, ("tag:search",)),
    (23.5, "bob", 2.0, "gpt-4o", 200, 40, ()),  # 00:30 the next day in Paris
    (25, "alice", 0.5, "gpt-4o", 50, 10, ("tag:search", "tag:chat")),
    (60, "carol", 4.0, "gpt-4o", 400, 80, ()),
    (100, "team:red", 0.25, "gpt-4o-mini", 10, 2, ("tag:chat",)),  # a call without a user
    (5 * 24 + 1, "bob", 7.0, "gpt-4o", 1, 1, ()),  # after --to
]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def charge_all(store: Any) -> None:
    store.set_budget("alice", 5, "daily")
    store.set_budget("bob", 70, "weekly", fields={"team": "red"})
    store.set_budget("carol", 100, None, fields={"team": "blue"})
    store.set_budget("team:red", 50, "monthly")
    for hours, who, cost, model, prompt, completion, tags in CHARGES:
        store.clock = lambda at=T0 + hours * 3600: at
        store.charge(who, cost, model, usage=Usage(prompt, completion, tags))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.json"
    store = FileStore(path)
    try:
        charge_all(store)
    finally:
        store.close()
    return path


def report(path: Path | str, *args: str) -> dict[str, Any]:
    result = run("report", "--store", str(path), "--from", FROM, "--to", TO, "--json", *args)
    assert result.exit_code == EXIT_OK, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by_key(data: dict[str, Any]) -> dict[tuple[str, ...], tuple[float, int, int, int]]:
    out = {}
    for row in data["rows"]:
        key = tuple(row[group] for group in data["by"])
        out[key] = (round(row["spend"], 9), row["calls"], row["prompt_tokens"], row["completion_tokens"])
    return out


TOTAL = {"spend": 7.75, "calls": 5, "prompt_tokens": 760, "completion_tokens": 152}


def test_by_user_table(store_path: Path) -> None:
    result = run("report", "--store", str(store_path), "--from", FROM, "--to", TO)
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"spend by user, {FROM} to {TO} (UTC)"
    assert lines[2].split() == ["USER", "SPEND", "CALLS", "PROMPT", "TOKENS", "COMPLETION", "TOKENS"]
    assert [line.split()[:3] for line in lines[3:7]] == [
        ["carol", "$4.00", "1"],
        ["bob", "$2.00", "1"],
        ["alice", "$1.50", "2"],
        ["team:red", "$0.25", "1"],
    ]
    assert set(lines[7]) == {"-"}
    assert lines[8].split() == ["total", "$7.75", "5", "760", "152"]


def test_numbers_per_group(store_path: Path) -> None:
    data = report(store_path)
    assert data["by"] == ["user"]
    assert by_key(data) == {
        ("carol",): (4.0, 1, 400, 80),
        ("bob",): (2.0, 1, 200, 40),
        ("alice",): (1.5, 2, 150, 30),
        ("team:red",): (0.25, 1, 10, 2),
    }
    assert data["total"] == pytest.approx(TOTAL)
    assert data["period"]["since"] == T0 and data["period"]["until"] == T0 + 5 * DAY

    assert by_key(report(store_path, "--by", "model")) == {
        ("gpt-4o",): (6.5, 3, 650, 130),
        ("gpt-4o-mini",): (1.25, 2, 110, 22),
    }
    # a call of two tags counts in each; the total counts it once
    tags = report(store_path, "--by", "tag")
    assert by_key(tags) == {
        ("(none)",): (6.0, 2, 600, 120),
        ("search",): (1.5, 2, 150, 30),
        ("chat",): (0.75, 2, 60, 12),
    }
    assert tags["total"] == pytest.approx(TOTAL)
    assert by_key(report(store_path, "--by", "team")) == {
        ("blue",): (4.0, 1, 400, 80),
        ("red",): (2.25, 2, 210, 42),
        ("(none)",): (1.5, 2, 150, 30),
    }
    both = report(store_path, "--by", "user", "--by", "model")
    assert by_key(both)[("alice", "gpt-4o")] == (0.5, 1, 50, 10)
    assert by_key(both)[("alice", "gpt-4o-mini")] == (1.0, 1, 100, 20)
    assert len(both["rows"]) == 5


def test_by_day_in_a_timezone(store_path: Path) -> None:
    day = [(D0 + timedelta(days=n)).date().isoformat() for n in range(5)]
    utc = report(store_path, "--by", "day")
    assert [row["day"] for row in utc["rows"]] == [day[0], day[1], day[2], day[4]]  # by day, in order
    assert by_key(utc)[(day[0],)] == (3.0, 2, 300, 60)
    # in Paris, bob's 23:30 UTC call is on the next day; the period is Paris's days too
    paris = report(store_path, "--by", "day", "--timezone", "Europe/Paris")
    assert by_key(paris)[(day[0],)] == (1.0, 1, 100, 20)
    assert by_key(paris)[(day[1],)] == (2.5, 2, 250, 50)
    assert paris["period"]["from"].startswith(f"{FROM}T00:00:00+0")


def test_period_filtering(store_path: Path) -> None:
    one_day = report(store_path, "--to", FROM)  # --to a date includes that day
    assert by_key(one_day) == {("bob",): (2.0, 1, 200, 40), ("alice",): (1.0, 1, 100, 20)}
    result = run("report", "--store", str(store_path), "--from", f"{FROM}T10:00", "--to", f"{FROM}T23:30", "--json")
    assert by_key(json.loads(result.stdout)) == {("alice",): (1.0, 1, 100, 20)}  # a time --to is excluded
    everything = run("report", "--store", str(store_path), "--since", "30d", "--json")
    assert json.loads(everything.stdout)["total"]["calls"] == len(CHARGES)
    recent = run("report", "--store", str(store_path), "--since", "12h")
    assert recent.exit_code == EXIT_OK and "no charges in this period" in recent.stdout


def test_csv(store_path: Path) -> None:
    result = run("report", "--store", str(store_path), "--from", FROM, "--to", TO, "--csv", "--by", "team")
    assert result.exit_code == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["team", "spend", "calls", "prompt_tokens", "completion_tokens"]
    assert [(r["team"], float(r["spend"]), int(r["calls"])) for r in rows] == [
        ("blue", 4.0, 1),
        ("red", 2.25, 2),
        ("(none)", 1.5, 2),
    ]


def test_csv_cells_that_start_like_formulas_are_text(tmp_path: Path) -> None:
    path = tmp_path / "budgets.json"
    store = FileStore(path)
    try:
        for n, user in enumerate(['=HYPERLINK("http://x")', "+1", "@SUM(1)", "-2", "plain"]):
            store.clock = lambda at=T0 + n: at  # type: ignore[method-assign]
            store.charge(user, 1.0, "m", default={"total_budget": None, "duration": None})
    finally:
        store.close()
    result = run("report", "--store", str(path), "--from", FROM, "--to", TO, "--csv")
    users = sorted(row["user"] for row in csv.DictReader(io.StringIO(result.stdout)))
    assert users == ["'+1", "'-2", '\'=HYPERLINK("http://x")', "'@SUM(1)", "plain"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "lately"], "--since 'lately'"),
        (["--since", "daily"], "--since 'daily'"),
        (["--since", "30x"], "unknown duration"),
        (["--from", "2026-13-01"], "--from '2026-13-01'"),
        (["--to", "yesterday"], "--to 'yesterday'"),
        (["--to", "9999-12-31"], "--to '9999-12-31' is out of range"),
        (["--to", "3500-01-01"], "--to '3500-01-01' is out of range"),
        (["--from", "1969-12-01", "--to", "1969-12-02"], "out of range"),
        (["--from", "2026-12-05", "--to", "2026-12-01"], "the period is empty"),
        (["--since", "7d", "--from", "2026-12-01"], "--since counts back from now"),
        (["--by", "planet"], "'planet' is not one of"),
        (["--timezone", "Mars/Olympus"], "does not exist"),
        (["--json", "--csv"], "give one"),
        (["--top", "0"], "--top"),
    ],
)
def test_bad_input(store_path: Path, args: list[str], message: str) -> None:
    result = run("report", "--store", str(store_path), *args)
    assert result.exit_code == EXIT_USAGE
    assert message in result.output
    assert result.stdout == ""


def test_torn_line_is_skipped_with_a_warning(store_path: Path) -> None:
    day_file = store_path.with_name(f"{store_path.name}.ledger-{FROM}")
    whole = day_file.read_bytes()
    # a crash mid-line, then a later writer's whole line after it
    day_file.write_bytes(whole + b'[%f,"mallory",[],"gpt-4o",1,' % (T0 + 3600) + b"\n" + whole.splitlines()[0] + b"\n")
    result = run("report", "--store", str(store_path), "--from", FROM, "--to", TO, "--json")
    assert result.exit_code == EXIT_OK
    assert "warning: ledger" in result.stderr and "skipped 1 torn" in result.stderr
    data = json.loads(result.stdout)
    assert data["total"]["calls"] == TOTAL["calls"] + 1  # the whole line repeated counts; the torn one does not
    assert "mallory" not in result.stdout


def test_http_store_gives_the_same_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "served"
    folder.mkdir()
    store = FileStore(folder / "default.json")
    try:
        charge_all(store)
    finally:
        store.close()
    with ServerThread(directory_stores(folder)) as server:
        for by in ("user", "team", "tag", "day"):
            over_http = report(server.url, "--by", by)
            assert over_http == report(folder / "default.json", "--by", by)
        assert report(server.url)["total"] == pytest.approx(TOTAL)


# --- the pure functions -----------------------------------------------------------------

NOW = datetime(2026, 3, 29, 12, tzinfo=UTC).timestamp()  # the day Paris moves to summer time


def test_periods() -> None:
    assert reports.period(NOW, since="12h") == (NOW - 12 * 3600, NOW, "UTC")
    assert reports.period(NOW, since="2w").start == NOW - 14 * DAY
    assert reports.period(NOW) == (NOW - 30 * DAY, NOW, "UTC")
    paris = reports.period(NOW, start="2026-03-29", end="2026-03-29", timezone="Europe/Paris")
    assert paris.end - paris.start == 23 * 3600  # a 23-hour day
    assert paris.start == datetime(2026, 3, 28, 23, tzinfo=UTC).timestamp()
    aware = reports.period(NOW, start="2026-03-01T00:00+02:00", end="2026-03-02T00:00Z")
    assert aware.end - aware.start == DAY + 2 * 3600
    with pytest.raises(ConfigurationError, match="unknown group 'week'"):
        reports.check_groups(["week"])
    assert reports.check_groups([]) == ("user",)
    assert reports.check_groups(["Day", "user", "day"]) == ("day", "user")


def test_aggregate_is_one_pass_over_any_iterable() -> None:
    def entries() -> Any:  # a generator: read once
        for i in range(1000):
            yield LedgerEntry(NOW - i * 60, f"u{i % 3}", ("team:a", "team:b") if i % 2 else (), "m", 1, 2, 0.5, None)

    span = reports.Period(NOW - 500 * 60, NOW + 1, "UTC")
    result = reports.aggregate(entries(), span, ["team"], daily=True)
    assert result.total == (("total",), 250.5, 501, 501, 1002)
    assert {row.key: row.calls for row in result.rows} == {("a",): 250, ("b",): 250, ("(none)",): 251}
    assert sum(result.daily.values()) == pytest.approx(375.5)


def test_money() -> None:
    assert reports.money_decimals([12.5, 0.25]) == 2
    assert reports.money_decimals([3.0, 0.00015]) == 5
    assert reports.money_decimals([]) == 2
    assert reports.money(1234.5) == "$1,234.50"
    assert reports.money(0.00015, 5) == "$0.00015"


def test_a_second_process_appends_to_the_same_day(store_path: Path) -> None:
    """A store opened again appends to a day file that has lines already (it reads its last
    byte for a torn line first: the file was once opened write-only, and every such charge
    was lost from the ledger)."""
    store = FileStore(store_path)
    try:
        store.clock = lambda: T0 + 11 * 3600  # type: ignore[method-assign]
        store.charge("alice", 0.125, "gpt-4o", usage=Usage(1, 1, ()))
    finally:
        store.close()
    assert by_key(report(store_path))[("alice",)] == (1.625, 3, 151, 31)
