"""What ``litellm-budget show`` prints: every budget by kind, or one (a team with its members),
with the spend of its last windows from the store's ledger."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from . import _cli_tables, budget, reports, windows
from ._cli_tables import money as _money
from .errors import BudgetPluginError, UnknownUserError
from .limits import SECONDS_PER_DAY
from .stores import BudgetStore
from .subjects import kind_of

CLOSED_WINDOWS_SHOWN = 3  # show USER: the spend of this many windows before the current one


Window = tuple[float, float, float | None]  # start, end, spend (None: older than the ledger keeps)


def closed_windows(target: BudgetStore, key: str, record: budget.UserRecord, now: float) -> tuple[list[Window], str]:
    """The spend of a budget's last CLOSED_WINDOWS_SHOWN windows, from the store's ledger, as
    (start, end, spend), newest first: resets leave it there. Each window is one read, summed
    as it streams (day totals where the store keeps them). Also a note: why there is no spend
    (a window older than the ledger's retention, a ledger the store cannot read)."""
    start = budget.current_window(record, now)["last_updated_at"]
    closed = windows.closed_windows(start, record.get("duration"), record.get("timezone"), CLOSED_WINDOWS_SHOWN)
    kept_days = getattr(target, "ledger_retention_days", None)
    oldest = None if kept_days is None else now - kept_days * SECONDS_PER_DAY
    history: list[Window] = []
    try:
        for begin, end in closed:
            spent = math.fsum(
                item.cost for item in reports.charges(target, begin, end) if key in (item.user, *item.subjects)
            )
            # nothing found before the retention this process knows: maybe not kept, not "$0"
            history.append((begin, end, None if not spent and oldest is not None and begin < oldest else spent))
    except BudgetPluginError as exc:
        return [], f"closed windows: the ledger could not be read ({exc})"
    note = f"windows older than {kept_days:g} days may not be kept" if any(s is None for *_, s in history) else ""
    return history, note


def show(
    records: dict[str, budget.UserRecord],
    key: str | None,
    now: float,
    as_json: bool,
    history: Sequence[Window] = (),
    note: str = "",
) -> list[str]:
    """What ``show`` prints: every budget, or one (a team with its members), with the spend of
    its last windows (``history``) and a ``note`` on them."""
    if key is not None and kind_of(key) == "team":
        lines = _show_team(records, key, now, as_json)
    elif key is not None and key not in records:
        raise UnknownUserError(key)
    else:
        lines = _json(records, now) if as_json else _cli_tables.tables(records, now)
    if as_json:
        if not history:
            return lines
        view = json.loads(lines[0])
        view.setdefault(key, {})["closed_windows"] = [
            {"start": _iso(begin), "end": _iso(end), "spend": spend} for begin, end, spend in history
        ]
        return [json.dumps(view, indent=2, sort_keys=True)]
    shown = [
        f"  {_iso(begin)} to {_iso(end)}: {'not kept' if spend is None else _money(spend)}"
        for begin, end, spend in history
    ]
    extra = (["", "closed windows (from the ledger):", *shown] if history else []) + (["", note] if note else [])
    return [*lines, *extra]


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _show_team(records: dict[str, budget.UserRecord], key: str, now: float, as_json: bool) -> list[str]:
    """A team's budget and the users whose record names it; a team without a budget of its
    own is shown while some user names it."""
    team = {key: records[key]} if key in records else {}
    crew = _cli_tables.members(records, key)
    if not team and not crew:
        raise UnknownUserError(key)
    if as_json:
        return _json({**team, **crew}, now)
    lines = _cli_tables.table("TEAM", team, records, now) if team else [f"{key}: no budget (its spend is tracked)"]
    if not crew:
        return [*lines, "", f"no users name team {key.removeprefix('team:')!r} (set USER AMOUNT --team NAME)"]
    return [*lines, "", *_cli_tables.table("MEMBER", crew, records, now)]


def _json(records: dict[str, budget.UserRecord], now: float) -> list[str]:
    return [json.dumps(_cli_tables.json_view(records, now), indent=2, sort_keys=True)]
