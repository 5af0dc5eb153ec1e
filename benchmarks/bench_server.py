"""Budget server benchmark: charges/s from 4 client processes, reserve+settle latency, vs FileStore.

Sets a baseline, not a gate: the machine is shared and noisy. Both paths run in the same run
on the same kind of store, so the ratios compare like with like:

- "server": ``litellm-budget serve`` in a subprocess (a FileStore per project in a temporary
  folder), driven over loopback HTTP by HttpStore clients;
- "file": a bare FileStore in another temporary folder, used directly by the same clients.

Throughput: each of ``--processes`` worker processes charges the one shared user
``--charges`` times (each with its own call id, as BudgetGuard does), all starting together;
charges/s is all charges over the time until the last worker finishes. After the run the
user's spend must be exactly processes x charges x COST: "lost" counts the charges missing.

Latency: one client, sequentially, reserves COST on a user and settles it (both with the
user named, as BudgetGuard does); p50/p99/max of the pair, over ``--round-trips`` pairs.

Run: python benchmarks/bench_server.py [--processes 4] [--charges 2000] [--round-trips 2000]
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from _processes import START_TIMEOUT, run_together

from litellm_budget_plugin.stores import BudgetStore, FileStore
from litellm_budget_plugin.stores.http import HttpStore

USER = "shared"
COST = 0.25  # a binary fraction: the expected total is exact whatever the order
PROJECT = "bench"

Factory = Callable[[], BudgetStore]


@contextmanager
def budget_server(folder: Path) -> Iterator[str]:
    """``litellm-budget serve`` on a free loopback port; yields its URL."""
    script = shutil.which("litellm-budget")
    command = [script] if script else [sys.executable, "-m", "litellm_budget_plugin.cli"]
    process = subprocess.Popen(
        [*command, "serve", "--store", str(folder), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    url = None
    too_slow = threading.Timer(START_TIMEOUT, process.kill)  # a server that never says it listens
    too_slow.start()
    for line in process.stdout:
        if url is None and "listening on http://" in line:
            url = line.split()[-1]
        if "loopback only" in line:
            break
    too_slow.cancel()
    if url is None:
        process.kill()
        raise SystemExit("the budget server did not start")
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def charge_worker(factory: Factory, worker: int, charges: int, start: Callable[[], None]) -> None:
    store = factory()
    store.get(USER)  # connect (or open the files) before the clock starts
    start()
    for i in range(charges):
        store.charge(USER, COST, "bench-model", call_id=f"w{worker}-{i}")
    store.close()


def throughput(factory: Factory, processes: int, charges: int) -> tuple[float, int]:
    """Charges per second from ``processes`` workers; and how many charges were lost."""
    setup = factory()
    setup.set_budget(USER, None)
    setup.reset(USER)
    _, elapsed = run_together(lambda w, start: charge_worker(factory, w, charges, start), processes)
    record = setup.get(USER)
    assert record is not None
    setup.close()
    total = processes * charges
    lost = round(total - record["current_cost"] / COST)
    return total / elapsed, lost


def round_trips(factory: Factory, count: int) -> list[float]:
    """Seconds for each reserve+settle pair of one client."""
    store = factory()
    store.set_budget("latency", None)
    for i in range(50):  # warm up
        store.reserve("latency", f"warm-{i}", COST, ttl=60)
        store.settle(f"warm-{i}", COST, "bench-model", user="latency")
    times = []
    for i in range(count):
        began = time.perf_counter()
        store.reserve("latency", f"call-{i}", COST, ttl=60)
        store.settle(f"call-{i}", COST, "bench-model", user="latency")
        times.append(time.perf_counter() - began)
    store.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--charges", type=int, default=2000, help="charges per process")
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as server_dir, tempfile.TemporaryDirectory() as file_dir:
        file_path = Path(file_dir) / f"{PROJECT}.json"

        def file_factory() -> BudgetStore:
            return FileStore(file_path)

        with budget_server(Path(server_dir)) as url:

            def http_factory() -> BudgetStore:
                return HttpStore(url, project_name=PROJECT)

            results = {}
            for name, factory in (("server", http_factory), ("file", file_factory)):
                rate, lost = throughput(factory, args.processes, args.charges)
                latencies = round_trips(factory, args.round_trips)
                results[name] = (rate, lost, latencies)

    print(f"{args.processes} processes x {args.charges} charges on one user; {args.round_trips} reserve+settle pairs")
    print(f"{'':8} {'charges/s':>10} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for name, (rate, lost, latencies) in results.items():
        ms = [t * 1000 for t in latencies]
        print(
            f"{name:8} {rate:10.0f} {lost:5d} {percentile(ms, 50):8.3f} {percentile(ms, 99):8.3f} "
            f"{max(ms):8.3f} {statistics.fmean(ms):8.3f}"
        )
    server, file = results["server"], results["file"]
    print(
        f"server / file: throughput x{server[0] / file[0]:.2f}, "
        f"p50 latency x{percentile(server[2], 50) / percentile(file[2], 50):.1f}, "
        f"p99 latency x{percentile(server[2], 99) / percentile(file[2], 99):.1f}"
    )
    if server[1] or file[1]:
        raise SystemExit("charges were lost")


if __name__ == "__main__":
    main()
