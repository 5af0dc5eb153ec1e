"""Redis store benchmark: 8 processes x 1,000 reserve+settle on one user, next to the file store.

Sets a baseline, not a gate: the machine is shared and noisy. Both stores run in the same
run, interleaved over a few rounds, so the ratios compare like with like; throughput is the
median round, latencies are percentiles over every round's calls.

Each worker process makes its own store and, for each of its calls, reserves 0.25 on the
one shared user and settles it at 0.25 (both with the user named, as BudgetGuard does).
Every call is one round trip to Redis (a Lua script) or one locked journal append for the
file store. After each round the user's spend must be exactly calls x 0.25 with no hold
left: "lost" counts the calls missing from it.

The script starts its own redis-server (from PATH, on a free port, saving nothing) and a
file store in a temporary folder, and stops and removes both at the end.

A worker that fails or hangs ends the run with an error naming it (benchmarks/_processes.py).

Run: python benchmarks/bench_redis.py [--processes 8] [--calls 1000] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _processes import run_together

from litellm_budget_plugin import store_from_url

USER = "shared"
COST = 0.25  # a binary fraction: the expected total is exact whatever the order


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: apt-get install redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fmt: off
    process = subprocess.Popen([
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(folder), "--logfile", str(folder / "redis.log"),
    ])
    # fmt: on
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"redis-server did not start; see {folder / 'redis.log'}") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def worker(target: str, worker_id: int, calls: int, start: Callable[[], None]) -> list[float]:
    store = store_from_url(target, project="bench")
    latencies = []
    start()
    for i in range(calls):
        call_id = f"w{worker_id}-{i}"
        started = time.perf_counter()
        store.reserve(USER, call_id, COST, ttl=60)
        store.settle(call_id, COST, "gpt-4o-mini", user=USER)
        latencies.append(time.perf_counter() - started)
    store.close()
    return latencies


def one_round(target: str, processes: int, calls: int) -> tuple[float, list[float], int]:
    """Seconds for the whole round, each call's latency, and the calls lost."""
    setup = store_from_url(target, project="bench")
    setup.delete(USER)
    setup.set_budget(USER, None)
    results, elapsed = run_together(lambda n, start: worker(target, n, calls, start), processes)
    latencies = [latency for result in results for latency in result]
    record = setup.get(USER)
    setup.close()
    assert record is not None
    if record.get("reservations"):
        raise SystemExit(f"{len(record['reservations'])} holds left on {target}")
    lost = processes * calls - round(record["current_cost"] / COST)
    return elapsed, latencies, lost


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000, help="reserve+settle pairs per process")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    total = options.processes * options.calls
    with tempfile.TemporaryDirectory() as folder, redis_server(Path(folder)) as url:
        targets = {"file": str(Path(folder) / "user_cost.json"), "redis": url}
        stats: dict[str, dict[str, Any]] = {name: {"seconds": [], "latencies": [], "lost": 0} for name in targets}
        for _ in range(options.rounds):
            for name, target in targets.items():  # interleaved, so drift in load hits both
                seconds, latencies, lost = one_round(target, options.processes, options.calls)
                stats[name]["seconds"].append(seconds)
                stats[name]["latencies"] += latencies
                stats[name]["lost"] += lost

    rows = {}
    for name, s in stats.items():
        rows[name] = {
            "lost": s["lost"],
            "throughput": total / statistics.median(s["seconds"]),
            "p50": percentile(s["latencies"], 0.50) * 1000,
            "p99": percentile(s["latencies"], 0.99) * 1000,
        }
    print(
        f"{options.processes} processes x {options.calls:,} reserve+settle on one user, "
        f"{options.rounds} rounds, {os.cpu_count()} CPUs (throughput: median round; latency: all calls)\n"
    )
    header = f"{'store':<14}{'lost':>6}{'pairs/s':>12}{'p50 ms':>10}{'p99 ms':>10}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(f"{name:<14}{row['lost']:>6}{row['throughput']:>12,.0f}{row['p50']:>10.3f}{row['p99']:>10.3f}")
    ratio: Callable[[str], float] = lambda key: rows["redis"][key] / rows["file"][key]  # noqa: E731
    print(f"{'redis / file':<14}{'':>6}{ratio('throughput'):>11.2f}x{ratio('p50'):>9.2f}x{ratio('p99'):>9.2f}x")
    if any(row["lost"] for row in rows.values()):
        raise SystemExit("spend was lost")


if __name__ == "__main__":
    main()
