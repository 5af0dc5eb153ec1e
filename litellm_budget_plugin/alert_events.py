"""What budget alerts to send: pure functions of records and ``now``, and a tracker of what was sent.

:class:`AlertTracker` turns a budget's record (read after a charge) or a refusal into alert
events (see :mod:`.alerts`), each once per subject and window; it does no I/O, so tests give it
records and times. A window is the record's main one (``window`` ``""``) or one of its
``windows`` (named as a refusal names it, e.g. ``"$5 daily"``); its identity is its start.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import budget
from .budget import UserRecord
from .errors import GLOBAL_KEY, BudgetRefusal, ConfigurationError, entity_of
from .windows import describe, window_end

DEFAULT_THRESHOLDS = (80.0, 95.0)
MAX_THRESHOLDS = 10
MAX_SUBJECTS = 100_000  # budgets remembered; the least recently seen is forgotten first
EVENTS = ("threshold_crossed", "budget_exceeded", "budget_reset")

Event = dict[str, Any]

# --- checks ---------------------------------------------------------------------------


def check_thresholds(values: object, name: str = "alert_thresholds") -> tuple[float, ...]:
    """Percentages in (0, 100], at most MAX_THRESHOLDS, sorted without repeats; one number is one."""
    items = [values] if isinstance(values, int | float) else values
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ConfigurationError(f"{name} must be percentages such as (80, 95), got {values!r:.80}")
    found: set[float] = set()
    for value in items:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
            raise ConfigurationError(f"{name} must be percentages in (0, 100], got {value!r:.80}")
        found.add(float(value))
        if len(found) > MAX_THRESHOLDS:
            raise ConfigurationError(f"{name}: at most {MAX_THRESHOLDS} thresholds")
    return tuple(sorted(found))


# --- what to tell: pure functions of records and now ----------------------------------------


@dataclass(frozen=True)
class WindowView:
    """One window of a record at ``now``: its name (``""`` for the main one), start, end (None:
    it never resets), spend and budget (None: tracked without a limit)."""

    label: str
    start: float | None  # None: a refusal's window the record no longer has
    end: float | None
    spend: float
    budget: float | None


def windows_of(record: UserRecord, now: float) -> list[WindowView]:
    """The windows of ``record`` in the periods holding ``now``: the main one, then its ``windows``."""
    rolled = budget.current_window(record, now)
    start = rolled["last_updated_at"]
    views = [
        WindowView(
            "",
            start,
            window_end(start, rolled.get("duration"), rolled.get("timezone")),
            rolled["current_cost"],
            rolled["total_budget"],
        )
    ]
    for window in rolled.get("windows", ()):
        days, zone = window.get("duration"), window.get("timezone")
        label = describe(window["budget"], days, zone, window.get("model"))
        end = window_end(window["start"], days, zone)
        views.append(WindowView(label, window["start"], end, window["spend"], window["budget"]))
    return views


def reached(view: WindowView, thresholds: Sequence[float]) -> list[float]:
    """The thresholds (percentages) the window's spend has reached."""
    limit = view.budget
    if not limit:
        return []
    # a relative margin: 80% of a budget summed from float costs may land a hair below
    return [t for t in thresholds if view.spend >= limit * t / 100 * (1 - 1e-9)]


@dataclass
class _Seen:
    windows: dict[str, WindowView] = field(default_factory=dict)
    sent: set[tuple[str, float | None, str, float | None]] = field(default_factory=set)


class AlertTracker:
    """The events a budget's records call for, each once per subject and window; remembers
    what it saw and sent (for MAX_SUBJECTS budgets). Not thread-safe: one alert thread owns it."""

    def __init__(self, thresholds: Iterable[float] = DEFAULT_THRESHOLDS, max_subjects: int = MAX_SUBJECTS) -> None:
        self.thresholds = check_thresholds(thresholds)
        self.max_subjects = max_subjects
        self._seen: OrderedDict[tuple[str | None, str], _Seen] = OrderedDict()

    def charged(
        self, subject: str, record: UserRecord, now: float, *, project: str | None = None, model: str | None = None
    ) -> list[Event]:
        """Events for a budget just charged: its windows' resets, then the thresholds they reached."""
        seen = self._of(project, subject)
        views = windows_of(record, now)
        events = self._resets(seen, views, project, subject, now)
        for view in views:
            for threshold in self.thresholds:
                key = (view.label, view.start, "threshold_crossed", threshold)
                if threshold not in reached(view, (threshold,)):
                    seen.sent.discard(key)  # below it again: armed again
                elif key not in seen.sent:
                    seen.sent.add(key)
                    extra = {"threshold": threshold, "model": model}
                    events.append(_event("threshold_crossed", project, subject, view, now, **extra))
        return events

    def refused(
        self, error: BudgetRefusal, record: UserRecord | None, now: float, *, project: str | None = None
    ) -> list[Event]:
        """Events for a refused call: resets seen in ``record`` (the refusing budget's, None if it
        has none), then ``budget_exceeded`` if its window has not had one yet."""
        subject = error.subject
        if record is None and error.budget <= 0:
            return []  # a user without a budget, denied (unknown_users="deny"): nothing to alert
        seen = self._of(project, subject)
        views = windows_of(record, now) if record is not None else []
        events = self._resets(seen, views, project, subject, now)
        view = next((v for v in views if v.label == error.window), None)
        key = (error.window, None if view is None else view.start, "budget_exceeded", None)
        if key not in seen.sent:
            seen.sent.add(key)
            shown = WindowView(error.window, *_span(view), error.spend, error.budget)
            extra = {"estimate": error.estimate, "reserved": error.reserved}
            events.append(_event("budget_exceeded", project, subject, shown, now, **extra))
        return events

    def _resets(
        self, seen: _Seen, views: list[WindowView], project: str | None, subject: str, now: float
    ) -> list[Event]:
        events: list[Event] = []
        for view in views:
            before = seen.windows.get(view.label)
            seen.windows[view.label] = view
            if before is None or before.start is None or view.start is None or view.start == before.start:
                continue
            # a later window (an earlier start: the budget was made again, with a new window)
            seen.sent = {key for key in seen.sent if key[0] != view.label or key[1] == view.start}
            if view.start > before.start and view.budget is not None:
                closed = {"previous_window_start": before.start, "previous_spend": before.spend}
                events.append(_event("budget_reset", project, subject, view, now, **closed))
        return events

    def _of(self, project: str | None, subject: str) -> _Seen:
        key = (project, subject)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
            if len(self._seen) > self.max_subjects:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        return seen


def _span(view: WindowView | None) -> tuple[float | None, float | None]:
    return (None, None) if view is None else (view.start, view.end)


def _event(kind: str, project: str | None, subject: str, view: WindowView, now: float, **extra: Any) -> Event:
    entity_type, entity_id = entity_of(subject)
    named = "the global budget" if subject == GLOBAL_KEY else f"{entity_type} {entity_id!r}"
    which = f" ({view.label} window)" if view.label else ""
    money = f"${view.spend:.6f} of ${view.budget or 0:.6f}"
    messages = {
        "threshold_crossed": f"{named}{which} has spent {money}: {extra.get('threshold', 0):g}% reached",
        "budget_exceeded": f"{named}{which} refused a call: spent {money}",
        "budget_reset": f"{named}{which} began a new window (${extra.get('previous_spend', 0):.6f} spent in the last)",
    }
    return {
        "event": kind,
        "id": uuid.uuid4().hex,
        "subject": subject,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "project": project,
        "window": view.label,
        "window_start": view.start,
        "window_end": view.end,
        "spend": view.spend,
        "budget": view.budget,
        **extra,
        "message": messages[kind],
        "occurred_at": now,
    }
