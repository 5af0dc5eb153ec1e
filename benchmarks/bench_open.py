"""Opening a file store, by journal size: alone, and 8 processes at once; before and after
reading outside the lock, and LiteLLM's BudgetManager loading the same records.

Sets a baseline, not a gate: the machine is shared and noisy, so figures are medians and
every comparison is within this run.

For each journal size (0, 1k, 5k, 20k lines of reserve+settle pairs over 50 users, never
folded, as a store written before folds came sooner could hold):

- "open": ``FileStore(path)`` (it reads the snapshot and the whole journal), median of
  ``--samples``; "lock held": how long that open holds the store's lock. Each "in-lock"
  column is the previous way, forced here: everything read under the lock.
- "8 at once": 8 forked processes open the store together (default lock timeout, 10 s):
  the slowest open, and how many failed with StoreLockTimeout; the same in-lock.
- "LiteLLM": ``litellm.BudgetManager(project_name=...)`` loading a ``user_cost.json`` with the
  same records (the store folded), median; and ours opening that folded file.
- "folds now": the journal size this version leaves after the same writes (it folds at
  MIN_JOURNAL_BYTES or the snapshot's size), and the open time of that store.

Run: python benchmarks/bench_open.py [--sizes 0,1000,5000,20000] [--samples 5] [--processes 8]
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import litellm
from _processes import run_together

from litellm_budget_plugin import FileStore, StoreLockTimeout
from litellm_budget_plugin.stores import _journal, _lock

USERS = 50


@contextlib.contextmanager
def replaced(owner: object, name: str, value: object) -> Iterator[None]:
    previous = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, previous)


def in_lock() -> contextlib.AbstractContextManager[None]:
    """Open the previous way: nothing read before the lock is taken, all of it under the lock."""
    return replaced(_journal.Journal, "load_unlocked", lambda self: None)


def write_pairs(path: Path, lines: int) -> None:
    store = FileStore(path)
    for i in range(lines // 2):
        user = f"user-{i % USERS}"
        store.reserve(user, f"call-{i}", 0.01, 600.0, default={"total_budget": 1e9, "duration": None})
        store.settle(f"call-{i}", 0.005, "gpt-4o-mini")
    store.close()


def open_seconds(path: Path) -> float:
    started = time.perf_counter()
    FileStore(path).close()
    return time.perf_counter() - started


def lock_held_seconds(path: Path) -> float:
    """How long opening ``path`` holds the store's file lock, in all."""
    held: list[float] = []
    acquire, release = _lock._ProcessLock.acquire, _lock._ProcessLock.release

    def timed_acquire(self: _lock._ProcessLock, timeout: float) -> None:
        acquire(self, timeout)
        held.append(-time.perf_counter())

    def timed_release(self: _lock._ProcessLock) -> None:
        held[-1] += time.perf_counter()
        release(self)

    with replaced(_lock._ProcessLock, "acquire", timed_acquire), replaced(_lock._ProcessLock, "release", timed_release):
        FileStore(path).close()
    return sum(held)


def median_of(samples: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(samples))


def at_once(path: Path, processes: int) -> tuple[float, int]:
    """The slowest of ``processes`` opens started together, and how many timed out."""

    def opener(_index: int, start: Callable[[], None]) -> float | None:
        start()
        try:
            return open_seconds(path)
        except StoreLockTimeout:
            return None

    results, _ = run_together(opener, processes)
    opened = [seconds for seconds in results if seconds is not None]
    return max(opened, default=float("nan")), len(results) - len(opened)


def litellm_load_seconds(folder: Path) -> float:
    previous = os.getcwd()
    os.chdir(folder)
    try:
        started = time.perf_counter()
        litellm.BudgetManager(project_name="bench")
        return time.perf_counter() - started
    finally:
        os.chdir(previous)


def measure(folder: Path, lines: int, samples: int, processes: int) -> dict[str, str]:
    path = folder / "unfolded" / "user_cost.json"
    path.parent.mkdir()
    with replaced(_journal, "MIN_JOURNAL_BYTES", 1 << 40):
        write_pairs(path, lines)
    journal = path.with_name(path.name + ".journal")
    row = {"lines": f"{lines:,}", "journal": f"{journal.stat().st_size / 1e6:.2f} MB"}
    opened = median_of(samples, lambda: open_seconds(path))
    with in_lock():
        opened_in_lock = median_of(samples, lambda: open_seconds(path))
    held = median_of(samples, lambda: lock_held_seconds(path))
    with in_lock():
        held_in_lock = median_of(samples, lambda: lock_held_seconds(path))
    row |= {
        "open": ms(opened),
        "open in-lock": ms(opened_in_lock),
        "lock held": ms(held),
        "lock held in-lock": ms(held_in_lock),
    }
    slowest, failed = at_once(path, processes)
    with in_lock():
        slowest_in_lock, failed_in_lock = at_once(path, processes)
    row |= {
        f"{processes} at once": f"{ms(slowest)}, {failed} failed",
        f"{processes} at once in-lock": f"{ms(slowest_in_lock)}, {failed_in_lock} failed",
    }

    folded = folder / "folded"
    shutil.copytree(path.parent, folded)
    store = FileStore(folded / "user_cost.json")
    store.compact()
    store.close()
    (folded / "user_cost.json.journal").unlink()  # LiteLLM's shape: the JSON file alone
    row["ours, folded"] = ms(median_of(samples, lambda: open_seconds(folded / "user_cost.json")))
    row["LiteLLM"] = ms(median_of(samples, lambda: litellm_load_seconds(folded)))

    now = folder / "now" / "user_cost.json"
    now.parent.mkdir()
    write_pairs(now, lines)
    row["folds now: journal"] = f"{now.with_name(now.name + '.journal').stat().st_size / 1e6:.2f} MB"
    row["folds now: open"] = ms(median_of(samples, lambda: open_seconds(now)))
    return row


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,1000,5000,20000", help="journal lines, comma-separated")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--processes", type=int, default=8)
    options = parser.parse_args()
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"{os.cpu_count()} CPUs; {USERS} users; medians of {options.samples}; MIN_JOURNAL_BYTES = "
        f"{_journal.MIN_JOURNAL_BYTES:,}\n"
    )
    rows = []
    for lines in (int(size) for size in options.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-open-") as name:
            rows.append(measure(Path(name), lines, options.samples, options.processes))
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[column] for column in columns) + " |")


if __name__ == "__main__":
    main()
