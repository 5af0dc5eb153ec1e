"""The embedded default: one JSON file in LiteLLM's ``user_cost.json`` shape, shared safely.

The files (a snapshot, a journal of changes since, a lock) and how a process keeps its copy
of the records current are described in :mod:`._journal`; the lock is in :mod:`._lock`.

Every change, whatever records it touches (a call's user, team, tags, the global budget), is
written in one append to the journal, or not at all (see :mod:`._writes`). Charges made with
:meth:`FileStore.charge_later` (the guard's) wait for the store's next operation in this
process and share its lock and its write (see :mod:`._deferred`). Calls admitted with
:meth:`FileStore.admit` (the guard's, in strict mode) are held in one lease per kind of call
(user, subjects, model) and process, in every budget they are checked against, which a
process that keeps making such calls grows ahead of need, so that most of them are admitted
without a write (see :mod:`._admission` and :mod:`._leases`); their charges are then written
in batches, one copy of each record per write. Calls naming the global budget are reserved
in every budget in one write each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from .. import budget, reservations
from ..budget import Charge, UserRecord
from ..errors import BudgetPluginError, ConfigurationError, StoreError
from ..ledger import (
    DEFAULT_RETENTION_DAYS,
    LedgerEntry,
    LedgerTotal,
    Usage,
    check_period,
    check_retention_days,
    check_usage,
)
from . import _admission
from ._deferred import (
    _STORES_WITH_PENDING,
    FAILED_CHARGES_KEPT,
    FailedCharge,
    _Deferred,
    _flush_soon,
    _flush_when_this_process_ends,
    _give_up_pending,
    _notify,
    _write_all_pending,
)
from ._journal import Journal
from ._leases import LEASE_HORIZON_SECONDS as LEASE_HORIZON_SECONDS
from ._leases import LEASE_IDLE_SECONDS as LEASE_IDLE_SECONDS
from ._leases import Kind, _Lease
from ._ledger_files import LedgerFiles
from ._lock import _Locked, _ProcessLock
from ._writes import locked_write
from .base import NewBudget, RecordStore, _at_one_time

T = TypeVar("T")
logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 10.0


def _nothing(_records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord | None], None]:
    """The change of an operation that only writes what is pending."""
    return {}, None


class FileStore(RecordStore):
    """Budgets in a JSON file that threads and processes on one machine share.

    :param path: the snapshot file; ``.journal`` and ``.lock`` files sit beside it.
    :param lock_timeout: seconds to wait for the lock before :class:`StoreLockTimeout`.
    :param fsync: also flush each change to the disk, surviving power loss and not only a
        killed process (a few milliseconds a change on most disks).
    :param project: accepted so that every store takes a project (``store_from_url``), and
        ignored: a file holds one project.
    :param ledger: keep a ledger of charges (one ``.ledger-<day>`` file per UTC day beside
        the file, see :mod:`._ledger_files`), for reports; ``ledger_retention_days`` of them.
    :raises ConfigurationError: the path is a directory or its folder does not exist.
    :raises StoreError: the folder cannot be written.
    :raises StoreCorruptError: the file or its journal cannot be read (both are left untouched).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "user_cost.json",
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        fsync: bool = False,
        project: str | None = None,
        ledger: bool = True,
        ledger_retention_days: float = DEFAULT_RETENTION_DAYS,
    ) -> None:
        self.path = Path(path).absolute()
        self.ledger_retention_days = check_retention_days(ledger_retention_days)
        self.keeps_ledger = ledger
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = budget.check_amount("lock_timeout", lock_timeout)
        self.fsync = fsync
        if self.path.is_dir():
            raise ConfigurationError(f"store path {str(self.path)!r} is a directory, not a file")
        if not self.path.parent.is_dir():
            raise ConfigurationError(f"store folder {str(self.path.parent)!r} does not exist")
        self._reset_process_state()  # opens the lock file (StoreError if it cannot be written)
        self._read(lambda _records: None)  # an unreadable file is reported here, as LiteLLM's load does

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    def get(self, user: str) -> UserRecord | None:
        """The user's record; StoreCorruptError if it is in the file but fails its check."""
        record = super().get(user)
        if record is None:
            self._journal.refuse_bad(user)
        return record

    def _reset_process_state(self) -> None:
        self._file_lock = _ProcessLock(str(self.lock_path))  # first: if it fails, a forked child tries again
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._journal = Journal(self.path, self.fsync)
        self._ledger = LedgerFiles(self.path, self.ledger_retention_days, self.fsync) if self.keeps_ledger else None
        # What this process has not written yet, guarded by _deferred_lock: charge_later's
        # charges in the order they came, and the users whose lease hold is out of date.
        self._deferred: list[_Deferred] = []
        self._dirty: set[_Lease] = set()
        self._pending_since: float | None = None  # time.monotonic() of the oldest of them
        self._deferred_lock = threading.Lock()
        self._failed_charges: deque[FailedCharge] = deque(maxlen=FAILED_CHARGES_KEPT)
        self._leases: dict[str, dict[Kind, _Lease]] = {}  # user -> its leases (retired ones aside)
        self._leased: dict[str, _Lease] = {}  # call id admitted from a lease -> the lease
        self._refreshed: set[_Lease] = set()  # lease holds in the write under way (under the lock)
        self._ending: set[str] = set()  # calls charged in the write under way: they leave their lease
        self._giving_back = False  # closing or exiting: leases keep no spare
        self._flusher: threading.Thread | None = None
        self._closed = False

    # -- RecordStore ---------------------------------------------------------------------

    def _read(self, fn: Callable[[dict[str, UserRecord]], T]) -> T:
        return self._after_pending(self._locked(), fn)

    def _after_pending(self, locked: _Locked, fn: Callable[[dict[str, UserRecord]], T]) -> T:
        """Write what is pending, then call ``fn`` on the records, under ``locked``."""
        charged: list[tuple[_Deferred, UserRecord]] = []
        try:
            with locked:
                locked_write(self, _nothing, charged)
                return fn(self._journal.records)
        finally:
            _notify(charged)

    def _update_many(
        self,
        fn: Callable[[Mapping[str, UserRecord]], tuple[Mapping[str, UserRecord | None], T]],
        written: Callable[[T], None] | None = None,
        regrows: _Lease | None = None,
    ) -> T:
        """See :meth:`RecordStore._update_many`: the records ``fn`` changes are written with
        the pending ones, in one write, or none of them is (see :mod:`._writes`); ``written(result)``
        runs once they are on disk, still under the lock. ``regrows``: a lease ``fn`` rewrites
        the hold of, which the write does not bring up to date first."""
        charged: list[tuple[_Deferred, UserRecord]] = []
        try:
            with self._locked():
                result = locked_write(self, fn, charged, regrows)
                if written is not None:
                    written(result)
                return result
        finally:
            _notify(charged)

    def _update(
        self,
        user: str,
        fn: Callable[[UserRecord | None], tuple[UserRecord | None, T]],
    ) -> T:
        def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord | None], T]:
            old = records.get(user)  # a bad record in the file is refused here, never written over
            new, result = fn(old)
            return ({} if new is old else {user: new}), result

        return self._update_many(change)

    def _user_of_call(self, call_id: str) -> str | None:
        with self._locked():
            return self._journal.calls.get(call_id)

    # -- charges applied later -----------------------------------------------------------

    def charge_later(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        then: Callable[[UserRecord], None] | None = None,
        held: float | None = None,
        *,
        subjects: Sequence[str] = (),
        usage: Usage | None = None,
    ) -> None:
        """Charge at this store's next operation in this process, or within a second.

        The guard settles every call this way: the charge then shares the lock and the write
        of the next operation (for calls admitted from a lease, usually the flusher's, one
        for many calls), which also shrinks the call's hold. Reads in this process apply
        deferred charges first, so they never see a stale spend; other processes see the
        call's hold (at least its cost) until then. A process killed in between loses the
        charge, and its hold expires with its lease.
        """
        with self._deferred_lock:
            lease = None if call_id is None else self._leased.get(call_id)
        # A call admitted from a lease is charged to the budgets the lease held it in.
        keys = lease.keys if lease is not None and lease.user == user else None
        change = self._charge_change(user, cost, model, call_id, default, held, subjects, keys)  # bad input fails here
        usage = check_usage(usage)
        self._own_process()
        with self._deferred_lock:
            if self._closed:  # closed by another thread since the check above
                raise self._closed_error()
            # A leased call leaves its lease only when its charge is applied for a write, so
            # that no write holds less for it without charging it. One that needs no answer
            # is written in a batch with the others (see :mod:`._writes`).
            batch = keys if then is None else None
            self._deferred.append(
                _Deferred(user, change, then, call_id, cost, model, keys=batch, held=held, usage=usage)
            )
            self._schedule()

    def _charge_batch(
        self,
        records: Mapping[str, UserRecord],
        users: Mapping[str, UserRecord],
        charges: Sequence[tuple[tuple[str, ...], Charge]],
    ) -> dict[str, UserRecord]:
        """The change a batch of charges of calls admitted from leases makes (see
        :func:`._writes._apply_all`): ``reservations.charge_each`` at the time of the write."""
        return reservations.charge_each(records, users, charges, self.clock())

    def release(self, call_id: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        self._own_process()
        with self._deferred_lock:
            if self._end_leased_call(call_id):
                self._schedule()
                return True
        return super().release(call_id, user)

    def settle(
        self, call_id: str, actual_cost: float, model: str, user: str | None = None, *, usage: Usage | None = None
    ) -> bool:
        budget.check_call_id(call_id)
        budget.check_amount("actual cost", actual_cost)
        self._own_process()
        with self._deferred_lock:
            lease = self._leased.get(call_id)
            held = None if lease is None else lease.calls[call_id][0]
        if lease is None:
            return super().settle(call_id, actual_cost, model, user, usage=usage)
        self.charge_later(lease.user, actual_cost, model, call_id=call_id, held=held, usage=usage)
        self.flush()  # the charge and the smaller hold in one write (kept for later if it fails)
        return True

    def _schedule(self, lease_of: _Lease | None = None) -> None:
        """Something waits to be written (the hold of the lease ``lease_of``, if given): make
        sure it is, soon. Under _deferred_lock."""
        if lease_of is not None:
            self._dirty.add(lease_of)
        if self._pending_since is None:  # else registered already (both end together in _apply_deferred)
            self._pending_since = time.monotonic()
            _STORES_WITH_PENDING.add(self)
            _flush_when_this_process_ends()
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=_flush_soon, args=(weakref.ref(self),), name=f"flush {self.path.name}", daemon=True
            )
            self._flusher.start()

    # -- leases ----------------------------------------------------------------------------

    @_at_one_time
    def admit(
        self,
        user: str,
        call_id: str,
        amount: float,
        ttl: float,
        default: NewBudget | None = None,
        at_least: float | None = None,
        *,
        model: str | None = None,
        subjects: Sequence[str] = (),
    ) -> float:
        """Admit a call in strict mode, from this process's lease for the user when it can
        (see :func:`._admission.admit`)."""
        return _admission.admit(self, user, call_id, amount, ttl, default, at_least, model, subjects)

    def _end_leased_call(self, call_id: str, rewrite: bool = True) -> bool:
        """Take a call admitted from a lease out of it, marking its hold to rewrite (unless it
        was just written without it). Under _deferred_lock."""
        lease = self._leased.pop(call_id, None)
        if lease is None:
            return False
        lease.drop(call_id)
        if rewrite:
            self._dirty.add(lease)
        return True

    def _give_back(self) -> None:
        """Drop every lease's spare (the process is closing the store or exiting)."""
        with self._deferred_lock:
            self._giving_back = True
            for kinds in self._leases.values():
                for lease in kinds.values():
                    if lease.spare:
                        lease.spare = 0.0
                        self._dirty.add(lease)
                        if self._pending_since is None:
                            self._pending_since = time.monotonic()
                            _STORES_WITH_PENDING.add(self)

    def flush(self) -> None:
        """Apply the deferred charges now; one that fails waits for the next writes (see :mod:`._deferred`)."""
        self._own_process()  # a forked child must not take its parent's locks, held or not
        with self._deferred_lock:
            if self._pending_since is None:
                return
        self._read(lambda _records: None)

    @property
    def failed_charges(self) -> tuple[FailedCharge, ...]:
        """The latest deferred charges this store gave up on in this process, oldest first
        (see :mod:`._deferred`); each is also logged as an error."""
        with self._deferred_lock:
            return tuple(self._failed_charges)

    def ledger(self, since: float | None = None, until: float | None = None) -> Iterator[LedgerEntry]:
        files, start, end, _now = self._ledger_period(since, until)
        return iter(()) if files is None else files.read(start, end)

    def ledger_totals(
        self, since: float | None = None, until: float | None = None
    ) -> Iterator[LedgerEntry | LedgerTotal]:
        """What :meth:`ledger` gives, with each whole UTC day in the period that is over as the
        totals of its charges by budgets and model (:class:`~..ledger.LedgerTotal`): a report
        over many days reads far fewer rows. Day totals are kept beside their day file."""
        files, start, end, now = self._ledger_period(since, until)
        return iter(()) if files is None else files.read_totals(start, end, now)

    def ledger_day_costs(self, since: float | None = None, until: float | None = None) -> dict[float, float]:
        """What was charged on each UTC day meeting the period that has charges, by the day's first
        instant (whole days: a chart's bars). A day that is over costs one line of its totals."""
        files, start, end, now = self._ledger_period(since, until)
        return {} if files is None else files.day_costs(start, end, now)

    def _ledger_period(
        self, since: float | None, until: float | None
    ) -> tuple[LedgerFiles | None, float, float, float]:
        """The ledger files and the period to read, checked; pending charges written first. All
        that is kept is read: another process may keep days longer than this one would."""
        start, end = check_period(since, until)
        self.flush()
        return self._ledger, start, end, self.clock()

    def _record_charges(self, entries: list[LedgerEntry]) -> None:
        if not entries or self._ledger is None:
            return
        try:
            self._ledger.append(entries, self.clock())
        except StoreError:  # the charges are written: only their history is missing
            logger.exception("%d charge(s) written to %s but not to its ledger", len(entries), self.path)

    def compact(self) -> None:
        """Fold the journal into the snapshot now, so the JSON file is current."""
        self._after_pending(self._locked(), lambda _records: self._journal.fold())

    def close(self) -> None:
        """Write what is pending, give the leases' spare back, and let go of the files.

        Closing again does nothing. Any operation after it raises StoreError, and so does a
        charge_later that another thread makes while it closes: none is dropped unseen (one
        that cannot be written is given up and reported, see :attr:`failed_charges`).
        """
        if self._closed:
            return
        try:
            self._own_process()  # a forked child closes its own files, not its parent's locks
            with self._mutex:  # operations under way finish first
                self._give_back()
                with self._deferred_lock:
                    self._closed = True  # from here charge_later refuses
                    pending = self._pending_since is not None
                if pending:
                    _write_all_pending(self)
        except BudgetPluginError as exc:
            _give_up_pending(self, f"closing: {exc!r}")
            logger.exception("closing %s: deferred changes not written; their holds expire with their lease", self.path)
        finally:
            with self._mutex:
                self._closed = True
                self._journal.close()
                if self._ledger is not None:
                    self._ledger.close()
                self._file_lock.close()
        _STORES_WITH_PENDING.discard(self)

    # -- locking and catching up ---------------------------------------------------------

    def _locked(self) -> _Locked:
        self._own_process()
        return _Locked(self)

    def _own_process(self) -> None:
        if self._closed:
            raise self._closed_error()
        if os.getpid() != self._pid:  # forked: locks, files and deferred charges are the parent's
            self._journal.close()
            if self._ledger is not None:
                self._ledger.close()
            self._file_lock.close()
            self._reset_process_state()

    def _closed_error(self) -> StoreError:
        return StoreError(f"store {str(self.path)!r} is closed")
