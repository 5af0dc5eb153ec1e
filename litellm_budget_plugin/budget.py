"""Budget arithmetic: records, windows, charges and holds, as pure functions (admission is in
:mod:`.reservations`).

Every function takes the time ``now`` as an argument and returns a new record instead of
changing the one it was given, so a store can apply one under its lock, persist the result,
and throw it away if persisting fails. Nothing here does I/O; every store shares this module.

A record keeps LiteLLM's ``user_cost.json`` shape (``total_budget``, ``current_cost``,
``model_cost``, ``duration`` in days, ``created_at``, ``last_updated_at``) and adds fields of
its own: ``reservations`` (calls in flight), ``applied`` (call ids already charged, so a
repeated charge is not applied twice), and, once a call cost more than was held for it,
``overruns`` and ``overrun_cost`` (how many such calls, and by how much in all). Budgets
beyond LiteLLM's add ``team`` (a user's), ``timezone`` (a calendar main window) and
``windows`` (more windows, per-model caps): see :mod:`.windows` and :mod:`.subjects`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

from .errors import ConfigurationError

# The shape and range of every value are checked in limits.py, re-exported here.
from .limits import MAX_AMOUNT as MAX_AMOUNT
from .limits import NAMED_DURATIONS_DAYS as NAMED_DURATIONS_DAYS
from .limits import SECONDS_PER_DAY as SECONDS_PER_DAY
from .limits import SETTABLE_FIELDS as SETTABLE_FIELDS
from .limits import Reservation as Reservation
from .limits import UserRecord as UserRecord
from .limits import _set_or_drop as _set_or_drop
from .limits import check_amount as check_amount
from .limits import check_calendar as check_calendar
from .limits import check_call_id as check_call_id
from .limits import check_default as check_default
from .limits import check_fields as check_fields
from .limits import check_lease_seconds as check_lease_seconds
from .limits import check_model_name as check_model_name
from .limits import check_record as check_record
from .limits import check_text as check_text
from .limits import check_timestamp as check_timestamp
from .limits import check_tokens as check_tokens
from .limits import check_ttl as check_ttl
from .limits import check_user as check_user
from .limits import parse_duration as parse_duration
from .overruns import overrun
from .windows import Window, applies_to, first_start, overlap_key, roll, rolled_start, window_end

# A repeated charge for a call id is recognised for at least this long, among at least this
# many of the user's latest calls: duplicates come from retried requests and repeated
# callbacks, seconds apart. The list is pruned back to these bounds only once it holds twice
# as many ids or ids twice as old, so that most changes copy it instead of rebuilding it.
APPLIED_ID_TTL_SECONDS = 3_600.0
APPLIED_ID_LIMIT = 128
APPLIED_ID_SLACK = 2

# A lease's spare: enough for this many more calls like the one that took it, and never more
# than this share of what is left of the budget.
LEASE_SPARE_CALLS = 32
LEASE_SPARE_SHARE = 0.5
# In a budget several users share (a team, a tag), whose calls other processes admit too, a
# lease takes at most this share of what is left, and no spare smaller than one call: spare
# other processes hold would refuse calls there long before the budget is spent, so near its
# end each call is held on its own.
LEASE_SHARED_SPARE_SHARE = 1 / 32

Mode = Literal["strict", "soft"]
MODES: tuple[Mode, ...] = ("strict", "soft")


# --- validation -------------------------------------------------------------------------


def check_mode(mode: object) -> Mode:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_reservation(
    user: object, call_id: object, amount: object, ttl: object, mode: object, at_least: object = None
) -> tuple[float, float]:
    """Every store's argument checks for ``reserve``: returns (amount, ttl) as floats."""
    check_user(user)
    check_call_id(call_id)
    check_mode(mode)
    if at_least is not None:
        check_amount("reservation at_least", at_least)
    return check_amount("reservation amount", amount), check_ttl(ttl)


# --- reading records --------------------------------------------------------------------


def window_seconds(record: UserRecord) -> float | None:
    days = record.get("duration")
    return None if days is None else days * SECONDS_PER_DAY


def next_reset(record: UserRecord, now: float) -> float | None:
    """When the current main window ends, or None for a budget that never resets."""
    return window_end(current_window(record, now)["last_updated_at"], record.get("duration"), record.get("timezone"))


def litellm_view(record: UserRecord) -> dict[str, Any]:
    """The record as LiteLLM's BudgetManager shows it, without this package's fields."""
    view = {k: v for k, v in record.items() if k not in ("reservations", "applied")}
    view["model_cost"] = dict(record["model_cost"])
    return view


# --- changing records -------------------------------------------------------------------


def new_record(total_budget: float | None, duration: object, now: float, created_at: float | None = None) -> UserRecord:
    budget = None if total_budget is None else check_amount("total_budget", total_budget)
    days = parse_duration(duration)
    start = now if created_at is None else check_timestamp("created_at", created_at)
    record: UserRecord = {
        "total_budget": budget,
        "current_cost": 0,
        "model_cost": {},
        "created_at": start,
        "last_updated_at": start,
    }
    if days is not None:
        record["duration"] = days
    return record


def with_budget(
    record: UserRecord | None,
    total_budget: float | None,
    duration: object,
    now: float,
    created_at: float | None = None,
) -> UserRecord:
    """Create a record, or change an existing one's budget and window keeping its spend."""
    fresh = new_record(total_budget, duration, now, created_at)
    if record is None:
        return fresh
    updated = current_window(record, now)
    updated["total_budget"] = fresh["total_budget"]
    updated.pop("duration", None)
    if "duration" in fresh:
        updated["duration"] = fresh["duration"]
    if created_at is not None:
        updated["created_at"] = updated["last_updated_at"] = fresh["created_at"]
    return updated


def current_window(record: UserRecord, now: float) -> UserRecord:
    """A copy of ``record`` with its window rolled forward and stale entries dropped.

    The main window is LiteLLM's rolling one: it starts at ``last_updated_at`` and lasts
    ``duration`` days. It rolls at start + k x duration, whenever it is next looked at, so
    the reset time does not depend on who looks first, and concurrent resets agree. With a
    ``timezone`` it is a calendar window; ``windows`` roll each on its own (see :mod:`.windows`).
    """
    updated = _copy(record)
    start = record["last_updated_at"]
    rolled = rolled_start(start, record.get("duration"), record.get("timezone"), now)
    if rolled != start:
        updated["last_updated_at"] = rolled
        updated["current_cost"] = 0
        updated["model_cost"] = {}
    if "windows" in record:
        updated["windows"] = [roll(window, now) for window in record["windows"]]
    _set_or_drop(
        updated,
        "reservations",
        {k: v for k, v in record.get("reservations", {}).items() if v["expires_at"] > now},
    )
    applied = record.get("applied", {})
    recent = recent_applied(applied, now)
    if recent is not applied:
        _set_or_drop(updated, "applied", recent)
    return updated


def recent_applied(applied: dict[str, float], now: float) -> dict[str, float]:
    """The call ids still remembered at ``now``: ``applied`` itself unless it is due a prune."""
    if not applied or (
        len(applied) <= APPLIED_ID_SLACK * APPLIED_ID_LIMIT
        # ids are kept in the order they were applied: only the oldest can be stale
        and now - next(iter(applied.values())) < APPLIED_ID_SLACK * APPLIED_ID_TTL_SECONDS
    ):
        return applied
    recent = [(k, t) for k, t in applied.items() if now - t < APPLIED_ID_TTL_SECONDS]
    return dict(recent[-APPLIED_ID_LIMIT:])


def too_large(cost: float) -> ConfigurationError:
    """A charge refused because a sum would pass the most a record holds (a record read back
    with it would be refused: the user's budget would be lost until someone fixed it)."""
    return ConfigurationError(f"cost {cost!r} would take the spend past {MAX_AMOUNT:.0e}, the most a record holds")


# One charge of a batch (charge_many): its cost, model, call id and what was held for it.
Charge = tuple[float, str, str | None, float | None]


def charge_many(record: UserRecord, charges: Iterable[Charge], now: float, remember: bool = True) -> UserRecord:
    """Apply checked charges in order, in one copy of the record (a file store writes a batch
    of calls admitted from its leases so): each adds its cost to the spend, its model's and
    the windows counting it. A call's own hold in the record settles it and is what its
    overrun is counted against (else ``held``; see :mod:`.overruns`: counted for the record's
    lifetime, which windows and resets leave alone); with ``remember``, a call id applied
    already is skipped. Raises when a sum would pass MAX_AMOUNT, changing nothing."""
    updated = current_window(record, now)
    total, model_cost = updated["current_cost"], updated["model_cost"]
    windows = updated.get("windows", ())
    spends = [window["spend"] for window in windows]
    overruns, overrun_total = updated.get("overruns", 0), updated.get("overrun_cost", 0.0)
    applied = updated.get("applied", {})
    holds = updated.get("reservations", {})
    # A call's own hold, even expired: what it was held for is what its overrun counts against.
    own_holds = record.get("reservations", {})
    added: dict[str, float] = {}
    ended: list[str] = []
    cost = 0.0
    for cost, model, call_id, held in charges:
        if call_id is not None:
            if remember:
                if call_id in applied or call_id in added:
                    continue
                added[call_id] = now
            own = own_holds.get(call_id) if own_holds else None
            if own is not None:
                held = own["amount"]
                ended.append(call_id)
        total += cost
        model_cost[model] = model_cost.get(model, 0.0) + cost
        if windows:
            for n, window in enumerate(windows):
                if applies_to(window, model):
                    spends[n] += cost
        excess = overrun(cost, held)
        if excess:
            overruns += 1
            overrun_total += excess
    if max(total, overrun_total, *model_cost.values(), *spends) > MAX_AMOUNT:
        raise too_large(cost)
    updated["current_cost"] = total
    if windows:
        updated["windows"] = [
            window if window["spend"] == spend else {**window, "spend": spend}
            for window, spend in zip(windows, spends, strict=True)
        ]
    if overruns != updated.get("overruns", 0):
        updated["overruns"] = overruns
        updated["overrun_cost"] = overrun_total
    if ended:
        _set_or_drop(updated, "reservations", {k: v for k, v in holds.items() if k not in ended})
    if added:
        updated["applied"] = {**applied, **added}
    return updated


def set_hold(
    record: UserRecord, hold_id: str, amount: float, expires_at: float, now: float, model: str | None = None
) -> UserRecord:
    """Hold exactly ``amount`` under ``hold_id`` (none if zero), without an admission check;
    a hold for calls of ``model`` counts only in that model's caps (see :func:`hold_entry`)."""
    return put_hold(current_window(record, now), hold_id, amount, expires_at, model)


def put_hold(record: UserRecord, hold_id: str, amount: float, expires_at: float, model: str | None) -> UserRecord:
    """:func:`set_hold` for a record already in its current window (a shallow copy of it)."""
    updated = cast(UserRecord, dict(record))
    held = dict(record.get("reservations", {}))
    if amount > 0:
        held[hold_id] = hold_entry(record, check_amount("hold", amount), expires_at, model)
    else:
        held.pop(hold_id, None)
    _set_or_drop(updated, "reservations", held)
    return updated


def hold_entry(record: UserRecord, amount: float, expires_at: float, model: str | None) -> Reservation:
    """A hold in ``record``, naming ``model`` when the record has a per-model cap (which then
    counts it only if it is its model; a hold without a model counts in every cap)."""
    entry: Reservation = {"amount": amount, "expires_at": expires_at}
    if model is not None and any("model" in window for window in record.get("windows", ())):
        entry["model"] = model
    return entry


def release(record: UserRecord, call_id: str, now: float) -> tuple[UserRecord, bool]:
    """Drop a call's hold without charging it. False if it held nothing."""
    if call_id not in record.get("reservations", {}):
        return record, False
    updated = current_window(record, now)
    held = dict(updated.get("reservations", {}))
    found = held.pop(call_id, None) is not None
    _set_or_drop(updated, "reservations", held)
    return updated, found


def reset_spend(record: UserRecord, now: float) -> UserRecord:
    """Spend back to zero, in every window; holds of calls in flight stay."""
    updated = current_window(record, now)
    updated["current_cost"] = 0
    updated["model_cost"] = {}
    if "windows" in updated:
        updated["windows"] = [{**window, "spend": 0.0} for window in updated["windows"]]
    return updated


def with_fields(record: UserRecord, fields: Mapping[str, Any], now: float, who: str = "") -> UserRecord:
    """The record in its current window with ``fields`` (from :func:`check_fields`) set;
    the fields not given keep the values they have, charges made meanwhile included.

    A window given without ``spend``/``start`` keeps those of the record's window of the same
    length and model (its budget changes, not what was spent), else starts now. Setting a
    ``timezone`` starts the main window at its calendar period's start. Overlapping windows
    raise ConfigurationError (see :func:`limits.check_calendar`), changing nothing.
    """
    updated = current_window(record, now)
    for name, value in fields.items():
        if name == "model_cost":
            updated["model_cost"] = dict(value)
        elif value is None and name in ("duration", "team", "timezone", "windows"):
            updated.pop(name, None)  # type: ignore[misc]
        elif name == "windows":
            updated["windows"] = _merged_windows(updated.get("windows", []), value, now)
        else:
            updated[name] = value  # type: ignore[literal-required]
    if "timezone" in updated and ("timezone" in fields or "duration" in fields):
        updated["last_updated_at"] = first_start(now, updated.get("duration"), updated["timezone"])
    check_calendar(f"record of {who[:80]!r}" if who else "record", updated)
    return updated


def _merged_windows(old: list[Window], new: list[Window], now: float) -> list[Window]:
    """``new`` windows, each keeping the spend and start of an ``old`` one it replaces."""
    kept = {overlap_key(window.get("duration"), window.get("model")): window for window in old}
    merged: list[Window] = []
    for window in new:
        days, zone = window.get("duration"), window.get("timezone")
        same = kept.get(overlap_key(days, window.get("model")))
        if same is not None and "start" not in window:
            start = same["start"] if same.get("timezone") == zone else first_start(now, days, zone)
            merged.append({**window, "spend": window.get("spend", same["spend"]), "start": start})
        else:
            merged.append({"spend": 0.0, "start": first_start(now, days, zone), **window})
    return merged


def _copy(record: UserRecord) -> UserRecord:
    updated = cast(UserRecord, dict(record))
    updated["model_cost"] = dict(record["model_cost"])
    return updated
