"""Budgets beyond the user's: what checking a call against its team, tags and a model cap costs,
and whether one team's budget holds under concurrency.

Sets a baseline, not a gate: the machine is shared and noisy, so every figure is a median of
rounds, and each ratio compares numbers measured in the same run, round by round.

1. Store work per call, on each store (file, budget server, Redis): what the guard does for a
   call in strict mode (``admit``, then ``charge_later``; the file store's flush included),
   for a user-only call vs a call checked against user + team + two tags + a per-model cap
   (one store operation each way). Target (issue 13): at most 1.2x.
2. 32 concurrent calls for 4 users of one team whose team budget covers 10 worst cases: how
   many are admitted, the team's spend against its budget, and what is left held afterwards.
   Threads and asyncio tasks through ``BudgetGuard`` (``mock_response``, each call in flight
   0.2 s), and 4 processes x 8 calls on one file store (``admit`` + ``charge_later``).

Run: python benchmarks/bench_subjects.py            (about a minute)
     python benchmarks/bench_subjects.py --quick    (a smoke run)
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import litellm
from _processes import run_together
from bench_redis import redis_server
from bench_server import budget_server

from litellm_budget_plugin import BudgetExceededError, BudgetManager, FileStore, store_from_url
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.pricing import worst_case
from litellm_budget_plugin.stores import BudgetStore

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]
TEAM_MEMBERS = ("u0", "u1", "u2", "u3")
TAGS = ("tag:search", "tag:beta")
AMOUNT = 0.001


def set_up(store: BudgetStore) -> None:
    """A plain user, and one whose call meets a team, two tags and a model cap."""
    store.set_budget("solo", 1e6)
    cap = {"budget": 1e6, "duration": "daily", "model": MODEL}
    store.set_budget("member", 1e6, "monthly", fields={"team": "bench", "windows": [cap]})
    store.set_budget("team:bench", 1e6, "monthly")
    for tag in TAGS:
        store.set_budget(tag, 1e6)


def calls(store: BudgetStore, user: str, subjects: tuple[str, ...], count: int) -> float:
    """Seconds per call for ``count`` guarded-call store operations, charges written."""
    started = time.perf_counter()
    for _ in range(count):
        call_id = uuid.uuid4().hex
        held = store.admit(user, call_id, AMOUNT, 600, model=MODEL, subjects=subjects)
        store.charge_later(user, AMOUNT / 2, MODEL, call_id=call_id, held=held, subjects=subjects)
    if isinstance(store, FileStore):
        store.flush()
    return (time.perf_counter() - started) / count


def store_rows(target: str, rounds: int, count: int) -> tuple[float, float]:
    store = store_from_url(target, project="bench")
    try:
        set_up(store)
        calls(store, "solo", (), count)  # warm up both paths
        calls(store, "member", TAGS, count)
        plain, wide = [], []
        for _ in range(rounds):  # alternated, so that a busy moment hits both
            plain.append(calls(store, "solo", (), count))
            wide.append(calls(store, "member", TAGS, count))
        return statistics.median(plain), statistics.median(wide)
    finally:
        store.close()


def team_limit() -> tuple[float, dict[str, object]]:
    request: dict[str, object] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100}
    estimate = worst_case("completion", MODEL, request, 100).total
    return 10 * estimate * (1 + 1e-9), request


def fresh_team(store: BudgetStore, limit: float, name: str) -> None:
    store.set_budget(f"team:{name}", limit)
    for user in TEAM_MEMBERS:
        store.set_budget(f"{name}-{user}", 1.0, fields={"team": name})


def left_held(store: BudgetStore, name: str) -> float:
    keys = [f"team:{name}", *(f"{name}-{user}" for user in TEAM_MEMBERS)]
    return sum(hold["amount"] for key in keys for hold in (store.get(key) or {}).get("reservations", {}).values())


def wait_until_nothing_held(store: BudgetStore, name: str) -> None:
    deadline = time.monotonic() + 30
    while left_held(store, name) and time.monotonic() < deadline:
        time.sleep(0.02)


def guarded(folder: Path) -> list[tuple[str, int, float, float, float]]:
    limit, request = team_limit()
    manager = BudgetManager("bench", store=folder / "guard.json")
    guard = BudgetGuard(manager)
    litellm.callbacks.append(guard)
    rows = []
    try:
        fresh_team(manager.store, limit, "threads")
        admitted: list[bool] = []
        start = threading.Barrier(32, timeout=60)

        def call(i: int) -> None:
            start.wait()
            try:
                litellm.completion(user=f"threads-u{i % 4}", mock_response="ok", mock_delay=0.2, **request)  # type: ignore[arg-type]
                admitted.append(True)
            except BudgetExceededError:
                pass

        threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        wait_until_nothing_held(manager.store, "threads")
        spent = manager.store.get("team:threads")["current_cost"]  # type: ignore[index]
        rows.append(("BudgetGuard, 32 threads", len(admitted), spent, limit, left_held(manager.store, "threads")))

        fresh_team(manager.store, limit, "tasks")

        async def task(i: int) -> bool:
            try:
                await litellm.acompletion(user=f"tasks-u{i % 4}", mock_response="ok", mock_delay=0.2, **request)  # type: ignore[arg-type]
                return True
            except BudgetExceededError:
                return False

        async def tasks() -> int:
            return sum(await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(32))), timeout=120))

        count = asyncio.run(tasks())
        wait_until_nothing_held(manager.store, "tasks")
        spent = manager.store.get("team:tasks")["current_cost"]  # type: ignore[index]
        rows.append(("BudgetGuard, 32 asyncio tasks", count, spent, limit, left_held(manager.store, "tasks")))
    finally:
        litellm.logging_callback_manager._reset_all_callbacks()
        manager.store.close()
    return rows


def in_processes(folder: Path) -> tuple[str, int, float, float, float]:
    path = folder / "processes.json"
    limit, _ = team_limit()
    store = FileStore(path)
    fresh_team(store, limit, "procs")
    store.close()

    def work(index: int, start: Callable[[], None]) -> int:
        mine = FileStore(path)
        start()
        admitted = 0
        for n in range(8):
            call_id = f"p{index}-{n}"
            try:
                held = mine.admit(f"procs-u{index}", call_id, limit / 10, 60, model=MODEL)
            except BudgetExceededError:
                continue
            admitted += 1
            mine.charge_later(f"procs-u{index}", held, MODEL, call_id=call_id, held=held)
        mine.close()
        return admitted

    results, _ = run_together(work, 4)
    store = FileStore(path)
    try:
        spent = store.get("team:procs")["current_cost"]  # type: ignore[index]
        return ("FileStore, 4 processes x 8 calls", sum(results), spent, limit, left_held(store, "procs"))
    finally:
        store.close()


@contextlib.contextmanager
def targets(folder: Path) -> Iterator[list[tuple[str, str]]]:
    with redis_server(folder) as redis_url, budget_server(folder / "server") as server_url:
        yield [("file", str(folder / "user_cost.json")), ("budget server", server_url), ("Redis", redis_url)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args()
    rounds, count = (3, 50) if args.quick else (9, 300)
    print(f"python {sys.version.split()[0]}, litellm {metadata.version('litellm')}")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "server").mkdir()
        print("\n## Store work per guarded call: user only vs user + team + 2 tags + model cap")
        print("| store | user only | user + team + 2 tags + model cap | ratio (target <= 1.2x) |")
        print("|---|---|---|---|")
        with targets(folder) as stores:
            for label, target in stores:
                plain, wide = store_rows(target, rounds, count)
                print(f"| {label} | {plain * 1e3:.3f} ms | {wide * 1e3:.3f} ms | {wide / plain:.2f}x |")

        print("\n## 32 concurrent calls for 4 users of one team; the team's budget covers 10 worst cases")
        print("| setup | admitted | team spend / budget | held afterwards |")
        print("|---|---|---|---|")
        for label, admitted, spent, limit, held in [*guarded(folder), in_processes(folder)]:
            print(f"| {label} | {admitted} of 32 | {spent / limit:.0%} | ${held:.6f} |")
        print("(mock responses cost less than their worst case, so guarded spend stays below the admitted share)")


if __name__ == "__main__":
    main()
