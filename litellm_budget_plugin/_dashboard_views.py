"""What the dashboard shows of a project, as values: subjects with their windows, alert
levels, and spend per UTC day from the ledger (:class:`DailySpend`, which keeps the totals of
days that are over). No HTML here (:mod:`._dashboard_html`), no I/O but the ledger read."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal, cast

from .errors import GLOBAL_KEY
from .ledger import SETTLED_SECONDS
from .limits import SECONDS_PER_DAY, UserRecord
from .stores.base import BudgetStore
from .subjects import kind_of
from .windows import Window, describe, rolled_start, window_end

# A subject at this share of a budget (any of its windows) is flagged as near it.
NEAR = 0.8
CHART_DAYS = 30
DEFAULT_REFRESH_SECONDS = 30
_DAY = timedelta(days=1)
_EPOCH = date(1970, 1, 1).toordinal()

Level = Literal["over", "near", ""]
Kind = Literal["user", "team", "tag", "global"]


@dataclass(frozen=True, slots=True)
class WindowView:
    """One further window of a subject (``record["windows"]``)."""

    label: str  # "$5 daily (calendar, Europe/Paris)", "$1 on gpt-4o"
    spend: float
    budget: float
    resets_at: float | None

    @property
    def share(self) -> float:
        return _share(self.spend, self.budget)


@dataclass(slots=True)
class SubjectView:
    """One subject as the dashboard shows it: its main window, the others, its alert level."""

    key: str
    kind: Kind
    team: str | None  # a user's team
    spend: float
    budget: float | None  # None: no limit
    held: float  # held for calls in flight
    resets_at: float | None  # None: never resets
    windows: tuple[WindowView, ...]
    overruns: int
    overrun_cost: float
    share: float  # spend over budget in the main window (0 without a limit)
    worst: float  # the highest share of any of its windows: what its level is read from
    level: Level

    @property
    def remaining(self) -> float | None:
        return None if self.budget is None else self.budget - self.spend


def _share(spend: float, limit: float) -> float:
    if limit > 0:
        return spend / limit
    return 1.0 if spend > 0 or limit == 0 else 0.0  # a zero budget is spent before it starts


def subject_views(records: Mapping[str, UserRecord], now: float) -> list[SubjectView]:
    """Every record as a :class:`SubjectView`, the highest spend first (then by key).
    ``records`` are in their current windows (as ``store.all()`` returns them)."""
    views = [_view(key, record, now) for key, record in records.items()]
    views.sort(key=lambda view: (-view.spend, view.key))
    return views


def _view(key: str, record: UserRecord, now: float) -> SubjectView:
    holds = record.get("reservations")
    spend, limit = float(record["current_cost"]), record["total_budget"]
    share = 0.0 if limit is None else _share(spend, limit)
    windows = tuple(map(_window_view, record["windows"])) if "windows" in record else ()
    worst = max(share, *(window.share for window in windows)) if windows else share
    # budget.next_reset without its copy of the record: records come rolled to ``now``
    days, zone = record.get("duration"), record.get("timezone")
    start = rolled_start(record["last_updated_at"], days, zone, now)
    return SubjectView(
        key,
        "global" if key == GLOBAL_KEY else kind_of(key),
        record.get("team"),
        spend,
        limit,
        sum(hold["amount"] for hold in holds.values()) if holds else 0.0,
        window_end(start, days, zone),
        windows,
        record.get("overruns", 0),
        record.get("overrun_cost", 0.0),
        share,
        worst,
        level_of(worst),
    )


def level_of(share: float) -> Level:
    return "over" if share >= 1.0 else "near" if share >= NEAR else ""


def _window_view(window: Window) -> WindowView:
    days, zone, model = window.get("duration"), window.get("timezone"), window.get("model")
    return WindowView(
        label=describe(window["budget"], days, zone, model),
        spend=window["spend"],
        budget=window["budget"],
        resets_at=window_end(window["start"], days, zone),
    )


# --- spend per day ----------------------------------------------------------------------


def utc_day(moment: float) -> date:
    return datetime.fromtimestamp(moment, UTC).date()


def _index(day: date) -> int:
    return day.toordinal() - _EPOCH


def day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


class DailySpend:
    """Spend per UTC day of each project, from its store's ledger; the totals of days that
    are over are kept (per project), so a page load reads only the days since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled: dict[str, dict[date, float]] = {}

    def last_days(
        self, project: str, store: BudgetStore, now: float, days: int = CHART_DAYS
    ) -> list[tuple[date, float]]:
        """The ``days`` UTC days up to the one holding ``now``, oldest first, each with the
        cost of the charges recorded in it."""
        today = utc_day(now)
        wanted = [today - _DAY * back for back in range(days - 1, -1, -1)]
        with self._lock:
            known = dict(self._settled.get(project, {}))
        missing = [day for day in wanted if day not in known]
        totals = dict.fromkeys(missing, 0.0)
        if missing:
            # one read from the first day not cached: cached days are the oldest ones
            by_index = dict.fromkeys(range(_index(missing[0]), _index(today) + 1), 0.0)
            for moment, cost in _day_costs(store, day_start(missing[0]), day_start(today + _DAY)):
                index = int(moment // SECONDS_PER_DAY)  # UTC days since 1970, cheaper than dates
                if index in by_index:
                    by_index[index] += cost
            for day in missing:
                totals[day] = by_index[_index(day)]
            settled = {day: total for day, total in totals.items() if day_start(day + _DAY) + SETTLED_SECONDS <= now}
            with self._lock:
                kept = self._settled.setdefault(project, {})
                kept.update(settled)
                for day in [day for day in kept if day < wanted[0]]:
                    del kept[day]
        return [(day, known[day] if day in known else totals[day]) for day in wanted]


def _day_costs(store: BudgetStore, since: float, until: float) -> Iterable[tuple[float, float]]:
    """(time, cost) pairs to sum by UTC day: a file store's own day costs (a day that is over is
    one line of its totals), else every entry."""
    day_costs = getattr(store, "ledger_day_costs", None)
    if callable(day_costs):
        return cast(dict[float, float], day_costs(since, until)).items()
    return ((item.time, item.cost) for item in store.ledger(since, until))


def counts(views: Iterable[SubjectView]) -> dict[str, int]:
    """How many subjects of each kind, and how many near and over a budget."""
    found = {"user": 0, "team": 0, "tag": 0, "global": 0, "near": 0, "over": 0, "overruns": 0}
    for view in views:
        found[view.kind] += 1
        if view.level:
            found[view.level] += 1
        found["overruns"] += view.overruns
    return found
