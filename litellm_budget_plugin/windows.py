"""Budget windows: rolling ones (LiteLLM's) and calendar ones, as pure functions of ``now``.

A record's main window is LiteLLM's: ``total_budget``, ``current_cost``, ``duration`` days from
``last_updated_at``. A record may add more in ``windows`` ("$5 a day and $100 a month", "$1 a day
on gpt-4o"); each keeps its own ``spend`` since its ``start``, and a call must fit them all.

A window with a ``timezone`` is a calendar one: it resets at local midnight (a duration of one
day), on Monday (seven days), on the 1st of the month (28 to 31 days, LiteLLM's "monthly" is
28) or on January 1st (365 or 366), in that IANA timezone; without one it rolls every
``duration`` days from its start, as LiteLLM's windows do. Resets are lazy: a window read after
its end starts again at the start of the period ``now`` is in, whoever reads it first.
Daylight-saving days are as long as the clock says (23 or 25 hours).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Literal, NotRequired, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from .errors import ConfigurationError

SECONDS_PER_DAY = 86_400.0

Period = Literal["day", "week", "month", "year"]
MAX_TIMEZONE_CHARS = 64


class Window(TypedDict):
    """One more window of a record (``record["windows"]``)."""

    budget: float
    spend: float
    start: float
    duration: NotRequired[float]  # days; none: the window never resets
    timezone: NotRequired[str]  # a calendar window, in this IANA timezone
    model: NotRequired[str]  # counts only calls of this model (a per-model cap)


def calendar_period(days: float) -> Period:
    """The calendar period a duration in days names, or raise."""
    if days == 1:
        return "day"
    if days == 7:
        return "week"
    if 28 <= days <= 31:
        return "month"
    if days in (365, 366):
        return "year"
    raise ConfigurationError(
        f"a window with a timezone resets each day, week, month or year: "
        f"use daily, weekly, monthly or yearly, not {days:g} days"
    )


def check_timezone(name: object) -> str:
    """An IANA timezone name that zoneinfo knows (``"Europe/Paris"``, ``"UTC"``); not one whose
    meaning depends on the machine (``localtime``, ``Factory``): processes sharing a budget must
    agree on its midnight."""
    if not isinstance(name, str) or not name or len(name) > MAX_TIMEZONE_CHARS:
        raise ConfigurationError(f"timezone must be an IANA name such as 'Europe/Paris', got {name!r:.80}")
    try:
        if name not in _known_zones():
            raise ValueError(name)
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigurationError(
            f"timezone {name!r} does not exist (use an IANA name such as 'Europe/Paris')"
        ) from None
    return name


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones() - {"localtime", "Factory"})


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    if "\x00" in name:
        raise ValueError(name)
    return ZoneInfo(name)


def _midnight(day: date, zone: ZoneInfo) -> float:
    """The first instant of ``day`` in ``zone`` (a midnight skipped by a DST jump: the jump)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def period_start(now: float, days: float, timezone: str) -> float:
    """When the calendar period holding ``now`` began."""
    zone = _zone(timezone)
    today = datetime.fromtimestamp(now, zone).date()
    period = calendar_period(days)
    if period == "day":
        first = today
    elif period == "week":
        first = today - timedelta(days=today.weekday())
    elif period == "month":
        first = today.replace(day=1)
    else:
        first = today.replace(month=1, day=1)
    return _midnight(first, zone)


@lru_cache(maxsize=4096)
def period_end(start: float, days: float, timezone: str) -> float:
    """When the calendar period holding ``start`` ends (the next one begins)."""
    zone = _zone(timezone)
    first = datetime.fromtimestamp(period_start(start, days, timezone), zone).date()
    period = calendar_period(days)
    if period == "day":
        after = first + timedelta(days=1)
    elif period == "week":
        after = first + timedelta(days=7)
    elif period == "month":
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        after = date(first.year + 1, 1, 1)
    return _midnight(after, zone)


def rolled_start(start: float, days: float | None, timezone: str | None, now: float) -> float:
    """The start of the window holding ``now`` for a window that started at ``start``:
    ``start`` itself while it lasts. A rolling window moves by whole durations, so its reset
    time does not depend on who looks first."""
    if days is None:
        return start
    if timezone is not None:
        return start if now < period_end(start, days, timezone) else period_start(now, days, timezone)
    period = days * SECONDS_PER_DAY
    if now - start < period:
        return start
    return start + math.floor((now - start) / period) * period


def window_end(start: float, days: float | None, timezone: str | None) -> float | None:
    """When a window that started at ``start`` resets; None if it never does."""
    if days is None:
        return None
    if timezone is not None:
        return period_end(start, days, timezone)
    return start + days * SECONDS_PER_DAY


def closed_windows(start: float, days: float | None, timezone: str | None, count: int) -> list[tuple[float, float]]:
    """The ``count`` windows before the one that started at ``start``, newest first, as
    (start, end); none for a budget that never resets, none before 1970."""
    if days is None:
        return []
    closed = []
    for _ in range(count):
        begin = period_start(start - 1, days, timezone) if timezone is not None else start - days * SECONDS_PER_DAY
        if begin < 0:
            break
        closed.append((begin, start))
        start = begin
    return closed


def first_start(now: float, days: float | None, timezone: str | None) -> float:
    """Where a new window begins: now, or for a calendar one the start of the current period
    (not before 1970: a record made at time 0, as an imported one without ``created_at``, east
    of UTC would begin before the range timestamps have)."""
    return now if days is None or timezone is None else max(0.0, period_start(now, days, timezone))


def roll(window: Window, now: float) -> Window:
    """``window`` in the period holding ``now``: the same dict while it lasts, else a new one
    at zero spend."""
    start = rolled_start(window["start"], window.get("duration"), window.get("timezone"), now)
    if start == window["start"]:
        return window
    return {**window, "start": start, "spend": 0.0}


_DATED = re.compile(r"-(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8})\Z")


def model_family(model: str) -> str:
    """A model's name as per-model windows compare it: without a provider prefix
    (``openai/gpt-4o``) or a release date (``gpt-4o-2024-08-06``, ``claude-3-5-sonnet-20241022``),
    since providers answer with the dated name of the model a call asked for."""
    return _DATED.sub("", model.rsplit("/", 1)[-1])


def same_model(limited: str, model: str | None) -> bool:
    """Whether a call of ``model`` is one a per-model window of ``limited`` counts: the same
    :func:`model_family` (a cap on ``gpt-4o`` counts calls charged as ``openai/gpt-4o`` or
    ``gpt-4o-2024-08-06``). A call whose model is not known (None) counts in every cap."""
    return model is None or limited == model or model_family(limited) == model_family(model)


def applies_to(window: Window, model: str | None) -> bool:
    """Whether a call of ``model`` counts in ``window`` (a per-model window counts only its model)."""
    limited = window.get("model")
    return limited is None or same_model(limited, model)


def overlap_key(days: float | None, model: str | None) -> tuple[object, ...]:
    """Two windows of one record with the same key overlap: the same length (a rolling day and
    a calendar day are both a day), for the same model."""
    length: object = days
    if days is not None:
        try:
            length = calendar_period(days)
        except ConfigurationError:
            length = float(days)
    return (length, None if model is None else model_family(model))


_ADVERBS = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}


def describe(budget: float, days: float | None, timezone: str | None, model: str | None) -> str:
    """A window as a refusal names it: ``"$5 daily (calendar, Europe/Paris)"``, ``"$1 on gpt-4o"``."""
    every = ""
    if days is not None:
        try:
            every = " " + _ADVERBS[calendar_period(days)]
        except ConfigurationError:
            every = f" per {days:g} days"
        if timezone is not None:
            every += f" (calendar, {timezone})"
    on = f" on {model}" if model is not None else ""
    return f"${budget:g}{every}{on}"
