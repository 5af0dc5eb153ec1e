"""Metrics benchmark: how long the budget server takes to answer ``GET /metrics`` for one project
of many budgets, against reading that project's store alone (``store.all()``) in the same run.

Sets a baseline, not a gate: the machine is shared and noisy. The store is a FileStore whose
snapshot is written directly (``--subjects`` users, each with a budget and a spend); the server
runs in this process (a thread), scraped over loopback by httpx. Each scrape reads every record
rolled to now, keeps the ``max_subjects`` that spent most and writes the text format. Reported:
median, p95 and max over ``--scrapes`` scrapes, with the default bound (500 series) and with
none (every subject a series), and the size of the answer.

Run: python benchmarks/bench_metrics.py [--subjects 10000] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from aiohttp import web

from litellm_budget_plugin.metrics import DEFAULT_MAX_SUBJECTS, BudgetMetrics
from litellm_budget_plugin.server import ProjectStores, make_app
from litellm_budget_plugin.stores import FileStore

PROJECT = "bench"
KEY = "bench-key"


def write_project(folder: Path, subjects: int) -> None:
    now = time.time()
    records = {
        f"user-{n:05}": {
            "total_budget": 10.0,
            "current_cost": (n % 997) / 100,
            "model_cost": {"gpt-4o-mini": (n % 997) / 100},
            "created_at": now,
            "last_updated_at": now,
            "duration": 30.0,
        }
        for n in range(subjects)
    }
    (folder / f"{PROJECT}.json").write_text(json.dumps(records))


@contextmanager
def server(stores: ProjectStores, max_subjects: int) -> Iterator[str]:
    """The budget server with ``GET /metrics`` in a thread; yields its URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    url: list[str] = []

    async def serve() -> None:
        metrics = BudgetMetrics(projects=stores, max_subjects=max_subjects)
        runner = web.AppRunner(make_app(stores, api_key=KEY, metrics=metrics), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def timed(operation: Callable[[], object], times: int) -> list[float]:
    operation()  # warm: the store is opened and its snapshot read once
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        operation()
        spent.append(time.perf_counter() - started)
    return spent


def report(name: str, seconds: list[float], baseline: float | None = None) -> None:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    ratio = f"  x{median / baseline:.1f} store.all()" if baseline else ""
    print(f"{name:<36} median {median * 1e3:7.1f} ms  p95 {p95 * 1e3:7.1f} ms  max {ordered[-1] * 1e3:7.1f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_project(Path(folder), args.subjects)
        store = FileStore(Path(folder) / f"{PROJECT}.json")
        baseline = timed(store.all, args.scrapes)
        store.close()
        print(f"{args.subjects} budgets in one project, {args.scrapes} scrapes each")
        report("store.all() (baseline)", baseline)
        for bound in (DEFAULT_MAX_SUBJECTS, args.subjects):
            stores = ProjectStores.from_target(folder)
            with server(stores, bound) as url, httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
                size = len(client.get(f"{url}/metrics").content)
                seconds = timed(lambda: client.get(f"{url}/metrics", timeout=60).raise_for_status(), args.scrapes)
            report(f"GET /metrics, max_subjects={bound}", seconds, statistics.median(baseline))
            print(f"{'':<36} answer {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
