"""The file store shared by real processes: exact totals, kill -9 at random moments, fork.

Workers are separate interpreters (``subprocess``) where independence matters, and forked
children where a test needs many short-lived writers (starting an interpreter that imports
litellm takes seconds here). Forked children write with ``os.write`` and leave with
``os._exit`` so they never run pytest's code.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from litellm_budget_plugin import FileStore, StoreLockTimeout
from litellm_budget_plugin.limits import MAX_TEXT_BYTES
from litellm_budget_plugin.stores._journal import MIN_JOURNAL_BYTES

pytestmark = pytest.mark.slow

# Long model names make each journal line large, so the journal outgrows its compaction
# threshold every few hundred charges and the runs below cross several compactions
# without changing the store's settings.
NAME_LENGTH = max(1000, MIN_JOURNAL_BYTES // 600)
# Long lines, so that the journal is folded often: three model names of the longest kind.
LONG_MODELS = tuple(f"model-{i}-" + "x" * (MAX_TEXT_BYTES - 8) for i in range(3))

WORKER = """
import os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
from litellm_budget_plugin import FileStore

path, worker, count, cost, name_length = sys.argv[1:]
store = FileStore(path)
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range(int(count)):
    model = f"model-{i % 3}-" + "x" * int(name_length)
    store.charge("alice", float(cost), model, call_id=f"w{worker}-{i}")
store.close()
print("done", flush=True)
"""


def test_processes_charging_one_user_lose_nothing(tmp_path: Path) -> None:
    workers, charges = 4, 200
    path = tmp_path / "user_cost.json"
    store = FileStore(path)
    store.set_budget("alice", 1_000_000.0)
    costs = [0.001 * (1 + w) + 1e-7 for w in range(workers)]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(w), str(charges), repr(costs[w]), str(NAME_LENGTH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0 and out == "done\n"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    expected = charges * sum(costs)
    record = store.get("alice")
    assert record is not None
    assert abs(record["current_cost"] - expected) <= 1e-9 * expected
    assert abs(sum(record["model_cost"].values()) - expected) <= 1e-9 * expected
    assert path.exists(), "the journal was never compacted into the snapshot"
    # a fresh handle, reading only what is on disk, agrees
    reopened = FileStore(path)
    assert reopened.get("alice") == record
    # charges the workers applied, sent again from this process, are not counted twice
    for call_id in list(record.get("applied", {}))[-5:]:
        reopened.charge("alice", 1.0, "model-0-" + "x" * NAME_LENGTH, call_id=call_id)
    assert store.get("alice") == record
    reopened.close()
    store.close()


def _charge_until_killed(path: Path, acks: int, cost: float) -> None:
    """In a forked child: charge forever, acknowledging each charge that returned."""
    code = 1
    try:
        store = FileStore(path)
        for n in itertools.count():
            store.charge("alice", cost, LONG_MODELS[n % 3])
            os.write(acks, b".")
    finally:
        os._exit(code)


def _count_until(fd: int, target: int) -> int:
    seen = 0
    while seen < target:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += len(chunk)
    return seen


def test_kill_9_at_random_moments_loses_no_acknowledged_charge(tmp_path: Path) -> None:
    rng = random.Random(20240602)
    cost = 0.125  # exact in binary: spend / cost is the exact number of charges applied
    path = tmp_path / "user_cost.json"
    setup = FileStore(path)
    setup.set_budget("alice", 1e12)
    setup.close()
    applied = 0  # charges found in the store after the previous kill
    for round_ in range(10):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            _charge_until_killed(path, write_end, cost)
        os.close(write_end)
        acked = _count_until(read_end, rng.randint(0, 400))
        time.sleep(rng.uniform(0, 0.003))  # land anywhere within a charge or a compaction
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        acked += _count_until(read_end, sys.maxsize)
        os.close(read_end)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"round {round_}: the writer ended by itself (status {status})"
        )

        reopened = FileStore(path)
        record = reopened.get("alice")
        assert record is not None, f"round {round_}: the user is gone"
        charges = record["current_cost"] / cost
        assert charges == int(charges)
        # every acknowledged charge is there; at most the one in flight was also applied
        assert applied + acked <= charges <= applied + acked + 1, f"round {round_}"
        assert set(record["model_cost"]) <= set(LONG_MODELS)
        assert sum(record["model_cost"].values()) == record["current_cost"]
        applied = int(charges)
        reopened.charge("alice", cost, LONG_MODELS[0])  # and it can be written again
        applied += 1
        reopened.close()

    assert path.exists(), "no compaction happened: the runs were too short to test it"
    snapshot = json.loads(path.read_bytes())  # the snapshot is always whole JSON
    assert snapshot["alice"]["total_budget"] == 1e12
    assert applied > 10


def _start_child(body: Callable[[], int]) -> int:
    """Fork a child that runs ``body`` and exits with its result (99 if it raised); return its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    """Wait for the child ``pid``, which must exit by itself; return its exit code."""
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child ended with status {status}"
    return os.WEXITSTATUS(status)


def _in_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child; return its exit code."""
    return _exit_code(_start_child(body))


def test_a_store_used_before_fork_is_safe_in_the_child(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "user_cost.json", lock_timeout=0.3)
    store.set_budget("alice", 1000.0)
    store.charge("alice", 1.0, "m")

    def charge_once() -> int:
        try:
            store.charge("alice", 1.0, "m")
        except StoreLockTimeout:
            return 3
        return 0

    # The parent holds the lock while forking: the child must not inherit it and write.
    with store._locked():
        assert _in_child(charge_once) == 3
    assert store.get("alice")["current_cost"] == 1.0  # type: ignore[index]

    def charge_many() -> int:
        for _ in range(100):
            store.charge("alice", 1.0, "m")
        return 0

    pid = _start_child(charge_many)
    for _ in range(100):
        store.charge("alice", 1.0, "m")
    assert _exit_code(pid) == 0
    assert store.get("alice")["current_cost"] == 201.0  # type: ignore[index]
    store.close()
