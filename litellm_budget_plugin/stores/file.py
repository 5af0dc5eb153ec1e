"""The embedded default: one JSON file in LiteLLM's ``user_cost.json`` shape, shared safely.

Layout, for a store at ``user_cost.json``:

- ``user_cost.json``: a snapshot, ``{user: record}`` as LiteLLM writes it (readable by people
  and by LiteLLM's own BudgetManager). Replaced atomically (temp file + ``os.replace``).
- ``user_cost.json.journal``: one JSON line per change since the snapshot, each holding the
  user's new record (its remembered call ids as a delta, see :func:`_journal_entry`). Replaying
  a line twice gives the same spend and holds, so a crash between writing a snapshot and
  starting a new journal loses and doubles nothing.
- ``user_cost.json.lock``: the ``filelock`` lock every read and write holds.

A change is one appended line, so its cost does not grow with the number of users; each
process keeps the records in memory and reads only the lines other processes appended since
its last look (one ``fstat`` of the open journal tells). When the journal outgrows the
snapshot, the writer folds it into a new snapshot and journal; the old journal, unlinked, tells
the other processes to reload. A torn last line (a writer killed mid-write) is cut off by the
next writer, under the lock.

Charges made with :meth:`FileStore.charge_later` (the guard's) wait for the store's next
operation in this process and share its lock and its write. Calls admitted with
:meth:`FileStore.admit` (the guard's, in strict mode) are held in one lease per user and
process, which a process that keeps calling for a user grows ahead of need, so that most of
its calls are admitted without a write (see :class:`_Lease`).
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import json
import logging
import math
import multiprocessing.util
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import filelock

from .. import budget
from ..budget import UserRecord
from ..errors import BudgetPluginError, ConfigurationError, StoreCorruptError, StoreError, StoreLockTimeout
from .base import NewBudget, RecordStore, _or_default

T = TypeVar("T")
logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 10.0
# Built once: json.dumps with any option set builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# The journal is folded into the snapshot once it is larger than both of these.
MIN_JOURNAL_BYTES = 4 * 1024 * 1024


class FileStore(RecordStore):
    """Budgets in a JSON file that threads and processes on one machine share.

    :param path: the snapshot file; ``.journal`` and ``.lock`` files sit beside it.
    :param lock_timeout: seconds to wait for the lock before :class:`StoreLockTimeout`.
    :param fsync: also flush each change to the disk, surviving power loss and not only a
        killed process (a few milliseconds a change on most disks).
    :param project: accepted so that every store takes a project (``store_from_url``), and
        ignored: a file holds one project.
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
    ) -> None:
        self.path = Path(path).absolute()
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = budget.check_amount("lock_timeout", lock_timeout)
        self.fsync = fsync
        if self.path.is_dir():
            raise ConfigurationError(f"store path {str(self.path)!r} is a directory, not a file")
        if not self.path.parent.is_dir():
            raise ConfigurationError(f"store folder {str(self.path.parent)!r} does not exist")
        try:
            self.lock_path.touch(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write in store folder {str(self.path.parent)!r}: {exc}") from exc
        self._reset_process_state()
        self._read(lambda _records: None)  # an unreadable file is reported here, as LiteLLM's load does

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._file_lock = _ProcessLock(str(self.lock_path))
        self._records: dict[str, UserRecord] = {}
        self._calls: dict[str, str] = {}  # call id of a reservation -> its user
        self._journal_fd: int | None = None
        self._snapshot_id: tuple[int, int, int] | None = None
        self._offset = 0
        # What this process has not written yet, guarded by _deferred_lock: charge_later's
        # charges in the order they came, and the users whose lease hold is out of date.
        self._deferred: list[_Deferred] = []
        self._dirty: set[str] = set()
        self._pending_since: float | None = None  # time.monotonic() of the oldest of them
        self._deferred_lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._leased: dict[str, str] = {}  # call id admitted from a lease -> its user
        self._refreshed: set[str] = set()  # lease holds in the write under way (under the lock)
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
                self._write(self._apply_deferred(charged), charged)
                return fn(self._records)
        finally:
            _notify(charged)

    def _update(
        self,
        user: str,
        fn: Callable[[UserRecord | None], tuple[UserRecord | None, T]],
        written: Callable[[T], None] | None = None,
    ) -> T:
        """See :meth:`RecordStore._update`; ``written(result)`` runs once the change is on
        disk, still under the lock."""
        charged: list[tuple[_Deferred, UserRecord]] = []
        try:
            with self._locked():
                working = self._apply_deferred(charged)
                old = working[user] if user in working else self._records.get(user)
                try:
                    new, result = fn(old)
                except BaseException:  # a refused change still writes the deferred charges...
                    try:
                        self._write(working, charged)
                    except StoreError:  # ...if it can (they wait for the next operation), but
                        logger.warning("writing deferred charges to %s failed", self.path, exc_info=True)
                    raise  # the refusal is the answer, never a store error that hides it
                if new is not old:
                    working[user] = new
                self._write(working, charged)
                if written is not None:
                    written(result)
                return result
        finally:
            _notify(charged)

    def _user_of_call(self, call_id: str) -> str | None:
        with self._locked():
            return self._calls.get(call_id)

    # -- charges applied later -----------------------------------------------------------

    def charge_later(
        self,
        user: str,
        cost: float,
        model: str,
        call_id: str | None = None,
        default: NewBudget | None = None,
        then: Callable[[UserRecord], None] | None = None,
    ) -> None:
        """Charge at this store's next operation in this process, or within a second.

        The guard settles every call this way: the charge then shares the lock and the write
        of the next operation (for calls admitted from a lease, usually the flusher's, one
        for many calls), which also shrinks the call's hold. Reads in this process apply
        deferred charges first, so they never see a stale spend; other processes see the
        call's hold (at least its cost) until then. A process killed in between loses the
        charge, and its hold expires with its lease.
        """
        change = self._charge_change(user, cost, model, call_id, default)  # bad input fails here
        self._own_process()
        with self._deferred_lock:
            if self._closed:  # closed by another thread since the check above
                raise self._closed_error()
            # A leased call leaves its lease only when its charge is taken for a write, so that
            # no write holds less for it without charging it.
            self._deferred.append(_Deferred(user, change, then, call_id))
            self._schedule()

    def release(self, call_id: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        self._own_process()
        with self._deferred_lock:
            if self._end_leased_call(call_id):
                self._schedule()
                return True
        return super().release(call_id, user)

    def settle(self, call_id: str, actual_cost: float, model: str, user: str | None = None) -> bool:
        budget.check_call_id(call_id)
        budget.check_amount("actual cost", actual_cost)
        self._own_process()
        with self._deferred_lock:
            owner = self._leased.get(call_id)
        if owner is None:
            return super().settle(call_id, actual_cost, model, user)
        self.charge_later(owner, actual_cost, model, call_id=call_id)
        self.flush()  # the charge and the smaller hold in one write (kept for later if it fails)
        return True

    def _schedule(self, lease_of: str | None = None) -> None:
        """Something waits to be written (the lease hold of ``lease_of``, if given): make sure
        it is, soon. Under _deferred_lock."""
        if lease_of is not None:
            self._dirty.add(lease_of)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        _STORES_WITH_PENDING.add(self)
        _flush_when_this_process_ends()
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=_flush_soon, args=(weakref.ref(self),), name=f"flush {self.path.name}", daemon=True
            )
            self._flusher.start()

    # -- leases ----------------------------------------------------------------------------

    def admit(self, user: str, call_id: str, amount: float, ttl: float, default: NewBudget | None = None) -> None:
        """Admit a call in strict mode, from this process's lease for the user when it can.

        From the lease's spare, a call costs no write. Otherwise the lease is regrown under
        the lock: to the calls in flight plus this one, with spare for the next ones when the
        user was called for in the last :data:`LEASE_HOT_SECONDS` (and the budget allows).
        Near the end of a budget this admits exactly what :meth:`reserve` would, as far as
        this process goes; another process's unused spare can refuse a call that would fit
        for up to :data:`LEASE_IDLE_SECONDS` after that process stops calling (or its lease
        expires, if it was killed).
        """
        amount, ttl = budget.check_reservation(user, call_id, amount, ttl, "strict")
        self._own_process()
        now = self.clock()
        with self._deferred_lock:
            lease = self._leases.get(user)
            if lease is not None and call_id not in self._leased and lease.take(call_id, amount, now + ttl):
                self._leased[call_id] = user
                self._schedule(user)  # the hold must last as long as this call
                return

        def change(record: UserRecord | None) -> tuple[UserRecord, tuple[_Lease, float, float]]:
            current = _or_default(user, record, default, now)
            with self._deferred_lock:
                lease = self._leases.get(user) or self._leases.setdefault(user, _Lease(ttl))
                if self._end_leased_call(call_id):  # admitted again under the same id
                    self._schedule()
                hot = not self._giving_back and time.monotonic() - lease.last_used < LEASE_HOT_SECONDS
                self._expire(lease, now)
                if lease.spare:  # given up first: the file must never hold less than promised here
                    lease.spare = 0.0
                    self._schedule(user)  # and written, if this call is refused
                in_flight = lease.in_flight
            target = budget.lease_hold(current, user, lease.hold_id, in_flight, amount, hot, now)
            lease.ttl = ttl
            expires_at = max(now + ttl, lease.expires_at(now, spare=hot))
            granted = (lease, max(0.0, target - in_flight - amount), expires_at)
            return budget.set_hold(current, lease.hold_id, target, expires_at, now), granted

        def install(granted: tuple[_Lease, float, float]) -> None:
            lease, spare, expires_at = granted
            with self._deferred_lock:
                lease.written_until = expires_at
                lease.add(call_id, amount, now + ttl)
                lease.spare = 0.0 if self._giving_back else spare  # closing or exiting meanwhile
                self._leased[call_id] = user
                if spare:
                    self._schedule(user)  # looked at again, to give the spare back once idle

        self._update(user, change, install)

    def _end_leased_call(self, call_id: str) -> bool:
        """Take a call admitted from a lease out of it, marking its hold to rewrite. Under _deferred_lock."""
        user = self._leased.pop(call_id, None)
        if user is None:
            return False
        self._leases[user].drop(call_id)
        self._dirty.add(user)
        return True

    def _refresh_lease(self, user: str, working: dict[str, UserRecord | None], now: float) -> None:
        """Bring a lease's hold in the file to its calls in flight and its spare, which is
        given back once the user has not been called for in a while, or no longer fits."""
        lease = self._leases.get(user)
        current = working[user] if user in working else self._records.get(user)
        if lease is None:
            return
        if current is None:  # the user was deleted: no more calls from the spare
            with self._deferred_lock:
                lease.spare = 0.0
            return
        with self._deferred_lock:
            lease.writing_until = None
            self._expire(lease, now)
            if (
                self._giving_back
                or time.monotonic() - lease.last_used >= LEASE_IDLE_SECONDS
                or not budget.lease_spare_fits(current, lease.hold_id, lease.in_flight, lease.spare, now)
            ):
                lease.spare = 0.0
            elif lease.spare:
                self._schedule(user)  # come back to it
            target = lease.in_flight + lease.spare
            expires_at = lease.expires_at(now, spare=bool(lease.spare))
            enough = expires_at - (LEASE_HORIZON_SECONDS / 2 if lease.spare else 0.0)
            held = current.get("reservations", {}).get(lease.hold_id)
            if (held is None and target == 0) or (
                held is not None and held["amount"] == target and held["expires_at"] >= enough
            ):
                return  # the file says so already
            lease.writing_until = expires_at
        working[user] = budget.set_hold(current, lease.hold_id, target, expires_at, now)

    def _expire(self, lease: _Lease, now: float) -> None:
        """Forget a lease's lapsed calls. Under _deferred_lock."""
        for call_id in lease.expire(now):
            self._leased.pop(call_id, None)

    def _give_back(self) -> None:
        """Drop every lease's spare (the process is closing the store or exiting)."""
        with self._deferred_lock:
            self._giving_back = True
            for user, lease in self._leases.items():
                if lease.spare:
                    lease.spare = 0.0
                    self._dirty.add(user)
                    if self._pending_since is None:
                        self._pending_since = time.monotonic()

    def flush(self) -> None:
        """Apply the deferred charges now."""
        self._own_process()  # a forked child must not take its parent's locks, held or not
        with self._deferred_lock:
            if self._pending_since is None:
                return
        self._read(lambda _records: None)

    def _apply_deferred(self, charged: list[tuple[_Deferred, UserRecord]]) -> dict[str, UserRecord | None]:
        """Take the deferred charges and lease holds and apply them to a working copy of their records."""
        with self._deferred_lock:
            deferred, self._deferred = self._deferred, []
            for item in deferred:
                if item.call_id is not None:
                    self._end_leased_call(item.call_id)  # its lease's hold shrinks in the same write
            self._refreshed, self._dirty = self._dirty, set()
            self._pending_since = None
            _STORES_WITH_PENDING.discard(self)
        working: dict[str, UserRecord | None] = {}
        for item in deferred:
            current = working[item.user] if item.user in working else self._records.get(item.user)
            try:
                record, _ = item.change(current)
            except BudgetPluginError:
                logger.exception("dropping a deferred charge to %r that cannot be applied", item.user)
                continue
            if record is not current:  # else a call id charged already: nothing to tell
                working[item.user] = record
                charged.append((item, record))
        now = self.clock()
        for user in self._refreshed:
            self._refresh_lease(user, working, now)
        return working

    def _write(self, working: dict[str, UserRecord | None], charged: list[tuple[_Deferred, UserRecord]]) -> None:
        """Persist the changed records in one write, then make them the loaded ones."""
        now = self.clock()
        lines, replayed = [], {}
        for user, new in working.items():
            old = self._records.get(user)
            if new is not old:
                entry, replayed[user] = _journal_entry(user, old, new, now)
                lines.append(_ENCODER.encode(entry))
        if not lines:
            return
        try:
            self._append(("\n".join(lines) + "\n").encode())
        except StoreError:
            with self._deferred_lock:  # not written: they wait for the next operation
                self._deferred[:0] = [item for item, _ in charged]
                self._dirty |= self._refreshed
                if self._deferred or self._dirty:
                    self._schedule()
            charged.clear()
            raise
        with self._deferred_lock:
            for user in self._refreshed:
                lease = self._leases.get(user)
                if lease is not None and lease.writing_until is not None:
                    lease.written_until, lease.writing_until = lease.writing_until, None
        for user, record in replayed.items():
            self._apply(user, record)  # what other processes will read, to the call id order
        if self._offset > max(MIN_JOURNAL_BYTES, self._snapshot_size()):
            try:
                self._compact()
            except StoreError:  # the change is in the journal already: report, don't fail it
                logger.warning("compacting %s failed; will retry", self.path, exc_info=True)

    def compact(self) -> None:
        """Fold the journal into the snapshot now, so the JSON file is current."""
        self._after_pending(self._locked(), lambda _records: self._compact())

    def close(self) -> None:
        """Write what is pending, give the leases' spare back, and let go of the files.

        Closing again does nothing. Any operation after it raises StoreError, and so does a
        charge_later that another thread makes while it closes: none is dropped unseen.
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
                    self._after_pending(_Locked(self), lambda _records: None)
        except BudgetPluginError:
            logger.exception("closing %s: deferred charges lost; their holds expire with their lease", self.path)
        finally:
            with self._mutex:
                self._closed = True
                self._close_journal()
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
            self._close_journal()
            self._file_lock.close()
            self._reset_process_state()

    def _closed_error(self) -> StoreError:
        return StoreError(f"store {str(self.path)!r} is closed")

    def _catch_up(self) -> None:
        """Bring the in-memory records up to what is on disk. Runs under the lock.

        One ``fstat`` of the open journal tells it all: more bytes are lines other processes
        appended; no link left means a compaction replaced it (or someone deleted it), so the
        records are read again from the new snapshot and journal.
        """
        try:
            if self._journal_fd is None:
                self._reload()
                return
            journal = os.fstat(self._journal_fd)
            if journal.st_nlink == 0 or journal.st_size < self._offset:
                self._reload()
            elif journal.st_size > self._offset:
                self._replay(journal.st_size)
        except BaseException:
            self._forget()
            raise

    def _forget(self) -> None:
        """Drop what is loaded (it may be half read): the next operation starts over."""
        self._close_journal()
        self._records, self._calls = {}, {}

    def _stat_snapshot(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        self._records, self._calls = {}, {}
        self._snapshot_id = self._stat_snapshot()
        if self._snapshot_id is not None:
            for user, record in self._load_snapshot().items():
                self._apply(user, record)
        size = self._open_journal()
        self._offset = 0
        self._replay(size)

    def _open_journal(self) -> int:
        """(Re)open the journal file at its path; returns its size."""
        self._close_journal()
        try:
            self._journal_fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open journal {str(self.journal_path)!r}: {exc}") from exc
        return os.fstat(self._journal_fd).st_size

    def _close_journal(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
        self._journal_fd = None

    def _load_snapshot(self) -> dict[str, UserRecord]:
        where = f"store file {str(self.path)!r}"
        try:
            raw = json.loads(self.path.read_bytes() or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreCorruptError(f"{where} is not valid JSON ({exc}); it was left untouched") from exc
        if not isinstance(raw, dict):
            raise StoreCorruptError(
                f"{where} must hold an object of users, not {type(raw).__name__}; it was left untouched"
            )
        try:
            return {budget.check_user(u): budget.check_record(u, r) for u, r in raw.items()}
        except ConfigurationError as exc:
            raise StoreCorruptError(f"{where}: {exc}; it was left untouched") from exc

    def _replay(self, size: int) -> None:
        assert self._journal_fd is not None
        data = os.pread(self._journal_fd, size - self._offset, self._offset)
        complete = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:complete].splitlines()):
            try:
                entry = json.loads(line)
                user = budget.check_user(entry["u"])
                record = _replayed_record(user, entry, self._records.get(user))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreCorruptError(
                    f"journal {str(self.journal_path)!r} has a bad entry at byte "
                    f"{self._offset} (+{number} lines): {exc}; it was left untouched"
                ) from exc
            self._apply(user, record)
        self._offset += complete
        if complete < len(data):  # a writer died mid-line; we hold the lock, so it is gone
            os.ftruncate(self._journal_fd, self._offset)

    def _apply(self, user: str, record: UserRecord | None) -> None:
        old = self._records.get(user)
        if old is not None:
            for call_id in old.get("reservations", {}):
                self._calls.pop(call_id, None)
        if record is None:
            self._records.pop(user, None)
            return
        self._records[user] = record
        for call_id in record.get("reservations", {}):
            self._calls[call_id] = user

    # -- writing -------------------------------------------------------------------------

    def _append(self, lines: bytes) -> None:
        assert self._journal_fd is not None
        try:
            written = os.write(self._journal_fd, lines)
            if written != len(lines):
                raise OSError(f"short write: {written} of {len(lines)} bytes")
            if self.fsync:
                os.fsync(self._journal_fd)
        except OSError as exc:
            os.ftruncate(self._journal_fd, self._offset)
            raise StoreError(f"cannot write journal {str(self.journal_path)!r}: {exc}") from exc
        self._offset += len(lines)

    def _snapshot_size(self) -> int:
        return 0 if self._snapshot_id is None else self._snapshot_id[2]

    def _compact(self) -> None:
        """Write all records as a new snapshot, then start an empty journal.

        Compactions replace the journal, which is how other processes notice them, so the
        snapshot only changes under us if a person edited it: that edit is read (and a file
        we cannot read refused) before anything overwrites it.
        """
        if self._stat_snapshot() != self._snapshot_id:
            try:
                self._reload()
            except BaseException:
                self._forget()
                raise
        # One user a line: readable, and encoded by json's C encoder (indent= is pure Python).
        lines = ",\n".join(f" {json.dumps(u)}: {json.dumps(r, allow_nan=False)}" for u, r in self._records.items())
        self._write_atomically(self.path, f"{{\n{lines}\n}}\n".encode())
        self._snapshot_id = self._stat_snapshot()
        self._write_atomically(self.journal_path, b"")
        self._open_journal()
        self._offset = 0

    def _write_atomically(self, target: Path, data: bytes) -> None:
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                if self.fsync:  # a killed process cannot lose what is in the page cache
                    os.fsync(out.fileno())
            os.replace(temp, target)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {str(target)!r}: {exc}") from exc


def _journal_entry(
    user: str, old: UserRecord | None, new: UserRecord | None, now: float
) -> tuple[dict[str, Any], UserRecord | None]:
    """The journal line for one change, and the record that replaying it gives.

    A record remembers up to 256 charged call ids; writing them all on every change would
    make a line ~10 KB, and encoding it would cost more than the rest of the change. When the
    new ids are the old ones as :func:`budget.recent_applied` keeps them at ``now`` plus some
    appended, the line holds ``now`` and the appended ids only. Replaying it twice (after a
    crash during a compaction) sets the same spend and holds, and at worst remembers an id
    for longer.
    """
    if new is None or old is None or not old.get("applied"):
        return {"u": user, "r": new}, new
    applied = new.get("applied", {})
    kept = budget.recent_applied(old.get("applied", {}), now)
    appended: dict[str, float] = {}
    replayed = kept
    if applied is not kept:
        appended = dict(itertools.islice(applied.items(), len(kept), None))
        replayed = {**kept, **appended}
        if list(replayed.items()) != list(applied.items()):  # order too: prunes go by position
            return {"u": user, "r": new}, new  # not a prune plus appends (an import, a put)
    slim = {k: v for k, v in new.items() if k != "applied"}
    record = cast(UserRecord, {**slim, "applied": replayed} if replayed else slim)
    return {"u": user, "r": slim, "t": now, "a": appended}, record


def _replayed_record(user: str, entry: dict[str, Any], old: UserRecord | None) -> UserRecord | None:
    """The record a journal line (see :func:`_journal_entry`) gives, checked."""
    raw = entry["r"]
    if raw is None:
        return None
    if "t" in entry:
        appended = entry["a"]
        if not isinstance(raw, dict) or not isinstance(appended, dict):
            raise TypeError("a journal line's record and appended call ids must be objects")
        now = budget.check_amount("journal time", entry["t"])
        kept = {} if old is None else budget.recent_applied(old.get("applied", {}), now)
        raw = {**raw, "applied": {**kept, **appended}}
    return budget.check_record(user, raw)


class _Deferred(NamedTuple):
    user: str
    change: Callable[[UserRecord | None], tuple[UserRecord, UserRecord]]
    then: Callable[[UserRecord], None] | None
    call_id: str | None


# A lease gives back its spare once its user has not been called for this long...
LEASE_IDLE_SECONDS = 0.05
# ...and gets spare only for a user called for again within this long.
LEASE_HOT_SECONDS = 1.0
# A lease's spare is held this much longer than a call's lease, so that calls admitted from it
# meanwhile are held for all of theirs; rewritten once half of this is used.
LEASE_HORIZON_SECONDS = 5.0


class _Lease:
    """This process's hold for one user's calls, under one reservation id in the file.

    The file holds ``in_flight + spare``: the calls admitted and not yet ended, and spare
    from which the next calls are admitted without a write. Whatever changes, the file
    never holds less than that: spare is given up here before the file is told, and taken
    here only after the file holds it, and only for a call the file holds long enough (so a
    process that cannot write stops admitting from spare). Each call keeps its own expiry,
    as a reservation does; spare is held :data:`LEASE_HORIZON_SECONDS` beyond a lease.
    """

    def __init__(self, ttl: float) -> None:
        self.hold_id = f"lease-{uuid.uuid4().hex}"
        self.ttl = ttl
        self.calls: dict[str, tuple[float, float]] = {}  # call id -> (amount, expires_at)
        self.in_flight = 0.0
        self.spare = 0.0
        self.last_used = -math.inf  # time.monotonic() of the last call admitted
        self.written_until = -math.inf  # the expiry of the hold last written to the file
        self.writing_until: float | None = None  # ... and of one being written now

    def take(self, call_id: str, amount: float, expires_at: float) -> bool:
        if amount > self.spare or expires_at > self.written_until:
            return False
        self.spare -= amount
        self.add(call_id, amount, expires_at)
        return True

    def add(self, call_id: str, amount: float, expires_at: float) -> None:
        self.calls[call_id] = (amount, expires_at)
        self.in_flight += amount
        self.last_used = time.monotonic()

    def drop(self, call_id: str) -> None:
        amount, _ = self.calls.pop(call_id, (0.0, 0.0))
        self.in_flight = max(0.0, self.in_flight - amount) if self.calls else 0.0

    def expires_at(self, now: float, spare: bool) -> float:
        """When the file's hold may lapse: with its last call, or, with spare, long enough for
        the calls admitted from it in the next :data:`LEASE_HORIZON_SECONDS`."""
        last_call = max((expires_at for _, expires_at in self.calls.values()), default=now)
        return max(last_call, now + self.ttl + LEASE_HORIZON_SECONDS) if spare else last_call

    def expire(self, now: float) -> list[str]:
        """Drop the calls whose hold has lapsed (a stream abandoned, say), as a reservation would."""
        lapsed = [call_id for call_id, (_, expires_at) in self.calls.items() if expires_at <= now]
        for call_id in lapsed:
            self.drop(call_id)
        return lapsed


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


class _Locked:
    """Holds the thread mutex and the file lock, and catches up with the disk on entry."""

    def __init__(self, store: FileStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        store = self.store
        store._mutex.acquire()
        try:
            store._file_lock.acquire(store.lock_timeout)
        except filelock.Timeout as exc:
            store._mutex.release()
            raise StoreLockTimeout(
                f"lock {str(store.lock_path)!r} not obtained within {store.lock_timeout} s; nothing was changed"
            ) from exc
        except BaseException:
            store._mutex.release()
            raise
        try:
            store._catch_up()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.store._file_lock.release()
        finally:
            self.store._mutex.release()


class _ProcessLock:
    """The store's inter-process lock: ``flock`` on the ``.lock`` file.

    The uncontended case is one ``flock`` call on a descriptor kept open (about 1 µs; a
    ``filelock`` acquire and release costs about 50 µs here, twice per guarded call). When
    another process holds the lock, ``filelock`` does the waiting, with its timeout. Both
    lock the same file the same way, so any ``filelock.FileLock`` on the path excludes us.
    Used under the store's thread mutex, so it is never taken twice in one process.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # Poll often: a holder keeps the lock for one appended line, not the 50 ms default.
        self._waiter = filelock.FileLock(path, thread_local=False, poll_interval=0.0005)
        self._waited = False

    def acquire(self, timeout: float) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._waited = False
        except BlockingIOError:
            self._waiter.acquire(timeout=timeout)
            self._waited = True

    def release(self) -> None:
        if self._waited:
            self._waiter.release()
        else:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
