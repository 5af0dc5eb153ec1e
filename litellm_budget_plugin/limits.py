"""The shape of a budget record and the range of every value in it, checked in one place.

Every entry goes through these checks: the Python API (manager, guard, stores), the CLI, the
budget server, and every record read back from a file or from Redis. A value out of range is
refused with a :class:`ConfigurationError` naming it and the problem, before anything changes.

The ranges (see the README, "Limits"):

- durations: 1 second to 100 years (LiteLLM's names, numbers of days, or "30s" .. "100y");
- timestamps (``created_at``, ``last_updated_at``, a hold's ``expires_at``): 1970-01-01 to
  3000-01-01 UTC, so that a window (at most 100 years) still ends within what ``datetime`` shows;
- money: finite, not negative, at most :data:`MAX_AMOUNT` dollars;
- windows: at most :data:`MAX_WINDOWS` more per record, no two of the same length for the same
  model (see :mod:`.windows`); timezones that zoneinfo knows;
- user ids, team names, tags, call ids, model names: valid Unicode text (no lone surrogates, no NUL) of at most
  :data:`MAX_TEXT_BYTES` bytes in UTF-8;
- fields of a record other than its own (kept for LiteLLM's and people's use): JSON values
  (no NaN or infinity) of at most :data:`MAX_EXTRA_BYTES` serialized, nested at most
  :data:`MAX_EXTRA_DEPTH` levels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, cast

from . import windows
from .errors import ConfigurationError
from .windows import SECONDS_PER_DAY as SECONDS_PER_DAY
from .windows import Window

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
_MAX_DURATION_TEXT = 1024  # longer texts are not parsed at all
_SHOWN = 64

MIN_DURATION_SECONDS = 1.0
MAX_DURATION_DAYS = 100 * 365.0
MAX_AMOUNT = 1e15  # dollars: far above any real budget, far below where float sums lose cents
MIN_TIMESTAMP = 0.0  # 1970-01-01 UTC
MAX_TIMESTAMP = 32_503_680_000.0  # 3000-01-01 UTC
MAX_TEXT_BYTES = 1024
MAX_EXTRA_BYTES = 64 * 1024
MAX_EXTRA_DEPTH = 32
MAX_TTL_SECONDS = 365 * SECONDS_PER_DAY
MAX_OUTPUT_TOKENS = 10_000_000  # a guard option counting output tokens: far above any model's
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 1.0, SECONDS_PER_DAY
MAX_WINDOWS = 8  # more windows a record may have besides its main one

# The fields of a record an app may set one by one (through BudgetManager.user_dict);
# None for total_budget means no limit, for duration a budget that never resets.
SETTABLE_FIELDS = ("total_budget", "current_cost", "model_cost", "duration", "created_at", "last_updated_at")
# ...and those of budgets beyond LiteLLM's: the user's team, the main window's timezone (a
# calendar window), more windows (see windows.py). Each may be set to None to drop it.
SUBJECT_FIELDS = ("team", "timezone", "windows")
OWN_FIELDS = frozenset((*SETTABLE_FIELDS, *SUBJECT_FIELDS, "reservations", "applied", "overruns", "overrun_cost"))


class Reservation(TypedDict):
    amount: float
    expires_at: float
    model: NotRequired[str]  # the call's model, kept where the record has per-model windows
    also: NotRequired[list[str]]  # in the user's record: the other budgets holding the call


class UserRecord(TypedDict):
    total_budget: float | None
    current_cost: float
    model_cost: dict[str, float]
    created_at: float
    last_updated_at: float
    duration: NotRequired[float]
    reservations: NotRequired[dict[str, Reservation]]
    applied: NotRequired[dict[str, float]]
    overruns: NotRequired[int]
    overrun_cost: NotRequired[float]
    team: NotRequired[str]
    timezone: NotRequired[str]
    windows: NotRequired[list[Window]]


# --- text -------------------------------------------------------------------------------


def _plain(value: object) -> bool:
    """The usual case, checked on every call: short ASCII text without NUL."""
    return type(value) is str and 0 < len(value) <= MAX_TEXT_BYTES and value.isascii() and "\x00" not in value


def check_text(name: str, value: object) -> str:
    """Non-empty valid Unicode (storable as UTF-8: no lone surrogates), no NUL, <= 1 KiB."""
    if _plain(value):
        return cast(str, value)
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ConfigurationError(f"{name} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"{name} {value[:60]!r} is not valid text: {exc.reason} at {exc.start}") from None
    if size > MAX_TEXT_BYTES:
        raise ConfigurationError(f"{name} is too long: {size} bytes in UTF-8, at most {MAX_TEXT_BYTES}")
    if "\x00" in value:
        raise ConfigurationError(f"{name} {value[:60]!r} must not contain NUL characters")
    return value


def check_user(user: object) -> str:
    """Return ``user`` if it is a usable user id, else raise naming the problem."""
    check_text("user id", user)
    assert isinstance(user, str)
    if not user.strip():
        raise ConfigurationError("user id must not be empty")
    return user


def check_call_id(call_id: object) -> str:
    return cast(str, call_id) if _plain(call_id) else check_text("call id", call_id)


def check_model_name(model: object, where: str = "") -> str:
    if _plain(model):
        return cast(str, model)
    return check_text(f"{where}: model name" if where else "model", model)


# --- numbers ----------------------------------------------------------------------------


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any double
        raise ConfigurationError(f"{name} is out of range, got an integer of {int(value).bit_length()} bits") from None
    if math.isnan(number) or math.isinf(number):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    return number


def check_amount(name: str, value: object) -> float:
    """A money amount (or a count of seconds): finite, not negative, at most MAX_AMOUNT.

    An int stays an int, as LiteLLM's own class keeps it: ``10`` is written as ``10``.
    """
    if type(value) is float and 0.0 <= value <= MAX_AMOUNT:  # the usual case, checked on every call
        return value
    amount = _finite(name, value)
    if amount < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value!r}")
    if amount > MAX_AMOUNT:
        raise ConfigurationError(f"{name} is out of range: {amount:.6g}, at most {MAX_AMOUNT:.0e}")
    return int(value) if isinstance(value, int) else amount


def check_timestamp(name: str, value: object) -> float:
    """A time in seconds since 1970 (UTC), from 1970-01-01 to 3000-01-01."""
    if type(value) is float and MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        return value
    seconds = _finite(name, value)
    if not MIN_TIMESTAMP <= seconds <= MAX_TIMESTAMP:
        raise ConfigurationError(
            f"{name} is out of range: {seconds:.6g}; times are seconds since 1970 before the year 3000"
        )
    return int(value) if isinstance(value, int) else seconds


def check_ttl(ttl: object) -> float:
    """A hold's lifetime: longer than zero, at most a year (its end is a timestamp)."""
    seconds = _finite("reservation ttl", ttl)
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise ConfigurationError(f"reservation ttl must be longer than zero and at most a year, got {ttl!r}")
    return seconds


def check_tokens(name: str, tokens: object) -> int:
    """A number of output tokens given as an option: a whole number from 1, not a price."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_OUTPUT_TOKENS:
        raise ConfigurationError(
            f"{name} must be a whole number of tokens from 1 to {MAX_OUTPUT_TOKENS:,}, got {tokens!r}"
        )
    return tokens


def check_lease_seconds(value: object) -> float:
    """A guard's lease: from 1 second (shorter ones expire before a call ends) to one day."""
    seconds = _finite("lease_seconds", value)
    if not MIN_LEASE_SECONDS <= seconds <= MAX_LEASE_SECONDS:
        raise ConfigurationError(f"lease_seconds must be from 1 to {MAX_LEASE_SECONDS:.0f} seconds, got {value!r}")
    return seconds


def parse_duration(duration: object) -> float | None:
    """Days in a budget window, 1 second to 100 years: LiteLLM's names, a number of days, or
    "1h", "30d", "1mo"; None for a budget that never resets."""
    if duration is None:
        return None
    if isinstance(duration, str):
        if duration in NAMED_DURATIONS_DAYS:
            return NAMED_DURATIONS_DAYS[duration]
        match = _DURATION_PATTERN.match(duration) if len(duration) <= _MAX_DURATION_TEXT else None
        if match is None:
            raise ConfigurationError(
                f"unknown duration {duration[:_SHOWN]!r}: use daily, weekly, monthly, yearly, "
                'or a number with a unit such as "30s", "15m", "1h", "30d", "2w", "1mo", "1y"'
            )
        days = float(match.group(1)) * _UNIT_DAYS[match.group(2)]
    else:
        days = _finite("duration", duration)
    # "1s" is 1/86400 of a day: allow for its rounding
    if not (days * SECONDS_PER_DAY >= MIN_DURATION_SECONDS * (1 - 1e-9) and days <= MAX_DURATION_DAYS):
        shown = duration[:_SHOWN] if isinstance(duration, str) else duration
        raise ConfigurationError(f"duration {shown!r} is out of range: use 1 second to 100 years")
    return days


def check_default(default: object) -> dict[str, Any]:
    """The budget for a user a store has not seen: ``{"total_budget": ..., "duration": ...}``,
    checked, its duration in days."""
    if not isinstance(default, Mapping) or set(default) != {"total_budget", "duration"}:
        given = sorted(map(str, default))[:4] if isinstance(default, Mapping) else type(default).__name__
        raise ConfigurationError(f'default must be {{"total_budget": ..., "duration": ...}}, got {given}')
    total = default["total_budget"]
    return {
        "total_budget": None if total is None else check_amount("default total_budget", total),
        "duration": parse_duration(default["duration"]),
    }


# --- records ----------------------------------------------------------------------------


def check_extra(where: str, extra: Mapping[str, object]) -> None:
    """Fields of a record that are not its own: JSON values, bounded in depth and size.

    The depth is checked without recursion, so a value nested thousands of levels deep is
    refused rather than raising RecursionError.
    """
    stack: list[tuple[object, int, str]] = [(value, 1, str(key)) for key, value in extra.items()]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_EXTRA_DEPTH:
            raise ConfigurationError(f"{where}: field {path[:80]!r} is nested deeper than {MAX_EXTRA_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigurationError(f"{where}: field {path[:80]!r} has a key that is not a string")
                stack.append((item, depth + 1, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigurationError(f"{where}: field {path[:80]!r} is {value!r}, which JSON cannot hold")
        elif not (value is None or isinstance(value, str | int)):
            raise ConfigurationError(f"{where}: field {path[:80]!r} is a {type(value).__name__}, not a JSON value")
    try:
        size = len(json.dumps(dict(extra), allow_nan=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: extra fields are not JSON: {exc}") from None
    if size > MAX_EXTRA_BYTES:
        raise ConfigurationError(f"{where}: extra fields take {size} bytes, at most {MAX_EXTRA_BYTES}")


def check_record(user: str, raw: object) -> UserRecord:
    """Validate one record (given, or read from a store), filling LiteLLM's optional fields.

    A file written by LiteLLM's BudgetManager may lack ``current_cost``, ``model_cost``
    and the time fields; extra fields are kept as they are, within their limits.
    """
    where = f"record of user {user[:80]!r}"
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
        check_model_name(model, where): check_amount(f"{where}: model_cost[{model!r}]", cost)
        for model, cost in model_cost.items()
    }
    if "duration" in record and record["duration"] is not None:
        try:
            record["duration"] = parse_duration(record["duration"])
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    else:
        record.pop("duration", None)
    created = check_timestamp(f"{where}: created_at", record.get("created_at", 0.0))
    record["created_at"] = created
    record["last_updated_at"] = check_timestamp(f"{where}: last_updated_at", record.get("last_updated_at", created))
    reservations = record.get("reservations", {})
    if not isinstance(reservations, dict):
        raise ConfigurationError(f"{where}: reservations must be an object")
    checked: dict[str, Reservation] = {}
    for call_id, held in reservations.items():
        if not isinstance(held, dict):
            raise ConfigurationError(f"{where}: reservation {call_id!r} must be an object")
        hold: Reservation = {
            "amount": check_amount(f"{where}: reservation amount", held.get("amount")),
            "expires_at": check_timestamp(f"{where}: reservation expires_at", held.get("expires_at")),
        }
        if "model" in held:
            hold["model"] = check_model_name(held["model"], where)
        if "also" in held:
            hold["also"] = _check_also(where, held["also"])
        checked[check_call_id(call_id)] = hold
    _set_or_drop(record, "reservations", checked)
    applied = record.get("applied", {})
    if not isinstance(applied, dict):
        raise ConfigurationError(f"{where}: applied must be an object")
    _set_or_drop(
        record,
        "applied",
        {check_call_id(k): check_timestamp(f"{where}: applied time", v) for k, v in applied.items()},
    )
    count = record.get("overruns", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_AMOUNT:
        raise ConfigurationError(f"{where}: overruns must be a whole number of calls, got {count!r}")
    if "overrun_cost" in record:
        record["overrun_cost"] = check_amount(f"{where}: overrun_cost", record["overrun_cost"])
    for name in SUBJECT_FIELDS:
        if name in record:
            value = record[name]
            if value is None:
                del record[name]
            else:
                record[name] = _check_subject_field(user, where, name, value, record["created_at"])
    for window in record.get("windows", ()):
        window.setdefault("spend", 0.0)
    check_calendar(where, record)
    extra = {k: v for k, v in record.items() if k not in OWN_FIELDS}
    if extra:
        check_extra(where, extra)
    return cast(UserRecord, record)


def check_fields(user: str, fields: Mapping[str, object]) -> dict[str, Any]:
    """Checked values for some of ``user``'s ``SETTABLE_FIELDS``, or raise naming the user,
    the field and the problem; duration becomes days."""
    if not isinstance(fields, Mapping):
        raise ConfigurationError(
            f"fields of user {user!r} must be a dict of field -> value, got {type(fields).__name__}"
        )
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        where = f"field {name!r} of user {user!r}"
        if name == "model_cost":
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{where} must be a dict of model -> cost, got {type(value).__name__}")
            checked[name] = {
                check_model_name(model, where): check_amount(f"{where}[{model!r}]", cost)
                for model, cost in value.items()
            }
        elif name == "duration":
            try:
                checked[name] = parse_duration(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
        elif name == "total_budget" and value is None:
            checked[name] = None
        elif name in ("created_at", "last_updated_at"):
            checked[name] = check_timestamp(where, value)
        elif name in SUBJECT_FIELDS:
            checked[name] = None if value is None else _check_subject_field(user, where, name, value, None)
        elif name in SETTABLE_FIELDS:
            checked[name] = check_amount(where, value)
        else:
            raise ConfigurationError(
                f"cannot set {where}: not a field of a budget; "
                f"the fields are {', '.join((*SETTABLE_FIELDS, *SUBJECT_FIELDS))}"
            )
    return checked


# --- teams, timezones, windows -------------------------------------------------------------


def _check_also(where: str, also: object) -> list[str]:
    """The other budgets holding a user's call: teams, tags, the global budget (never a user)."""
    from .subjects import check_subjects  # subjects.py builds on this module

    if not isinstance(also, list):
        raise ConfigurationError(f"{where}: a reservation's also must be a list of budgets")
    try:
        return list(check_subjects(also, teams=2))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: reservation also: {exc}") from None


def _check_subject_field(key: str, where: str, name: str, value: object, now: float | None) -> Any:
    """``team`` (a name), ``timezone`` (IANA) or ``windows`` (see :func:`check_windows`)."""
    if name == "team":
        if key.startswith(("team:", "tag:")):
            raise ConfigurationError(f"{where}: only a user belongs to a team, not a team or a tag")
        team = check_text(f"{where}: team", value).removeprefix("team:")
        if not team.strip() or team.startswith("team:"):
            raise ConfigurationError(f"{where}: team must name a team, got {value!r}")
        return team
    if name == "timezone":
        return windows.check_timezone(value)
    return check_windows(where, value, now)


def check_windows(where: str, given: object, now: float | None) -> list[Window]:
    """A record's more windows: a list of ``{"budget", "duration", "timezone", "model"}``
    (``spend`` and ``start`` as read back, or, with ``now``, optional: a new window starts
    at the start of its period; without ``now``, its ``start`` is left for the caller to set).
    Durations become days; at most :data:`MAX_WINDOWS`. Overlaps: :func:`check_calendar`."""
    if not isinstance(given, list):
        raise ConfigurationError(f"{where}: windows must be a list of windows, got {type(given).__name__}")
    if len(given) > MAX_WINDOWS:
        raise ConfigurationError(f"{where}: at most {MAX_WINDOWS} windows besides the main one, got {len(given)}")
    checked: list[Window] = []
    for index, raw in enumerate(given):
        name = f"{where}: window {index}"
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{name} must be an object, got {type(raw).__name__}")
        unknown = set(raw) - {"budget", "duration", "timezone", "model", "spend", "start"}
        if unknown:
            raise ConfigurationError(f"{name} has unknown fields {sorted(map(str, unknown))[:4]}")
        if "budget" not in raw:
            raise ConfigurationError(f"{name} needs a budget")
        try:
            days = parse_duration(raw.get("duration"))
            zone = None if raw.get("timezone") is None else windows.check_timezone(raw["timezone"])
            if zone is not None and days is None:
                raise ConfigurationError("a timezone needs a duration (daily, weekly, monthly or yearly)")
            if zone is not None and days is not None:
                windows.calendar_period(days)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{name}: {exc}") from None
        window = cast(Window, {"budget": check_amount(f"{name}: budget", raw["budget"])})
        if "spend" in raw:
            window["spend"] = check_amount(f"{name}: spend", raw["spend"])
        if "start" in raw:
            window["start"] = check_timestamp(f"{name}: start", raw["start"])
        elif now is not None:
            window["start"] = windows.first_start(now, days, zone)
        if days is not None:
            window["duration"] = days
        if zone is not None:
            window["timezone"] = zone
        if raw.get("model") is not None:
            window["model"] = check_model_name(raw["model"], name)
        checked.append(window)
    return checked


def check_calendar(where: str, record: Mapping[str, Any]) -> None:
    """The main window's timezone needs a calendar duration; no two windows overlap."""
    days = record.get("duration")
    if "timezone" in record:
        if days is None:
            raise ConfigurationError(f"{where}: a timezone needs a duration (daily, weekly, monthly or yearly)")
        try:
            windows.calendar_period(days)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    seen = {windows.overlap_key(days, None): "the main window"}
    for index, window in enumerate(record.get("windows", ())):
        key = windows.overlap_key(window.get("duration"), window.get("model"))
        if key in seen:
            raise ConfigurationError(
                f"{where}: window {index} overlaps {seen[key]}: two windows of the same length"
                + (f" for model {window['model']!r}" if "model" in window else "")
            )
        seen[key] = f"window {index}"


def _set_or_drop(record: Any, key: str, value: dict[str, Any]) -> None:
    """Keep the file readable: optional maps are written only when they hold something."""
    if value:
        record[key] = value
    else:
        record.pop(key, None)
