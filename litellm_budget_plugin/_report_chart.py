"""``litellm-budget report --chart FILE.png|FILE.svg``: spend per day, stacked by group.

The top panel stacks each day's spend by the report's grouping (the top N series, the rest
as "other"). When the grouping is users, teams or tags, a second panel draws each shown
series' spend per day against its budget's daily pace (the budget over its window's days,
exact for a daily budget): a budget line on the stacked panel would compare one budget with
everyone's spend. matplotlib is an optional extra (``[charts]``), imported only here; the
figure is drawn without pyplot (no global backend, nothing opens a window).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from . import reports
from .errors import ConfigurationError

FORMATS = {".png": "png", ".svg": "svg"}
EXTRA_HINT = 'pip install "litellm_budget_plugin[charts]"'
OTHER_COLOR = "#b0b0b0"


def check_target(path: str) -> Path:
    """The chart's file, checked before any work: a .png or .svg in a folder we may write."""
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise ConfigurationError(f"--chart {path!r}: the file must end in .png or .svg")
    if target.is_dir():
        raise ConfigurationError(f"--chart {path!r} is a folder: name a .png or .svg file")
    folder = target.parent
    if not folder.is_dir():
        raise ConfigurationError(f"--chart {path!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigurationError(f"--chart {path!r}: cannot write there (permission denied)")
    return target


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigurationError(f"--chart needs matplotlib: {EXTRA_HINT}") from None


def write(target: Path, data: bytes) -> None:
    """Write the chart whole (a temporary file renamed over it) or not at all."""
    try:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise ConfigurationError(f"--chart {str(target)!r}: cannot write it: {exc}") from exc


def render(report: reports.Report, top: int, records: Mapping[str, Mapping[str, Any]], kind: str) -> bytes:
    """The chart as PNG or SVG bytes (``kind``: ``png`` or ``svg``)."""
    import matplotlib
    from matplotlib import dates as mdates
    from matplotlib import ticker
    from matplotlib.figure import Figure

    days, names, spend = reports.chart_series(report, top)
    lines = [line for line in reports.budget_lines(records, report.by, names) if line.series in spend]
    x = [date.fromisoformat(day) for day in days]
    palette = _colors(len(names))
    colors = {name: (OTHER_COLOR if name == reports.OTHER else palette[i]) for i, name in enumerate(names)}
    highest = max((sum(s[i] for s in spend.values()) for i in range(len(days))), default=0.0)
    decimals = reports.money_decimals([highest / 6])
    as_money = ticker.FuncFormatter(lambda value, _: reports.money(value, decimals))

    figure = Figure(figsize=(12, 8.5 if lines else 5.5), dpi=110)
    axes = figure.subplots(2 if lines else 1, 1, sharex=True, squeeze=False)[:, 0]
    bars = axes[0]
    grouping = " and ".join(group for group in report.by if group != "day") or "day"
    total = report.total
    bars.set_title(
        _plain(
            f"Spend per day by {grouping}, {report.period.label()}\n"
            f"total {reports.money(total.spend, reports.money_decimals([total.spend]))} over {total.calls:,} calls"
        ),
        loc="left",
    )
    bottom = [0.0] * len(days)
    for name in names:
        bars.bar(x, spend[name], width=0.8, bottom=bottom, label=_plain(name), color=colors[name])
        bottom = [b + s for b, s in zip(bottom, spend[name], strict=True)]
    handles, labels = bars.get_legend_handles_labels()
    bars.legend(
        handles[::-1], labels[::-1], title=grouping, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    bars.set_ylabel("spend per day")
    notes = []
    if any(group in ("team", "tag") for group in report.by):
        notes.append("A call of several teams or tags counts in each; the total counts it once.")
    if len(names) > top:
        notes.append(f"Top {top} by spend; the rest as 'other'.")
    if notes:  # under the day axis, left-aligned
        axes[-1].annotate(
            " ".join(notes),
            (0, 0),
            xycoords="axes fraction",
            xytext=(0, -42),
            textcoords="offset points",
            fontsize=8,
            color="#555555",
            va="top",
        )
    if lines:
        paced = axes[1]
        for line in lines:
            color = colors[line.series]
            paced.plot(
                x, spend[line.series], color=color, marker="o", markersize=3, label=_plain(f"{line.series}: spend")
            )
            paced.axhline(
                line.per_day,
                color=color,
                linestyle="--",
                linewidth=1.2,
                label=_plain(f"{line.series}: budget {line.label}"),
            )
        paced.set_title(
            "Each budget's spend per day against its daily pace (budget / window days)", loc="left", fontsize=10
        )
        paced.set_ylabel("spend per day")
        paced.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        paced.yaxis.set_major_formatter(
            ticker.FuncFormatter(
                lambda value, _: reports.money(value, reports.money_decimals([max(line.per_day for line in lines) / 6]))
            )
        )
    for panel in axes:
        if panel is bars:
            panel.yaxis.set_major_formatter(as_money)
        panel.set_ylim(bottom=0)
        panel.grid(axis="y", color="#e5e5e5")
        panel.set_axisbelow(True)
        for side in ("top", "right"):
            panel.spines[side].set_visible(False)
    # A tick under each bar (every few bars over long periods): bars stand at their day's start.
    # (matplotlib.dates has no annotations)
    every = max(1, math.ceil(len(days) / 14))
    axes[-1].xaxis.set_major_locator(mdates.DayLocator(interval=every))  # type: ignore[no-untyped-call]
    first, last = mdates.date2num([x[0], x[-1]])  # type: ignore[no-untyped-call]
    axes[-1].set_xlim(first - 0.6, last + 0.6)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%b %-d"))  # type: ignore[no-untyped-call]
    axes[-1].set_xlabel(f"day ({report.period.timezone})")
    out = io.BytesIO()
    # SVG text as text (searchable, selectable), not as outlines
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(out, format=kind, bbox_inches="tight")
    return out.getvalue()


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(count, 1))]


def _plain(text: str) -> str:
    """Text as written: two $ in a label would make matplotlib typeset what is between as math."""
    return text.replace("$", r"\$")
