"""FileStore.admit: a call admitted from a lease without a write when it can, else in one write.

A call of a user with no other budget named (no ``subjects``), whose record is
:func:`~litellm_budget_plugin.reservations.leasable` (one window, no team), is admitted from
this process's lease for the user (see :class:`._leases._Lease`): from its spare without a
write, or by regrowing it under the lock. Any other call is reserved in every budget that
applies to it in one write (``reservations.reserve_all``), as :meth:`RecordStore.reserve` does.

A record given a team or windows stops being leased: the spare is given up at the next write
that sees the change (this process's own writes at once, another process's within the
flusher's delay, at most about a second, while this process keeps admitting calls). Calls
admitted from the spare meanwhile were held in the user's budget only; they are charged to
the team as every call of the user is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .. import budget, reservations
from ..budget import UserRecord
from ._leases import LEASE_HOT_SECONDS, _Lease
from .base import NewBudget, _or_default, check_subjects

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
    :data:`LEASE_HOT_SECONDS` (and the budget allows). Near the end of a budget this admits
    exactly what ``reserve`` would, as far as this process goes; another process's unused
    spare can refuse a call that would fit for up to ``LEASE_IDLE_SECONDS`` after that
    process stops calling (or its lease expires, if it was killed). A call is held less than
    ``amount`` only once the spare is given back and the budget has no more.
    """
    amount, ttl = budget.check_reservation(user, call_id, amount, ttl, "strict", at_least)
    if model is not None:
        budget.check_model_name(model)
    others = check_subjects(subjects)
    store._own_process()
    now = store.clock()
    if not others:
        with store._deferred_lock:
            lease = store._leases.get(user)
            if lease is not None and call_id not in store._leased and lease.take(call_id, amount, now + ttl):
                store._leased[call_id] = user
                store._schedule(user)  # the hold must last as long as this call
                return amount
    reserve = store._reserve_change(user, call_id, amount, ttl, "strict", default, at_least, model, others)

    def change(records: Mapping[str, UserRecord]) -> tuple[dict[str, UserRecord], tuple[_Grant | None, float]]:
        current = _or_default(user, records.get(user), default, now)
        with store._deferred_lock:
            if store._end_leased_call(call_id):  # admitted again under the same id
                store._schedule()
        if others or not reservations.leasable(current):
            changed, (_, held) = reserve(records)
            return changed, (None, held)
        updated, grant = _regrow(store, user, current, amount, ttl, now, at_least)
        return {user: updated}, (grant, grant[3])

    def install(result: tuple[_Grant | None, float]) -> None:
        grant = result[0]
        if grant is None:
            return
        lease, spare, expires_at, held = grant
        with store._deferred_lock:
            lease.written_until = expires_at
            lease.add(call_id, held, now + ttl)
            lease.spare = 0.0 if store._giving_back else spare  # closing or exiting meanwhile
            store._leased[call_id] = user
            if spare:
                store._schedule(user)  # looked at again, to give the spare back once idle

    return store._update_many(change, install)[1]


def _regrow(
    store: FileStore,
    user: str,
    current: UserRecord,
    amount: float,
    ttl: float,
    now: float,
    at_least: float | None,
) -> tuple[UserRecord, _Grant]:
    """The user's record with its lease hold regrown for one more call, and what to install once written."""
    with store._deferred_lock:
        lease = store._leases.get(user) or store._leases.setdefault(user, _Lease(ttl))
        hot = not store._giving_back and time.monotonic() - lease.last_used < LEASE_HOT_SECONDS
        store._expire(lease, now)
        if lease.spare:  # given up first: the file must never hold less than promised here
            lease.spare = 0.0
            store._schedule(user)  # and written, if this call is refused
        in_flight = lease.in_flight_without(store._ending)  # those charged in this write leave it
    target, held = reservations.lease_hold(current, user, lease.hold_id, in_flight, amount, hot, now, at_least)
    lease.ttl = ttl
    expires_at = max(now + ttl, lease.expires_at(now, spare=hot, leaving=store._ending))
    grant = (lease, max(0.0, target - in_flight - held), expires_at, held)
    return budget.set_hold(current, lease.hold_id, target, expires_at, now), grant
