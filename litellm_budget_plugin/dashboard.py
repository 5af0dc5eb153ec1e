"""The budget server's dashboard (``GET /dashboard``): what a project's budgets look like now.

For one project: every subject (users, teams, tags, the global budget) with its spend against
its budget, its next reset, its further windows and its overruns; the subjects at 80 % or more
of a budget, flagged; and spend per UTC day over the last 30 days, summed from the ledger.
:func:`render` gathers it from a store and returns one self-contained HTML page (no script, no
external asset; :mod:`._dashboard_html` writes it, :mod:`._dashboard_views` holds the values).

Alerts here are derived from spend and budget at render time (:data:`NEAR` and over), not read
from an alert log: webhook alerts are another module's.

Days that are over do not change, so :class:`DailySpend` keeps their totals in memory and each
page load reads only today's ledger (and days not yet cached).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date, timedelta

from ._dashboard_html import page
from ._dashboard_views import (
    CHART_DAYS,
    DEFAULT_REFRESH_SECONDS,
    NEAR,
    DailySpend,
    SubjectView,
    WindowView,
    subject_views,
    utc_day,
)
from .limits import UserRecord
from .stores.base import BudgetStore

_DAY = timedelta(days=1)

__all__ = [
    "CHART_DAYS",
    "DEFAULT_REFRESH_SECONDS",
    "NEAR",
    "DailySpend",
    "SubjectView",
    "WindowView",
    "render",
    "subject_views",
]


def store_time(store: BudgetStore) -> float:
    """The store's time (a test's store may have a clock of its own), else the system's."""
    clock = getattr(store, "clock", None)
    return float(clock()) if callable(clock) else time.time()


def render(
    project: str | None,
    projects: Sequence[str],
    store: BudgetStore | None,
    daily: DailySpend,
    *,
    refresh: int = DEFAULT_REFRESH_SECONDS,
    now: float | None = None,
) -> str:
    """The dashboard page of ``project`` (None: there is none to show), read from ``store``
    (None: the project has no data yet); ``projects`` are those the viewer may switch to."""
    records: dict[str, UserRecord] = {}
    chart: list[tuple[date, float]] | None = None
    if now is None:
        now = time.time() if store is None else store_time(store)
    if store is not None and project is not None:
        records = store.all()
        chart = _chart(project, store, daily, now)
    elif project is not None:
        chart = [(utc_day(now) - _DAY * back, 0.0) for back in range(CHART_DAYS - 1, -1, -1)]
    return page(project, projects, subject_views(records, now), chart, now=now, refresh=refresh)


def _chart(project: str, store: BudgetStore, daily: DailySpend, now: float) -> list[tuple[date, float]] | None:
    """The last days' spend, or None for a store that keeps no ledger."""
    if not callable(getattr(store, "ledger", None)):
        return None
    try:
        return daily.last_days(project, store, now)
    except NotImplementedError:
        return None
