"""`dossier kpi`: the Decision 766 indicators of a period, per receiving agency and level.

The figures are those of the `dossier_indicator_*` gauges, from the same code
(`engine.indicators`), for any period rather than the gauges' trailing window.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from dossier.settings import Settings

if TYPE_CHECKING:
    from engine.indicators import AgencyFigures, Figure, Report

COMPLAINTS_NOTE = (
    "5.4 counts complaints as 0: no complaints source is connected yet, so it equals 2.1."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "kpi", help="Decision 766 service-quality indicators of a period, per agency and level"
    )
    parser.add_argument(
        "--from",
        dest="start",
        required=True,
        help="first day (YYYY-MM-DD, local) or instant (RFC 3339 with offset)",
    )
    parser.add_argument(
        "--to",
        dest="end",
        required=True,
        help="last day, included (YYYY-MM-DD, local), or instant excluded (RFC 3339)",
    )
    parser.add_argument("--agency", default=None, help="only this receiving agency's dossiers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from dossier.commands.metrics import level_resolver
    from engine.calendar import WorkingCalendar
    from engine.indicators import Period, parse_bound
    from engine.store.queries import indicator_report
    from engine.store.sql import create_db_engine

    try:
        period = Period(parse_bound(args.start, end=False), parse_bound(args.end, end=True))
    except ValueError as exc:
        print(f"dossier kpi: {exc}", file=sys.stderr)
        return 2
    db = create_db_engine(settings.database_url)
    try:
        with db.connect() as connection:
            report = indicator_report(
                connection, period, WorkingCalendar.load(), level_resolver(settings), args.agency
            )
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(as_json(report), ensure_ascii=False, indent=2))
    else:
        print(as_table(report))
    return 0


def _figure_json(figure: Figure) -> dict[str, Any]:
    return {
        "key": figure.indicator.key,
        "title": figure.indicator.title,
        "unit": figure.indicator.unit,
        "value": figure.value,
        "numerator": figure.numerator,
        "denominator": figure.denominator,
    }


def _group_json(group: AgencyFigures) -> dict[str, Any]:
    return {
        "agency": group.agency,
        "level": group.level,
        "indicators": {code: _figure_json(f) for code, f in group.figures.items()},
    }


def as_json(report: Report) -> dict[str, Any]:
    return {
        "from": report.period.start.isoformat(),
        "to": report.period.end.isoformat(),
        "agencies": [_group_json(g) for g in report.agencies],
        "total": _group_json(report.total),
        "notes": [COMPLAINTS_NOTE],
    }


def format_figure(figure: Figure) -> str:
    value = figure.value
    if value is None:
        return "N/A"
    if figure.indicator.unit == "seconds":
        days = value / (8 * 3600)
        return f"{days:.2f} wd ({figure.denominator})"
    return f"{value * 100:.1f}% ({figure.numerator}/{figure.denominator})"


def as_table(report: Report) -> str:
    from engine.indicators import INDICATORS

    header = ["level", "agency", *(f"{i.code} {i.title}" for i in INDICATORS)]
    rows = [
        [g.level, g.agency, *(format_figure(g.figures[i.code]) for i in INDICATORS)]
        for g in report.agencies
    ]
    rows.append(["all", "all", *(format_figure(report.total.figures[i.code]) for i in INDICATORS)])
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    out = [
        f"Decision 766 indicators, {report.period.start.isoformat()} to"
        f" {report.period.end.isoformat()} (end excluded), by receiving agency",
        "",
        line(header).rstrip(),
        line(["-" * w for w in widths]).rstrip(),
        *(line(row).rstrip() for row in rows),
        "",
        "N/A: nothing to count in the period. wd: working days of 8 hours, supplementation"
        " pauses excluded.",
        COMPLAINTS_NOTE,
    ]
    return "\n".join(out)
