"""Benchmark workers in processes that start together, and always end.

A worker that fails (an exception, or killed) or hangs ends the benchmark with an error that
names it, instead of leaving the others waiting at a start line or the parent waiting for a
result for ever.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

FORK = multiprocessing.get_context("fork")
# How long workers may take to reach the start line (open their store, connect)...
START_TIMEOUT = 120.0
# ...and then to finish their work.
RUN_TIMEOUT = 600.0


class WorkerFailed(RuntimeError):
    pass


def run_together(work: Callable[[int, Callable[[], None]], Any], count: int) -> tuple[list[Any], float]:
    """Run ``work(index, start)`` in ``count`` forked processes; each calls ``start()`` once it
    is ready, and all go on together. Returns their results in index order, and the seconds
    from the start to the last result.

    :raises WorkerFailed: a worker raised, died, or did not finish in time (the others are killed).
    """
    start_line = FORK.Barrier(count + 1, timeout=START_TIMEOUT)
    results: Any = FORK.Queue()

    def run(index: int) -> None:
        try:
            results.put((index, None, work(index, start_line.wait)))
        except BaseException:
            start_line.abort()  # nobody waits for this one at the start line
            results.put((index, traceback.format_exc(), None))

    workers = [FORK.Process(target=run, args=(index,), name=f"worker {index}") for index in range(count)]
    for worker in workers:
        worker.start()
    try:
        try:
            start_line.wait()
        except threading.BrokenBarrierError:
            raise WorkerFailed(f"not every worker reached the start line:\n{_cause(results, count)}") from None
        started = time.perf_counter()
        done: dict[int, Any] = {}
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(done) < count:
            try:
                index, error, value = results.get(timeout=0.2)
            except queue.Empty:
                dead = [w.name for i, w in enumerate(workers) if i not in done and w.exitcode not in (None, 0)]
                if dead:
                    raise WorkerFailed(f"{', '.join(dead)} died without a result") from None
                if time.monotonic() > deadline:
                    raise WorkerFailed(f"{count - len(done)} worker(s) not done within {RUN_TIMEOUT} s") from None
                continue
            if error is not None:
                raise WorkerFailed(f"worker {index} failed:\n{error}")
            done[index] = value
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.join(START_TIMEOUT)
        return [done[index] for index in range(count)], elapsed
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()


def _cause(results: Any, count: int) -> str:
    """The error of the worker that broke the start line (the others then report the broken line)."""
    errors: list[str] = []
    deadline = time.monotonic() + 2.0
    while len(errors) < count and (left := deadline - time.monotonic()) > 0:
        try:
            _, error, _ = results.get(timeout=left)
        except queue.Empty:
            break
        errors.append(str(error))
    causes = [error for error in errors if "BrokenBarrierError" not in error]
    return (causes or errors or ["(a worker died or hung before it could say why)"])[0]
