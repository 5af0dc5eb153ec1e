"""Changes a FileStore has not written yet (charge_later's charges, lease holds): their
flusher thread, what becomes of a charge that cannot be written, and the flush when the
process ends.

A batch of deferred charges is applied and written charge by charge as far as failures go
(see :mod:`._writes`): a charge whose change raises (anything, not only our errors), or makes
a record JSON cannot encode, is taken out of the batch, with every record it changed, and
tried again with the next writes; every other charge is written. After
:data:`CHARGE_ATTEMPTS` tries it is given up: logged as an error naming the user, the amount
and the call, and kept in :attr:`FileStore.failed_charges`. Its call's holds are not released
as if charged: they stay until they expire (with its lease, or as a reservation), so the
budgets count at least the holds meanwhile. A write the disk refuses writes nothing and keeps
every charge for the next write (no try is counted).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from ..budget import UserRecord
from ..ledger import Usage
from ._lock import _Locked

if TYPE_CHECKING:
    from .file import FileStore

logger = logging.getLogger(__name__)

# A charge that cannot be applied or written is tried with this many writes, then given up.
CHARGE_ATTEMPTS = 3
# FileStore.failed_charges keeps this many of the latest charges given up (the log has all).
FAILED_CHARGES_KEPT = 1000


class _Deferred(NamedTuple):
    user: str
    # RecordStore._charge_change: the records changed (the user's, its team's, its tags'...)
    # and the user's record, from every record as the charges before it left them.
    change: Callable[[Mapping[str, UserRecord]], tuple[dict[str, UserRecord], UserRecord]]
    then: Callable[[UserRecord], None] | None
    call_id: str | None
    cost: float
    model: str
    attempts: int = 0  # writes that tried it and failed
    # A call admitted from a lease, charged with no callback: the budgets the lease held it
    # in, the user's first (the charge is then written in a batch), and what it held.
    keys: tuple[str, ...] | None = None
    held: float | None = None
    usage: Usage | None = None  # the call's tokens and tags, for its ledger entry


class FailedCharge(NamedTuple):
    """A deferred charge a FileStore gave up on, and why (the exception, as ``repr``)."""

    user: str
    cost: float
    model: str
    call_id: str | None
    error: str


def _notify(charged: list[tuple[_Deferred, UserRecord]]) -> None:
    """Tell the callers of charge_later their charges were made (after the lock is let go)."""
    for item, record in charged:
        if item.then is not None:
            try:
                item.then(record)
            except Exception:
                logger.exception("a charge_later callback failed")


def _retry_or_give_up(store: FileStore, failures: list[tuple[_Deferred, Exception]]) -> None:
    """Put charges that could not be applied or written back for the next write, or give
    them up after CHARGE_ATTEMPTS tries. Under store._deferred_lock."""
    retry = []
    for item, error in failures:
        if item.attempts + 1 < CHARGE_ATTEMPTS:
            logger.warning(
                "deferred charge of $%.10g to %r (call %s) failed: %r; will retry",
                item.cost,
                item.user,
                item.call_id,
                error,
            )
            retry.append(item._replace(attempts=item.attempts + 1))
        else:
            _give_up(store, item, repr(error))
    if retry:
        store._deferred[:0] = retry
        store._schedule()


def _give_up(store: FileStore, item: _Deferred, why: str) -> None:
    """Under store._deferred_lock."""
    logger.error(
        "deferred charge of $%.10g to %r for model %s (call %s) given up: %s; not written to %s, "
        "its hold stays until it expires",
        item.cost,
        item.user,
        item.model,
        item.call_id,
        why,
        store.path,
    )
    store._failed_charges.append(FailedCharge(item.user, item.cost, item.model, item.call_id, why))


def _give_up_pending(store: FileStore, why: str) -> None:
    """The store cannot be written at all any more (closing or exiting): report every charge left."""
    with store._deferred_lock:
        pending, store._deferred = store._deferred, []
        for item in pending:
            _give_up(store, item, why)


def _write_all_pending(store: FileStore) -> None:
    """Closing or exiting: write what is pending, trying a charge that fails until it is given up.
    Under store._mutex; StoreError if the store cannot be written."""
    for _ in range(CHARGE_ATTEMPTS):
        store._after_pending(_Locked(store), lambda _records: None)
        with store._deferred_lock:
            if not store._deferred:
                return


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
            _give_up_pending(store, f"exiting: the folder of {str(store.path)!r} is gone")
            continue
        try:
            store._own_process()  # a forked child: its parent's locks and leases are not its own
            with store._mutex:  # an admit under way installs its lease first
                store._give_back()
                _write_all_pending(store)
        except Exception as exc:
            _give_up_pending(store, f"exiting: {exc!r}")
            logger.exception("exiting: deferred changes to %s not written", store.path)
