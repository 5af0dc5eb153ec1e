"""One write of a FileStore: the changes it carries, all in one journal append, or none.

A write carries, in this order: the deferred charges waiting in this process (see
:mod:`._deferred`), the lease holds to bring up to date, and the operation under way. Each of
them may change several records (a call's user, its team, its tags, the global budget); each
sees the records as the ones before it left them (an :class:`Overlay`, not a copy), and each
lands whole in the write or not at all:

- a deferred charge that raises, or makes a record JSON cannot encode, is taken out (with
  every record it changed) and tried again with the next writes; the others are written;
- the operation's change is refused the same way (its error is the answer), and the deferred
  charges it carried are written all the same;
- a write the disk refuses writes nothing and keeps every charge for the next one.

A key whose record in the file fails its check (kept as read, see ``Journal.bad``) is never
written over: looking it up raises its StoreCorruptError, and so does a change naming it.
Encoding a record to find out whether it can be written gives the journal line the write
appends (``Journal.prepare``), so checking costs nothing in the usual case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..budget import UserRecord
from ..errors import StoreError
from ._deferred import _STORES_WITH_PENDING, _Deferred, _retry_or_give_up
from ._journal import Journal

if TYPE_CHECKING:
    from .file import FileStore

logger = logging.getLogger(__name__)


class Overlay(Mapping[str, UserRecord]):
    """The records as a write in progress leaves them: ``changes`` (None: deleted) over the
    loaded ones. Looking up a key whose record in the file is bad raises its StoreCorruptError."""

    __slots__ = ("changes", "journal")

    def __init__(self, changes: dict[str, UserRecord | None], journal: Journal) -> None:
        self.changes = changes
        self.journal = journal

    def __getitem__(self, key: str) -> UserRecord:
        if key in self.changes:
            record = self.changes[key]
            if record is None:
                raise KeyError(key)
            return record
        self.journal.refuse_bad(key)
        return self.journal.records[key]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self.changes:
            return self.changes[key] is not None
        self.journal.refuse_bad(key)
        return key in self.journal.records

    def get(self, key: str, default: UserRecord | None = None) -> UserRecord | None:  # type: ignore[override]
        if key in self.changes:
            record = self.changes[key]
            return default if record is None else record
        self.journal.refuse_bad(key)
        return self.journal.records.get(key, default)

    def __iter__(self) -> Iterator[str]:
        yield from (key for key in self.journal.records if key not in self.changes)
        yield from (key for key, record in self.changes.items() if record is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def check_writable(journal: Journal, changed: Mapping[str, UserRecord | None], now: float | None) -> None:
    """Refuse a change that would write over a bad record (StoreCorruptError); with ``now``,
    also one that makes a record JSON cannot encode (StoreError; its line is kept for the write)."""
    for key, record in changed.items():
        journal.refuse_bad(key)
        if now is not None:
            try:
                journal.prepare(key, record, now)
            except Exception as exc:
                raise StoreError(f"the record of {key!r} cannot be written: {exc!r}; nothing was changed") from exc


# A deferred charge applied: its item, the records it changed, the user's record.
_Applied = tuple[_Deferred, dict[str, UserRecord], UserRecord]


def _apply_all(
    store: FileStore,
    items: list[_Deferred],
    working: dict[str, UserRecord | None],
    failed: list[tuple[_Deferred, Exception]],
    now: float | None = None,
) -> list[_Applied]:
    """Apply deferred charges in order to ``working``, each to what the ones before it left,
    each whole or not at all (one that raises goes to ``failed``); with ``now``, each one's
    records are also encoded (see :func:`check_writable`). The charges applied, in order."""
    view = Overlay(working, store._journal)
    applied: list[_Applied] = []
    for item in items:
        try:
            changed, record = item.change(view)
            check_writable(store._journal, changed, now)
        except Exception as exc:
            failed.append((item, exc))
            continue
        if changed:  # else a call id charged already: nothing to tell
            working.update(changed)
            applied.append((item, changed, record))
    return applied


def _all_encode(journal: Journal, working: dict[str, UserRecord | None], now: float) -> bool:
    """Whether every record of ``working`` can be written (their lines are kept for the write)."""
    try:
        for key, record in working.items():
            journal.prepare(key, record, now)
    except Exception:
        return False
    return True


def _without_unwritable(
    store: FileStore, applied: list[_Applied], failed: list[tuple[_Deferred, Exception]], now: float
) -> tuple[dict[str, UserRecord | None], list[_Applied]]:
    """The charges applied, less the first one whose records cannot be encoded; those after
    it are applied again (they may have built on it), each checked."""
    working: dict[str, UserRecord | None] = {}
    for n, (item, changed, _) in enumerate(applied):
        try:
            check_writable(store._journal, changed, now)
        except StoreError as exc:
            failed.append((item, exc))
            again = _apply_all(store, [later for later, _, _ in applied[n + 1 :]], working, failed, now)
            return working, applied[:n] + again
        working.update(changed)
    return working, applied


def apply_deferred(store: FileStore, charged: list[tuple[_Deferred, UserRecord]]) -> dict[str, UserRecord | None]:
    """Take the deferred charges and lease holds and apply them to a working set of records,
    each charge on its own: one that fails waits for a later write, the others are applied.

    The charges are applied unchecked, then their records encoded once; only if one cannot
    be are they checked one by one, to find which."""
    with store._deferred_lock:
        deferred, store._deferred = store._deferred, []
    working: dict[str, UserRecord | None] = {}
    failed: list[tuple[_Deferred, Exception]] = []
    applied = _apply_all(store, deferred, working, failed)
    now = store.clock()
    if not _all_encode(store._journal, working, now):
        working, applied = _without_unwritable(store, applied, failed, now)
    charged.extend((item, record) for item, _, record in applied)
    with store._deferred_lock:
        failing = {id(item) for item, _ in failed}
        for item in deferred:  # a charged call leaves its lease: its hold shrinks in the same write
            if item.call_id is not None and id(item) not in failing:
                store._end_leased_call(item.call_id)
        store._refreshed, store._dirty = store._dirty, set()
        _retry_or_give_up(store, failed)
        if not store._deferred:
            store._pending_since = None
            _STORES_WITH_PENDING.discard(store)
    for user in store._refreshed:
        try:
            store._refresh_lease(user, working, now)
        except Exception:
            logger.exception(
                "the lease hold of %r in %s cannot be rewritten; it stays until it expires", user, store.path
            )
            store._stop_lease_spare(user)
    return working


def write(store: FileStore, working: dict[str, UserRecord | None], charged: list[tuple[_Deferred, UserRecord]]) -> None:
    """Persist the changed records in one write, then make them the loaded ones.

    On failure nothing is written, every charge waits for the next write, and StoreError is raised.
    """
    try:
        written = _journal_write(store, working)
    except BaseException:
        with store._deferred_lock:  # not written: they wait for the next operation
            store._deferred[:0] = [item for item, _ in charged]
            store._dirty |= store._refreshed
            if store._deferred or store._dirty:
                store._schedule()
        charged.clear()
        raise
    with store._deferred_lock:
        for user in store._refreshed:
            lease = store._leases.get(user)
            if lease is not None and lease.writing_until is not None:
                lease.written_until, lease.writing_until = lease.writing_until, None
        if store._leases:
            store._unlease_changed(working)
    if written and store._journal.fold_due():
        try:
            store._journal.fold()
        except StoreError:  # the change is in the journal already: report, don't fail it
            logger.warning("compacting %s failed; will retry", store.path, exc_info=True)


def _journal_write(store: FileStore, working: dict[str, UserRecord | None]) -> bool:
    """Append ``working``'s changed records; a failure that is not a StoreError (a bug, say) becomes one."""
    try:
        return store._journal.write(working, store.clock())
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot write {str(store.path)!r}: {exc!r}; nothing was written") from exc
