"""Leases: a process's hold for one kind of call, from which most strict-mode calls are admitted
without a write (see :meth:`~litellm_budget_plugin.stores.file.FileStore.admit`), and their
upkeep at each write (arithmetic in :mod:`litellm_budget_plugin.leasing`).

A lease is for the calls of one user naming the same subjects (team, tags) and model: it
holds in every record they are held in. Whatever the lease's kind, what it must hold is
re-validated at its next write: its user's team (the budgets it holds in), the records of
those budgets (made or deleted), their budgets and windows (the spare must still fit) and
their resets (the spare must end before them). A lease whose budgets changed is retired:
it admits nothing more and its hold shrinks as its calls end; a new one takes its place.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from .. import budget, leasing
from ..budget import UserRecord

if TYPE_CHECKING:
    from .file import FileStore

# A lease gives back its spare once its user has not been called for this long...
LEASE_IDLE_SECONDS = 0.05
# ...and gets spare only for a user called for again within this long.
LEASE_HOT_SECONDS = 1.0
# A lease's spare is held this much longer than a call's lease, so that calls admitted from it
# meanwhile are held for all of theirs; rewritten once half of this is used.
LEASE_HORIZON_SECONDS = 5.0

# A lease's kind beside its user: the subjects its calls name and their model.
Kind = tuple[tuple[str, ...], str | None]


class _Lease:
    """This process's hold for one kind of call, under one reservation id in each record it holds in.

    The file holds ``in_flight + spare``: the calls admitted and not yet ended, and spare
    from which the next calls are admitted without a write. Whatever changes, the file
    never holds less than that: spare is given up here before the file is told, and taken
    here only after the file holds it, and only for a call the file holds long enough (so a
    process that cannot write stops admitting from spare). Each call keeps its own expiry,
    as a reservation does; spare is held :data:`LEASE_HORIZON_SECONDS` beyond a lease.
    """

    def __init__(
        self, user: str, kind: Kind, keys: tuple[str, ...], held: tuple[str, ...], ttl: float, last_used: float
    ) -> None:
        self.hold_id = f"lease-{uuid.uuid4().hex}"
        self.user, self.kind = user, kind
        self.model = kind[1]
        self.keys = keys  # the budgets its calls are held and charged against, the user's first
        self.held = held  # those with a record when it was made: its hold is in each
        self.ttl = ttl
        self.calls: dict[str, tuple[float, float]] = {}  # call id -> (amount, expires_at)
        self.in_flight = 0.0
        self.spare = 0.0
        self.last_used = last_used  # time.monotonic() of the last call admitted
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

    def in_flight_without(self, leaving: Collection[str]) -> float:
        """What the calls in flight hold, but those ``leaving`` (charged in the write under way)."""
        if not leaving:
            return self.in_flight
        gone = [amount for call_id, (amount, _) in self.calls.items() if call_id in leaving]
        if len(gone) == len(self.calls):
            return 0.0
        return max(0.0, self.in_flight - sum(gone))

    def expires_at(self, now: float, spare: bool, leaving: Collection[str] = ()) -> float:
        """When the file's hold may lapse: with its last call (but those ``leaving``), or, with
        spare, long enough for the calls admitted from it in the next :data:`LEASE_HORIZON_SECONDS`."""
        last_call = max((at for call_id, (_, at) in self.calls.items() if call_id not in leaving), default=now)
        return max(last_call, now + self.ttl + LEASE_HORIZON_SECONDS) if spare else last_call

    def expire(self, now: float) -> list[str]:
        """Drop the calls whose hold has lapsed (a stream abandoned, say), as a reservation would."""
        lapsed = [call_id for call_id, (_, expires_at) in self.calls.items() if expires_at <= now]
        for call_id in lapsed:
            self.drop(call_id)
        return lapsed

    def same_budgets(self, user_record: UserRecord, records: Mapping[str, UserRecord]) -> bool:
        """Whether its calls would still be held in the same records (the user's team unchanged,
        no record of its budgets made or deleted since)."""
        keys = leasing.lease_keys(self.user, user_record, self.kind[0])
        return keys == self.keys and all((key in records) == (key in self.held) for key in keys[1:])


def retire(store: FileStore, lease: _Lease) -> None:
    """Admit nothing more from ``lease``: its hold shrinks as its calls end. Under _deferred_lock."""
    kinds = store._leases.get(lease.user, {})
    if kinds.get(lease.kind) is lease:
        del kinds[lease.kind]
    lease.spare = 0.0
    store._schedule(lease)


def expire(store: FileStore, lease: _Lease, now: float) -> None:
    """Forget a lease's lapsed calls. Under _deferred_lock."""
    for call_id in lease.expire(now):
        store._leased.pop(call_id, None)


def refresh(store: FileStore, lease: _Lease, working: dict[str, UserRecord | None], now: float) -> None:
    """Bring a lease's hold in the file to its calls in flight and its spare, which is given
    back once its user has not been called for in a while, or no longer fits its budgets."""
    records = {key: working[key] if key in working else store._journal.records.get(key) for key in lease.keys}
    found = {key: record for key, record in records.items() if record is not None}
    user_record = found.get(lease.user)
    with store._deferred_lock:
        lease.writing_until = None
        expire(store, lease, now)
        in_flight = lease.in_flight_without(store._ending)  # those charged in this write leave it
        if lease.spare and not _spare_stays(store, lease, user_record, found, in_flight, now):
            lease.spare = 0.0
        elif lease.spare:
            store._schedule(lease)  # come back to it
        target = in_flight + lease.spare
        expires_at = lease.expires_at(now, spare=bool(lease.spare), leaving=store._ending)
        enough = expires_at - (LEASE_HORIZON_SECONDS / 2 if lease.spare else 0.0)
        stale = [key for key in lease.held if key in found and not _holds(found[key], lease.hold_id, target, enough)]
        if not stale:
            return  # the file says so already
        lease.writing_until = expires_at
    for key in stale:
        working[key] = budget.set_hold(found[key], lease.hold_id, target, expires_at, now, lease.model)


def _spare_stays(
    store: FileStore,
    lease: _Lease,
    user_record: UserRecord | None,
    records: Mapping[str, UserRecord],
    in_flight: float,
    now: float,
) -> bool:
    """Whether a lease keeps its spare: its user called for lately, its budgets the same and
    the spare fitting them, until none of them resets. Under _deferred_lock."""
    if store._giving_back or time.monotonic() - lease.last_used >= LEASE_IDLE_SECONDS or user_record is None:
        return False
    if not lease.same_budgets(user_record, records):
        return False
    current = leasing.rolled(user_record, records, lease.keys, now)
    return leasing.spare_fits(current, lease.hold_id, in_flight, lease.spare, now, lease.model) and lease.expires_at(
        now, spare=True, leaving=store._ending
    ) <= leasing.lease_until(current, lease.model)


def _holds(record: UserRecord, hold_id: str, amount: float, until: float) -> bool:
    """Whether ``record`` holds ``amount`` under ``hold_id`` until ``until`` or later (nothing, for zero)."""
    held = record.get("reservations", {}).get(hold_id)
    if held is None:
        return amount == 0
    return held["amount"] == amount and held["expires_at"] >= until


def unlease_changed(store: FileStore, written: Mapping[str, UserRecord | None]) -> None:
    """Admit nothing more from the spare of a lease whose user's record was just written with
    another team, or windows or a budget its spare does not fit (or deleted): its calls must
    be checked against those. Other budgets are looked at with the lease's next write.
    Under _deferred_lock."""
    for user, record in written.items():
        for lease in store._leases.get(user, {}).values():
            if lease.spare and (
                record is None
                or leasing.lease_keys(user, record, lease.kind[0]) != lease.keys
                or not leasing.spare_fits(
                    {user: budget.current_window(record, store.clock())},
                    lease.hold_id,
                    lease.in_flight,
                    lease.spare,
                    store.clock(),
                    lease.model,
                )
            ):
                lease.spare = 0.0
                store._schedule(lease)  # and the file's hold shrunk at the next write


def stop_spare(store: FileStore, lease: _Lease) -> None:
    """The lease's hold was not rewritten: admit nothing more from its spare (the file still
    holds what it held) and leave it until it expires."""
    with store._deferred_lock:
        lease.spare, lease.writing_until = 0.0, None
