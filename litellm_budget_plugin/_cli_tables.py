"""What ``litellm-budget show`` prints: budgets grouped by kind, each with its windows.

One table per kind of budget (users, teams, tags, litellm's global budget); each row is a
budget's main window, followed by a row for each of its further windows (``+ $100 monthly``,
``+ $1 daily on gpt-4o``). Pure functions of the records and ``now``: the command reads the
store, these format what it read.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from . import budget, windows
from .subjects import GLOBAL, kind_of

# The tables of ``show``, in order: a heading (the first column's title) and who is in it.
KINDS = (("USER", "user"), ("TEAM", "team"), ("TAG", "tag"), ("GLOBAL", "global"))


def kind(key: str) -> str:
    """``user``, ``team``, ``tag`` or ``global``: the table a budget is shown in."""
    return "global" if key == GLOBAL else kind_of(key)


def members(records: Mapping[str, budget.UserRecord], team_key: str) -> dict[str, budget.UserRecord]:
    """The users whose record names the team ``team_key`` (``"team:red"``)."""
    name = team_key.removeprefix("team:")
    return {key: r for key, r in records.items() if kind(key) == "user" and r.get("team") == name}


def json_view(records: Mapping[str, budget.UserRecord], now: float) -> dict[str, Any]:
    """``show --json``: each record as LiteLLM shows it, with ``next_reset`` for it and each window."""
    out: dict[str, Any] = {}
    for key, record in records.items():
        view = {**budget.litellm_view(record), "next_reset": budget.next_reset(record, now)}
        if "windows" in record:
            view["windows"] = [{**window, "next_reset": _window_end(window)} for window in record["windows"]]
        out[key] = view
    return out


def tables(records: Mapping[str, budget.UserRecord], now: float) -> list[str]:
    """The lines of one table per kind of budget in ``records``, a blank line between them."""
    lines: list[str] = []
    for heading, which in KINDS:
        group = {key: r for key, r in sorted(records.items()) if kind(key) == which}
        if group:
            lines += [""] * bool(lines) + table(heading, group, records, now)
    return lines


def table(
    heading: str, group: Mapping[str, budget.UserRecord], records: Mapping[str, budget.UserRecord], now: float
) -> list[str]:
    """The lines of the table of ``group`` under ``heading``; a user's table shows their teams
    (if any has one), a team's how many users ``records`` put in it."""
    teams = heading == "USER" and any("team" in r for r in group.values())
    counted = heading == "TEAM"
    overruns = any(r.get("overruns") for r in group.values())
    header = [heading, *(["TEAM"] if teams else []), "SPENT", "BUDGET", "USED", "NEXT RESET"]
    header += [*(["MEMBERS"] if counted else []), *(["OVERRUNS"] if overruns else [])]
    rows = [header]
    for key, record in group.items():
        main = [key, *([record.get("team", "-")] if teams else [])]
        main += _figures(record["current_cost"], record["total_budget"], budget.next_reset(record, now))
        main += [*([str(len(members(records, key)))] if counted else []), *([_overruns(record)] if overruns else [])]
        rows.append(main)
        for window in record.get("windows", ()):
            row = [f"  + {window_label(window)}", *([""] if teams else [])]
            row += _figures(window["spend"], window["budget"], _window_end(window))
            rows.append(row + [""] * (len(header) - len(row)))
    return _align(rows, left=2 if teams else 1)


def window_label(window: windows.Window) -> str:
    """A further window as refusals name it: ``$100 monthly (calendar, Europe/Paris)``."""
    return windows.describe(window["budget"], window.get("duration"), window.get("timezone"), window.get("model"))


def _figures(spend: float, limit: float | None, reset: float | None) -> list[str]:
    return [money(spend), money(limit), _used(spend, limit), _time(reset)]


def _window_end(window: windows.Window) -> float | None:
    return windows.window_end(window["start"], window.get("duration"), window.get("timezone"))


def _align(rows: list[list[str]], left: int) -> list[str]:
    """Columns padded to their widest cell: the first ``left`` to the left, numbers to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def money(amount: float | None) -> str:
    if amount is None:
        return "unlimited"
    if amount == round(amount, 2):
        return f"${amount:,.2f}"
    return f"${amount:,.6f}".rstrip("0")


def _used(spend: float, limit: float | None) -> str:
    if limit is None:
        return "-"
    if limit == 0:
        return "100.0%" if spend > 0 else "0.0%"
    return f"{100 * spend / limit:.1f}%"


def _overruns(record: budget.UserRecord) -> str:
    count = record.get("overruns", 0)
    return f"{count} (+{money(record.get('overrun_cost', 0.0))})" if count else "-"


def _time(when: float | None) -> str:
    if when is None:
        return "never"
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
