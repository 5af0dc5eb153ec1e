"""The dashboard's HTML: one page with inline CSS and an inline SVG chart, and no script.

Every string from a store (subject keys, teams, models in window labels, project names) goes
through :func:`html.escape` before it is written: subject names are user input. Exact values
ride in ``data-`` attributes (``data-spend``, ``data-budget``...) for tools and tests; cells
show them rounded. The page reloads itself with ``<meta http-equiv="refresh">`` (a browser
resends its Basic credentials on reload), so it needs no script and its Content-Security-Policy
can forbid every script. Built as a list of strings joined once: 10,000 subjects render in tens
of milliseconds (benchmarks/bench_dashboard.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from html import escape
from urllib.parse import quote

from ._dashboard_views import NEAR, SubjectView, counts, level_of

# Alerts listed above the table (all are flagged in it).
ALERTS_LISTED = 50

_CSS = """
:root{--fg:#1d2430;--muted:#5d6878;--line:#dfe3ea;--bg:#f5f7fa;--card:#fff;--ok:#3b7ddd;--near:#d98c00;--over:#d33a2c}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:var(--bg);
 font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",sans-serif}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 24px;padding:14px 24px;background:#1d2430;color:#fff}
header h1{margin:0;font-size:18px;font-weight:600}
header h1 span{color:#9fb0c8;font-weight:400}
header nav a{color:#c9d6ea;margin-right:12px;text-decoration:none}
header nav a.current{color:#fff;font-weight:600;border-bottom:2px solid #fff}
header .stamp{margin-left:auto;color:#9fb0c8;font-size:12px}
main{padding:18px 24px 40px;max-width:1400px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin-bottom:18px}
h2{font-size:15px;margin:0 0 10px}
.note{color:var(--muted);font-size:12px;margin:6px 0 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;background:none;border:0;padding:0}
.card{flex:1 1 160px;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card b{display:block;font-size:22px;font-weight:600}
.card span{color:var(--muted);font-size:12px}
.card.alert b{color:var(--over)}
svg text{font:11px "DejaVu Sans",sans-serif;fill:var(--muted)}
svg .grid{stroke:var(--line)}
svg .day{fill:var(--ok)}
svg .day.today{fill:#1d4f9c}
ul.alerts{margin:0;padding:0;list-style:none;columns:2 360px}
ul.alerts li{padding:2px 0;break-inside:avoid}
.flag{display:inline-block;min-width:44px;text-align:center;border-radius:3px;padding:0 5px;
 font-size:11px;font-weight:600;color:#fff;margin-right:6px}
.flag.over{background:var(--over)}
.flag.near{background:var(--near)}
table{border-collapse:collapse;width:100%}
th{position:sticky;top:0;background:#eef1f6;text-align:left;font-size:12px;color:var(--muted);font-weight:600;
 padding:6px 8px;border-bottom:1px solid var(--line)}
td{padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:middle}
td.spend,td.budget,td.remaining,td.overruns,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.subject{overflow-wrap:anywhere;min-width:180px;max-width:320px}
td.reset{white-space:nowrap}
td small,ul.alerts small{display:block;color:var(--muted);font-size:11px}
.kind{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}
.bar{width:140px;height:10px;background:#e7ebf1;border-radius:5px;overflow:hidden;margin-top:4px}
.bar i{display:block;height:100%;background:var(--ok)}
tr.near .bar i,.wbar.near i{background:var(--near)}
tr.over .bar i,.wbar.over i{background:var(--over)}
tr.over td.remaining{color:var(--over);font-weight:600}
td.used{white-space:nowrap}
td.used .bar{display:inline-block;vertical-align:middle;margin:0 6px 0 0}
td.used .pct{font-size:12px}
.wbar{width:80px;height:6px;display:inline-block;background:#e7ebf1;border-radius:3px;overflow:hidden;vertical-align:middle;margin-right:4px}
.wbar i{display:block;height:100%;background:var(--ok)}
td.windows{min-width:200px}
td.windows div{font-size:12px;padding:1px 0}
.scroll{overflow-x:auto}
.empty{color:var(--muted);padding:16px 0}
"""


def money(amount: float) -> str:
    """Dollars as shown: cents from $1 up, four decimals below (LLM calls cost fractions of a cent)."""
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0"
    return f"{sign}${amount:,.2f}" if amount >= 1 else f"{sign}${amount:.4f}"


def percent(share: float) -> str:
    return f"{share * 100:.0f}%" if share < 10 else f"{share * 100:,.0f}%"


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


def relative(moment: float, now: float) -> str:
    """``"in 3 h 12 min"``, ``"in 2 d 4 h"``: how far ahead a reset is."""
    seconds = moment - now
    if seconds <= 0:
        return "now"
    minutes = int(seconds // 60)
    if minutes < 1:
        return "in <1 min"
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"in {hours} h {minutes} min" if minutes else f"in {hours} h"
    days, hours = divmod(hours, 24)
    return f"in {days} d {hours} h" if hours else f"in {days} d"


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _width(share: float) -> str:
    return f"{min(share, 1.0) * 100:.1f}"


def page(
    project: str | None,
    projects: Sequence[str],
    views: Sequence[SubjectView],
    chart: Sequence[tuple[date, float]] | None,
    *,
    now: float,
    refresh: int,
) -> str:
    """The whole page. ``chart`` None: the store keeps no ledger."""
    title = "litellm-budget dashboard" + ("" if project is None else f": {project}")
    out = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        _header(project, projects, now, refresh),
        "<main>",
    ]
    if project is None:
        out.append(
            '<section><p class="empty" id="no-project">No projects yet: a project appears with its first '
            "budget or charge.</p></section>"
        )
    else:
        found = counts(views)
        out.append(_cards(views, found, chart))
        out.append(_chart_section(chart, now))
        out.append(_alerts(views, found))
        out.append(_table(views, now))
    out.append("</main></body></html>\n")
    return "".join(out)


def _header(project: str | None, projects: Sequence[str], now: float, refresh: int) -> str:
    links = []
    for name in projects if len(projects) > 1 else ():
        current = ' class="current"' if name == project else ""
        href = f"?project={quote(name)}" + ("" if refresh == 30 else f"&amp;refresh={refresh}")
        links.append(f'<a href="{escape(href)}"{current}>{escape(name)}</a>')
    shown = "" if project is None else f" <span>· {escape(project)}</span>"
    return (
        f"<header><h1>litellm-budget{shown}</h1>"
        f'<nav aria-label="projects">{"".join(links)}</nav>'
        f'<div class="stamp" id="rendered" data-time="{now!r}">as of {iso(now)} · reloads every {refresh} s</div>'
        "</header>"
    )


def _cards(views: Sequence[SubjectView], found: dict[str, int], chart: Sequence[tuple[date, float]] | None) -> str:
    kinds = ", ".join(
        f"{found[kind]:,} {kind if kind == 'global' or found[kind] == 1 else kind + 's'}"
        for kind in ("user", "team", "tag", "global")
        if found[kind]
    )
    alerts = found["over"] + found["near"]
    overrun_cost = sum(view.overrun_cost for view in views)
    cards = [
        ("subjects", f"{len(views):,}", kinds or "no budgets yet", ""),
        ("alerts", str(alerts), f"{found['over']} over, {found['near']} at ≥{NEAR:.0%}", " alert" if alerts else ""),
        ("overruns", str(found["overruns"]), f"{money(overrun_cost)} beyond their holds", ""),
    ]
    if chart is not None:
        cards.append(("today", money(chart[-1][1]), "spent today (UTC)", ""))
        cards.append(("month", money(sum(total for _day, total in chart)), f"spent in the last {len(chart)} days", ""))
    return (
        '<section class="cards">'
        + "".join(
            f'<div class="card{extra}" id="card-{name}"><b>{value}</b><span>{escape(label)}</span></div>'
            for name, value, label, extra in cards
        )
        + "</section>"
    )


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-12):
            return step * power
    return 10 * power


def _tick(value: float) -> str:
    """An axis label: as few decimals as the value needs (``$0.75``, ``$2.5``, ``$100``)."""
    return "$" + f"{value:,.6f}".rstrip("0").rstrip(".")


def chart_svg(days: Sequence[tuple[date, float]], today: date) -> str:
    """Spend per day as an SVG bar chart: a bar per day, dollar ticks, a label every 5 days."""
    width, height, left, right, top, bottom = 900, 220, 64, 10, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_ceiling(max((total for _day, total in days), default=0.0))
    out = [
        f'<svg id="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="spend per day, last {len(days)} days" xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in range(5):
        value = top_value * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="ylabel" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(value)}</text>')
    slot = plot_w / max(len(days), 1)
    for n, (day, total) in enumerate(days):
        bar_h = plot_h * total / top_value
        x = left + n * slot + 2
        y = top + plot_h - bar_h
        current = " today" if day == today else ""
        out.append(
            f'<rect class="day{current}" data-day="{day.isoformat()}" data-spend="{total!r}" x="{x:.1f}" '
            f'y="{y:.1f}" width="{slot - 4:.1f}" height="{bar_h:.1f}"><title>{day.isoformat()}: '
            f"{money(total)}</title></rect>"
        )
        if n % 5 == 4 or day == today:
            out.append(
                f'<text class="xlabel" x="{x + (slot - 4) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                f"{day.strftime('%m-%d')}</text>"
            )
    out.append("</svg>")
    return "".join(out)


def _chart_section(chart: Sequence[tuple[date, float]] | None, now: float) -> str:
    if chart is None:
        return (
            '<section><h2>Last 30 days</h2><p class="empty" id="no-ledger">This store keeps no ledger, '
            "so there is no history to chart.</p></section>"
        )
    today = datetime.fromtimestamp(now, UTC).date()
    return (
        f"<section><h2>Spend per day, last {len(chart)} days (UTC)</h2>{chart_svg(chart, today)}"
        '<p class="note">From the ledger: every charge on the day it was made, counted once (a charge to a user '
        "and its team is one bar's worth, not two).</p></section>"
    )


def _alerts(views: Sequence[SubjectView], found: dict[str, int]) -> str:
    flagged = [view for view in views if view.level]
    flagged.sort(key=lambda view: (view.level != "over", -view.worst, view.key))
    items = []
    for view in flagged[:ALERTS_LISTED]:
        where = _worst_window(view)
        items.append(
            f'<li class="{view.level}" data-subject="{escape(view.key)}" data-level="{view.level}">'
            f'<span class="flag {view.level}">{view.level}</span>{escape(view.key)} '
            f"<small>{percent(view.worst)} of {escape(where)}</small></li>"
        )
    more = len(flagged) - ALERTS_LISTED
    body = (
        f'<ul class="alerts" id="alerts">{"".join(items)}</ul>'
        if items
        else f'<p class="empty" id="alerts">No subject is at {NEAR:.0%} of a budget.</p>'
    )
    if more > 0:
        body += f'<p class="note">… and {more:,} more, flagged in the table below.</p>'
    return (
        f"<section><h2>Alerts raised ({found['over']} over, {found['near']} near)</h2>{body}"
        f'<p class="note">Flagged here from spend against budget as of this page: at {NEAR:.0%} of any of a '
        "subject's windows, and at 100% or more.</p></section>"
    )


def _worst_window(view: SubjectView) -> str:
    best_label, best = "its budget", view.share
    for window in view.windows:
        if window.share > best:
            best_label, best = window.label, window.share
    if best_label == "its budget" and view.budget is not None:
        return money(view.budget)
    return best_label


def _table(views: Sequence[SubjectView], now: float) -> str:
    if not views:
        return '<section><p class="empty" id="no-subjects">No budgets in this project yet.</p></section>'
    rows = [
        "<section><h2>Subjects, highest spend first</h2>"
        '<div class="scroll"><table id="subjects"><thead><tr><th>Subject</th><th>Kind</th><th class="num">Spend</th>'
        '<th class="num">Budget</th><th>Used</th><th class="num">Remaining</th><th>Next reset</th>'
        '<th>Other windows</th><th class="num">Overruns</th></tr></thead><tbody>'
    ]
    reset_cache: dict[float, str] = {}
    for view in views:
        rows.append(_row(view, now, reset_cache))
    rows.append("</tbody></table></div></section>")
    return "".join(rows)


def _row(view: SubjectView, now: float, reset_cache: dict[float, str]) -> str:
    key = escape(view.key)
    team = f"<small>team {escape(view.team)}</small>" if view.team and view.kind == "user" else ""
    held = f"<small>{money(view.held)} held</small>" if view.held else ""
    if view.budget is None:
        limit, used, remaining = "no limit", "", ""
    else:
        share = view.share
        limit = money(view.budget)
        used = f'<div class="bar"><i style="width:{_width(share)}%"></i></div><span class="pct">{percent(share)}</span>'
        left = view.budget - view.spend  # money is never shown below zero: past it, by how much
        remaining = money(left) if left >= 0 else f"over by {money(-left)}"
    at = view.resets_at
    if at is None:
        reset = "never"
    elif (reset := reset_cache.get(at, "")) == "":
        reset = reset_cache[at] = f"{iso(at)}<small>{relative(at, now)}</small>"
    windows = (
        ""
        if not view.windows
        else "".join(
            f'<div class="window" data-spend="{window.spend!r}" data-budget="{window.budget!r}">'
            f'<span class="wbar {level_of(window.share)}"><i style="width:{_width(window.share)}%"></i></span>'
            f"{money(window.spend)} of {escape(window.label)}"
            + ("" if window.resets_at is None else f" · resets {relative(window.resets_at, now)}")
            + "</div>"
            for window in view.windows
        )
    )
    overruns = f"{view.overruns}<small>+{money(view.overrun_cost)}</small>" if view.overruns else ""
    level = f' class="{view.level}"' if view.level else ""
    return (
        f'<tr{level} data-subject="{key}" data-kind="{view.kind}" data-spend="{view.spend!r}" '
        f'data-budget="{_num(view.budget)}" data-level="{view.level}" data-resets="{_num(view.resets_at)}" '
        f'data-overruns="{view.overruns}">'
        f'<td class="subject">{key}{team}</td><td class="kind">{view.kind}</td>'
        f'<td class="spend">{money(view.spend)}{held}</td><td class="budget">{limit}</td>'
        f'<td class="used">{used}</td><td class="remaining">{remaining}</td>'
        f'<td class="reset">{reset}</td><td class="windows">{windows}</td>'
        f'<td class="overruns">{overruns}</td></tr>'
    )
