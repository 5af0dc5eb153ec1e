"""Admission: whether a call may hold budget, and how much, as pure functions taking ``now``.

Each store applies these under its own lock (stores/redis_budget.lua mirrors them), so the
amount a call holds is decided in one atomic step, never by a read followed by a write.

A call is held against every budget that applies to it (:func:`reserve_all`): its user's
record, with each of that record's windows that counts the call's model, the user's team, the
call's own team and tags, the global budget. It holds one amount in each, or none anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .budget import (
    Charge,
    Mode,
    UserRecord,
    charge_many,
    check_amount,
    check_ttl,
    current_window,
    hold_entry,
    new_record,
    release,
)
from .errors import BudgetRefusal, over_budget
from .subjects import GLOBAL, charged_subjects, kind_of
from .windows import Window, applies_to, describe, same_model


def reserved(record: UserRecord, now: float, exclude: str | None = None, model: str | None = None) -> float:
    """Sum held by unexpired reservations of other calls (with ``model``: those a window of
    that model counts, which are its calls and those whose model was not kept)."""
    return sum(
        held["amount"]
        for call_id, held in record.get("reservations", {}).items()
        if held["expires_at"] > now
        and call_id != exclude
        and (model is None or "model" not in held or same_model(model, held["model"]))
    )


def mode_for(key: str, mode: Mode) -> Mode:
    """The admission rule of one budget: the call's, except litellm's global budget, which
    keeps LiteLLM's own (soft) rule."""
    return "soft" if key == GLOBAL else mode


def limits(record: UserRecord, model: str | None) -> list[tuple[float | None, float, Window | None]]:
    """The windows of ``record`` a call of ``model`` must fit, as (budget, spend, window): the
    main one (window None), then each of ``windows`` that counts the model."""
    found: list[tuple[float | None, float, Window | None]] = [(record["total_budget"], record["current_cost"], None)]
    for window in record.get("windows", ()):
        if applies_to(window, model):
            found.append((window["budget"], window["spend"], window))
    return found


def refusal(
    key: str, spend: float, limit: float | None, amount: float, held: float, window: Window | None
) -> BudgetRefusal:
    """The refusal of a call that does not fit ``window`` of ``key``'s record (None: the main one)."""
    assert limit is not None
    if window is None:
        return over_budget(key, spend, limit, amount, held)
    label = describe(limit, window.get("duration"), window.get("timezone"), window.get("model"))
    return over_budget(key, spend, limit, amount, held, window=label)


def record_hold(
    record: UserRecord,
    key: str,
    call_id: str,
    amount: float,
    mode: Mode,
    now: float,
    at_least: float | None = None,
    model: str | None = None,
) -> float:
    """What a call may hold in ``record`` (in its current window), fitting every window that
    counts ``model``; or raise the refusal of the first window it does not fit."""
    hold = amount
    for limit, spend, window in limits(record, model):
        held = reserved(record, now, exclude=call_id, model=None if window is None else window.get("model"))
        fits = hold_amount(spend, held, amount, limit, mode, at_least)
        if fits is None:
            raise refusal(key, spend, limit, amount, held, window)
        hold = min(hold, fits)
    return hold


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


def reserve_all(
    records: Mapping[str, UserRecord],
    user: str,
    user_record: UserRecord,
    call_id: str,
    amount: float,
    ttl: float,
    mode: Mode,
    now: float,
    at_least: float | None = None,
    model: str | None = None,
    subjects: Iterable[str] = (),
) -> tuple[dict[str, UserRecord], float]:
    """Hold a call of ``user`` in every budget that applies (:func:`.subjects.charged_subjects`),
    the same amount in each: ``amount``, or with ``at_least`` the least any of them has left
    (see :func:`hold_amount`). Returns the records changed and the amount held, or raises the
    refusal of the first budget it does not fit, changing nothing.

    ``records`` are the store's records by key; ``user_record`` the user's (a store makes an
    unknown user's from its default first). A team or tag without a record holds nothing: it
    has no limit, and is charged (a record made) when the call is. Reserving again with the
    same call id replaces its holds; a call already charged holds nothing. The user's hold
    lists the other budgets (``also``) so that the charge or release finds them all.
    """
    amount = check_amount("reservation amount", amount)
    ttl = check_ttl(ttl)
    if call_id in user_record.get("applied", {}):
        return {}, amount
    keys = charged_subjects(user, user_record, subjects)
    present = {
        key: current_window(user_record if key == user else records[key], now)
        for key in keys
        if key == user or key in records
    }
    earlier = user_record.get("reservations", {}).get(call_id)
    dropped = {
        key: released
        for key in (earlier.get("also", []) if earlier is not None else [])
        if key not in present and key in records
        for released, found in [release(records[key], call_id, now)]
        if found
    }  # the call reserved again for other budgets: the ones it leaves hold it no more
    hold = amount
    for key, record in present.items():
        hold = min(hold, record_hold(record, key, call_id, amount, mode_for(key, mode), now, at_least, model))
    others = list(keys[1:])
    for key, record in present.items():
        entry = hold_entry(record, hold, now + ttl, model)
        if key == user and others:
            entry["also"] = others
        record["reservations"] = {**record.get("reservations", {}), call_id: entry}
    return {**dropped, **present}, hold


def charge_all(
    records: Mapping[str, UserRecord],
    user: str,
    user_record: UserRecord,
    cost: float,
    model: str,
    call_id: str | None,
    now: float,
    held: float | None = None,
    subjects: Iterable[str] = (),
    held_by: tuple[str, ...] | None = None,
) -> dict[str, UserRecord]:
    """Charge a call of ``user`` to every budget that applies: those that held it (its hold in
    the user's record names them; ``held_by`` names them for a call held in a lease), else the
    user's team and ``subjects``; each settles its own hold (an overrun is counted against it,
    else against ``held``). A team without a record gets one without a limit (tracked); a tag
    without one is left out. Returns the records changed: none for a call id the user's record
    has charged already (it alone remembers call ids: a team's record sees too many calls to
    keep them long enough)."""
    if call_id is not None and call_id in user_record.get("applied", {}):
        return {}
    hold = user_record.get("reservations", {}).get(call_id) if call_id is not None else None
    if hold is not None:
        keys = (user, *hold.get("also", []))
    else:
        keys = held_by if held_by is not None else charged_subjects(user, user_record, subjects)
    return charge_each(records, {user: user_record}, [(keys, (cost, model, call_id, held))], now)


def charge_each(
    records: Mapping[str, UserRecord],
    users: Mapping[str, UserRecord],
    charges: Iterable[tuple[tuple[str, ...], Charge]],
    now: float,
) -> dict[str, UserRecord]:
    """Charge calls, in order, each to the budgets its keys name (its user first, whose record
    is in ``users``), one copy per record (:func:`.budget.charge_many`); a call id the user's
    record has charged already, or charged earlier in ``charges``, is skipped. The records changed."""
    batches: dict[str, list[Charge]] = {}
    untracked: set[str] = set()  # tags without a budget: apps tag calls for their logs too
    seen: set[tuple[str, str]] = set()
    for keys, one in charges:
        user, call_id = keys[0], one[2]
        if call_id is not None:
            if call_id in users[user].get("applied", {}) or (user, call_id) in seen:
                continue
            seen.add((user, call_id))
        for key in keys:
            batch = batches.get(key)
            if batch is None:
                if key in untracked:
                    continue
                if key != user and kind_of(key) == "tag" and key not in records:
                    untracked.add(key)
                    continue
                batch = batches[key] = []
            batch.append(one)
    return {
        key: charge_many(
            users[key] if key in users else records[key] if key in records else new_record(None, None, now),
            batch,
            now,
            remember=key in users,
        )
        for key, batch in batches.items()
    }


def release_all(records: Mapping[str, UserRecord], user: str, call_id: str, now: float) -> dict[str, UserRecord]:
    """Drop a call's holds in the user's record and every budget it names; the records changed."""
    hold = records[user].get("reservations", {}).get(call_id) if user in records else None
    if hold is None:
        return {}
    changed: dict[str, UserRecord] = {}
    for key in (user, *hold.get("also", [])):
        if key in records:
            updated, found = release(records[key], call_id, now)
            if found:
                changed[key] = updated
    return changed
