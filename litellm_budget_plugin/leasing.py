"""Leases' arithmetic (see :mod:`.stores._leases`), as pure functions taking ``now``.

A lease is a process's hold for one kind of call (a user, the subjects it names, its model):
the same amount, under one id, in each record such a call is held in (the user's, the user's
team, the call's team and tags that have a record). It covers the calls it admitted and not yet
ended, and spare from which the process admits the next ones without a write. Spare must fit
every window of each of those records that counts the call's model, and is never held past
the moment the first of them resets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .budget import LEASE_SHARED_SPARE_SHARE, LEASE_SPARE_CALLS, LEASE_SPARE_SHARE, UserRecord, current_window
from .reservations import admits, hold_amount, limits, refusal, reserved
from .subjects import GLOBAL, charged_subjects, kind_of
from .windows import applies_to, window_end


def lease_keys(user: str, record: UserRecord, subjects: Sequence[str]) -> tuple[str, ...] | None:
    """The budgets a call of ``user`` naming ``subjects`` is held and charged against, the user
    first; None if no lease may admit it (the global budget keeps LiteLLM's soft rule)."""
    keys = charged_subjects(user, record, subjects)
    return None if GLOBAL in keys else keys


def rolled(
    user_record: UserRecord, records: Mapping[str, UserRecord], keys: Sequence[str], now: float
) -> dict[str, UserRecord]:
    """The records a lease for ``keys`` holds in, each in its current window: the user's
    (``user_record``, under ``keys[0]``), then those of the other keys that have one."""
    found = {keys[0]: current_window(user_record, now)}
    for key in keys[1:]:
        record = records.get(key)
        if record is not None:
            found[key] = current_window(record, now)
    return found


def lease_hold(
    records: Mapping[str, UserRecord],
    hold_id: str,
    in_flight: float,
    amount: float,
    spare: bool,
    now: float,
    at_least: float | None = None,
    model: str | None = None,
) -> tuple[float, float]:
    """What a lease (``hold_id``) must hold in each of ``records`` (see :func:`rolled`) to admit
    one more call of ``amount`` in strict mode, and what that call holds (less than ``amount``
    only with ``at_least``, see :func:`.reservations.hold_amount`); or raise the refusal of the
    first window it does not fit.

    The hold covers the calls in flight and the new one; with ``spare``, also about
    :data:`LEASE_SPARE_CALLS` more like it, never more than half of what others leave of the
    user's budget nor :data:`LEASE_SHARED_SPARE_SHARE` of a shared one's, and never less than
    one call (a spare that small would sit unused while it refuses others).
    """
    call = amount
    free: list[tuple[float, float]] = []  # what each window leaves for the lease, and its share of it
    for n, (key, record) in enumerate(records.items()):
        # a user's own budget lends half; a team's or tag's, shared, 1/32 (also when it keeps the
        # lease of calls without a user)
        share = LEASE_SPARE_SHARE if n == 0 and kind_of(key) == "user" else LEASE_SHARED_SPARE_SHARE
        for limit, spend, window in limits(record, model):
            held = reserved(record, now, hold_id, None if window is None else window.get("model")) + in_flight
            fits = hold_amount(spend, held, amount, limit, "strict", at_least)
            if fits is None:
                raise refusal(key, spend, limit, amount, held, window)
            call = min(call, fits)
            if limit is not None:
                free.append((limit - spend - held, share))
    needed = in_flight + call
    if not spare or call < amount:
        return needed, call
    extra = min([LEASE_SPARE_CALLS * amount, *(share * max(0.0, left - call) for left, share in free)])
    return needed + (extra if extra >= amount else 0.0), call


def spare_fits(
    records: Mapping[str, UserRecord], hold_id: str, in_flight: float, spare: float, now: float, model: str | None
) -> bool:
    """Whether a lease's spare still fits each of ``records`` (a budget may have been lowered,
    a window added, since it was taken)."""
    for record in records.values():
        for limit, spend, window in limits(record, model):
            held = reserved(record, now, hold_id, None if window is None else window.get("model"))
            if not admits(spend, held, in_flight + spare, limit, "strict"):
                return False
    return True


def lease_until(records: Mapping[str, UserRecord], model: str | None) -> float:
    """When the first window of ``records`` that counts ``model`` resets (inf: none ever does):
    a lease holds spare no longer, so that none spans a reset."""
    ends = []
    for record in records.values():
        ends.append(window_end(record["last_updated_at"], record.get("duration"), record.get("timezone")))
        for window in record.get("windows", ()):
            if applies_to(window, model):
                ends.append(window_end(window["start"], window.get("duration"), window.get("timezone")))
    return min((end for end in ends if end is not None), default=math.inf)
