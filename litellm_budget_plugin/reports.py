"""Spend reports over the ledger: a period, a grouping, and one streaming pass.

Pure functions: the period is read from ``--since``/``--from``/``--to`` against ``now``,
entries go in (any iterable of :class:`~.ledger.LedgerEntry`, or of a file store's day totals,
:class:`~.ledger.LedgerTotal`, read once), rows come out.
Memory is bounded by the number of groups (and, for charts, groups x days), never by the
number of entries: nothing keeps a list of them.

Choices the CLI documents (README, "Reports"):

- ``--since 30d`` is the 30 x 24 hours up to ``now`` (units of budget durations: s, m, h, d,
  w, mo = 30 days, y); ``--from``/``--to`` take ISO dates or datetimes, a date meaning its
  midnight in the report's timezone, and ``--to DATE`` *including* that day (up to the next
  midnight); a datetime ``--to`` is excluded. Without any, the last 30 days.
- ``--by`` may be repeated (``--by user --by model``): a row per combination.
- A call of two teams or tags counts in each of their rows (so rows may add up to more than
  the total); calls of none are in a ``(none)`` row. The total counts each call once.
- Rows are sorted by spend, highest first; grouped by day, by day first.
"""

from __future__ import annotations

import gc
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

from . import limits, windows
from .errors import ConfigurationError
from .ledger import LedgerEntry, LedgerTotal
from .limits import SECONDS_PER_DAY
from .stores import BudgetStore

Charges = LedgerEntry | LedgerTotal

GROUPS = ("user", "model", "day", "team", "tag")
NONE = "(none)"  # the team or tag group of calls without one
DEFAULT_DAYS = 30


class Period(NamedTuple):
    start: float  # included
    end: float  # excluded
    timezone: str  # where days begin, for --from/--to dates and --by day

    def label(self) -> str:
        """``2026-11-06 20:57 to 2026-12-06 20:57 UTC``; whole days as dates (the last included)."""
        zone = ZoneInfo(self.timezone)
        first, last = datetime.fromtimestamp(self.start, zone), datetime.fromtimestamp(self.end, zone)
        if first.time() == last.time() == datetime.min.time():
            return f"{first:%Y-%m-%d} to {last - timedelta(days=1):%Y-%m-%d} ({self.timezone})"
        return f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} ({self.timezone})"


class Row(NamedTuple):
    key: tuple[str, ...]  # one label per grouping, in --by order
    spend: float
    calls: int
    prompt_tokens: int
    completion_tokens: int


class Report(NamedTuple):
    period: Period
    by: tuple[str, ...]
    rows: list[Row]
    total: Row  # key ("total",): each call once
    # For charts: spend per (day, series), the series being the row key without its day.
    daily: dict[tuple[str, tuple[str, ...]], float]


# --- the period -------------------------------------------------------------------------


def parse_since(text: str, now: float) -> float:
    """The start of ``--since 30d``: that long before ``now``."""
    shown = text[:64]
    if not text.strip()[:1].isdigit():  # "daily" is a budget's word; here a length is clearer
        raise ConfigurationError(f"--since {shown!r}: write a length such as 12h, 30d, 2w, 3mo")
    try:
        days = limits.parse_duration(text)
    except ConfigurationError as exc:
        raise ConfigurationError(f"--since {shown!r}: {exc}") from None
    assert days is not None
    return max(0.0, now - days * SECONDS_PER_DAY)


def parse_moment(option: str, text: str, timezone: str, *, end: bool = False) -> float:
    """An ISO date or datetime as a Unix time. A date is its midnight in ``timezone``, or for
    an ``end``, the next midnight (so ``--to 2026-12-05`` includes December 5th); a datetime
    without an offset is in ``timezone``."""
    value = text.strip()
    try:
        if len(value) == 10:  # YYYY-MM-DD
            day = date.fromisoformat(value)
            stamp = _midnight(day + timedelta(days=1) if end else day, timezone)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=ZoneInfo(timezone))
            stamp = moment.timestamp()
    except ValueError:
        raise ConfigurationError(
            f"{option} {text[:64]!r}: write an ISO date or time such as 2026-12-01 or 2026-12-01T09:30"
        ) from None
    except OverflowError:  # the day after 9999-12-31
        stamp = math.inf
    if not limits.MIN_TIMESTAMP <= stamp <= limits.MAX_TIMESTAMP:
        raise ConfigurationError(f"{option} {text[:64]!r} is out of range (1970 to 3000)")
    return stamp


def period(
    now: float,
    *,
    since: str | None = None,
    start: str | None = None,
    end: str | None = None,
    timezone: str | None = None,
) -> Period:
    """The period of ``--since`` or ``--from``/``--to`` (default: the 30 days up to ``now``)."""
    zone = windows.check_timezone("UTC" if timezone is None else timezone)
    if since is not None and (start is not None or end is not None):
        raise ConfigurationError("--since counts back from now: give it without --from and --to")
    if since is not None:
        return Period(parse_since(since, now), now, zone)
    last = now if end is None else parse_moment("--to", end, zone, end=True)
    first = last - DEFAULT_DAYS * SECONDS_PER_DAY if start is None else parse_moment("--from", start, zone)
    if first >= last:
        raise ConfigurationError(f"--from {start} is not before --to {end}: the period is empty")
    return Period(max(0.0, first), last, zone)


def check_groups(by: Sequence[str]) -> tuple[str, ...]:
    """The groupings, in order, each once; ``user`` when none is given."""
    chosen: list[str] = []
    for name in by or ("user",):
        group = name.strip().lower()
        if group not in GROUPS:
            raise ConfigurationError(f"unknown group {name[:64]!r}: use one of {', '.join(GROUPS)}")
        if group not in chosen:
            chosen.append(group)
    return tuple(chosen)


def days_of(span: Period) -> list[str]:
    """Every day the period touches, in its timezone, as ISO dates."""
    zone = ZoneInfo(span.timezone)
    day = datetime.fromtimestamp(span.start, zone).date()
    last = datetime.fromtimestamp(max(span.start, span.end - 1e-6), zone).date()
    out = []
    while day <= last:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


# --- one pass ---------------------------------------------------------------------------


class _DayOf:
    """The local day of a time, remembering the last day's bounds: entries come roughly in time
    order, so nearly every call is two comparisons."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        self.low, self.high, self.label = 1.0, 0.0, ""

    def __call__(self, moment: float) -> str:
        if not self.low <= moment < self.high:
            day = datetime.fromtimestamp(moment, self.zone).date()
            self.low = _midnight(day, self.zone.key)
            self.high = _midnight(day + timedelta(days=1), self.zone.key)
            self.label = day.isoformat()
        return self.label


def _labels(group: str, day_of: _DayOf) -> Callable[[Charges], tuple[str, ...]]:
    if group == "user":
        return lambda item: (item.user,)
    if group == "model":
        return lambda item: (item.model,)
    if group == "day":
        return lambda item: (day_of(item.time),)
    if group == "team":
        return lambda item: item.teams or (NONE,)
    return lambda item: item.tags or (NONE,)


def charges(store: BudgetStore, since: float, until: float, *, utc_days: bool = True) -> Iterable[Charges]:
    """The store's ledger from ``since`` to ``until``: a store that keeps day totals
    (``ledger_totals``, the file store) gives the days that are over as totals, far fewer rows,
    when the caller's days are UTC days (``utc_days``) or it does not look at days."""
    totals = getattr(store, "ledger_totals", None)
    if utc_days and callable(totals):
        return cast(Iterable[Charges], totals(since, until))
    return store.ledger(since, until)


def aggregate(entries: Iterable[Charges], span: Period, by: Sequence[str], *, daily: bool = False) -> Report:
    """Spend, calls and tokens per group of the entries within ``span``, in one pass.

    ``daily``: also the spend per day of each series (the row key without its day), for charts.
    """
    by = check_groups(by)
    day_of = _DayOf(span.timezone)
    labels = [_labels(group, day_of) for group in by]
    day_at = by.index("day") if "day" in by else None
    sums: dict[tuple[str, ...], list[Any]] = {}
    per_day: dict[tuple[str, tuple[str, ...]], float] = {}
    total: list[Any] = [0.0, 0, 0, 0]
    start, end = span.start, span.end
    # No cycles are made here, and the pass makes a million short-lived lists: the cyclic
    # collector would only walk them (about a fifth of the time). Reference counting frees them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for item in entries:
            moment = item.time
            if not start <= moment < end:
                continue
            cost, calls = item.cost, item.calls
            total[0] += cost
            total[1] += calls
            total[2] += item.prompt_tokens
            total[3] += item.completion_tokens
            parts = [label(item) for label in labels]
            keys = [parts[0]] if len(parts) == 1 and len(parts[0]) == 1 else itertools.product(*parts)
            for key in keys:
                row = sums.get(key)
                if row is None:
                    sums[key] = [cost, calls, item.prompt_tokens, item.completion_tokens]
                else:
                    row[0] += cost
                    row[1] += calls
                    row[2] += item.prompt_tokens
                    row[3] += item.completion_tokens
                if daily:
                    series = key if day_at is None else key[:day_at] + key[day_at + 1 :]
                    cell = (day_of(moment) if day_at is None else key[day_at], series)
                    per_day[cell] = per_day.get(cell, 0.0) + cost
    finally:
        if collecting:
            gc.enable()
    rows = [Row(key, *values) for key, values in sums.items()]
    if day_at is None:
        rows.sort(key=lambda row: (-row.spend, row.key))
    else:
        rows.sort(key=lambda row: (row.key[day_at], -row.spend, row.key))
    return Report(span, by, rows, Row(("total",), *total), per_day)


# --- charts: series and budgets ---------------------------------------------------------

OTHER = "other"


def chart_series(report: Report, top: int) -> tuple[list[str], list[str], dict[str, list[float]]]:
    """The days, the series shown (the ``top`` by spend, then ``other`` for the rest) and each
    series' spend per day, for a stacked chart."""
    days = days_of(report.period)
    totals: dict[tuple[str, ...], float] = {}
    for (_, series), amount in report.daily.items():
        totals[series] = totals.get(series, 0.0) + amount
    ranked = sorted(totals, key=lambda series: (-totals[series], series))
    shown = ranked[:top] if len(ranked) > top else ranked
    names = {series: _series_name(series) for series in shown}
    order = [names[series] for series in shown] + ([OTHER] if len(ranked) > len(shown) else [])
    index = {day: i for i, day in enumerate(days)}
    spend = {name: [0.0] * len(days) for name in order}
    for (day, series), amount in report.daily.items():
        if day in index:
            spend[names.get(series, OTHER)][index[day]] += amount
    return days, order, spend


def _series_name(series: tuple[str, ...]) -> str:
    return " / ".join(series) if series else "spend"


class BudgetLine(NamedTuple):
    series: str
    per_day: float  # the budget's daily pace: the budget over its window's days
    label: str  # "$5.00 a day", "$70.00 per 7 days = $10.00 a day"


def budget_lines(
    records: Mapping[str, Mapping[str, Any]], by: Sequence[str], series: Iterable[str]
) -> list[BudgetLine]:
    """The budget of each series that is one user, team or tag with a budget that resets, as
    a pace per day. A budget that never resets has no pace and no line."""
    kinds = [group for group in by if group != "day"]
    if len(kinds) != 1 or kinds[0] not in ("user", "team", "tag"):
        return []
    prefix = {"user": "", "team": "team:", "tag": "tag:"}[kinds[0]]
    lines = []
    for name in series:
        record = records.get(prefix + name)
        if record is None or name == NONE or record.get("duration") is None or record.get("total_budget") is None:
            continue  # no budget that resets: no pace
        amount, days = float(record["total_budget"]), float(record["duration"])
        pace = amount / days
        label = f"{money(amount)} a day" if days == 1 else f"{money(amount)} per {_days(days)}: {money(pace)} a day"
        lines.append(BudgetLine(name, pace, label))
    return lines


def _days(days: float) -> str:
    if days < 1:
        return f"{days * 24:g} h"
    return f"{days:g} days"


def money(amount: float, decimals: int = 2) -> str:
    return f"-${-amount:,.{decimals}f}" if amount < 0 else f"${amount:,.{decimals}f}"


def money_decimals(amounts: Iterable[float]) -> int:
    """Decimals that show the smallest non-zero amount with 2 significant digits (2 to 6)."""
    smallest = min((abs(a) for a in amounts if a), default=1.0)
    decimals = 2
    while decimals < 6 and smallest < 10 ** (1 - decimals):
        decimals += 1
    return decimals


def _midnight(day: date, timezone: str) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(timezone)).timestamp()
