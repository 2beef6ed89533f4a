"""The run's report as one self-contained HTML file: figures first, charts, then the engine's
own accounting for whoever has to trust the figures. Charts are PNGs embedded in base64, so
the file can be mailed or opened offline."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape
from pathlib import Path

from dossier.tools.report import charts
from dossier.tools.report.data import RunData
from dossier.tools.report.summary import (
    DEAD_LETTER_MEANINGS,
    INDICATOR_ROWS,
    LEVELS,
    Summary,
    format_figure,
    percent,
    vnd,
)
from engine import indicators as ind
from engine.calendar import VN_TZ, WorkingCalendar
from engine.procedures import Catalogue


@dataclass
class ReportContext:
    summary: Summary
    run: RunData
    calendar: WorkingCalendar
    catalogue: Catalogue
    details: Mapping[str, str] = field(default_factory=dict)  # run facts for engineers
    simulated: bool = True


@dataclass(frozen=True, slots=True)
class Card:
    title: str
    subtitle: str  # Vietnamese
    value: str
    note: str
    tone: str  # "good", "warn", "bad" or "neutral"


def render(context: ReportContext) -> str:
    s, run, calendar = context.summary, context.run, context.calendar
    period = s.period
    marks = charts.milestones(context.catalogue, period)
    report = run.indicators(calendar, period)
    rates = charts.agency_rates(report, run.agency_names)
    processing_png, within = charts.processing_time(run.rows, calendar)
    open_past_due = sum(
        1
        for r in run.rows
        if r.received_at is not None
        and r.closed_at is None
        and r.due_at is not None
        and run.clock is not None
        and r.due_at < run.clock
    )
    images = {
        "status": charts.where_dossiers_are(run.status_counts(period)),
        "daily": charts.received_per_day(run, period, marks),
        "weekly": charts.weekly_rates(run, period, calendar, marks),
        "backlog": charts.backlog(run, period, marks),
        "processing": processing_png,
        "agencies": charts.agencies_needing_attention(rates, s.rate("2.1")),
        "agency_weeks": charts.agencies_by_week(run, period, calendar, rates),
    }
    first = period.start.astimezone(VN_TZ)
    last = (period.end - timedelta(microseconds=1)).astimezone(VN_TZ)
    received = s.total["3.3"].denominator
    title = (
        f"{s.province}: administrative procedures, {first.day} {first:%b} – {last.day} {last:%b %Y}"
    )
    body = [
        '<header><div class="wrap">',
        f"<h1>{escape(title)}</h1>",
        '<p class="lede">Thủ tục hành chính · what the dossier engine saw, per Decision '
        "766/QĐ-TTg"
        + (" · <strong>simulated workload</strong>" if context.simulated else "")
        + "</p>",
        "</div></header>",
        '<main class="wrap">',
        _cards(_kpis(s, received, open_past_due)),
        _section(
            "Where this month's dossiers are now",
            "Hồ sơ đang ở đâu",
            _image(images["status"], "dossiers by status"),
            _status_note(s),
        ),
        _section(
            "Every working day, by the level that received the dossier",
            "Hồ sơ tiếp nhận theo ngày và cấp",
            _image(images["daily"], "dossiers received per day"),
            _daily_note(marks),
        ),
        _section(
            "Are dossiers finished on time, and do people apply online?",
            "Tỷ lệ đúng hạn (2.1) và tỷ lệ trực tuyến (3.3) theo tuần",
            _image(images["weekly"], "weekly on-time and online rates"),
            "Each point is a week: left, dossiers finished by their appointment over dossiers "
            "finished that week; right, dossiers submitted online over dossiers received. "
            "Counted at the receiving one-stop shop, as the national portal does.",
        ),
        _section(
            "Is the backlog under control?",
            "Hồ sơ tồn đọng",
            _image(images["backlog"], "open dossiers over time"),
            f"Dossiers received and not yet finished, at the close of each day. At the end of "
            f"the period {open_past_due:,} open dossiers were past their appointment."
            + _handover_note(s),
        ),
        _section(
            "How long do dossiers take?",
            "Thời gian giải quyết",
            _image(images["processing"], "processing time distribution"),
            f"{within:.0%} of finished dossiers took no more than the time their procedure "
            f"allows; on average {format_figure('2.2', s.total.get('2.2'))} of working time "
            "(Decision 766, 2.2).",
        ),
        _section(
            "Which agencies need attention?",
            "Cơ quan cần quan tâm",
            _image(images["agencies"], "agencies with the lowest on-time rate"),
            "The agencies with the lowest on-time rate in the period (among those with at "
            "least 20 dossiers finished). Green: 90% or better; amber: 80–90%; red: below 80%.",
        ),
        _section(
            "Week by week, at the busiest agencies",
            "Tỷ lệ đúng hạn theo tuần tại các cơ quan giải quyết nhiều hồ sơ nhất",
            _image(images["agency_weeks"], "on-time rate by week and agency"),
            "On-time rate (2.1) each week at the 15 agencies that finished the most dossiers in "
            "the period. Grey: fewer than 5 dossiers finished that week.",
        ),
        _section("By level", "Theo cấp", _levels_table(s, rates), ""),
        _technical(context),
        "</main>",
        f'<footer class="wrap">Generated {datetime.now(VN_TZ):%Y-%m-%d %H:%M} by '
        "<code>dossier demo</code> from the engine's database.</footer>",
    ]
    return _page(title, "\n".join(body))


def write(path: Path, context: ReportContext) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(context), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------


def _kpis(s: Summary, received: int, open_past_due: int) -> list[Card]:
    on_time, online = s.rate("2.1"), s.rate("3.3")
    target_on_time = ind.SATISFACTION.target or 0.9
    target_online = ind.ONLINE.target or 0.5
    net = s.discount_vnd - s.revoked_vnd
    return [
        Card(
            "Dossiers received",
            "Hồ sơ tiếp nhận",
            f"{received:,}",
            f"{s.dossiers:,} submitted in the period",
            "neutral",
        ),
        Card(
            "On time",
            "Đúng hạn (2.1)",
            percent(s.total.get("2.1")),
            f"of {s.total['2.1'].denominator:,} finished · target ≥ {target_on_time:.0%} (5.4)",
            _tone(on_time, target_on_time, 0.8),
        ),
        Card(
            "Online",
            "Trực tuyến (3.3)",
            percent(s.total.get("3.3")),
            f"target ≥ {target_online:.0%}",
            _tone(online, target_online, target_online - 0.1),
        ),
        Card(
            "Processing time",
            "Thời gian giải quyết (2.2)",
            format_figure("2.2", s.total.get("2.2")).replace(" days", ""),
            "working days on average",
            "neutral",
        ),
        Card(
            "Fees waived online",
            "Phí, lệ phí được giảm",
            _short_vnd(net),
            f"{s.discounts_granted - s.discounts_revoked:,} applicants · {vnd(net)}",
            "good" if net > 0 else "neutral",
        ),
        Card(
            "Open past appointment",
            "Quá hạn chưa giải quyết",
            f"{open_past_due:,}",
            "dossiers at the end of the period",
            "bad" if open_past_due else "good",
        ),
    ]


def _tone(value: float | None, good: float, warn: float) -> str:
    if value is None:
        return "neutral"
    return "good" if value >= good else ("warn" if value >= warn else "bad")


def _short_vnd(amount: int) -> str:
    if amount >= 1_000_000_000:
        return f"{amount / 1_000_000_000:.1f} bn ₫"
    if amount >= 1_000_000:
        return f"{amount / 1_000_000:.1f} M ₫"
    return f"{amount:,} ₫"


def _cards(cards: Sequence[Card]) -> str:
    items = "".join(
        f'<div class="card {c.tone}"><div class="t">{escape(c.title)}</div>'
        f'<div class="vi">{escape(c.subtitle)}</div><div class="v">{escape(c.value)}</div>'
        f'<div class="n">{escape(c.note)}</div></div>'
        for c in cards
    )
    return f'<section class="cards">{items}</section>'


def _section(title: str, subtitle: str, content: str, note: str) -> str:
    note_html = f'<p class="note">{escape(note)}</p>' if note else ""
    return (
        f'<section><h2>{escape(title)} <span class="vi">{escape(subtitle)}</span></h2>'
        f"{note_html}{content}</section>"
    )


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _status_note(s: Summary) -> str:
    done = sum(n for code, _, n in s.by_status if code in (9, 10))
    share = done / s.dossiers if s.dossiers else 0
    return (
        f"Of {s.dossiers:,} dossiers submitted in the period, {share:.0%} have been resolved; "
        "the rest are in progress, waiting for the applicant, or were refused, withdrawn or "
        "stopped."
    )


def _handover_note(s: Summary) -> str:
    """The handovers (contract 1.1) in words, beside the backlog's line for them."""
    if not s.handovers:
        return ""
    total = sum(s.handovers.values())
    levels = ", ".join(f"{k}: {n:,}" for k, n in sorted(s.handovers.items()))
    h = s.handed_over
    return (
        f" Line: dossiers open at an agency whose window ended, handed over to its successor "
        f"at the cutover ({total:,}; {levels}); by the end {h.finished:,} of them were "
        f"finished ({h.returned:,} returned to the applicant), {h.closed:,} withdrawn or "
        f"stopped, {h.open:,} still open."
    )


def _daily_note(marks: Sequence[charts.Milestone]) -> str:
    text = (
        "Dossiers are received on working days; Mondays also take in what was submitted "
        "online over the weekend. A dossier whose receiving agency had ended before it was "
        "received is counted at the level of the successor that received it."
    )
    if marks:
        text += " Dashed line: " + "; ".join(m.label for m in marks) + "."
    return text


def _levels_table(s: Summary, rates: Sequence[charts.AgencyRate]) -> str:
    agencies = {lvl: sum(1 for r in rates if r.level == lvl) for lvl in LEVELS}
    rows = []
    for level in LEVELS:
        figures = s.by_level.get(level)
        if figures is None:
            continue
        rows.append(
            f"<tr><th>{escape(charts.LEVEL_NAMES[level])}</th>"
            f"<td>{agencies[level]}</td>"
            f"<td>{figures['3.3'].denominator:,}</td>"
            f"<td>{percent(figures.get('3.3'))}</td>"
            f"<td>{figures['2.1'].denominator:,}</td>"
            f"<td>{percent(figures.get('2.1'))}</td>"
            f"<td>{format_figure('2.2', figures.get('2.2'))}</td></tr>"
        )
    head = (
        "<tr><th>level</th><th>agencies</th><th>received</th><th>online</th>"
        "<th>finished</th><th>on time</th><th>avg time</th></tr>"
    )
    return f'<table class="grid">{head}{"".join(rows)}</table>'


def _technical(context: ReportContext) -> str:
    s = context.summary
    letters = (
        "".join(
            f"<tr><td>{escape(reason)}</td><td>{count:,}</td>"
            f'<td class="meaning">{escape(DEAD_LETTER_MEANINGS.get(reason, ""))}</td></tr>'
            for reason, count in sorted(s.dead_letters.items(), key=lambda kv: -kv[1])
        )
        or "<tr><td colspan=3>none</td></tr>"
    )
    checks = "".join(
        f"<tr><td>{escape(c.name)}</td><td>{c.expected:,}</td><td>{c.actual:,}</td>"
        f'<td class="{"ok" if c.ok else "ko"}">{"✓" if c.ok else "✗"}</td></tr>'
        for c in s.checks
    )
    indicators = "".join(
        f"<tr><td>{code} {escape(title)}</td><td>{format_figure(code, s.total.get(code))}</td>"
        f"<td>{_terms(s.total.get(code))}</td></tr>"
        for code, title in INDICATOR_ROWS
    )
    flow: list[tuple[str, str]] = [
        ("inputs consumed", f"{s.consumed:,}"),
        ("applied", f"{s.applied:,}"),
        ("duplicates recognised", f"{s.duplicates:,}"),
        ("dead-lettered", f"{sum(s.dead_letters.values()):,}"),
        ("handovers (engine's own history entries)",
         ", ".join(f"{k} {n:,}" for k, n in sorted(s.handovers.items())) or "none"),
        ("workflow migrations (engine's own history entries)",
         ", ".join(f"{k} {n:,}" for k, n in sorted(s.migrations.items())) or "none"),
        ("history rows", f"{s.history_rows:,}"),
        ("status events emitted", f"{s.status_events:,}"),
        ("deadline warnings / overdue notices",
         f"{s.notices['deadline-warning']:,} / {s.notices['overdue']:,}"),
    ]  # fmt: skip
    if s.events_per_second is not None and s.seconds is not None:
        flow.append(("throughput", f"{s.events_per_second:,.0f} events/s over {s.seconds:.0f} s"))
    flow += [(k, v) for k, v in context.details.items()]
    facts = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in flow)
    checks_html = (
        f'<h3>Accounting: produced vs engine</h3><table class="grid">'
        f"<tr><th></th><th>produced</th><th>engine</th><th></th></tr>{checks}</table>"
        if checks
        else ""
    )
    return (
        '<section class="tech"><h2>For the engineers <span class="vi">Kỹ thuật</span></h2>'
        '<div class="cols"><div>'
        f'<h3>The run</h3><table class="grid">{facts}</table>'
        f'<h3>Dead letters by reason</h3><table class="grid">{letters}</table>'
        "</div><div>"
        f"{checks_html}"
        '<h3>Decision 766 indicators, all agencies</h3><table class="grid">'
        f"<tr><th></th><th>value</th><th>numerator / denominator</th></tr>{indicators}</table>"
        "</div></div></section>"
    )


def _terms(figure: ind.Figure | None) -> str:
    if figure is None:
        return ""
    unit = " working s" if figure.indicator.unit == "seconds" else ""
    return f"{figure.numerator:,}{unit} / {figure.denominator:,}"


CSS = """
:root { --ink:#1e293b; --muted:#64748b; --line:#e2e8f0; --good:#15803d; --warn:#b45309;
  --bad:#b91c1c; --bg:#f8fafc; }
* { box-sizing: border-box; }
body { margin:0; font-family: "Segoe UI", "Noto Sans", "DejaVu Sans", Roboto, Arial, sans-serif;
  color: var(--ink); background: var(--bg); line-height: 1.45; }
.wrap { max-width: 1080px; margin: 0 auto; padding: 0 24px; }
header { background: linear-gradient(120deg, #0f3d3a, #1e3a8a); color: white;
  padding: 28px 0 22px; }
header h1 { margin: 0; font-size: 26px; font-weight: 600; }
header .lede { margin: 6px 0 0; color: #cbd5e1; font-size: 14px; }
.cards { display: grid; grid-template-columns: repeat(3, 1fr); gap: 14px; margin: -2px 0 10px;
  padding-top: 20px; }
.card { background: white; border-radius: 10px; padding: 14px 16px 12px;
  border-top: 5px solid #94a3b8;
  box-shadow: 0 1px 2px rgba(15,23,42,.08); }
.card.good { border-top-color: var(--good); } .card.warn { border-top-color: #d97706; }
.card.bad { border-top-color: var(--bad); }
.card .t { font-size: 13px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em;
  color: var(--muted); }
.card .vi { font-size: 12px; color: #94a3b8; }
.card .v { font-size: 34px; font-weight: 700; margin: 4px 0 2px; }
.card.good .v { color: var(--good); } .card.warn .v { color: var(--warn); }
.card.bad .v { color: var(--bad); }
.card .n { font-size: 12.5px; color: var(--muted); }
section { background: white; border-radius: 10px; padding: 18px 20px 14px; margin: 16px 0;
  box-shadow: 0 1px 2px rgba(15,23,42,.06); }
section.cards { background: none; box-shadow: none; padding: 20px 0 0; }
h2 { font-size: 18px; margin: 0 0 4px; font-weight: 600; }
h2 .vi { font-size: 13px; color: #94a3b8; font-weight: 400; margin-left: 6px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); }
.note { margin: 0 0 10px; color: var(--muted); font-size: 13.5px; max-width: 860px; }
img { width: 100%; height: auto; display: block; }
table.grid { border-collapse: collapse; width: 100%; font-size: 13px; }
table.grid th, table.grid td { text-align: right; padding: 5px 8px;
  border-bottom: 1px solid var(--line); }
table.grid th:first-child, table.grid td:first-child { text-align: left; }
table.grid td.meaning { color: var(--muted); }
td.ok { color: var(--good); font-weight: 700; } td.ko { color: var(--bad); font-weight: 700; }
section.tech { background: #f1f5f9; box-shadow: none; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
footer { color: #94a3b8; font-size: 12px; padding: 8px 24px 30px; }
@media (max-width: 760px) { .cards, .cols { grid-template-columns: 1fr; } }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


__all__ = ["ReportContext", "render", "write"]
