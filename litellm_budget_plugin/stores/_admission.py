"""FileStore.admit: a call admitted from a lease without a write when it can, else in one write.

A call is admitted from this process's lease for its kind (its user, the subjects it names,
its model; see :class:`._leases._Lease`): from the lease's spare without a write, or by
regrowing the lease under the lock, in every budget the call is checked against (the user's
record with its windows, the user's team, the call's team and tags that have a record) in
one write. A call naming the global budget is reserved on its own (``reservations.reserve_all``,
as :meth:`RecordStore.reserve` does): the global budget keeps LiteLLM's soft rule.

A lease whose budgets change (its user given another team, a record of its budgets made or
deleted) is retired at the next write that sees the change (this process's own writes at
once, another process's within the flusher's delay, at most about a second, while this process
keeps admitting calls); calls admitted from its spare meanwhile were held and are charged in
the budgets of the lease.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .. import budget, leasing
from ..budget import UserRecord
from ..errors import BudgetRefusal
from ..subjects import check_subjects_once
from ._leases import LEASE_HOT_SECONDS, Kind, _Lease, expire, retire
from .base import NewBudget, _or_default

if TYPE_CHECKING:
    from .file import FileStore

# What a lease grant installs once written: the lease, its new spare, its hold's expiry, the call's hold.
_Grant = tuple[_Lease, float, float, float]


def admit(
    store: FileStore,
    user: str,
    call_id: str,
    amount: float,
    ttl: float,
    default: NewBudget | None,
    at_least: float | None,
    model: str | None,
    subjects: Sequence[str],
) -> float:
    """Admit a call in strict mode; what it holds (``amount``, or less with ``at_least``).

    From the lease's spare, a call costs no write. Otherwise the lease is regrown under
    the lock: to the calls in flight plus this one (or what is left for it, with
    ``at_least``), with spare for the next ones when the user was called for in the last
    :data:`LEASE_HOT_SECONDS` (and the budgets allow). Near the end of a budget this admits
    exactly what ``reserve`` would, as far as this process goes (a call that does not fit
    first takes back the spare of this process's other leases in its budgets); another
    process's unused spare can refuse a call that would fit for up to ``LEASE_IDLE_SECONDS``
    after that process stops calling (or its lease expires, if it was killed). A call is held
    less than ``amount`` only once the spare is given back and the budget has no more.
    """
    amount, ttl = budget.check_reservation(user, call_id, amount, ttl, "strict", at_least)
    if model is not None:
        budget.check_model_name(model)
    others = check_subjects_once(subjects)
    kind: Kind = (others, model)
    store._own_process()
    now = store.clock()
    with store._deferred_lock:
        lease = store._leases.get(user, {}).get(kind)
        if lease is not None and call_id not in store._leased and lease.take(call_id, amount, now + ttl):
            store._leased[call_id] = lease
            store._schedule(lease)  # the hold must last as long as this call
            return amount
    reserve = store._reserve_change(user, call_id, amount, ttl, "strict", default, at_least, model, others)

    def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], tuple[_Grant | None, float]]:
        with store._deferred_lock:
            if lease is not None:
                store._schedule(lease)  # the write left it to this change: up to date at the next, if not here
            if store._end_leased_call(call_id):  # admitted again under the same id
                store._schedule()
        current = _or_default(user, records.get(user), default, now)
        keys = leasing.lease_keys(user, current, others)
        if keys is None:
            changed, (_, held) = reserve(records)
            return changed, (None, held)
        rolled = leasing.rolled(current, records, keys, now)
        return _regrow(store, _lease_for(store, user, kind, keys, rolled, ttl), rolled, amount, ttl, now, at_least)

    def install(result: tuple[_Grant | None, float]) -> None:
        grant = result[0]
        if grant is None:
            return
        lease, spare, expires_at, held = grant
        with store._deferred_lock:
            lease.written_until = expires_at
            lease.add(call_id, held, now + ttl)
            lease.spare = 0.0 if store._giving_back else spare  # closing or exiting meanwhile
            store._leased[call_id] = lease
            if spare:
                store._schedule(lease)  # looked at again, to give the spare back once idle

    return store._update_many(change, install, lease)[1]


def _lease_for(
    store: FileStore, user: str, kind: Kind, keys: tuple[str, ...], current: Mapping[str, UserRecord], ttl: float
) -> _Lease:
    """This process's lease for the kind of call, holding in the records ``current`` has; one
    holding in other budgets is retired and replaced (its calls stay held where they were)."""
    held = tuple(current)
    with store._deferred_lock:
        kinds = store._leases.setdefault(user, {})
        lease = kinds.get(kind)
        if lease is not None and lease.keys == keys and lease.held == held:
            return lease
        last_used = -float("inf")
        if lease is not None:
            retire(store, lease)
            last_used = lease.last_used
        kinds[kind] = lease = _Lease(user, kind, keys, held, ttl, last_used)
        return lease


def _regrow(
    store: FileStore,
    lease: _Lease,
    current: dict[str, UserRecord],
    amount: float,
    ttl: float,
    now: float,
    at_least: float | None,
) -> tuple[dict[str, UserRecord], tuple[_Grant, float]]:
    """The lease's records (``current``: see :func:`leasing.rolled`) with its hold regrown for one
    more call, and what to install once written."""
    with store._deferred_lock:
        hot = not store._giving_back and time.monotonic() - lease.last_used < LEASE_HOT_SECONDS
        expire(store, lease, now)
        if lease.spare:  # given up first: the file must never hold less than promised here
            lease.spare = 0.0
            store._schedule(lease)  # and written, if this call is refused
        in_flight = lease.in_flight_without(store._ending)  # those charged in this write leave it
    lease.ttl = ttl
    hot = hot and lease.expires_at(now, spare=True, leaving=store._ending) <= leasing.lease_until(current, lease.model)
    changed: dict[str, UserRecord] = {}
    try:
        target, held = leasing.lease_hold(current, lease.hold_id, in_flight, amount, hot, now, at_least, lease.model)
    except BudgetRefusal:
        changed = _take_back_spare(store, lease, current, now)
        if not changed:
            raise
        current.update(changed)
        target, held = leasing.lease_hold(current, lease.hold_id, in_flight, amount, hot, now, at_least, lease.model)
    expires_at = max(now + ttl, lease.expires_at(now, spare=hot, leaving=store._ending))
    grant = (lease, max(0.0, target - in_flight - held), expires_at, held)
    for key, record in current.items():
        changed[key] = budget.put_hold(record, lease.hold_id, target, expires_at, lease.model)
    return changed, (grant, held)


def _take_back_spare(
    store: FileStore, lease: _Lease, current: Mapping[str, UserRecord], now: float
) -> dict[str, UserRecord]:
    """A call that does not fit: give up the spare of this process's other leases holding in its
    records (here first, then in the file, in this write). The records changed (none: no such spare)."""
    changed: dict[str, UserRecord] = {}
    with store._deferred_lock:
        for kinds in store._leases.values():
            for other in kinds.values():
                shared = [key for key in other.held if key in current]
                if other is lease or not other.spare or not shared:
                    continue
                other.spare = 0.0
                store._schedule(other)  # its holds elsewhere shrink at the next write
                in_flight = other.in_flight_without(store._ending)
                expires_at = other.expires_at(now, spare=False, leaving=store._ending)
                for key in shared:
                    record = changed.get(key, current[key])
                    changed[key] = budget.put_hold(record, other.hold_id, in_flight, expires_at, other.model)
    return changed
