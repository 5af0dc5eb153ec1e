"""Dashboard benchmark: server-side time to render ``GET /dashboard`` for 10,000 subjects.

Sets a baseline, not a gate (the target is under 1 s; the machine is shared and noisy). One
FileStore in a temporary folder holds ``--subjects`` budgets (users, a tenth teams, a twentieth
tags; every fifth with a daily window; most with some spend) and ``--ledger`` entries spread
over the last 30 days (written straight to its day files, as its charges would write them).
Medians over ``--runs`` of:

- ``store.all()``, the HTML alone (:func:`page`), and reading the ledger's 30 days;
- :func:`dashboard.render`, cold (no day cached: 30 days of ledger read) and warm (days that
  are over cached, as from the second page load on: today's ledger is read);
- the whole ``GET /dashboard`` through aiohttp over loopback, plain and gzip (httpx client,
  body read in full; the client's share is in it).

Run: python benchmarks/bench_dashboard.py [--subjects 10000] [--ledger 300000] [--runs 7]
"""

from __future__ import annotations

import argparse
import gzip
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_thread import ServerThread, directory_stores

from litellm_budget_plugin import dashboard
from litellm_budget_plugin._dashboard_html import page
from litellm_budget_plugin.ledger import LedgerEntry
from litellm_budget_plugin.limits import UserRecord
from litellm_budget_plugin.stores import FileStore
from litellm_budget_plugin.stores._ledger_files import LedgerFiles

KEY = "bench-key"
DAY = 86_400.0
PROJECT = "bench"


def fill(folder: Path, subjects: int, entries: int, now: float) -> None:
    store = FileStore(folder / f"{PROJECT}.json", ledger=False)
    try:
        for n in range(subjects):
            key = f"team:t{n}" if n % 10 == 1 else f"tag:g{n}" if n % 20 == 2 else f"user-{n:05d}@example.com"
            record: UserRecord = {
                "total_budget": float(5 + n % 50),
                "current_cost": round((n * 7919 % 6000) / 1000.0, 4) if n % 7 else 0.0,
                "model_cost": {"gpt-4o-mini": 0.5},
                "created_at": now - 3600,
                "last_updated_at": now - 3600,
                "duration": 1.0 if n % 3 else 30.0,
            }
            if n % 5 == 0:
                record["windows"] = [{"budget": 1.0, "spend": 0.25 * (n % 6), "start": now - 600, "duration": 7.0}]
            if n % 97 == 0:
                record["overruns"], record["overrun_cost"] = 1, 0.01
            store.put(key, record)
        store.compact()
    finally:
        store.close()
    files = LedgerFiles(folder / f"{PROJECT}.json", retention_days=90)
    try:
        per_day = entries // 30
        for back in range(30):
            start = now - back * DAY - (now % DAY if back else 0)
            batch = [
                LedgerEntry(
                    start + i * (DAY - 1) / max(per_day, 1) if back else now - 1 - i * 1e-3,
                    f"user-{i % subjects:05d}@example.com",
                    ("tag:g2",),
                    "gpt-4o-mini",
                    120,
                    40,
                    0.00125,
                    f"c{back}-{i}",
                )
                for i in range(per_day)
            ]
            for chunk in range(0, len(batch), 50_000):
                files.append(batch[chunk : chunk + 50_000], now)
    finally:
        files.close()


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--ledger", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    now = math.floor(time.time() / DAY) * DAY + 0.6 * DAY  # 14:24 UTC today: a full-ish day
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        fill(folder, args.subjects, args.ledger, now)
        print(
            f"filled {args.subjects:,} subjects and {args.ledger:,} ledger entries in "
            f"{time.perf_counter() - started:.1f} s"
        )
        store = FileStore(folder / f"{PROJECT}.json")
        store.clock = lambda: now
        records = store.all()
        views = dashboard.subject_views(records, now)
        started = time.perf_counter()
        chart = dashboard.DailySpend().last_days(PROJECT, store, now)  # sums the days that are over, once
        first_read = (time.perf_counter() - started) * 1000
        html = page(PROJECT, [PROJECT], views, chart, now=now, refresh=30)
        warm = dashboard.DailySpend()
        warm.last_days(PROJECT, store, now)
        rows: list[tuple[str, tuple[float, float]]] = [
            ("ledger, first read (days summed)", (first_read, math.nan)),
            ("store.all()", median_ms(store.all, args.runs)),
            (
                "HTML only (views + page)",
                median_ms(
                    lambda: page(PROJECT, [PROJECT], dashboard.subject_views(records, now), chart, now=now, refresh=30),
                    args.runs,
                ),
            ),
            (
                "ledger, 30 days (day totals kept)",
                median_ms(lambda: dashboard.DailySpend().last_days(PROJECT, store, now), args.runs),
            ),
            (
                "render(), cold (nothing in memory)",
                median_ms(lambda: dashboard.render(PROJECT, [PROJECT], store, dashboard.DailySpend()), args.runs),
            ),
            (
                "render(), warm (today read)",
                median_ms(lambda: dashboard.render(PROJECT, [PROJECT], store, warm), args.runs),
            ),
        ]
        store.close()
        with ServerThread(directory_stores(folder), api_key=KEY) as server:
            headers = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                url = f"/dashboard?project={PROJECT}"
                first = client.get(url, headers={"Accept-Encoding": "identity"})
                assert first.status_code == 200, first.text[:200]
                rows.append(("GET /dashboard (first, cold)", (first.elapsed.total_seconds() * 1000, math.nan)))
                rows.append(
                    (
                        "GET /dashboard, plain",
                        median_ms(lambda: client.get(url, headers={"Accept-Encoding": "identity"}), args.runs),
                    )
                )
                rows.append(
                    (
                        "GET /dashboard, gzip",
                        median_ms(lambda: client.get(url, headers={"Accept-Encoding": "gzip"}), args.runs),
                    )
                )
        print(
            f"\npage: {len(html.encode()) / 1e6:.1f} MB of HTML, {len(gzip.compress(html.encode())) / 1e6:.2f} MB "
            f"gzipped; {len(views):,} subjects; median of {args.runs} runs\n"
        )
        print(f"{'':34} {'median ms':>10} {'max ms':>8}")
        for name, (median, most) in rows:
            print(f"{name:34} {median:10.0f} {most:8.0f}")


if __name__ == "__main__":
    main()
