"""Changes a FileStore has not written yet (charge_later's charges, lease holds): their
flusher thread, and the flush when the process ends."""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..budget import UserRecord

if TYPE_CHECKING:
    from .file import FileStore

logger = logging.getLogger(__name__)


class _Deferred(NamedTuple):
    user: str
    change: Callable[[UserRecord | None], tuple[UserRecord, UserRecord]]
    then: Callable[[UserRecord], None] | None
    call_id: str | None


def _notify(charged: list[tuple[_Deferred, UserRecord]]) -> None:
    """Tell the callers of charge_later their charges were made (after the lock is let go)."""
    for item, record in charged:
        if item.then is not None:
            try:
                item.then(record)
            except Exception:
                logger.exception("a charge_later callback failed")


# Stores with changes not yet written (deferred charges, lease holds), kept alive (a store
# dropped with charges pending still applies them) and flushed at exit.
_STORES_WITH_PENDING: set[FileStore] = set()
# A deferred charge waits at most this long once calls stop coming...
FLUSH_DELAY_SECONDS = 0.05
# ...or this long after a busy spell. Each wake of the flusher costs the calling thread
# milliseconds (it competes for the GIL around the store's system calls), so while calls
# keep applying the charges themselves it wakes less and less often, up to this.
_MAX_FLUSH_DELAY_SECONDS = 1.0


def _flush_soon(ref: weakref.ref[FileStore]) -> None:
    """A store's flusher: applies deferred charges nobody applied in time, until none is left."""
    delay = FLUSH_DELAY_SECONDS
    while True:
        time.sleep(delay)
        store = ref()
        if store is None:
            return
        with store._deferred_lock:
            idle = store._pending_since is None
            if store._closed or (idle and delay >= _MAX_FLUSH_DELAY_SECONDS):
                store._flusher = None  # starting a thread costs more than waking one: linger
                return
            waited = 0.0 if store._pending_since is None else time.monotonic() - store._pending_since
        if waited < FLUSH_DELAY_SECONDS:  # none, or calls are applying them: come back later
            delay = min(2 * delay, _MAX_FLUSH_DELAY_SECONDS)
            continue
        try:
            store.flush()
            delay = FLUSH_DELAY_SECONDS
        except Exception:  # the flusher must outlive a bad moment of the disk (StoreError or not)
            logger.warning("applying deferred charges to %s failed; will retry", store.path, exc_info=True)
            delay = min(2 * delay, _MAX_FLUSH_DELAY_SECONDS)
        del store


_exit_flush_pid = 0


def _flush_when_this_process_ends() -> None:
    """Also flush when a multiprocessing child ends: it leaves with os._exit, past atexit, and
    runs only finalizers registered in it (the parent's are cleared when it starts)."""
    global _exit_flush_pid
    if _exit_flush_pid != os.getpid():
        _exit_flush_pid = os.getpid()
        multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=10)


@atexit.register
def _flush_at_exit() -> None:
    for store in list(_STORES_WITH_PENDING):
        if not store.path.parent.is_dir():  # removed with its folder: nothing left to write to
            if store._deferred:
                logger.warning("exiting: the folder of %s is gone, and its deferred charges with it", store.path)
            continue
        try:
            store._own_process()  # a forked child: its parent's locks and leases are not its own
            with store._mutex:  # an admit under way installs its lease first
                store._give_back()
                store.flush()
        except Exception:
            logger.exception("exiting: deferred charges to %s lost", store.path)
