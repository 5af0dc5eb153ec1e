"""File store benchmarks, with LiteLLM's own ``litellm.BudgetManager`` measured in the same run.

Sets a baseline, not a gate: the machine is shared and noisy, so latencies are medians
(with p95 and max beside them) and every comparison is a ratio of figures from this run.
Each measurement works in a temporary folder of its own; LiteLLM's class always uses
``./user_cost.json``, so its runs change the working directory into theirs.

1. Latency of one charge with 100, 10,000 and 100,000 users in the store (a
   ``user_cost.json`` in LiteLLM's shape, read as-is by both):
   - ours: ``FileStore.charge`` (raw), ``FileStore.charge`` with a call id (what the guard's
     settle does), and ``BudgetManager.update_cost(user, model=, input_text=, output_text=)``,
     which also counts tokens. Each is on disk when it returns.
   - LiteLLM's: the same ``update_cost`` call. It returns before the change is saved (a
     background thread rewrites the whole file), so two figures: "returned", when the call
     returns, and "+ save", until its save thread has finished (joined). Ratios compare
     "+ save" (durable, like ours) with ours.
   - ``save_data()``: ours folds the journal into ``user_cost.json``; LiteLLM's rewrites it.
2. Lost spend: 8 processes x 500 ``update_cost`` calls on one user for ours; 4 processes x
   500 for LiteLLM's (its figure in the issue). Lost = 1 - recorded / charged.
3. kill -9 of a process that is charging, at random moments: 50 times for ours (one store
   file throughout; long model names make compactions frequent, so kills land in them too):
   does the store reopen, and is every charge that returned before the kill there?
   20 times for LiteLLM's (10,000 users, its file restored before each round): is its
   ``user_cost.json`` still readable, and does it hold every acknowledged charge?

Targets from issue 2: charge with 100,000 users median <= 1 ms, and within 2x of the median
with 100 users; 0 spend lost; 50 of 50 reopen with every acknowledged charge.

Run: python benchmarks/bench_store.py            (about 2-4 minutes)
     python benchmarks/bench_store.py --quick    (a smoke run with small sizes)
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import argparse
import contextlib
import json
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import litellm
from _processes import run_together

from litellm_budget_plugin import BudgetManager, FileStore
from litellm_budget_plugin.pricing import text_cost
from litellm_budget_plugin.stores._journal import MIN_JOURNAL_BYTES

MODEL = "gpt-4o-mini"
INPUT_TEXT = "Summarise the attached meeting notes in three bullet points, please."
OUTPUT_TEXT = "- Budget approved\n- Launch moved to May\n- Hiring two engineers"


@dataclass
class Config:
    sizes: tuple[int, ...]
    ours_samples: int
    litellm_samples: dict[int, int]
    processes_ours: int
    processes_litellm: int
    charges_per_process: int
    kills_ours: int
    kills_litellm: int
    kill_users: int


FULL = Config(
    sizes=(100, 10_000, 100_000),
    ours_samples=2_000,
    litellm_samples={100: 300, 10_000: 60, 100_000: 12},
    processes_ours=8,
    processes_litellm=4,
    charges_per_process=500,
    kills_ours=50,
    kills_litellm=20,
    kill_users=10_000,
)
QUICK = Config(
    sizes=(100, 1_000),
    ours_samples=300,
    litellm_samples={100: 50, 1_000: 20},
    processes_ours=4,
    processes_litellm=2,
    charges_per_process=100,
    kills_ours=5,
    kills_litellm=3,
    kill_users=1_000,
)


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Stats:
    median: float
    p95: float
    worst: float
    count: int


def stats(samples: list[float]) -> Stats:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Stats(statistics.median(ordered), p95, ordered[-1], len(ordered))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def join_litellm_saves() -> None:
    """Wait for the save threads LiteLLM's BudgetManager starts after each change."""
    for thread in threading.enumerate():
        if thread.name.endswith("(save_data)"):
            thread.join()


def seed_users(folder: Path, count: int, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """A ``user_cost.json`` in LiteLLM's shape, written as LiteLLM writes it (indent=4)."""
    now = time.time()
    users: dict[str, dict[str, Any]] = {
        f"user-{i}": {
            "total_budget": 1_000.0,
            "duration": 30,
            "created_at": now,
            "last_updated_at": now,
            "current_cost": 0.0,
            "model_cost": {},
        }
        for i in range(count)
    }
    users.update(extra or {})
    path = folder / "user_cost.json"
    with open(path, "w") as out:
        json.dump(users, out, indent=4)
    return path


def litellm_text_cost() -> float:
    """What LiteLLM's update_cost charges for INPUT_TEXT and OUTPUT_TEXT."""
    prompt = litellm.token_counter(model=MODEL, messages=[{"role": "user", "content": INPUT_TEXT}])
    completion = litellm.token_counter(model=MODEL, messages=[{"role": "user", "content": OUTPUT_TEXT}])
    return float(sum(litellm.cost_per_token(model=MODEL, prompt_tokens=prompt, completion_tokens=completion)))


def time_each(count: int, call: Callable[[int], object]) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
    return samples


# -- 1. latency ----------------------------------------------------------------------------


def latency_ours(users: int, samples: int, rng: random.Random) -> dict[str, Stats]:
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as name:
        path = seed_users(Path(name), users)
        start = time.perf_counter()
        store = FileStore(path)
        store.get("user-0")
        opened = time.perf_counter() - start
        manager = BudgetManager("bench", store=store)
        names = [f"user-{rng.randrange(users)}" for _ in range(samples)]
        for i in range(50):  # warm up: encodings, caches
            store.charge(names[i], 0.001, MODEL)
            manager.update_cost(names[i], model=MODEL, input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
        result = {
            "open (first read)": Stats(opened, opened, opened, 1),
            "charge": stats(time_each(samples, lambda i: store.charge(names[i], 0.001, MODEL))),
            "charge with call id": stats(
                time_each(samples, lambda i: store.charge(names[i], 0.001, MODEL, call_id=f"call-{i}"))
            ),
            "update_cost(text)": stats(
                time_each(
                    samples,
                    lambda i: manager.update_cost(
                        names[i], model=MODEL, input_text=INPUT_TEXT, output_text=OUTPUT_TEXT
                    ),
                )
            ),
            "save_data()": stats(time_each(3, lambda i: manager.save_data())),
        }
        store.close()
        return result


def latency_litellm(users: int, samples: int, rng: random.Random) -> dict[str, Stats]:
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as name, working_directory(Path(name)):
        seed_users(Path(name), users)
        start = time.perf_counter()
        manager = litellm.BudgetManager(project_name="bench")
        opened = time.perf_counter() - start
        names = [f"user-{rng.randrange(users)}" for _ in range(samples)]
        returned, saved = [], []
        for i in range(-2, samples):  # two warm-up calls
            user = names[i]
            start = time.perf_counter()
            manager.update_cost(user, model=MODEL, input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
            middle = time.perf_counter()
            join_litellm_saves()
            end = time.perf_counter()
            if i >= 0:
                returned.append(middle - start)
                saved.append(end - start)
        result = {
            "open (load file)": Stats(opened, opened, opened, 1),
            "update_cost(text), returned": stats(returned),
            "update_cost(text) + save": stats(saved),
            "save_data()": stats(time_each(3, lambda i: manager.save_data())),
        }
        join_litellm_saves()
        return result


def report_latency(config: Config, rng: random.Random) -> list[str]:
    verdicts = []
    charge_medians: dict[int, float] = {}
    print("\n## 1. Latency per call (median, p95, max; ratio = LiteLLM's update_cost + save / ours)")
    print("| users | implementation | operation | median | p95 | max | n | LiteLLM / ours |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for users in config.sizes:
        theirs = latency_litellm(users, config.litellm_samples[users], rng)
        ours = latency_ours(users, config.ours_samples, rng)
        reference = theirs["update_cost(text) + save"].median
        charge_medians[users] = ours["charge"].median
        for label, results in (("ours", ours), ("LiteLLM", theirs)):
            for operation, s in results.items():
                if operation.startswith("open") or operation.startswith("save"):
                    ratio = ""
                elif label == "ours":
                    ratio = f"{reference / s.median:,.0f}x"
                else:
                    ratio = "1x (reference)" if operation.endswith("+ save") else ""
                print(
                    f"| {users:,} | {label} | {operation} | {ms(s.median)} | {ms(s.p95)} | {ms(s.worst)} "
                    f"| {s.count} | {ratio} |"
                )
    largest, smallest = max(config.sizes), min(config.sizes)
    growth = charge_medians[largest] / charge_medians[smallest]
    verdicts.append(
        f"charge median with {largest:,} users: {ms(charge_medians[largest])} "
        f"(target <= 1 ms: {'met' if charge_medians[largest] <= 1e-3 else 'MISSED'})"
    )
    verdicts.append(
        f"charge median {largest:,} users / {smallest:,} users: {growth:.2f}x "
        f"(target <= 2x: {'met' if growth <= 2 else 'MISSED'})"
    )
    return verdicts


# -- 2. lost spend under concurrency -------------------------------------------------------


def _ours_worker(path: str, count: int, start: Callable[[], None]) -> None:
    manager = BudgetManager("bench", store=FileStore(path))
    start()
    for _ in range(count):
        manager.update_cost("alice", model=MODEL, input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
    manager.close()


def _litellm_worker(folder: str, count: int, start: Callable[[], None]) -> str | None:
    """LiteLLM's calls failing under concurrency is a finding, not a broken run: it is returned."""
    os.chdir(folder)
    manager = litellm.BudgetManager(project_name="bench")
    start()
    try:
        for _ in range(count):
            manager.update_cost("alice", model=MODEL, input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
        join_litellm_saves()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_processes(count: int, target: Callable[..., str | None], *args: Any) -> float:
    """Seconds for ``count`` processes running ``target(*args, start)`` together."""
    failures, elapsed = run_together(lambda _index, start: target(*args, start), count)
    for failure in filter(None, failures):
        print(f"  (a worker failed: {failure})")
    return elapsed


def lost_spend(config: Config) -> list[str]:
    m = config.charges_per_process
    print(f"\n## 2. Lost spend: processes x {m} update_cost calls on one user")
    print("| implementation | processes | charged | recorded | lost | wall time |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as name:
        path = Path(name) / "user_cost.json"
        setup = BudgetManager("bench", store=path)
        setup.create_budget(total_budget=1_000_000, user="alice")
        elapsed = run_processes(config.processes_ours, _ours_worker, str(path), m)
        charged = config.processes_ours * m * text_cost(MODEL, INPUT_TEXT, OUTPUT_TEXT)
        recorded = setup.get_current_cost("alice")
        setup.close()
    ours_lost = 1 - recorded / charged
    print(f"| ours | {config.processes_ours} | ${charged:.6f} | ${recorded:.6f} | {ours_lost:.2e} | {elapsed:.2f} s |")
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as name:
        with working_directory(Path(name)):
            setup_theirs = litellm.BudgetManager(project_name="bench")
            setup_theirs.create_budget(total_budget=1_000_000, user="alice")
            setup_theirs.save_data()
            join_litellm_saves()
        elapsed = run_processes(config.processes_litellm, _litellm_worker, name, m)
        charged = config.processes_litellm * m * litellm_text_cost()
        try:
            recorded_text = f"${json.loads((Path(name) / 'user_cost.json').read_bytes())['alice']['current_cost']:.6f}"
            theirs_lost = f"{1 - float(recorded_text[1:]) / charged:.0%}"
        except (ValueError, KeyError) as exc:
            recorded_text, theirs_lost = f"file unreadable ({type(exc).__name__})", "all"
    print(
        f"| LiteLLM | {config.processes_litellm} | ${charged:.6f} | {recorded_text} | {theirs_lost} | {elapsed:.2f} s |"
    )
    return [
        f"lost spend, ours with {config.processes_ours} processes: {ours_lost:.2e} (target <= 1e-9 relative: "
        f"{'met' if abs(ours_lost) <= 1e-9 else 'MISSED'})"
    ]


# -- 3. kill -9 ----------------------------------------------------------------------------


def _acks_until(fd: int, target: int, deadline: float) -> int:
    """Read acknowledgement bytes until ``target`` are seen, the writer dies, or time runs out."""
    seen = 0
    os.set_blocking(fd, False)
    while seen < target and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.0002)
            continue
        if not chunk:
            break
        seen += len(chunk)
    return seen


def _drain(fd: int) -> int:
    os.set_blocking(fd, True)
    seen = 0
    while chunk := os.read(fd, 65536):
        seen += len(chunk)
    return seen


def _kill_round(child: Callable[[int], None], rng: random.Random, most_acks: int, spread: float) -> int:
    """Fork ``child(ack_fd)``, kill -9 it at a random moment; return its acknowledged charges."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:
            child(write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    acked = _acks_until(read_end, rng.randint(0, most_acks), time.monotonic() + 30)
    time.sleep(rng.uniform(0, spread))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    acked += _drain(read_end)
    os.close(read_end)
    return acked


def kill_ours(config: Config, rng: random.Random) -> list[str]:
    cost = 0.125  # exact in binary: recorded / cost counts the charges applied
    # Long model names: each journal line is MIN_JOURNAL_BYTES / 200, so the journal is folded
    # into the snapshot every ~200 charges and kills land in compactions too.
    model = "model-" + "x" * (MIN_JOURNAL_BYTES // 200)
    reopened_ok = complete = compactions = 0
    acked_total = 0
    with tempfile.TemporaryDirectory(prefix="bench-ours-kill-") as name:
        path = seed_users(Path(name), config.kill_users)
        setup = FileStore(path)
        setup.set_budget("alice", 1e15)
        setup.close()
        applied = 0
        last_snapshot = path.stat().st_ino

        def child(acks: int) -> None:
            store = FileStore(path)
            while True:
                store.charge("alice", cost, model)
                os.write(acks, b".")

        for _ in range(config.kills_ours):
            acked = _kill_round(child, rng, 600, 0.005)
            acked_total += acked
            try:
                store = FileStore(path)
                record = store.get("alice")
                store.close()
            except Exception as exc:  # a failure to reopen is what this measures
                print(f"  reopen failed: {type(exc).__name__}: {exc}")
                continue
            reopened_ok += 1
            charges = 0 if record is None else record["current_cost"] / cost
            if record is not None and applied + acked <= charges <= applied + acked + 1:
                complete += 1
            applied = int(charges)
            inode = path.stat().st_ino
            compactions += inode != last_snapshot
            last_snapshot = inode
    print(f"\n## 3. kill -9 of a charging process at random moments ({config.kill_users:,} users in the store)")
    print("| implementation | kills | store reopens | every acknowledged charge there | notes |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| ours | {config.kills_ours} | {reopened_ok}/{config.kills_ours} | {complete}/{config.kills_ours} "
        f"| {acked_total:,} acknowledged charges; snapshot replaced between {compactions} of the kills |"
    )
    return [
        f"kill -9, ours: reopened {reopened_ok}/{config.kills_ours}, all acknowledged charges there "
        f"{complete}/{config.kills_ours} (target {config.kills_ours}/{config.kills_ours}: "
        f"{'met' if complete == reopened_ok == config.kills_ours else 'MISSED'})"
    ]


def kill_litellm(config: Config, rng: random.Random) -> None:
    unreadable = short = 0
    with tempfile.TemporaryDirectory(prefix="bench-litellm-kill-") as name:
        folder = Path(name)
        pristine = seed_users(
            folder, config.kill_users, {"alice": {"total_budget": 1e15, "current_cost": 0.0, "model_cost": {}}}
        ).read_bytes()
        cost = litellm_text_cost()

        def child(acks: int) -> None:
            os.chdir(folder)
            manager = litellm.BudgetManager(project_name="bench")
            while True:
                manager.update_cost("alice", model=MODEL, input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
                os.write(acks, b".")

        for _ in range(config.kills_litellm):
            (folder / "user_cost.json").write_bytes(pristine)
            acked = _kill_round(child, rng, 30, 0.05)
            try:
                data = json.loads((folder / "user_cost.json").read_bytes())
                recorded = data["alice"].get("current_cost", 0.0)
            except (ValueError, KeyError):
                unreadable += 1
                continue
            if recorded < acked * cost * (1 - 1e-9):
                short += 1
    n = config.kills_litellm
    print(
        f"| LiteLLM | {n} | {n - unreadable}/{n} | {n - unreadable - short}/{n} "
        f"| file unreadable after {unreadable} of {n} kills; readable but missing acknowledged charges: {short} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=2, help="random seed (users picked, kill moments)")
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    rng = random.Random(args.seed)
    print(
        f"# bench_store: python {platform.python_version()}, litellm {metadata.version('litellm')}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    started = time.perf_counter()
    verdicts = report_latency(config, rng)
    verdicts += lost_spend(config)
    verdicts += kill_ours(config, rng)
    kill_litellm(config, rng)
    print("\n## Targets (issue 2)")
    for verdict in verdicts:
        print(f"- {verdict}")
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
