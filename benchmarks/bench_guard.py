"""BudgetGuard benchmarks: per-call overhead, and admission under concurrency.

Sets a baseline, not a gate: the machine is shared and noisy, so every figure is a median
of several rounds, and each ratio compares numbers measured in the same run.

1. Overhead: ``litellm.completion(mock_response=...)`` with the guard registered vs bare
   litellm, with 1,000 users in the store (file store, the default): calls for one user, whose
   lease admits most calls without a write, and calls for each of the 1,000 users in turn, each
   of which writes its hold; each with the store's ledger on (the default) and off. Then the
   same with ``acompletion``, 100 tasks calling at once.
2. Admission: 32 concurrent calls (threads, then asyncio tasks) on a budget that covers 10
   worst cases, each call in flight for 0.3 s (``mock_delay``). The guard in strict mode vs
   the seed's check-then-call pattern with LiteLLM's own BudgetManager.

Run: python benchmarks/bench_guard.py
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import asyncio
import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import litellm

from litellm_budget_plugin import BudgetExceededError, BudgetManager
from litellm_budget_plugin.guard import BudgetGuard
from litellm_budget_plugin.stores import BudgetStore, FileStore

MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]
MODEL = "gpt-4o-mini"
ROUNDS = 7
REPETITIONS = 15  # rounds of each setup in the overhead tables
CALLS_PER_ROUND = 300
CONCURRENT_TASKS = 100


def time_calls(users: list[str] | None) -> float:
    """Per-call seconds of one round of CALLS_PER_ROUND calls, for ``users`` in turn."""
    turns = itertools.cycle(users or [None])
    start = time.perf_counter()
    for _ in range(CALLS_PER_ROUND):
        user = next(turns)
        extra: dict[str, Any] = {"user": user} if user else {}
        litellm.completion(model=MODEL, messages=MESSAGES, mock_response="Fine, thanks!", max_tokens=50, **extra)
    return (time.perf_counter() - start) / CALLS_PER_ROUND


def time_async_calls(users: list[str] | None) -> float:
    """Per-call seconds of one round of CALLS_PER_ROUND ``acompletion`` calls, made by
    CONCURRENT_TASKS tasks at once, for ``users`` in turn. The round ends when litellm's logging
    worker has run every success event too (the guard settles async calls there)."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    turns = itertools.cycle(users or [None])

    async def task(calls: int) -> None:
        for _ in range(calls):
            user = next(turns)
            extra: dict[str, Any] = {"user": user} if user else {}
            await litellm.acompletion(
                model=MODEL, messages=MESSAGES, mock_response="Fine, thanks!", max_tokens=50, **extra
            )

    async def round_() -> float:
        start = time.perf_counter()
        tasks = (task(CALLS_PER_ROUND // CONCURRENT_TASKS) for _ in range(CONCURRENT_TASKS))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout=120)
        return (time.perf_counter() - start) / CALLS_PER_ROUND

    return asyncio.run(round_())


def overhead(folder: Path) -> None:
    """Rounds of bare and guarded calls take turns, in a rotating order, so that drift in the
    machine's load hits all of them; each ratio is the median of the ratios of rounds measured
    next to each other. The guard runs with the store's ledger on (the default) and off."""
    guards = {}
    for ledger in (True, False):
        store = FileStore(folder / f"overhead-{ledger}.json", ledger=ledger)
        manager = BudgetManager("bench", store=store)
        for i in range(1000):
            manager.create_budget(1_000.0, f"user-{i}")
        guards[ledger] = BudgetGuard(manager)
    one, everyone = ["user-500"], [f"user-{i}" for i in range(1000)]
    setups: dict[str, tuple[list[str] | None, BudgetGuard | None]] = {
        "bare litellm": (None, None),
        "with BudgetGuard (file store), one user calling": (one, guards[True]),
        "  one user, ledger off": (one, guards[False]),
        "with BudgetGuard, the 1,000 users in turn": (everyone, guards[True]),
        "  the 1,000 users, ledger off": (everyone, guards[False]),
    }
    names = list(setups)
    for kind, timer in (("completion", time_calls), ("acompletion", time_async_calls)):
        timer(None)  # warm up litellm
        times: dict[str, list[float]] = {name: [] for name in names}
        for repetition in range(REPETITIONS):
            turn = repetition % len(names)
            for name in names[turn:] + names[:turn]:
                litellm.logging_callback_manager._reset_all_callbacks()
                users, guard = setups[name]
                if guard is not None:
                    litellm.callbacks.append(guard)
                times[name].append(timer(users))
        litellm.logging_callback_manager._reset_all_callbacks()
        time.sleep(1)  # let litellm's logging thread drain
        tasks = f", {CONCURRENT_TASKS} tasks at once" if timer is time_async_calls else ""
        print(f"\n## Guard overhead: {kind}(mock_response=...){tasks}, 1,000 users in the store")
        print("| setup | median per call | ratio to bare (median of paired rounds) | ledger on / off |")
        print("|---|---|---|---|")
        for n, name in enumerate(names):
            ratio = statistics.median(t / b for t, b in zip(times[name], times["bare litellm"], strict=True))
            on_off = ""
            if name.startswith("  "):  # paired with the row above: ledger on vs off
                pairs = zip(times[names[n - 1]], times[name], strict=True)
                on_off = f"{statistics.median(on / off for on, off in pairs):.3f}"
            print(f"| {name.strip()} | {statistics.median(times[name]) * 1e3:.3f} ms | {ratio:.2f}x | {on_off} |")
    for ledger, guard in guards.items():
        store = guard.store
        alone = store_work_per_call(store)
        print(
            f"\nThe guard's store work alone (admit + charge_later), ledger {'on' if ledger else 'off'}: "
            f"{alone * 1e3:.4f} ms a call"
        )


def store_work_per_call(store: BudgetStore) -> float:
    """What one guarded call asks of the store, timed in a tight loop without litellm around it."""
    per_call = []
    for round_ in range(ROUNDS):
        start = time.perf_counter()
        for i in range(CALLS_PER_ROUND):
            call_id = f"alone-{round_}-{i}"
            store.admit("user-500", call_id, 1e-4, 600)
            store.charge_later("user-500", 5e-5, MODEL, call_id=call_id)
        per_call.append((time.perf_counter() - start) / CALLS_PER_ROUND)
    return statistics.median(per_call)


def in_threads(fn: Callable[[], bool], count: int) -> list[bool]:
    results: list[bool] = []
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait()
        results.append(fn())

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def admission(folder: Path) -> None:
    estimate = (litellm.token_counter(model=MODEL, messages=MESSAGES) * 1.5e-7 + 100 * 6e-7) * (1 + 1e-9)
    limit = 10 * estimate
    # Mock responses report 20 output tokens: make each call cost its whole estimate by
    # registering a price at which those 20 tokens cost what 100 would.
    call = dict(model=MODEL, messages=MESSAGES, mock_response="ok", max_tokens=100, mock_delay=0.3)
    rows = []

    # The seed's pattern with LiteLLM's own BudgetManager: check, call, update.
    os.chdir(folder)
    seed = litellm.BudgetManager(project_name="bench")
    seed.create_budget(total_budget=limit, user="seed")

    def seed_call() -> bool:
        if seed.get_current_cost("seed") + estimate > seed.get_total_budget("seed"):
            return False
        response = litellm.completion(**call)
        seed.update_cost(completion_obj=response, user="seed")
        return True

    admitted = sum(in_threads(seed_call, 32))
    time.sleep(0.5)
    rows.append(("LiteLLM BudgetManager, check-then-call, threads", admitted, seed.get_current_cost("seed")))

    manager = BudgetManager("bench", store=folder / "admission.json")
    guard = BudgetGuard(manager)
    litellm.callbacks.append(guard)

    def guarded_call(user: str) -> bool:
        try:
            litellm.completion(user=user, **call)
            return True
        except BudgetExceededError:
            return False

    manager.create_budget(limit, "threads")
    admitted = sum(in_threads(lambda: guarded_call("threads"), 32))
    wait_settled(manager, "threads")
    rows.append(("BudgetGuard strict, threads", admitted, manager.get_current_cost("threads")))

    manager.create_budget(limit, "tasks")

    async def task() -> bool:
        try:
            await litellm.acompletion(user="tasks", **call)
            return True
        except BudgetExceededError:
            return False

    async def tasks() -> int:
        results = await asyncio.gather(*(task() for _ in range(32)))
        deadline = time.monotonic() + 10
        while manager.store.get("tasks").get("reservations") and time.monotonic() < deadline:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        return sum(results)

    admitted = asyncio.run(tasks())
    rows.append(("BudgetGuard strict, asyncio tasks", admitted, manager.get_current_cost("tasks")))
    litellm.logging_callback_manager._reset_all_callbacks()

    print("\n## 32 concurrent calls, budget covers 10 worst cases (each call in flight 0.3 s)")
    print("| setup | admitted | spend / budget |")
    print("|---|---|---|")
    for name, count, spent in rows:
        print(f"| {name} | {count} of 32 | {spent / limit:.0%} |")
    print("(mock responses cost less than their worst case, so spend stays below the admitted share)")


def wait_settled(manager: BudgetManager, user: str) -> None:
    deadline = time.monotonic() + 10
    while manager.store.get(user).get("reservations") and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        overhead(Path(folder))
        admission(Path(folder))


if __name__ == "__main__":
    main()
