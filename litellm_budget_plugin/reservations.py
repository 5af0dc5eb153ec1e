"""Admission: whether a call may hold budget, and how much, as pure functions taking ``now``.

Each store applies these under its own lock (stores/redis_budget.lua mirrors them), so the
amount a call holds is decided in one atomic step, never by a read followed by a write.
"""

from __future__ import annotations

import math

from .budget import LEASE_SPARE_CALLS, LEASE_SPARE_SHARE, Mode, UserRecord, check_amount, check_ttl, current_window
from .errors import over_budget


def reserved(record: UserRecord, now: float, exclude: str | None = None) -> float:
    """Sum held by unexpired reservations of other calls."""
    return sum(
        held["amount"]
        for call_id, held in record.get("reservations", {}).items()
        if held["expires_at"] > now and call_id != exclude
    )


def admits(spend: float, held: float, estimate: float, budget: float | None, mode: Mode) -> bool:
    """Whether a call estimated at ``estimate`` may start.

    strict: it fits next to what is spent and held, so the budget is never exceeded while
    estimates are upper bounds. soft (LiteLLM's rule): spend and holds are still under budget.
    """
    if budget is None:
        return True
    if mode == "strict":
        # A relative tolerance so that a budget spent exactly to the cent still admits.
        return spend + held + estimate <= budget * (1 + 1e-12)
    return spend + held < budget


def hold_amount(
    spend: float, held: float, amount: float, budget: float | None, mode: Mode, at_least: float | None = None
) -> float | None:
    """What a call may hold next to ``spend`` and ``held``, or None: refused.

    Without ``at_least``, ``amount`` if :func:`admits` it. With it, a call whose ``amount`` does
    not fit holds what is left of the budget, if that is ``at_least`` or more (a guard then caps
    the call's output to what it holds). In soft mode, while spend and holds are under budget,
    a call holds what is left but never less than ``at_least``. Decided under the store's lock;
    stores/redis_budget.lua mirrors it.
    """
    if at_least is None or budget is None or (mode == "strict" and admits(spend, held, amount, budget, mode)):
        return amount if admits(spend, held, amount, budget, mode) else None
    if not admits(spend, held, at_least, budget, mode):
        return None
    return min(amount, max(at_least, budget - spend - held))


def held_for(record: UserRecord, call_id: str, amount: float) -> float:
    """What ``record`` holds for a call just reserved (``amount`` if charged already: nothing more to hold)."""
    hold = record.get("reservations", {}).get(call_id)
    return amount if hold is None else hold["amount"]


def reserve(
    record: UserRecord,
    user: str,
    call_id: str,
    amount: float,
    ttl: float,
    mode: Mode,
    now: float,
    at_least: float | None = None,
) -> UserRecord:
    """Hold ``amount`` for a call in flight (or less, see :func:`hold_amount`), or raise
    BudgetExceededError and change nothing.

    Reserving again with the same call id replaces its hold; a call already charged holds
    nothing.
    """
    amount = check_amount("reservation amount", amount)
    ttl = check_ttl(ttl)
    if call_id in record.get("applied", {}):
        return record
    updated = current_window(record, now)
    held = reserved(updated, now, exclude=call_id)
    budget = updated["total_budget"]
    hold = hold_amount(updated["current_cost"], held, amount, budget, mode, at_least)
    if hold is None:
        assert budget is not None
        raise over_budget(user, updated["current_cost"], budget, amount, held)
    updated["reservations"] = {
        **updated.get("reservations", {}),
        call_id: {"amount": hold, "expires_at": now + ttl},
    }
    return updated


def lease_hold(
    record: UserRecord,
    user: str,
    hold_id: str,
    in_flight: float,
    amount: float,
    spare: bool,
    now: float,
    at_least: float | None = None,
) -> tuple[float, float]:
    """What a process's lease (see :class:`~litellm_budget_plugin.stores.file.FileStore`) must
    hold to admit one more call of ``amount`` in strict mode, and what that call holds (less
    than ``amount`` only with ``at_least``, see :func:`hold_amount`), or raise BudgetExceededError.

    The hold covers the process's calls in flight and the new call; with ``spare`` it also
    covers its next few calls like this one, so that they are admitted without writing, but
    never more than half of what others leave of the budget.
    """
    updated = current_window(record, now)
    spend, limit = updated["current_cost"], updated["total_budget"]
    others = reserved(updated, now, exclude=hold_id)
    call = hold_amount(spend, others + in_flight, amount, limit, "strict", at_least)
    if call is None:
        assert limit is not None
        raise over_budget(user, spend, limit, amount, others + in_flight)
    needed = in_flight + call
    if not spare or call < amount:
        return needed, call
    room = math.inf if limit is None else max(0.0, limit - spend - others - needed)
    return needed + min(LEASE_SPARE_CALLS * amount, LEASE_SPARE_SHARE * room), call


def lease_spare_fits(record: UserRecord, hold_id: str, in_flight: float, spare: float, now: float) -> bool:
    """Whether a lease's spare still fits the budget (it may have been lowered since it was taken)."""
    updated = current_window(record, now)
    others = reserved(updated, now, exclude=hold_id)
    return admits(updated["current_cost"], others, in_flight + spare, updated["total_budget"], "strict")
