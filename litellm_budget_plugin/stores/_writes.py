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

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from .. import ledger
from ..budget import UserRecord
from ..errors import StoreError
from ..ledger import LedgerEntry
from ._deferred import _STORES_WITH_PENDING, _Deferred, _retry_or_give_up
from ._journal import Journal
from ._leases import _Lease, refresh, stop_spare, unlease_changed

if TYPE_CHECKING:
    from .file import FileStore

T = TypeVar("T")
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


def check_writable(journal: Journal, changed: Mapping[str, UserRecord | None], now: float | None = None) -> None:
    """Refuse a change that would write over a bad record (StoreCorruptError); with ``now``,
    also one that makes a record JSON cannot encode (StoreError; its line is kept for the write)."""
    for key, record in changed.items():
        journal.refuse_bad(key)
        if now is not None:
            try:
                journal.prepare(key, record, now)
            except Exception as exc:
                raise StoreError(f"the record of {key!r} cannot be written: {exc!r}; nothing was changed") from exc


class _Applied(NamedTuple):
    """A deferred charge applied: the records it changed (none: charged already; a batch's
    charges share the batch's), the user's record, and whether it was applied in a batch."""

    item: _Deferred
    changed: dict[str, UserRecord]
    record: UserRecord
    batched: bool = False


def _apply_all(
    store: FileStore,
    items: list[_Deferred],
    working: dict[str, UserRecord | None],
    failed: list[tuple[_Deferred, Exception]],
    now: float | None = None,
) -> list[_Applied]:
    """Apply deferred charges in order to ``working``, each to what the ones before it left,
    each whole or not at all (one that raises goes to ``failed``); with ``now``, each one's
    records are also encoded (see :func:`check_writable`). The charges applied, in order.

    Without ``now``, the charges of calls admitted from leases that follow one another are
    applied in one batch (one copy of each record they change, see ``reservations.charge_each``);
    a batch that raises is applied charge by charge instead."""
    view = Overlay(working, store._journal)
    applied: list[_Applied] = []
    for leased, run in itertools.groupby(items, key=lambda item: now is None and item.keys is not None):
        charges = list(run)
        if leased and len(charges) > 1:
            try:
                applied.extend(_apply_batch(store, charges, view))
                continue
            except Exception:
                pass  # charge by charge: each whole or not at all
        for item in charges:
            try:
                changed, record = item.change(view)
                check_writable(store._journal, changed, now)
            except Exception as exc:
                failed.append((item, exc))
                continue
            working.update(changed)
            applied.append(_Applied(item, changed, record))
    return applied


def _apply_batch(store: FileStore, charges: list[_Deferred], view: Overlay) -> list[_Applied]:
    """Apply the charges of calls admitted from leases in one batch to ``view``'s changes, or raise changing nothing."""
    users = {item.user: view[item.user] for item in charges}
    batch = [(item.keys or (item.user,), (item.cost, item.model, item.call_id, item.held)) for item in charges]
    changed = store._charge_batch(view, users, batch)
    check_writable(store._journal, changed)
    view.changes.update(changed)
    return [_Applied(item, changed, changed.get(item.user, users[item.user]), batched=True) for item in charges]


def _unencodable(journal: Journal, records: dict[str, UserRecord | None], now: float) -> tuple[str, Exception] | None:
    """The first record JSON cannot encode and why, if any; the lines of the others are kept for the write."""
    for key, record in records.items():
        if record is not journal.records.get(key):
            try:
                journal.prepare(key, record, now)
            except Exception as exc:
                return key, exc
    return None


def _without_first_unwritable(
    store: FileStore, applied: list[_Applied], failed: list[tuple[_Deferred, Exception]], now: float
) -> tuple[dict[str, UserRecord | None], list[_Applied]] | None:
    """The deferred charges without the first whose records cannot be encoded (to ``failed``):
    their records, and the charges applied (those after it applied again, each checked: they
    may have built on it). None if each charge's records can be encoded."""
    working: dict[str, UserRecord | None] = {}
    if any(entry.batched for entry in applied):  # charge by charge, each checked
        return working, _apply_all(store, [entry.item for entry in applied], working, failed, now)
    for n, (item, changed, _, _) in enumerate(applied):
        try:
            check_writable(store._journal, changed, now)
        except StoreError as exc:
            failed.append((item, exc))
            again = _apply_all(store, [entry.item for entry in applied[n + 1 :]], working, failed, now)
            return working, applied[:n] + again
        working.update(changed)
    return None


def locked_write(
    store: FileStore,
    fn: Callable[[Mapping[str, UserRecord]], tuple[Mapping[str, UserRecord | None], T]],
    charged: list[tuple[_Deferred, UserRecord]],
    regrows: _Lease | None = None,
) -> T:
    """Under the store's lock: write the deferred charges, the lease holds and ``fn``'s change
    in one write (see the module's docstring); ``fn``'s result, or its error once the others
    are written. The charges written are added to ``charged``. The hold of ``regrows`` is
    left to ``fn`` (which marks it to bring up to date at the next write if it does not).

    Records are encoded once, for the write; only if one cannot be are the changes looked at
    one by one to find whose it is (deferred charges first: the lease holds and ``fn``'s
    change are made again without it)."""
    with store._deferred_lock:
        items, store._deferred = store._deferred, []
    now = store.clock()
    working: dict[str, UserRecord | None] = {}
    failed: list[tuple[_Deferred, Exception]] = []
    applied = _apply_all(store, items, working, failed)
    skip: set[_Lease] = set() if regrows is None else {regrows}  # leases not brought up to date here
    error: BaseException | None = None
    while True:
        store._ending = {entry.item.call_id for entry in applied if entry.item.call_id is not None}
        _take_stock(store, failed)
        records = dict(working)
        refreshed = _refresh_leases(store, records, now, skip)
        changed: Mapping[str, UserRecord | None] = {}
        if error is None:
            try:
                changed, result = fn(Overlay(records, store._journal))
                check_writable(store._journal, changed)
            except BaseException as exc:  # a refusal: the others are written all the same
                error, changed = exc, {}
            records.update(changed)
        unencodable = _unencodable(store._journal, records, now)
        if unencodable is None:
            break
        key, why = unencodable
        failed = []
        retried = _without_first_unwritable(store, applied, failed, now)
        if retried is not None:
            working, applied = retried
        elif key in changed:
            error = StoreError(f"the record of {key!r} cannot be written: {why!r}; nothing was changed")
        elif key in refreshed:
            for lease in refreshed[key]:
                skip.add(lease)
                stop_spare(store, lease)
        else:  # no change made it: a bug, which the write reports (nothing written, everything kept)
            break
    charged.extend((entry.item, entry.record) for entry in applied if entry.changed)
    try:
        write(store, records, charged)
        store._record_charges([line for entry in applied for line in _ledger_entries(entry, now)])
    except StoreError:
        if error is None:
            raise
        logger.warning("writing deferred charges to %s failed", store.path, exc_info=True)
    finally:
        store._ending = set()
    if error is not None:
        raise error  # the refusal is the answer, never a store error that hides it
    return result


def _ledger_entries(applied: _Applied, now: float) -> list[LedgerEntry]:
    """The ledger entry of a deferred charge applied (none if its call was charged already);
    a batch's charges each go to the budgets their lease held them in."""
    item = applied.item
    changed = (
        applied.changed
        if item.keys is None or not applied.batched
        else dict.fromkeys(key for key in item.keys if key in applied.changed)
    )
    return ledger.entries_of(now, changed, item.user, item.model, item.cost, item.call_id, item.usage)


def _take_stock(store: FileStore, failed: list[tuple[_Deferred, Exception]]) -> None:
    """After deferred charges were applied: retry or give up those that failed, and mark the
    leases to bring up to date in this write (those whose calls it charges among them)."""
    with store._deferred_lock:
        for call_id in store._ending:
            if call_id in store._leased:
                store._dirty.add(store._leased[call_id])
        _retry_or_give_up(store, failed)
        if not store._deferred:
            store._pending_since = None
            _STORES_WITH_PENDING.discard(store)
        store._refreshed |= store._dirty
        store._dirty = set()


def _refresh_leases(
    store: FileStore, records: dict[str, UserRecord | None], now: float, skip: set[_Lease]
) -> dict[str, list[_Lease]]:
    """Bring the leases marked for this write up to date in ``records``; the records changed,
    with the leases that changed each."""
    changed: dict[str, list[_Lease]] = {}
    for lease in store._refreshed - skip:
        before = {key: records.get(key) for key in lease.held}
        try:
            refresh(store, lease, records, now)
        except Exception:
            logger.exception(
                "the lease hold of %r in %s cannot be rewritten; it stays until it expires", lease.user, store.path
            )
            stop_spare(store, lease)
            skip.add(lease)
        for key, record in before.items():
            if records.get(key) is not record:
                changed.setdefault(key, []).append(lease)
    return changed


def write(store: FileStore, working: dict[str, UserRecord | None], charged: list[tuple[_Deferred, UserRecord]]) -> None:
    """Persist the changed records in one write, then make them the loaded ones, and let the
    calls charged leave their leases (their holds were written without them).

    On failure nothing is written, every charge waits for the next write, and StoreError is raised.
    """
    try:
        written = _journal_write(store, working)
    except BaseException:
        with store._deferred_lock:  # not written: they wait for the next operation
            store._deferred[:0] = [item for item, _ in charged]
            store._dirty |= store._refreshed
            store._refreshed = set()
            if store._deferred or store._dirty:
                store._schedule()
        charged.clear()
        raise
    with store._deferred_lock:
        for call_id in store._ending:
            store._end_leased_call(call_id, rewrite=False)
        for lease in store._refreshed:
            if lease.writing_until is not None:
                lease.written_until, lease.writing_until = lease.writing_until, None
        store._refreshed = set()
        if store._leases:
            unlease_changed(store, working)
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
