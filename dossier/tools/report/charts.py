"""The report's charts, drawn with matplotlib into PNG bytes (no pyplot, no global state).

Each chart answers one question a director asks, and is titled in the HTML with that
question; the figures themselves carry no title, only what is needed to read them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from dossier.tools.report.data import DossierRow, RunData, days, figures_by, weeks
from engine import indicators as ind
from engine.calendar import VN_TZ, WorkingCalendar
from engine.procedures import Catalogue

LEVELS = ("commune", "district", "province")
LEVEL_NAMES = {"commune": "Commune", "district": "District", "province": "Province"}
LEVEL_COLORS = {"commune": "#0f766e", "district": "#d97706", "province": "#4338ca"}
GOOD, BAD, WARN, MUTED, INK = "#15803d", "#b91c1c", "#d97706", "#94a3b8", "#1e293b"
HANDED_OVER = "#7c3aed"  # dossiers passed to a successor (contract 1.1): no level's colour
GRID = "#e2e8f0"
DPI = 144


@dataclass(frozen=True, slots=True)
class Milestone:
    """A day the rules changed: drawn as a vertical line on every chart over time."""

    day: date
    label: str


def milestones(catalogue: Catalogue, period: ind.Period) -> list[Milestone]:
    """Days within the period on which many procedures change version (a reorganisation)."""
    first, last = period.start.astimezone(VN_TZ).date(), period.end.astimezone(VN_TZ).date()
    starting: dict[date, int] = {}
    ending_levels: dict[date, set[str]] = {}
    for version in catalogue.all_versions():
        if first < version.effective_from <= last and version.version > 1:
            starting[version.effective_from] = starting.get(version.effective_from, 0) + 1
        if version.effective_to is not None:
            ending_levels.setdefault(version.effective_to + timedelta(days=1), set()).update(
                version.levels
            )
    result: list[Milestone] = []
    for day, count in sorted(starting.items()):
        if count < 10:
            continue
        # A level with versions ending that day and none in force after it has been abolished.
        gone = [
            lvl
            for lvl in sorted(ending_levels.get(day, ()))
            if not any(lvl in v.levels and v.in_force_on(day) for v in catalogue.all_versions())
        ]
        text = f"{day.day} {day:%b %Y}: {count} procedures change"
        if gone:
            text += f"; {', '.join(gone)} level ends"
        result.append(Milestone(day, text))
    return result


# ---------------------------------------------------------------------------------------------


def _figure(width: float = 10.0, height: float = 3.6) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    figure.set_facecolor("white")
    return figure


def _style(ax: Axes, *, grid_axis: Literal["x", "y", "both"] = "y") -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#cbd5e1")
    ax.tick_params(colors="#475569", labelsize=9)
    ax.grid(axis=grid_axis, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _dates(moments: Sequence[datetime]) -> list[float]:
    from matplotlib.dates import date2num

    return [float(date2num(m)) for m in moments]  # type: ignore[no-untyped-call]


def _local_day(moment: datetime) -> date:
    return moment.astimezone(VN_TZ).date()


def _mark_milestones(ax: Axes, marks: Sequence[Milestone], *, label: bool = True) -> None:
    for mark in marks:
        x = _dates([datetime.combine(mark.day, time(0))])[0]
        ax.axvline(x, color=INK, linewidth=1, linestyle=(0, (4, 3)), alpha=0.7)
        if label:
            ax.annotate(
                mark.label,
                xy=(x, 1),
                xycoords=("data", "axes fraction"),
                xytext=(4, -2),
                textcoords="offset points",
                va="top",
                fontsize=8.5,
                color=INK,
            )


def _date_axis(ax: Axes) -> None:
    from matplotlib.dates import DateFormatter, DayLocator

    ax.xaxis.set_major_locator(DayLocator(bymonthday=(1, 8, 15, 22)))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(DateFormatter("%d %b"))  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------


def receptions_per_day(
    run: RunData, period: ind.Period
) -> tuple[list[ind.Period], dict[str, list[int]]]:
    """The period's days, and the dossiers received each day by the level that received them:
    a dossier whose receiving agency had ended is received by its successor, at the
    successor's level (contract 1.1, "Handover"), not by a level that no longer exists."""
    spans = days(period)
    counts = {lvl: [0] * len(spans) for lvl in LEVELS}
    first = _local_day(spans[0].start)
    for row in run.rows:
        if row.received_at is None or row.received_at not in period:
            continue
        index = (_local_day(row.received_at) - first).days
        level = row.reception_level
        if 0 <= index < len(spans) and level in counts:
            counts[level][index] += 1
    return spans, counts


def received_per_day(run: RunData, period: ind.Period, marks: Sequence[Milestone]) -> bytes:
    """Dossiers received each day, stacked by the level that received them."""
    spans, counts = receptions_per_day(run, period)
    xs = _dates([datetime.combine(_local_day(s.start), time(12)) for s in spans])
    figure = _figure(height=3.3)
    ax = figure.add_subplot()
    bottom = [0] * len(spans)
    for level in LEVELS:
        if not any(counts[level]):
            continue
        ax.bar(xs, counts[level], bottom=bottom, width=0.8, color=LEVEL_COLORS[level],
               label=LEVEL_NAMES[level])  # fmt: skip
        bottom = [b + c for b, c in zip(bottom, counts[level], strict=True)]
    _style(ax)
    _date_axis(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylabel("dossiers received", color="#475569", fontsize=9)
    ax.set_ylim(0, max(bottom or [1]) * 1.22)
    _mark_milestones(ax, marks)
    ax.legend(frameon=False, fontsize=9, ncols=3, loc="upper left")
    return _png(figure)


def weekly_rates(
    run: RunData, period: ind.Period, calendar: WorkingCalendar, marks: Sequence[Milestone]
) -> bytes:
    """On-time rate (2.1) and online rate (3.3) per week, one line per receiving level."""
    from matplotlib.dates import DateFormatter

    spans = weeks(period)
    series = figures_by(run.rows, spans, calendar)
    starts = [s.start.astimezone(VN_TZ).replace(tzinfo=None) for s in spans]
    # Each point stands for its whole week: drawn mid-week, labelled with the Monday.
    middles = _dates([s.start.astimezone(VN_TZ).replace(tzinfo=None) + (s.end - s.start) / 2
                      for s in spans])  # fmt: skip
    figure = _figure(height=3.2)
    axes = figure.subplots(1, 2, sharey=False)
    panels = (
        (axes[0], "2.1", "finished on time", ind.SATISFACTION.target, "5.4 target"),
        (axes[1], "3.3", "submitted online", ind.ONLINE.target, "3.3 target"),
    )
    for ax, code, what, target, target_label in panels:
        lowest = 1.0
        for level in LEVELS:
            if level not in series:
                continue
            values = [f[code].value for f in series[level]]
            points = [(x, v) for x, v in zip(middles, values, strict=True) if v is not None]
            if not points:
                continue
            lowest = min(lowest, *(p[1] for p in points))
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                markersize=4,
                linewidth=2,
                color=LEVEL_COLORS[level],
                label=LEVEL_NAMES[level],
            )
        if target is not None:
            lowest = min(lowest, target)
            ax.axhline(target, color=MUTED, linestyle="--", linewidth=1)
            ax.annotate(
                f"{target_label} {target:.0%}",
                xy=(0, target),
                xycoords=("axes fraction", "data"),
                xytext=(2, 3),
                textcoords="offset points",
                fontsize=8,
                color="#64748b",
            )
        _style(ax)
        ax.set_xticks(_dates(starts))
        ax.xaxis.set_major_formatter(DateFormatter("%d %b"))  # type: ignore[no-untyped-call]
        ax.set_xlim(_dates([starts[0]])[0] - 0.5, _dates([starts[-1]])[0] + 7.5)
        ax.set_xlabel("week starting", color="#475569", fontsize=9)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        # Zoomed to where the lines are, never hiding 100% or the target.
        ax.set_ylim(max(0.0, min(0.5, lowest - 0.1)), 1.02)
        ax.set_ylabel(f"share {what}", color="#475569", fontsize=9)
        _mark_milestones(ax, marks, label=False)
    axes[0].legend(frameon=False, fontsize=8.5, loc="lower left")
    return _png(figure)


def agencies_by_week(
    run: RunData,
    period: ind.Period,
    calendar: WorkingCalendar,
    rates: Sequence[AgencyRate],
    count: int = 15,
) -> bytes:
    """On-time rate per week of the agencies that finished the most dossiers."""
    from matplotlib.colors import LinearSegmentedColormap

    busiest = sorted(rates, key=lambda r: (-r.finished, r.name))[:count]
    chosen = {r.agency for r in busiest}
    spans = weeks(period)
    series = figures_by(
        (r for r in run.rows if r.receiving_agency in chosen), spans, calendar, "receiving_agency"
    )
    grid: list[list[float]] = []
    for r in busiest:
        row: list[ind.Figure | None] = [f["2.1"] for f in series.get(r.agency, [])]
        row = row or [None] * len(spans)
        # A rate over a handful of dossiers says little: those weeks stay grey.
        grid.append([
            f.value if f is not None and f.value is not None and f.denominator >= 5
            else float("nan")
            for f in row
        ])  # fmt: skip
    colormap = LinearSegmentedColormap.from_list(
        "ontime", [BAD, "#fbbf24", "#bbf7d0", GOOD]
    ).with_extremes(bad="#f1f5f9")
    figure = _figure(height=0.34 * len(busiest) + 0.9)
    ax = figure.add_subplot()
    ax.imshow(grid, cmap=colormap, vmin=0.7, vmax=1.0, aspect="auto")
    for i, values in enumerate(grid):
        for j, value in enumerate(values):
            if value == value:  # not NaN
                dark = value >= 0.96 or value < 0.8
                ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if dark else INK, fontweight="bold")  # fmt: skip
    ax.set_yticks(range(len(busiest)))
    ax.set_yticklabels([_short(r.name, 40) for r in busiest], fontsize=8.5, color=INK)
    ax.set_xticks(range(len(spans)))
    ax.set_xticklabels(
        [f"week of {s.start.astimezone(VN_TZ).day} {s.start:%b}" for s in spans], fontsize=8.5
    )
    ax.xaxis.tick_top()
    ax.tick_params(length=0, colors="#475569")
    for side in ax.spines.values():
        side.set_visible(False)
    return _png(figure)


@dataclass(frozen=True, slots=True)
class AgencyRate:
    agency: str
    name: str
    level: str
    finished: int
    on_time: int
    received: int

    @property
    def rate(self) -> float:
        return self.on_time / self.finished if self.finished else 1.0


def agency_rates(report: ind.Report, names: Mapping[str, str]) -> list[AgencyRate]:
    return [
        AgencyRate(
            a.agency,
            names.get(a.agency, a.agency),
            a.level,
            a.tally.finished,
            a.tally.on_time,
            a.tally.received,
        )
        for a in report.agencies
    ]


def agencies_needing_attention(
    rates: Sequence[AgencyRate], overall: float | None, *, count: int = 12, minimum: int = 20
) -> bytes:
    """The agencies with the lowest on-time rate (among those with enough finished dossiers)."""
    eligible = sorted((r for r in rates if r.finished >= minimum), key=lambda r: (r.rate, r.name))
    shown = list(reversed(eligible[:count]))
    figure = _figure(height=0.34 * max(4, len(shown)) + 0.7)
    ax = figure.add_subplot()
    labels = [_short(r.name, 40) for r in shown]
    colors = [GOOD if r.rate >= 0.9 else (WARN if r.rate >= 0.8 else BAD) for r in shown]
    ax.barh(labels, [r.rate for r in shown], color=colors, height=0.64)
    for y, r in enumerate(shown):
        ax.text(
            r.rate - 0.008,
            y,
            f"{r.rate:.1%} on time · {r.finished - r.on_time} late of {r.finished:,}",
            ha="right",
            va="center",
            fontsize=8.5,
            color="white",
            fontweight="bold",
        )
    if overall is not None:
        ax.axvline(overall, color=INK, linestyle=":", linewidth=1.2)
        ax.annotate(
            f"all agencies {overall:.1%}",
            xy=(overall, 1),
            xycoords=("data", "axes fraction"),
            xytext=(-3, 2),
            textcoords="offset points",
            ha="right",
            fontsize=8.5,
            color=INK,
        )
    _style(ax, grid_axis="x")
    ax.set_xlim(0, 1.0)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xticks([0, 0.25, 0.5, 0.8, 0.9, 1.0])
    ax.tick_params(axis="y", labelsize=9, colors=INK, length=0)
    return _png(figure)


def _short(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True, slots=True)
class Backlog:
    """Open dossiers at each day's close: within and past their appointment, and how many of
    them an ended agency handed over to its successor (contract 1.1)."""

    closes: list[datetime]
    in_time: list[int]
    overdue: list[int]
    handed_over: list[int]


def backlog_series(run: RunData, period: ind.Period) -> Backlog:
    spans = days(period)
    closes = [
        min(datetime.combine(_local_day(s.start), time(17), VN_TZ), period.end) for s in spans
    ]
    in_time, overdue = [0] * len(closes), [0] * len(closes)
    handed_over = [0] * len(closes)
    for row in run.rows:
        received, closed = row.received_at, row.closed_at
        if received is None:
            continue
        for i, moment in enumerate(closes):
            if received <= moment and (closed is None or closed > moment):
                if row.due_at is not None and row.due_at < moment:
                    overdue[i] += 1
                else:
                    in_time[i] += 1
                if row.handed_over_at is not None and row.handed_over_at <= moment:
                    handed_over[i] += 1
    return Backlog(closes, in_time, overdue, handed_over)


def backlog(run: RunData, period: ind.Period, marks: Sequence[Milestone]) -> bytes:
    """Dossiers received and not yet finished at each day's close, split by deadline; a line
    for those of them handed over to a successor."""
    series = backlog_series(run, period)
    closes, in_time, overdue = series.closes, series.in_time, series.overdue
    handed_over = series.handed_over
    xs = _dates([c.astimezone(VN_TZ).replace(tzinfo=None) for c in closes])
    figure = _figure(height=3.3)
    ax = figure.add_subplot()
    ax.stackplot(
        xs,
        in_time,
        overdue,
        colors=["#93c5fd", BAD],
        labels=["within the appointment", "past the appointment"],
        alpha=0.9,
    )
    if any(handed_over):
        ax.plot(
            xs,
            handed_over,
            color=HANDED_OVER,
            linewidth=2,
            marker="o",
            markersize=3,
            label="of them handed over by an ended agency to its successor",
        )
    _style(ax)
    _date_axis(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
    totals = [a + b for a, b in zip(in_time, overdue, strict=True)]
    ax.set_ylim(0, max(totals or [1]) * 1.22)
    ax.set_ylabel("open dossiers at 17:00", color="#475569", fontsize=9)
    _mark_milestones(ax, marks)
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(0, 0.9))
    return _png(figure)


def processing_time(rows: Sequence[DossierRow], calendar: WorkingCalendar) -> tuple[bytes, float]:
    """How much of its procedure's time each finished dossier took, coloured by whether it met
    its appointment; and the share that took no more than that time."""
    step, top = 0.1, 2.0
    bins = int(top / step) + 1
    on_time, late = [0] * bins, [0] * bins
    shares: list[float] = []
    for row in rows:
        if row.received_at is None or row.finished_at is None or not row.allowed_seconds:
            continue
        worked = calendar.working_seconds_between(row.received_at, row.finished_at)
        share = max(0, worked - row.paused_seconds) / row.allowed_seconds
        shares.append(share)
        met = row.due_at is None or row.finished_at <= row.due_at
        (on_time if met else late)[min(int(share / step), bins - 1)] += 1
    xs = [i * step + step / 2 for i in range(bins)]
    figure = _figure(height=3.1)
    ax = figure.add_subplot()
    ax.bar(xs, on_time, width=step * 0.9, color=GOOD, label="met its appointment")
    ax.bar(xs, late, width=step * 0.9, bottom=on_time, color=BAD, label="missed it")
    ax.axvline(1.0, color=INK, linewidth=1.2)
    ax.annotate(
        "the procedure's time",
        xy=(1.0, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -2),
        textcoords="offset points",
        va="top",
        fontsize=8.5,
        color=INK,
    )
    _style(ax)
    ax.set_xlim(0, top + step)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.05])
    ax.set_xticklabels(["0", "25%", "50%", "75%", "100%", "150%", "> 200%"])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(
        "working time taken, supplementation excluded, as a share of the procedure's time",
        color="#475569",
        fontsize=9,
    )
    ax.set_ylabel("finished dossiers", color="#475569", fontsize=9)
    ax.legend(frameon=False, fontsize=9, loc="upper right")
    within = sum(1 for s in shares if s <= 1.0) / len(shares) if shares else 0.0
    return _png(figure), within


STATUS_GROUPS: Sequence[tuple[str, frozenset[int], str]] = (
    ("Result returned", frozenset({10}), "#15803d"),
    ("Resolved, to return", frozenset({9}), "#4ade80"),
    ("Being processed", frozenset({2, 4}), "#60a5fa"),
    ("Waiting for the applicant", frozenset({5, 6}), "#fbbf24"),
    ("Submitted, not yet received", frozenset({1}), "#cbd5e1"),
    ("Refused, withdrawn or stopped", frozenset({3, 7, 8}), "#94a3b8"),
)


def where_dossiers_are(status_counts: Mapping[int, int]) -> bytes:
    """One bar: the month's dossiers by where they stand now."""
    total = sum(status_counts.values()) or 1
    figure = _figure(height=1.25)
    ax = figure.add_subplot()
    left = 0.0
    for label, codes, color in STATUS_GROUPS:
        share = sum(status_counts.get(c, 0) for c in codes) / total
        if share <= 0:
            continue
        ax.barh([0], [share], left=left, color=color, height=0.55, label=label)
        if share >= 0.05:
            ax.text(left + share / 2, 0, f"{share:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if color in ("#15803d", "#94a3b8") else INK)  # fmt: skip
        left += share
    ax.set_xlim(0, 1)
    ax.set_axis_off()
    ax.legend(frameon=False, fontsize=8.5, ncols=3, loc="upper center", bbox_to_anchor=(0.5, 0.0))
    return _png(figure)
