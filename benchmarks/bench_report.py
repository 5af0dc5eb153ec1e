"""Report benchmark: ``litellm-budget report --by user --since 30d`` over a big ledger.

Writes a file store's ledger of ``--entries`` entries (default 1,000,000: 1,000 users over 30
days, 4 models, 10 teams, a third of the calls with a tag) with ``LedgerFiles.append`` in big
batches, and a tenth of that beside it. Then, for each, in the same run:

- "report (CLI), first run": the installed command as a whole process (start-up, reading,
  printing), wall time from spawn to exit, and its peak memory (``VmHWM`` of that process). It
  sums each UTC day that is over once and keeps the totals beside the day's file;
- "report (CLI)": the same command again, with those day totals (the usual case: a store's
  days are summed by the first report that reads them);
- "report, entries only": ``reports.aggregate(store.ledger(...))`` in this process, every entry
  read (no day totals), wall and CPU time;
- "parse only": reading the same day files and ``json.loads`` of each (the floor for any
  report that reads JSON lines), for scale.

Prints medians (min and max) over ``--runs`` runs. The target is under 3 s for 1,000,000
entries, with memory bounded: the peak for 10x the entries must not be near 10x. A baseline,
not a gate: the machine is shared, so CPU time is printed next to wall time.

Run: python benchmarks/bench_report.py [--entries 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from litellm_budget_plugin import FileStore, reports
from litellm_budget_plugin.ledger import LedgerEntry
from litellm_budget_plugin.stores._ledger_files import LedgerFiles

TARGET_SECONDS = 3.0
USERS, DAYS = 1000, 30
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet", "gemini-1.5-flash")
BATCH = 100_000


def write_ledger(path: Path, entries: int, now: float) -> None:
    """``entries`` charges spread evenly over the 30 days before ``now``."""
    files = LedgerFiles(path, retention_days=90)
    # 30 day files; half a day short of 30 x 24 h, so that --since 30d, run minutes later, takes all
    span = (DAYS - 0.5) * 86_400.0
    start = now - span - 60.0
    subjects = [(f"team:t{user % 10}",) for user in range(USERS)]
    tagged = [(*subjects[user], f"tag:{'abc'[user % 3]}") for user in range(USERS)]
    try:
        batch = []
        for i in range(entries):
            user = (i * 7919) % USERS
            batch.append(
                LedgerEntry(
                    start + span * i / entries,
                    f"user-{user:04d}",
                    tagged[user] if i % 3 == 0 else subjects[user],
                    MODELS[i % 4],
                    500 + i % 700,
                    100 + i % 300,
                    0.0001 * (1 + i % 50),
                    f"call-{i:08d}",
                )
            )
            if len(batch) == BATCH:
                files.append(batch, now)
                batch = []
        if batch:
            files.append(batch, now)
    finally:
        files.close()


# The command run as the console script runs it, then its own peak memory (VmHWM: this
# process's since its exec; ru_maxrss would carry the parent's peak across fork and exec).
_CLI = """
import sys
from litellm_budget_plugin.cli import main
try:
    main(sys.argv[1:], prog_name="litellm-budget")
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    sys.stderr.write("peak-kib " + peak[0].split()[1] + "\\n")
"""


def cli_run(args: list[str], timeout: float) -> tuple[float, float, str]:
    """Wall seconds and peak resident MiB of the command as a process; a failure, or no end
    within ``timeout``, ends the benchmark."""
    command = [sys.executable, "-c", _CLI, *args]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"litellm-budget {' '.join(args)}: no answer in {timeout:.0f} s") from None
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"litellm-budget {' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    peak = next(line for line in done.stderr.splitlines() if line.startswith("peak-kib "))
    return elapsed, int(peak.split()[1]) / 1024, done.stdout


def in_process(path: Path, now: float) -> tuple[float, float, int]:
    store = FileStore(path)
    try:
        span = reports.period(now, since="30d")
        wall, cpu = time.perf_counter(), time.process_time()
        result = reports.aggregate(store.ledger(span.start, span.end), span, ["user"])
        return time.perf_counter() - wall, time.process_time() - cpu, result.total.calls
    finally:
        store.close()


def parse_only(path: Path) -> tuple[float, float]:
    files = LedgerFiles(path, retention_days=90)
    wall, cpu = time.perf_counter(), time.process_time()
    for day in files.days():
        for line in files.file_of(day).read_bytes().splitlines():
            json.loads(line)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    sizes = [args.entries // 10, args.entries]
    rows: list[tuple[str, int, list[float], list[float], list[float]]] = []
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            path = Path(folder) / f"ledger-{size}" / "user_cost.json"
            path.parent.mkdir()
            started = time.perf_counter()
            write_ledger(path, size, time.time())
            megabytes = sum(p.stat().st_size for p in path.parent.iterdir()) / 2**20
            print(f"wrote {size:,} entries ({megabytes:,.0f} MiB) in {time.perf_counter() - started:.1f} s", flush=True)
            command = ["report", "--by", "user", "--since", "30d", "--store", str(path)]
            first, first_peak, out = cli_run(command, args.timeout)  # sums the days that are over, once
            check_total(out, size)
            walls, peaks, inner, inner_cpu, parse, parse_cpu = [], [], [], [], [], []
            for _ in range(args.runs):
                wall, peak, out = cli_run(command, args.timeout)
                check_total(out, size)
                walls.append(wall)
                peaks.append(peak)
                wall, cpu, calls = in_process(path, time.time())
                assert calls == size, calls
                inner.append(wall)
                inner_cpu.append(cpu)
                wall, cpu = parse_only(path)
                parse.append(wall)
                parse_cpu.append(cpu)
            rows.append(("report (CLI), first run", size, [first], [], [first_peak]))
            rows.append(("report (CLI), wall", size, walls, [], peaks))
            rows.append(("report, entries only", size, inner, inner_cpu, []))
            rows.append(("parse only (json.loads)", size, parse, parse_cpu, []))
    print(f"\n{args.runs} runs each; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(f"{'':<26} {'entries':>9} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7} {'peak MiB':>9}")
    for name, size, samples, cpu_samples, peak_samples in rows:
        cpu = f"{statistics.median(cpu_samples):>7.2f}" if cpu_samples else f"{'':>7}"
        peak = f"{max(peak_samples):>9.0f}" if peak_samples else f"{'':>9}"
        print(
            f"{name:<26} {size:>9,} {statistics.median(samples):>9.2f} {min(samples):>7.2f} {max(samples):>7.2f}"
            f" {cpu} {peak}"
        )
    small, big = rows[1], rows[5]
    growth = max(big[4]) / max(small[4])
    seconds, first = statistics.median(big[2]), rows[4][2][0]
    print(
        f"\nCLI over {sizes[1]:,} entries: {seconds:.2f} s median "
        f"({'under' if seconds < TARGET_SECONDS else 'NOT under'} the {TARGET_SECONDS:.0f} s target), "
        f"{first:.2f} s the first time (it sums the days that are over); peak memory x{growth:.2f} for x10 entries"
    )


def check_total(out: str, size: int) -> None:
    total = out.splitlines()[-1].split()
    if total[0] != "total" or int(total[2].replace(",", "")) != size:
        raise SystemExit(f"the report counted {total} calls, not {size:,}")


if __name__ == "__main__":
    main()
