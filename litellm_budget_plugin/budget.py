"""Budget arithmetic: records, windows, charges and holds, as pure functions (admission is in
:mod:`.reservations`).

Every function takes the time ``now`` as an argument and returns a new record instead of
changing the one it was given, so a store can apply one under its lock, persist the result,
and throw it away if persisting fails. Nothing here does I/O; every store shares this module.

A record keeps LiteLLM's ``user_cost.json`` shape (``total_budget``, ``current_cost``,
``model_cost``, ``duration`` in days, ``created_at``, ``last_updated_at``) and adds two
fields of its own: ``reservations`` (calls in flight) and ``applied`` (call ids already
charged, so a repeated charge is not applied twice).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast

from .errors import ConfigurationError

SECONDS_PER_DAY = 86_400.0
# LiteLLM's own day counts for its named durations (litellm.constants).
NAMED_DURATIONS_DAYS: dict[str, float] = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}
_UNIT_DAYS = {
    "s": 1 / SECONDS_PER_DAY,
    "m": 1 / 1440,
    "h": 1 / 24,
    "d": 1.0,
    "w": 7.0,
    "mo": 30.0,
    "y": 365.0,
}
_DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mo|s|m|h|d|w|y)\s*$")

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

# The fields of a record an app may set one by one (through BudgetManager.user_dict);
# None for total_budget means no limit, for duration a budget that never resets.
SETTABLE_FIELDS = ("total_budget", "current_cost", "model_cost", "duration", "created_at", "last_updated_at")

Mode = Literal["strict", "soft"]
MODES: tuple[Mode, ...] = ("strict", "soft")


class Reservation(TypedDict):
    amount: float
    expires_at: float


class UserRecord(TypedDict):
    total_budget: float | None
    current_cost: float
    model_cost: dict[str, float]
    created_at: float
    last_updated_at: float
    duration: NotRequired[float]
    reservations: NotRequired[dict[str, Reservation]]
    applied: NotRequired[dict[str, float]]


# --- validation -------------------------------------------------------------------------


def check_user(user: object) -> str:
    """Return ``user`` if it is a usable user id, else raise naming the problem."""
    if not isinstance(user, str):
        raise ConfigurationError(f"user id must be a string, got {type(user).__name__}")
    if not user.strip():
        raise ConfigurationError("user id must not be empty")
    return user


def check_call_id(call_id: object) -> str:
    if not isinstance(call_id, str) or not call_id:
        raise ConfigurationError(f"call id must be a non-empty string, got {call_id!r}")
    return call_id


def check_amount(name: str, value: object) -> float:
    """A money amount: a finite, non-negative number (never NaN, never infinite).

    An int stays an int, as LiteLLM's own class keeps it: ``10`` is written as ``10``.
    """
    if type(value) is float and 0.0 <= value < math.inf:  # the usual case, checked on every call
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {type(value).__name__}")
    try:
        amount = float(value)
    except OverflowError:  # an int beyond any double
        raise ConfigurationError(f"{name} is out of range, got an integer of {int(value).bit_length()} bits") from None
    if math.isnan(amount) or math.isinf(amount):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    if amount < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value!r}")
    return int(value) if isinstance(value, int) else amount


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


def check_ttl(ttl: object) -> float:
    """A hold's lifetime: a money-like amount that is also longer than zero."""
    seconds = check_amount("reservation ttl", ttl)
    if seconds == 0:
        raise ConfigurationError("reservation ttl must be longer than zero")
    return seconds


def parse_duration(duration: object) -> float | None:
    """Days in a budget window: LiteLLM's names, a number of days, or "1h", "30d", "1mo"."""
    if duration is None:
        return None
    if isinstance(duration, str):
        if duration in NAMED_DURATIONS_DAYS:
            return NAMED_DURATIONS_DAYS[duration]
        match = _DURATION_PATTERN.match(duration)
        if match is None:
            raise ConfigurationError(
                f"unknown duration {duration!r}: use daily, weekly, monthly, yearly, "
                'or a number with a unit such as "30s", "15m", "1h", "30d", "2w", "1mo", "1y"'
            )
        days = float(match.group(1)) * _UNIT_DAYS[match.group(2)]
    else:
        days = check_amount("duration", duration)
    if days <= 0:
        raise ConfigurationError(f"duration must be longer than zero, got {duration!r}")
    return days


def check_record(user: str, raw: object) -> UserRecord:
    """Validate one record read from a store, filling LiteLLM's optional fields.

    A file written by LiteLLM's BudgetManager may lack ``current_cost``, ``model_cost``
    and the time fields; extra fields are kept as they are.
    """
    where = f"record of user {user!r}"
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where} must be an object, got {type(raw).__name__}")
    record = cast(dict[str, Any], dict(raw))
    budget = record.get("total_budget")
    record["total_budget"] = None if budget is None else check_amount(f"{where}: total_budget", budget)
    record["current_cost"] = check_amount(f"{where}: current_cost", record.get("current_cost", 0))
    model_cost = record.get("model_cost", {})
    if model_cost == 0:  # LiteLLM's get_model_cost default, sometimes written back
        model_cost = {}
    if not isinstance(model_cost, dict):
        raise ConfigurationError(f"{where}: model_cost must be an object")
    record["model_cost"] = {
        str(model): check_amount(f"{where}: model_cost[{model!r}]", cost) for model, cost in model_cost.items()
    }
    if "duration" in record and record["duration"] is not None:
        days = parse_duration(record["duration"])
        assert days is not None
        record["duration"] = days
    else:
        record.pop("duration", None)
    created = check_amount(f"{where}: created_at", record.get("created_at", 0.0))
    record["created_at"] = created
    record["last_updated_at"] = check_amount(f"{where}: last_updated_at", record.get("last_updated_at", created))
    reservations = record.get("reservations", {})
    if not isinstance(reservations, dict):
        raise ConfigurationError(f"{where}: reservations must be an object")
    checked: dict[str, Reservation] = {}
    for call_id, held in reservations.items():
        if not isinstance(held, dict):
            raise ConfigurationError(f"{where}: reservation {call_id!r} must be an object")
        checked[str(call_id)] = {
            "amount": check_amount(f"{where}: reservation amount", held.get("amount")),
            "expires_at": check_amount(f"{where}: reservation expires_at", held.get("expires_at")),
        }
    _set_or_drop(record, "reservations", checked)
    applied = record.get("applied", {})
    if not isinstance(applied, dict):
        raise ConfigurationError(f"{where}: applied must be an object")
    _set_or_drop(
        record,
        "applied",
        {str(k): check_amount(f"{where}: applied time", v) for k, v in applied.items()},
    )
    return cast(UserRecord, record)


# --- reading records --------------------------------------------------------------------


def window_seconds(record: UserRecord) -> float | None:
    days = record.get("duration")
    return None if days is None else days * SECONDS_PER_DAY


def next_reset(record: UserRecord, now: float) -> float | None:
    """When the current window ends, or None for a budget that never resets."""
    period = window_seconds(record)
    if period is None:
        return None
    return current_window(record, now)["last_updated_at"] + period


def litellm_view(record: UserRecord) -> dict[str, Any]:
    """The record as LiteLLM's BudgetManager shows it, without this package's fields."""
    view = {k: v for k, v in record.items() if k not in ("reservations", "applied")}
    view["model_cost"] = dict(record["model_cost"])
    return view


# --- changing records -------------------------------------------------------------------


def new_record(total_budget: float | None, duration: object, now: float, created_at: float | None = None) -> UserRecord:
    budget = None if total_budget is None else check_amount("total_budget", total_budget)
    days = parse_duration(duration)
    start = now if created_at is None else check_amount("created_at", created_at)
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

    Windows are LiteLLM's rolling ones: a window starts at ``last_updated_at`` and lasts
    ``duration`` days. It rolls at start + k x duration, whenever it is next looked at, so
    the reset time does not depend on who looks first, and concurrent resets agree.
    """
    updated = _copy(record)
    period = window_seconds(record)
    start = record["last_updated_at"]
    if period is not None and now - start >= period:
        updated["last_updated_at"] = start + math.floor((now - start) / period) * period
        updated["current_cost"] = 0
        updated["model_cost"] = {}
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


def charge(record: UserRecord, cost: float, model: str, call_id: str | None, now: float) -> tuple[UserRecord, bool]:
    """Add ``cost`` to the spend; settles the call's reservation. False if already applied."""
    cost = check_amount("cost", cost)
    if call_id is not None and call_id in record.get("applied", {}):
        return record, False
    updated = current_window(record, now)
    total = updated["current_cost"] + cost
    if math.isinf(total):
        raise ConfigurationError(f"cost {cost!r} would make the spend infinite")
    updated["current_cost"] = total
    updated["model_cost"][model] = updated["model_cost"].get(model, 0.0) + cost
    if call_id is not None:
        held = dict(updated.get("reservations", {}))
        held.pop(call_id, None)
        _set_or_drop(updated, "reservations", held)
        updated["applied"] = {**updated.get("applied", {}), call_id: now}
    return updated, True


def set_hold(record: UserRecord, hold_id: str, amount: float, expires_at: float, now: float) -> UserRecord:
    """Hold exactly ``amount`` under ``hold_id`` (none if zero), without an admission check."""
    updated = current_window(record, now)
    held = dict(updated.get("reservations", {}))
    if amount > 0:
        held[hold_id] = {"amount": check_amount("hold", amount), "expires_at": expires_at}
    else:
        held.pop(hold_id, None)
    _set_or_drop(updated, "reservations", held)
    return updated


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
    """Spend back to zero; holds of calls in flight stay."""
    updated = current_window(record, now)
    updated["current_cost"] = 0
    updated["model_cost"] = {}
    return updated


def check_fields(user: str, fields: Mapping[str, object]) -> dict[str, Any]:
    """Checked values for some of ``user``'s ``SETTABLE_FIELDS``, or raise naming the user,
    the field and the problem; duration becomes days."""
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        where = f"field {name!r} of user {user!r}"
        if name == "model_cost":
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{where} must be a dict of model -> cost, got {type(value).__name__}")
            checked[name] = {
                _check_model_name(where, model): check_amount(f"{where}[{model!r}]", cost)
                for model, cost in value.items()
            }
        elif name == "duration":
            try:
                checked[name] = parse_duration(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
        elif name == "total_budget" and value is None:
            checked[name] = None
        elif name in SETTABLE_FIELDS:
            checked[name] = check_amount(where, value)
        else:
            raise ConfigurationError(
                f"cannot set {where}: not a field of a budget; the fields are {', '.join(SETTABLE_FIELDS)}"
            )
    return checked


def _check_model_name(where: str, model: object) -> str:
    if not isinstance(model, str):
        raise ConfigurationError(f"{where}: model names must be strings, got {model!r}")
    return model


def with_fields(record: UserRecord, fields: Mapping[str, Any], now: float) -> UserRecord:
    """The record in its current window with ``fields`` (from :func:`check_fields`) set;
    the fields not given keep the values they have, charges made meanwhile included."""
    updated = current_window(record, now)
    for name, value in fields.items():
        if name == "model_cost":
            updated["model_cost"] = dict(value)
        elif value is None and name == "duration":
            updated.pop("duration", None)
        else:
            updated[name] = value  # type: ignore[literal-required]
    return updated


def _copy(record: UserRecord) -> UserRecord:
    updated = cast(UserRecord, dict(record))
    updated["model_cost"] = dict(record["model_cost"])
    return updated


def _set_or_drop(record: Any, key: str, value: dict[str, Any]) -> None:
    """Keep the file readable: optional maps are written only when they hold something."""
    if value:
        record[key] = value
    else:
        record.pop(key, None)
