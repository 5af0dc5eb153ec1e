"""A file store's day totals: each UTC day that is over is summed once by budgets and model,
kept beside its day file, and gives reports the same numbers as its entries."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import pytest

from litellm_budget_plugin import reports
from litellm_budget_plugin.ledger import LedgerEntry, LedgerTotal, Usage
from litellm_budget_plugin.stores import FileStore

DAY = 86400.0
T0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC


def fill(store: FileStore, seed: int, days: int = 4) -> None:
    chance = random.Random(seed)
    store.set_budget("team:red", None)
    for user in ("alice", "bob", "carol"):
        store.set_budget(user, None, fields={"team": "red"} if user != "carol" else None)
    for n in range(300):
        moment = T0 + chance.uniform(0, days * DAY)
        store.clock = lambda moment=moment: moment  # type: ignore[method-assign]
        tags = tuple(f"tag:{t}" for t in chance.sample(["a", "b", "c"], chance.randint(0, 2)))
        store.charge(
            chance.choice(["alice", "bob", "carol"]),
            chance.choice([0.001, 0.25, 1e-7, 3.0]),
            chance.choice(["gpt-4o", "gpt-4o-mini"]),
            call_id=f"c{n}",
            usage=Usage(chance.randint(0, 900), chance.randint(0, 300), tags),
        )


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    made = FileStore(tmp_path / "user_cost.json")
    yield made
    made.close()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("by", [("user",), ("model",), ("team",), ("tag",), ("day",), ("user", "model", "tag")])
def test_reports_from_totals_match_reports_from_entries(store: FileStore, seed: int, by: tuple[str, ...]) -> None:
    fill(store, seed)
    store.clock = lambda: T0 + 10 * DAY  # type: ignore[method-assign]
    span = reports.period(T0 + 10 * DAY, start="2026-12-01", end="2026-12-04", timezone="UTC")
    raw = reports.aggregate(store.ledger(span.start, span.end), span, by, daily=True)
    summed = reports.aggregate(store.ledger_totals(span.start, span.end), span, by, daily=True)
    assert [row.key for row in summed.rows] == [row.key for row in raw.rows]
    for got, want in zip([*summed.rows, summed.total], [*raw.rows, raw.total], strict=True):
        assert got.calls == want.calls and (got.prompt_tokens, got.completion_tokens) == (
            want.prompt_tokens,
            want.completion_tokens,
        )
        assert got.spend == pytest.approx(want.spend, rel=1e-12)
    assert summed.daily.keys() == raw.daily.keys()


def test_days_over_come_as_totals_and_today_as_entries(store: FileStore, tmp_path: Path) -> None:
    fill(store, 7, days=3)
    store.clock = lambda: T0 + 2.5 * DAY  # type: ignore[method-assign]
    items = list(store.ledger_totals(T0, T0 + 3 * DAY))
    assert {type(item) for item in items if item.time < T0 + 2 * DAY} == {LedgerTotal}
    assert {type(item) for item in items if item.time >= T0 + 2 * DAY} == {LedgerEntry}
    assert sum(item.calls for item in items) == len(list(store.ledger(T0, T0 + 3 * DAY)))
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".totals"))
    assert kept == ["user_cost.json.ledger-2026-12-01.totals", "user_cost.json.ledger-2026-12-02.totals"]
    # a period that starts mid-day reads that day's entries
    partial = list(store.ledger_totals(T0 + 0.5 * DAY, T0 + 2 * DAY))
    assert {type(item) for item in partial if item.time < T0 + DAY} == {LedgerEntry}


def test_a_day_that_grew_is_summed_again(store: FileStore) -> None:
    fill(store, 3, days=1)
    store.clock = lambda: T0 + 2 * DAY  # type: ignore[method-assign]
    before = sum(item.cost for item in store.ledger_totals(T0, T0 + DAY))
    store.clock = lambda: T0 + 0.5 * DAY  # type: ignore[method-assign]  # a writer whose clock lags
    store.charge("alice", 100.0, "gpt-4o", call_id="late")
    store.clock = lambda: T0 + 2 * DAY  # type: ignore[method-assign]
    assert sum(item.cost for item in store.ledger_totals(T0, T0 + DAY)) == pytest.approx(before + 100.0)


@pytest.mark.parametrize("damage", [b"not json\n", b'{"of_bytes": 1}\n', None])
def test_a_bad_totals_file_is_summed_again(store: FileStore, tmp_path: Path, caplog, damage: bytes | None) -> None:
    fill(store, 5, days=1)
    store.clock = lambda: T0 + 2 * DAY  # type: ignore[method-assign]
    want = sum(item.cost for item in store.ledger(T0, T0 + DAY))
    list(store.ledger_totals(T0, T0 + DAY))
    totals = tmp_path / "user_cost.json.ledger-2026-12-01.totals"
    if damage is None:  # a sane header over a torn row
        header, *rows = totals.read_bytes().split(b"\n")
        totals.write_bytes(header + b"\n" + rows[0][:-9] + b"\n")
    else:
        totals.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        assert sum(item.cost for item in store.ledger_totals(T0, T0 + DAY)) == pytest.approx(want)
    assert sum(item.cost for item in store.ledger_totals(T0, T0 + DAY)) == pytest.approx(want)


def test_a_totals_file_that_is_a_link_is_never_followed(store: FileStore, tmp_path: Path, caplog) -> None:
    fill(store, 6, days=1)
    outside = tmp_path / "outside"
    outside.write_text("keep me\n")
    os.symlink(outside, tmp_path / "user_cost.json.ledger-2026-12-01.totals")
    store.clock = lambda: T0 + 2 * DAY  # type: ignore[method-assign]
    want = sum(item.cost for item in store.ledger(T0, T0 + DAY))
    with caplog.at_level(logging.WARNING):
        assert sum(item.cost for item in store.ledger_totals(T0, T0 + DAY)) == pytest.approx(want)
    assert outside.read_text() == "keep me\n"
    assert (tmp_path / "user_cost.json.ledger-2026-12-01.totals").is_symlink()  # left as it is
    assert "symbolic link" in caplog.text


def test_old_totals_go_with_their_day(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json", ledger_retention_days=2)
    try:
        fill(store, 8, days=1)
        store.clock = lambda: T0 + 1.5 * DAY  # type: ignore[method-assign]
        list(store.ledger_totals(T0, T0 + DAY))
        assert (tmp_path / "user_cost.json.ledger-2026-12-01.totals").exists()
        store.clock = lambda: T0 + 4 * DAY  # type: ignore[method-assign]
        store.charge("alice", 1.0, "m")
        assert not [p for p in tmp_path.iterdir() if "2026-12-01" in p.name]
    finally:
        store.close()


def test_day_costs_match_the_entries_and_come_from_one_line_once_a_day_is_over(
    store: FileStore, tmp_path: Path
) -> None:
    fill(store, 9, days=3)
    store.clock = lambda: T0 + 2.5 * DAY  # type: ignore[method-assign]
    want: dict[float, float] = {}
    for item in store.ledger(T0, T0 + 3 * DAY):
        day = T0 + (item.time - T0) // DAY * DAY
        want[day] = want.get(day, 0.0) + item.cost
    costs = store.ledger_day_costs(T0, T0 + 3 * DAY)
    assert costs.keys() == want.keys() and all(costs[day] == pytest.approx(want[day]) for day in want)
    header = (tmp_path / "user_cost.json.ledger-2026-12-01.totals").read_text().splitlines()[0]
    assert json.loads(header)["cost"] == pytest.approx(want[T0])
    assert not (tmp_path / "user_cost.json.ledger-2026-12-03.totals").exists()  # today: from its entries
    store.clock = lambda: T0 + 0.5 * DAY  # type: ignore[method-assign]  # a writer whose clock lags
    store.charge("alice", 7.0, "m", call_id="late")
    store.clock = lambda: T0 + 2.5 * DAY  # type: ignore[method-assign]
    assert store.ledger_day_costs(T0, T0 + DAY)[T0] == pytest.approx(want[T0] + 7.0)


@pytest.mark.parametrize("cost", ["NaN", "Infinity", "-7.0", "1e400", "7", '"7.0"'])
def test_a_totals_header_with_insane_money_is_summed_again(store: FileStore, tmp_path: Path, cost: str) -> None:
    fill(store, 10, days=1)
    store.clock = lambda: T0 + 2 * DAY  # type: ignore[method-assign]
    want = sum(item.cost for item in store.ledger(T0, T0 + DAY))
    assert store.ledger_day_costs(T0, T0 + DAY)[T0] == pytest.approx(want)
    totals = tmp_path / "user_cost.json.ledger-2026-12-01.totals"
    header, rest = totals.read_text().split("\n", 1)
    size = json.loads(header)["of_bytes"]
    totals.write_text(f'{{"of_bytes": {size}, "cost": {cost}}}\n' + rest)
    assert store.ledger_day_costs(T0, T0 + DAY)[T0] == pytest.approx(want)
    assert json.loads(totals.read_text().split("\n", 1)[0])["cost"] == pytest.approx(want)  # made again


def test_a_totals_file_this_process_may_not_read_is_never_written_over(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(store, 11, days=1)
    totals = tmp_path / "user_cost.json.ledger-2026-12-01.totals"
    totals.mkdir()  # not a regular file: refused, and left as it is
    store.clock = lambda: T0 + 2 * DAY  # type: ignore[method-assign]
    want = sum(item.cost for item in store.ledger(T0, T0 + DAY))
    with caplog.at_level(logging.WARNING):
        assert sum(item.cost for item in store.ledger_totals(T0, T0 + DAY)) == pytest.approx(want)
        assert store.ledger_day_costs(T0, T0 + DAY)[T0] == pytest.approx(want)
    assert totals.is_dir() and "unreadable" in caplog.text


def test_a_budget_server_sends_its_file_stores_day_totals(tmp_path: Path) -> None:
    from server_thread import ServerClock, ServerThread, directory_stores

    from litellm_budget_plugin.stores.http import HttpStore

    folder = tmp_path / "served"
    folder.mkdir()
    store = FileStore(folder / "p.json")
    try:
        fill(store, 12, days=3)
    finally:
        store.close()
    clock = ServerClock()
    clock.now = lambda: T0 + 2.5 * DAY
    with ServerThread(directory_stores(folder, clock)) as server:
        client = HttpStore(server.url, project_name="p", retries=0)
        items = list(client.ledger_totals(T0, T0 + 3 * DAY))
        entries = list(client.ledger(T0, T0 + 3 * DAY))
        client.close()
    assert {type(item) for item in items if item.time < T0 + 2 * DAY} == {LedgerTotal}
    assert {type(item) for item in items if item.time >= T0 + 2 * DAY} == {LedgerEntry}
    assert {type(item) for item in entries} == {LedgerEntry}
    assert sum(item.calls for item in items) == len(entries) == 300
    assert sum(item.cost for item in items) == pytest.approx(sum(item.cost for item in entries))
