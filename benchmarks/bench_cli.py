"""CLI start-up benchmark: ``litellm-budget show`` on a file store against ``import litellm``.

The command must not import litellm (seconds) for what it does not price. Measured in one run,
alternating, as whole processes (wall time from spawn to exit):

- "litellm-budget show": the installed script on a file store of ``--users`` users, with
  ``LITELLM_LOCAL_MODEL_COST_MAP`` unset, as a user runs it;
- "python -c 'import litellm'": the baseline, offline (``LITELLM_LOCAL_MODEL_COST_MAP=True``,
  so litellm reads its bundled price map instead of trying the network);
- "python -c pass": the interpreter's own start, for scale.

Prints medians (with min and max) over ``--runs`` runs and the ratio of the medians of the
first two; the target is under 0.3x. Each process is stopped after ``--timeout`` seconds.

Run: python benchmarks/bench_cli.py [--runs 5] [--users 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from litellm_budget_plugin import FileStore

TARGET_RATIO = 0.3


def timed(command: list[str], env: dict[str, str], timeout: float) -> float:
    """Seconds from spawn to exit; a failed or stuck command ends the benchmark with its error."""
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    script = shutil.which("litellm-budget")
    cli = [script] if script else [sys.executable, "-m", "litellm_budget_plugin.cli"]
    as_user = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    offline = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "user_cost.json"
        store = FileStore(path)
        try:
            for i in range(args.users):
                store.set_budget(f"user-{i:04d}", 10.0, "monthly")
                store.charge(f"user-{i:04d}", 0.125, "gpt-4o-mini")
        finally:
            store.close()
        rows = {
            "litellm-budget show": ([*cli, "show", "--store", str(path)], as_user),
            "python -c 'import litellm'": ([sys.executable, "-c", "import litellm"], offline),
            "python -c pass": ([sys.executable, "-c", "pass"], as_user),
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, (command, env) in rows.items():
                times[name].append(timed(command, env, args.timeout))

    print(f"{args.runs} runs each, alternating; show on a file store of {args.users} users\n")
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, samples in times.items():
        print(f"{name:<28} {statistics.median(samples):>9.3f} {min(samples):>7.3f} {max(samples):>7.3f}")
    ratio = statistics.median(times["litellm-budget show"]) / statistics.median(times["python -c 'import litellm'"])
    verdict = "under" if ratio < TARGET_RATIO else "NOT under"
    print(f"\nshow / import litellm: {ratio:.3f}x ({verdict} the {TARGET_RATIO}x target)")


if __name__ == "__main__":
    main()
