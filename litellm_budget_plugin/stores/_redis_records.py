"""Records as the Redis store keeps them (one hash each, see stores/redis.py), the script's
replies, and the calendar periods the script is given.

Numbers are written as text that reads back as the same double (Python's ``repr``, the
script's ``%.17g``), JSON included: the script's cjson would round JSON numbers to 14 digits.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from .. import budget, subjects, windows
from ..budget import UserRecord
from ..errors import BudgetRefusal, ConfigurationError, StoreCorruptError, StoreError, UnknownUserError, over_budget
from ..limits import OWN_FIELDS
from ..windows import Window
from .base import NewBudget

_WINDOW_NUMBERS = ("budget", "spend", "start", "duration")
_HOLD_MORE = ("model", "also")


def fields_of(user: str, record: UserRecord) -> list[str]:
    """A checked record as the hash fields the script reads (see the key layout)."""
    fields = [
        "current_cost",
        repr(record["current_cost"]),
        "created_at",
        repr(record["created_at"]),
        "last_updated_at",
        repr(record["last_updated_at"]),
    ]
    if record["total_budget"] is not None:
        fields += ["total_budget", repr(record["total_budget"])]
    for name in ("duration", "overruns", "overrun_cost"):
        if name in record:
            fields += [name, repr(record[name])]
    for name in ("team", "timezone"):
        if name in record:
            fields += [name, record[name]]  # type: ignore[literal-required]
    if "windows" in record:
        fields += ["windows", json.dumps([_window_text(window) for window in record["windows"]])]
    extra = {k: v for k, v in record.items() if k not in OWN_FIELDS}
    if extra:
        try:
            fields += ["extra", json.dumps(extra, allow_nan=False)]
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"record of user {user!r} has fields that are not JSON: {exc}") from exc
    for model, cost in record["model_cost"].items():
        fields += [f"m:{model}", repr(cost)]
    for call_id, held in record.get("reservations", {}).items():
        text = f"{held['amount']!r} {held['expires_at']!r}"
        more = {name: held[name] for name in _HOLD_MORE if name in held}  # type: ignore[literal-required]
        fields += [f"r:{call_id}", f"{text} {json.dumps(more)}" if more else text]
    applied = [[call_id, repr(at)] for call_id, at in record.get("applied", {}).items()]
    if applied:
        fields += ["applied", json.dumps(applied)]
    return fields


def _window_text(window: Window) -> dict[str, str]:
    return {name: repr(value) if name in _WINDOW_NUMBERS else value for name, value in window.items()}  # type: ignore[misc]


def _window(text: dict[str, str]) -> dict[str, Any]:
    return {name: float(value) if name in _WINDOW_NUMBERS else value for name, value in text.items()}


def record_of(user: str, fields: Sequence[str]) -> UserRecord | None:
    """A record from the hash fields the script sends back; None if there are none."""
    if not fields:  # cjson sends an empty list as {}
        return None
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    try:
        total = values.pop("total_budget", None)
        record: dict[str, Any] = {
            "total_budget": None if total is None else float(total),
            "current_cost": float(values.pop("current_cost")),
            "model_cost": {},
            "created_at": float(values.pop("created_at")),
            "last_updated_at": float(values.pop("last_updated_at")),
        }
        if "duration" in values:
            record["duration"] = float(values.pop("duration"))
        if "overruns" in values:
            record["overruns"] = int(values.pop("overruns"))
        if "overrun_cost" in values:
            record["overrun_cost"] = float(values.pop("overrun_cost"))
        for name in ("team", "timezone"):
            if name in values:
                record[name] = values.pop(name)
        if "windows" in values:
            record["windows"] = [_window(window) for window in json.loads(values.pop("windows"))]
        extra = json.loads(values.pop("extra", "{}"))
        applied = json.loads(values.pop("applied", "[]"))
        reservations = {}
        for field, value in values.items():
            kind, _, name = field.partition(":")
            if kind == "m":
                record["model_cost"][name] = float(value)
            elif kind == "r":
                amount, expires_at, *more = value.split(" ", 2)
                reservations[name] = {"amount": float(amount), "expires_at": float(expires_at)}
                if more:
                    reservations[name].update(json.loads(more[0]))
        for key, value in extra.items():
            record.setdefault(key, value)
        if reservations:
            record["reservations"] = reservations
        if applied:
            record["applied"] = {call_id: float(at) for call_id, at in applied}
        return budget.check_record(budget.check_user(user), record)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:  # ConfigurationError too
        raise StoreCorruptError(f"the Redis record of user {user!r} is not what this store writes: {exc}") from exc


def written(user: str, reply: list[Any], cost: float | None = None) -> UserRecord:
    """The record a write sent back, or the error it reported."""
    status = reply[0]
    if status == "unknown":
        raise UnknownUserError(user)
    if status == "too_large" and cost is not None:
        raise budget.too_large(cost)
    record = record_of(user, reply[1]) if status == "ok" and len(reply) > 1 else None
    if record is None:
        raise StoreError(f"the record of user {user!r} vanished while it was written")
    return record


def refusal(reply: list[Any], amount: float) -> BudgetRefusal:
    """The refusal of a reservation: the budget that refused, and which of its windows."""
    key, spend, limit, held, window = reply[1:6]
    label = ""
    if window:
        days, zone, model = window[1] or None, window[2] or None, window[3] or None
        label = windows.describe(float(window[0]), None if days is None else float(days), zone, model)
    return over_budget(key, float(spend), float(limit), amount, float(held), window=label)


class CalendarPeriods:
    """The calendar periods (days, timezone) this client has met, each with the period that
    holds the time of its latest operation: the script has no timezone database, so every
    operation is given the start of the current period of each (see redis_records.lua)."""

    LIMIT = 256  # periods kept (a few in practice); one forgotten is asked for again

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[float, str], tuple[float, float]] = {}

    def args(self, now: float) -> list[str | float]:
        """The script's arguments: their count, then each period's days, timezone and start."""
        with self._lock:
            known = list(self._known.items())
        out: list[str | float] = [len(known)]
        for (days, zone), (start, end) in known:
            if not start <= now < end:
                start = windows.period_start(now, days, zone)
                end = windows.period_end(start, days, zone)
                with self._lock:
                    self._known[days, zone] = (start, end)
            out += [days, zone, start]
        return out

    def learn(self, needed: list[list[str]]) -> bool:
        """Keep the periods a script asked for; False if it knew them all already (it was given
        them: a fault, not a retry)."""
        new = False
        for days_text, zone in needed:
            try:
                days = float(days_text)
                windows.calendar_period(days)
                windows.check_timezone(zone)
            except (TypeError, ValueError) as exc:  # ConfigurationError too
                raise StoreCorruptError(f"a Redis record has a calendar window it cannot have: {exc}") from exc
            with self._lock:
                if (days, zone) not in self._known:
                    new = True
                    self._known[days, zone] = (0.0, 0.0)  # bounds found at the next call
                    while len(self._known) > self.LIMIT:
                        del self._known[next(iter(self._known))]
        return new


# --- arguments of the script -----------------------------------------------------------


def opt(value: str | float | None) -> str | float:
    """None travels as '' (no number, call id or model is empty)."""
    return "" if value is None else value


def listed(keys: Sequence[str]) -> list[str | int]:
    """A list as script arguments: its length, then its items."""
    return [len(keys), *keys]


def default_args(user: str, default: NewBudget | None, now: float) -> tuple[str | float, str | float, str]:
    """A new user's budget as script arguments, validated now so bad input never reaches Redis."""
    if default is None:
        return "", "", "0"
    subjects.check_subject(user)  # a record may be made under this key
    checked = budget.check_default(default)
    fresh = budget.new_record(checked["total_budget"], checked["duration"], now)
    return opt(fresh["total_budget"]), opt(fresh.get("duration")), "1"
