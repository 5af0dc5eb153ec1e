"""``litellm-budget report``: spend over a period from the store's ledger, grouped, as a
table, JSON or CSV, and maybe a chart.

The arithmetic is in :mod:`.reports` (pure), the chart in :mod:`._report_chart`; this module
reads the store and prints. Every argument is checked, and the chart's file too, before the
ledger is read; a ledger line torn by a crash is skipped with a warning on stderr.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from . import reports
from ._cli_tables import _align
from .errors import ConfigurationError
from .stores import BudgetStore

HELP = """\b
Periods: --since 30d (the 30 x 24 hours up to now; also 12h, 2w, 3mo), or --from and --to as
ISO dates or times (2026-12-01, 2026-12-01T09:30); a date is its midnight in --timezone, and
--to DATE includes that day. Without them: the last 30 days.
\b
Groups: --by user, model, day, team or tag; repeat it for a row per combination (--by user
--by model). A call of several teams or tags counts in each of their rows, so rows may add up
to more than the total, which counts each call once; calls of none are in a (none) row.
"""

_HEADINGS = {
    "spend": "SPEND",
    "calls": "CALLS",
    "prompt_tokens": "PROMPT TOKENS",
    "completion_tokens": "COMPLETION TOKENS",
}


def command(
    store_options: Callable[..., Any],
    exit_codes: Callable[..., Any],
    open_store: Callable[[str | None, str, str | None], BudgetStore],
    epilog: str,
) -> click.Command:
    """The ``report`` command, made with cli.py's store options and exit codes."""

    @click.command(name="report", epilog=HELP + "\n" + epilog)
    @click.option("--since", metavar="LENGTH", help="The period up to now: 12h, 30d, 2w, 3mo...")
    @click.option("--from", "start", metavar="DATE", help="Start: an ISO date or time (in --timezone).")
    @click.option("--to", "end", metavar="DATE", help="End: an ISO date (included) or time (excluded).")
    @click.option("--timezone", metavar="ZONE", help="Where days begin, an IANA name [default: UTC].")
    @click.option(
        "--by",
        "by",
        multiple=True,
        type=click.Choice(reports.GROUPS, case_sensitive=False),
        help="Group by this; repeatable [default: user].",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON: period, rows and total.")
    @click.option("--csv", "as_csv", is_flag=True, help="Print CSV: a header and one line per group.")
    @click.option("--chart", metavar="FILE.png|FILE.svg", help="Also draw spend per day (needs the [charts] extra).")
    @click.option("--top", type=click.IntRange(1, 40), default=8, show_default=True, help="Series in the chart.")
    @store_options
    @exit_codes
    def report(store: str | None, project: str, api_key: str | None, **given: Any) -> None:
        """Spend from the ledger over a period, grouped by user, model, day, team or tag."""
        run(open_store, store, project, api_key, **given)

    return report


def run(
    open_store: Callable[[str | None, str, str | None], BudgetStore],
    store: str | None,
    project: str,
    api_key: str | None,
    *,
    since: str | None,
    start: str | None,
    end: str | None,
    timezone: str | None,
    by: tuple[str, ...],
    as_json: bool,
    as_csv: bool,
    chart: str | None,
    top: int,
) -> None:
    span = reports.period(time.time(), since=since, start=start, end=end, timezone=timezone)
    groups = reports.check_groups(by)
    if as_json and as_csv:
        raise ConfigurationError("--json and --csv: give one")
    target = None
    if chart is not None:
        from . import _report_chart

        target = _report_chart.check_target(chart)
        _report_chart.require_matplotlib()
    source = open_store(store, project, api_key)
    try:
        with _warnings_on_stderr():
            days = "day" in groups or target is not None
            entries = reports.charges(source, span.start, span.end, utc_days=not days or span.timezone == "UTC")
            result = reports.aggregate(entries, span, groups, daily=target is not None)
        records = dict(source.all()) if target is not None else {}
    finally:
        source.close()
    if as_json:
        click.echo(json.dumps(as_dict(result), indent=2))
    elif as_csv:
        click.echo(as_csv_text(result), nl=False)
    else:
        for line in table(result, source):
            click.echo(line)
    if target is not None:
        data = _report_chart.render(result, top, records, _report_chart.FORMATS[target.suffix.lower()])
        _report_chart.write(target, data)
        click.echo(f"chart written to {target}", err=True)


class _ToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"warning: {record.getMessage()}", err=True)


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """The package's warnings (a torn ledger line skipped) shown on stderr while reading."""
    logger = logging.getLogger("litellm_budget_plugin")
    handler = _ToStderr(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# --- output -----------------------------------------------------------------------------


def table(result: reports.Report, source: object) -> list[str]:
    """The report as aligned columns: a title, a row per group, the total, notes."""
    title = f"spend by {', '.join(result.by)}, {result.period.label()}"
    if not result.total.calls:
        return [title, f"no charges in this period in {source!r}"]
    decimals = reports.money_decimals([row.spend for row in result.rows])
    header = [group.upper() for group in result.by] + list(_HEADINGS.values())
    rows = [header] + [[*row.key, *_figures(row, decimals)] for row in result.rows]
    total = [*(["total"] + [""] * (len(result.by) - 1)), *_figures(result.total, decimals)]
    lines = _align([*rows, total], left=len(result.by))
    lines.insert(-1, "-" * max(map(len, lines)))
    out = [title, "", *lines]
    if any(group in ("team", "tag") for group in result.by):
        out += ["", "A call of several teams or tags counts in each of their rows; the total counts it once."]
    return out


def _figures(row: reports.Row, decimals: int) -> list[str]:
    return [
        reports.money(row.spend, decimals),
        f"{row.calls:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
    ]


def _iso(moment: float, timezone: str) -> str:
    return datetime.fromtimestamp(moment, ZoneInfo(timezone)).isoformat()


def as_dict(result: reports.Report) -> dict[str, Any]:
    """``--json``: the period (ISO and Unix times), the groupings, rows and total."""
    span = result.period
    return {
        "period": {
            "from": _iso(span.start, span.timezone),
            "to": _iso(span.end, span.timezone),
            "since": span.start,
            "until": span.end,
            "timezone": span.timezone,
        },
        "by": list(result.by),
        "rows": [{**dict(zip(result.by, row.key, strict=True)), **_numbers(row)} for row in result.rows],
        "total": _numbers(result.total),
    }


def _numbers(row: reports.Row) -> dict[str, Any]:
    return {
        "spend": row.spend,
        "calls": row.calls,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
    }


def as_csv_text(result: reports.Report) -> str:
    """``--csv``: a header (the groupings, then spend, calls, tokens) and one line per group;
    no total line (it would be summed with the rows)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*result.by, *_HEADINGS])
    for row in result.rows:
        writer.writerow([*map(_cell, row.key), repr(row.spend), row.calls, row.prompt_tokens, row.completion_tokens])
    return out.getvalue()


def _cell(name: str) -> str:
    """A user, model, team or tag name as a CSV cell a spreadsheet shows as text: one that starts
    like a formula (``=HYPERLINK(...)``, a user id from outside) gets a leading apostrophe."""
    return "'" + name if name.startswith(("=", "+", "-", "@", "\t", "\r")) else name
