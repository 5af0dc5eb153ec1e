"""The ledger: every charge a store applies, once, with its tokens and tags, kept across
window resets and ``reset``; torn lines skipped; bad usage refused with nothing changed."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_file_subjects import run_workers

from litellm_budget_plugin import ConfigurationError, StoreCorruptError
from litellm_budget_plugin.ledger import LedgerEntry, Usage, decode, encode
from litellm_budget_plugin.stores import FileStore

DAY = 86400.0
T0 = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_store(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., FileStore]]:
    made: list[FileStore] = []

    def make(**options: Any) -> FileStore:
        store = FileStore(tmp_path / "user_cost.json", **options)
        store.clock = clock  # type: ignore[method-assign]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_each_applied_charge_is_one_entry_with_its_budgets_tokens_and_tags(open_store, clock) -> None:
    store = open_store()
    store.set_budget("team:red", 100.0)
    store.set_budget("tag:search", 100.0)
    store.set_budget("alice", 10.0, "daily", fields={"team": "red"})
    usage = Usage(120, 30, ("tag:search", "tag:untracked"))
    store.charge("alice", 0.5, "gpt-4o", call_id="c1", subjects=["tag:search", "tag:untracked"], usage=usage)
    store.charge("alice", 0.5, "gpt-4o", call_id="c1", usage=usage)  # a retry: charged once
    clock.now += 10
    store.charge_later("alice", 0.25, "gpt-4o-mini", call_id="c2", usage=Usage(5, 6))
    store.reserve("alice", "c3", 1.0, 60)
    assert store.settle("c3", 0.125, "gpt-4o", usage=Usage(7, 8))
    assert not store.settle("c3", 0.125, "gpt-4o", usage=Usage(7, 8))

    entries = list(store.ledger())
    assert entries == [
        LedgerEntry(T0, "alice", ("team:red", "tag:search", "tag:untracked"), "gpt-4o", 120, 30, 0.5, "c1"),
        LedgerEntry(T0 + 10, "alice", ("team:red",), "gpt-4o-mini", 5, 6, 0.25, "c2"),
        LedgerEntry(T0 + 10, "alice", ("team:red",), "gpt-4o", 7, 8, 0.125, "c3"),
    ]
    assert entries[0].teams == ("red",) and entries[0].tags == ("search", "untracked")
    assert sum(item.cost for item in entries) == pytest.approx(store.get("alice")["current_cost"])


def test_calls_admitted_from_leases_are_recorded_once_each(open_store) -> None:
    store = open_store()
    store.set_budget("team:red", 100.0)
    store.set_budget("alice", 10.0, fields={"team": "red"})
    for n in range(20):
        store.admit("alice", f"call-{n}", 0.1, 60)
        store.charge_later("alice", 0.01, "m", call_id=f"call-{n}", usage=Usage(n, n))
    entries = list(store.ledger())
    assert sorted(item.call_id or "" for item in entries) == sorted(f"call-{n}" for n in range(20))
    assert all(item.subjects == ("team:red",) and item.prompt_tokens == int(item.call_id[5:]) for item in entries)


def test_history_survives_resets_and_window_rolls(open_store, clock) -> None:
    store = open_store()
    store.set_budget("alice", 10.0, "daily")
    store.charge("alice", 2.0, "m", call_id="day-1")
    clock.now += DAY
    store.charge("alice", 3.0, "m", call_id="day-2")
    assert store.get("alice")["current_cost"] == 3.0  # the window rolled
    store.reset("alice")
    assert store.get("alice")["current_cost"] == 0.0
    assert [item.cost for item in store.ledger()] == [2.0, 3.0]
    assert [item.cost for item in store.ledger(since=T0, until=T0 + DAY)] == [2.0]
    assert [item.cost for item in store.ledger(since=T0 + DAY)] == [3.0]


def test_a_day_file_per_utc_day_and_old_days_are_deleted(open_store, clock, tmp_path: Path) -> None:
    store = open_store(ledger_retention_days=2)
    store.set_budget("alice", 100.0)
    for day in range(4):
        store.charge("alice", 1.0, "m", call_id=f"d{day}")
        clock.now += DAY
    names = sorted(p.name for p in tmp_path.iterdir() if ".ledger-" in p.name)
    # written on 11-30 .. 12-03; on 12-03 the files older than two days before it are gone
    assert names == [f"user_cost.json.ledger-2026-{day}" for day in ("12-01", "12-02", "12-03")]
    assert [item.call_id for item in store.ledger()] == ["d1", "d2", "d3"]  # what is kept is read


def test_a_store_without_ledger_writes_none(open_store, tmp_path: Path) -> None:
    store = open_store(ledger=False)
    store.set_budget("alice", 1.0)
    store.charge("alice", 0.5, "m")
    assert list(store.ledger()) == []
    assert not [p for p in tmp_path.iterdir() if ".ledger-" in p.name]


def test_a_torn_line_is_skipped_with_a_warning_and_the_next_entry_stays_whole(
    open_store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store()
    store.set_budget("alice", 10.0)
    store.charge("alice", 1.0, "m", call_id="before")
    day_file = next(p for p in tmp_path.iterdir() if ".ledger-" in p.name)
    with open(day_file, "ab") as out:  # a writer killed mid-line
        out.write(b'[1796000000.0,"alice",["team:r')
    other = open_store()  # another process's store: it did not write the torn line's file end
    other.charge("alice", 2.0, "m", call_id="after")
    with caplog.at_level(logging.WARNING):
        entries = list(store.ledger())
    assert [item.call_id for item in entries] == ["before", "after"]
    assert "skipped 1 torn" in caplog.text


def test_a_ledger_file_that_is_a_link_is_never_followed(open_store, tmp_path: Path, caplog) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    store = open_store()
    store.set_budget("alice", 10.0)
    link = tmp_path / "user_cost.json.ledger-2026-11-30"
    os.symlink(outside, link)
    with caplog.at_level(logging.ERROR):
        store.charge("alice", 1.0, "m", call_id="c1")  # charged; its ledger line is refused
    assert store.get("alice")["current_cost"] == 1.0
    assert outside.read_text() == "keep me\n"
    assert "not to its ledger" in caplog.text
    with pytest.raises(StoreCorruptError, match="symbolic link"):
        list(store.ledger())


@pytest.mark.parametrize(
    ("usage", "problem"),
    [
        (Usage(-1, 0), "prompt_tokens"),
        (Usage(0, 10**13), "completion_tokens"),
        (Usage(0, 0, ("search",)), "tag keys"),
        (Usage(1.5, 0), "prompt_tokens"),  # type: ignore[arg-type]
        ({"prompt_tokens": 1}, "ledger.Usage"),
    ],
)
def test_bad_usage_is_refused_and_nothing_is_charged(open_store, usage, problem) -> None:
    store = open_store()
    store.set_budget("alice", 10.0)
    with pytest.raises(ConfigurationError, match=problem):
        store.charge("alice", 1.0, "m", usage=usage)
    with pytest.raises(ConfigurationError, match=problem):
        store.charge_later("alice", 1.0, "m", usage=usage)
    assert store.get("alice")["current_cost"] == 0.0
    assert list(store.ledger()) == []


@pytest.mark.parametrize(("since", "until"), [(5.0, 1.0), (-1.0, None), (float("nan"), None), (None, 1e20)])
def test_bad_periods_are_refused(open_store, since, until) -> None:
    with pytest.raises(ConfigurationError, match="ledger"):
        list(open_store().ledger(since, until))


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"[",
        b"{}",
        b"[1,2,3]",
        b'[1e400,"a",[],"m",0,0,1.0,null]',
        b'[1.0,"a",[],"m",-1,0,1.0,null]',
        b'[1.0,"a",[1],"m",0,0,1.0,null]',
        b'[1.0,"a",[],"m",0,0,NaN,null]',
        b'[1.0,"a",[],"m",true,0,1.0,null]',
    ],
)
def test_lines_that_are_not_sane_entries_decode_to_none(line: bytes) -> None:
    assert decode(line) is None


def test_entries_round_trip() -> None:
    item = LedgerEntry(T0, "tag:x", ("team:é", "tag:y"), "openai/gpt-4o", 1, 2, 1e-9, None)
    assert decode(encode(item)) == item


def _charge_in_a_process(path: str, worker: int, calls: int, results: Any) -> None:
    store = FileStore(path)
    for n in range(calls):
        store.admit("alice", f"w{worker}-{n}", 0.01, 60)
        store.charge_later("alice", 0.001, "m", call_id=f"w{worker}-{n}", usage=Usage(1, 1))
    store.close()
    results.put(calls)


def test_processes_sharing_a_store_record_every_charge(open_store, tmp_path: Path) -> None:
    store = open_store()
    store.set_budget("alice", 100.0)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    path = str(tmp_path / "user_cost.json")
    workers = [context.Process(target=_charge_in_a_process, args=(path, w, 50, results)) for w in range(4)]
    assert sum(run_workers(workers, results)) == 200
    reader = FileStore(path)
    entries = list(reader.ledger())
    reader.close()
    assert sorted(item.call_id or "" for item in entries) == sorted(f"w{w}-{n}" for w in range(4) for n in range(50))


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["{oops"], "malformed end"),
        (['{"x": 1}'], "malformed end"),
        ([encode(LedgerEntry(T0, "a", (), "m", 0, 0, 1.0, None))], "cut after 1"),
        ([encode(LedgerEntry(T0, "a", (), "m", 0, 0, 1.0, None)), '{"end": 2}'], "ended after 1 of 2"),
        (['[1, "torn', '{"end": 1}'], "malformed ledger line"),
        (['[1.0,"a",[],"m",0,0,1.0,-3]', '{"end": 1}'], "malformed ledger line"),
    ],
)
def test_a_ledger_stream_that_is_not_whole_is_an_error(lines: list[str], problem: str) -> None:
    from litellm_budget_plugin import StoreUnavailableError
    from litellm_budget_plugin.stores.http import _entries, _entries_and_totals, _streamed

    for decoder in (_entries, _entries_and_totals):
        with pytest.raises(StoreUnavailableError, match=problem):
            list(_streamed(iter(lines), "http://budgets/v1/ledger", decoder))  # type: ignore[arg-type]


def test_the_server_keeps_the_ledger_days_it_is_told(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from litellm_budget_plugin.cli import EXIT_USAGE, main
    from litellm_budget_plugin.stores.projects import ProjectStores

    stores = ProjectStores.from_target(str(tmp_path), ledger_retention_days=7)
    store = stores.get("p", create=True)
    assert isinstance(store, FileStore) and store.ledger_retention_days == 7
    stores.close()
    with pytest.raises(ConfigurationError, match="--ledger-days"):
        ProjectStores.from_target("http://127.0.0.1:9", ledger_retention_days=7)
    for days in ("0", "4000", "many"):
        result = CliRunner().invoke(main, ["serve", "--store", str(tmp_path), "--ledger-days", days])
        assert result.exit_code == EXIT_USAGE and "--ledger-days" in result.output
