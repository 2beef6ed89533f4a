"""The run's summary: dossiers by status, Decision 766 figures, discounts, dead letters,
throughput, and the accounting check of what the engine did against what was produced."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dossier.tools.report.data import DossierRow, RunData
from engine import indicators as ind
from engine.calendar import WorkingCalendar
from engine.procedures import STATUS_LABELS

LEVELS = ("commune", "district", "province")
DEAD_LETTER_MEANINGS: Mapping[str, str] = {
    "malformed": "unreadable: not UTF-8, not JSON or not a CloudEvent",
    "schema": "readable, but breaks the contract's schema",
    "unknown-procedure": "a procedure the catalogue does not have",
    "invalid-transition": "an action the dossier's workflow does not allow",
    "conflict": "an id already used for different content",
    "unauthenticated": "an agency acting on a dossier it does not hold",
    "parked-expired": "waited too long for an earlier action that never came",
    "internal-error": "its handling failed unexpectedly; set aside so the inputs after it go on",
}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the accounting: what the simulator produced against what the engine did."""

    name: str
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True, slots=True)
class Fates:
    """What became of a set of dossiers the engine moved on its own, by their status now: those
    handed over to a successor (contract 1.1, "Handover"), those migrated to another workflow
    version."""

    dossiers: int = 0
    returned: int = 0  # result returned to the applicant (status 10)
    resolved: int = 0  # resolved, the result not yet returned (status 9)
    closed: int = 0  # withdrawn, stopped or refused
    open: int = 0  # still being processed or waiting for the applicant

    @property
    def finished(self) -> int:
        """Resolved, returned or not: the successor (or the level it sent them to) decided."""
        return self.returned + self.resolved


@dataclass
class Summary:
    """Figures of the reported period: dossiers submitted in it (by their status now), the
    Decision 766 indicators of it, discounts granted or revoked in it; the input accounting
    and throughput are of the whole run (warm-up included)."""

    province: str
    period: ind.Period
    dossiers: int  # submitted in the period
    by_status: list[tuple[int, str, int]]  # (code, label, dossiers submitted in the period)
    total: Mapping[str, ind.Figure]  # Decision 766 figures by code, all agencies
    by_level: dict[str, Mapping[str, ind.Figure]]
    discounts_granted: int
    discount_vnd: int
    discounts_revoked: int
    revoked_vnd: int
    dead_letters: Counter[str]
    notices: Counter[str]
    consumed: int
    applied: int
    duplicates: int
    parked: int
    status_events: int
    seconds: float | None = None  # from the first input published to the engine caught up
    # Contract 1.1, "Handover", over the whole run: by former → new level; what became of them.
    handovers: Counter[str] = field(default_factory=Counter)
    handed_over: Fates = field(default_factory=Fates)
    # Workflow migrations over the whole run: by the two versions' levels; what became of them.
    migrations: Counter[str] = field(default_factory=Counter)
    migrated: Fates = field(default_factory=Fates)
    history_rows: int = 0  # inputs applied + handovers + migrations
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float | None:
        if not self.seconds:
            return None
        return self.consumed / self.seconds

    def rate(self, code: str) -> float | None:
        return self.total[code].value


def summarize(
    run: RunData,
    calendar: WorkingCalendar,
    period: ind.Period,
    *,
    province: str,
    manifest: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> Summary:
    report = run.indicators(calendar, period)
    levels: dict[str, ind.Tally] = {}
    for figures in report.agencies:
        levels.setdefault(figures.level, ind.Tally()).merge(figures.tally)
    statuses = run.status_counts(period)
    granted, granted_vnd, revoked, revoked_vnd = run.discount_totals(period)
    return Summary(
        province=province,
        period=period,
        dossiers=sum(statuses.values()),
        by_status=[(code, STATUS_LABELS[code][0], statuses[code]) for code in sorted(statuses)],
        total=report.total.figures,
        by_level={lvl: ind.figures(levels[lvl]) for lvl in LEVELS if lvl in levels},
        discounts_granted=granted,
        discount_vnd=granted_vnd,
        discounts_revoked=revoked,
        revoked_vnd=revoked_vnd,
        dead_letters=run.dead_letters,
        notices=run.notices,
        consumed=run.consumed_inputs,
        applied=run.applied_inputs,
        duplicates=run.duplicates,
        parked=run.parked,
        status_events=run.status_events,
        seconds=seconds,
        handovers=run.handovers_by_level,
        handed_over=fates(run.handed_over_rows()),
        migrations=run.migrations_by_levels,
        migrated=fates(run.migrated_rows()),
        history_rows=run.history_rows,
        checks=reconcile(manifest, run) if manifest is not None else [],
    )


def fates(rows: Sequence[DossierRow]) -> Fates:
    statuses = Counter(r.status_code for r in rows)
    returned, resolved = statuses[10], statuses[9]
    closed = sum(statuses[code] for code in (3, 7, 8))
    total = sum(statuses.values())
    return Fates(total, returned, resolved, closed, total - returned - resolved - closed)


def reconcile(manifest: Mapping[str, Any], run: RunData) -> list[Check]:
    """Every produced message accounted for: each "valid" one applied (none left parked), each
    "duplicate" recognised, each bad one dead-lettered with the reason it was made for."""
    expected: Mapping[str, int] = manifest["expected"]
    checks = [
        Check("inputs consumed", int(manifest["messages"]), run.consumed_inputs),
        Check("dossiers created", int(manifest["dossiers"]), len(run.rows)),
        Check("valid inputs applied", expected.get("valid", 0), run.applied_inputs),
        Check("duplicates recognised", expected.get("duplicate", 0), run.duplicates),
        Check("inputs left parked", 0, run.parked),
    ]
    # Contract 1.1, "Handover": the dossiers an ended agency held, each handed over once, as an
    # entry of the engine's own in their history beside the inputs applied.
    handovers: Mapping[str, int] = manifest.get("handovers") or {}
    actual = run.handovers_by_level
    checks += [
        Check(f"handovers: {levels}", handovers.get(levels, 0), actual[levels])
        for levels in sorted(set(handovers) | set(actual))
    ]
    # Workflow migrations: each dossier a plan moved, once, an entry of the engine's own too.
    migrations: Mapping[str, int] = manifest.get("migrations") or {}
    moved = run.migrations_by_levels
    checks += [
        Check(f"migrations: {levels}", migrations.get(levels, 0), moved[levels])
        for levels in sorted(set(migrations) | set(moved))
    ]
    checks.append(
        Check(
            "history rows: inputs applied + handovers + migrations",
            expected.get("valid", 0) + sum(handovers.values()) + sum(migrations.values()),
            run.history_rows,
        )
    )
    reasons = sorted(set(expected) - {"valid", "duplicate"} | set(run.dead_letters))
    checks += [
        Check(f"dead letters: {reason}", expected.get(reason, 0), run.dead_letters[reason])
        for reason in reasons
    ]
    return checks


def hostile_checks(
    manifest: Mapping[str, Any], letters: Mapping[str, Mapping[str, int]]
) -> list[Check]:
    """One line per kind of hostile input: how many the engine dead-lettered with the reason
    that kind was made for.

    `letters` maps the SHA-256 of each dead-lettered input's bytes to the reasons it was given.
    Matching input by input, a kind refused for the wrong reason fails its line even where the
    totals by reason agree (another input's mistake making up for it).
    """
    checks = []
    for kind, entry in (manifest.get("hostile") or {}).items():
        reason = str(entry["reason"])
        actual = sum(letters.get(digest, {}).get(reason, 0) for digest in set(entry["sha256"]))
        checks.append(Check(f"hostile {kind}: {reason}", int(entry["count"]), actual))
    return checks


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def period_days(period: ind.Period) -> tuple[str, str]:
    """First and last local day of a period (its end is exclusive)."""
    from datetime import timedelta

    from engine.calendar import VN_TZ

    last = period.end - timedelta(microseconds=1)
    return (
        period.start.astimezone(VN_TZ).date().isoformat(),
        last.astimezone(VN_TZ).date().isoformat(),
    )


def percent(figure: ind.Figure | None) -> str:
    value = figure.value if figure is not None else None
    return "N/A" if value is None else f"{value * 100:.1f}%"


def working_days(figure: ind.Figure | None) -> str:
    value = figure.value if figure is not None else None
    return "N/A" if value is None else f"{value / ind.WORKING_DAY_SECONDS:.1f} days"


def vnd(amount: int) -> str:
    return f"{amount:,} VND".replace(",", ".")


INDICATOR_ROWS: Sequence[tuple[str, str]] = (
    ("2.1", "On-time rate"),
    ("2.2", "Average processing time"),
    ("3.3", "Online rate"),
    ("3.6", "Online payment rate"),
    ("4.2", "Digitised dossiers"),
    ("4.5", "VNeID-authenticated"),
    ("5.4", "Satisfaction (100% − overdue% − complaints%)"),
)


def format_figure(code: str, figure: ind.Figure | None) -> str:
    return working_days(figure) if code == "2.2" else percent(figure)


def print_summary(console: Any, summary: Summary) -> None:
    from rich import box
    from rich.columns import Columns
    from rich.table import Table

    start, end = period_days(summary.period)
    console.rule(
        f"[bold]{summary.province}: {summary.dossiers:,} dossiers submitted {start} to {end}"
    )

    statuses = Table(title="Dossiers submitted in the period, by status now", box=box.SIMPLE_HEAD)
    statuses.add_column("code", justify="right")
    statuses.add_column("status")
    statuses.add_column("dossiers", justify="right")
    statuses.add_column("share", justify="right")
    for code, label, count in summary.by_status:
        share = count / summary.dossiers if summary.dossiers else 0
        statuses.add_row(str(code), label, f"{count:,}", f"{share * 100:.1f}%")

    figures = Table(title="Decision 766 indicators", box=box.SIMPLE_HEAD)
    figures.add_column("indicator")
    figures.add_column("all", justify="right", style="bold")
    levels = [lvl for lvl in LEVELS if lvl in summary.by_level]
    for level in levels:
        figures.add_column(level, justify="right")
    for indicator, title in INDICATOR_ROWS:
        figures.add_row(
            f"{indicator} {title}",
            format_figure(indicator, summary.total.get(indicator)),
            *(format_figure(indicator, summary.by_level[lvl].get(indicator)) for lvl in levels),
        )

    money = Table(title="Online fee discounts in the period", box=box.SIMPLE_HEAD)
    money.add_column("")
    money.add_column("dossiers", justify="right")
    money.add_column("amount", justify="right")
    money.add_row("granted", f"{summary.discounts_granted:,}", vnd(summary.discount_vnd))
    money.add_row("revoked", f"{summary.discounts_revoked:,}", vnd(summary.revoked_vnd))
    net = summary.discount_vnd - summary.revoked_vnd
    money.add_row("[bold]kept by applicants", "", f"[bold]{vnd(net)}")

    letters = Table(title="Dead letters by reason", box=box.SIMPLE_HEAD)
    letters.add_column("reason")
    letters.add_column("inputs", justify="right")
    letters.add_column("meaning", style="dim")
    for reason, count in sorted(summary.dead_letters.items(), key=lambda kv: -kv[1]):
        letters.add_row(reason, f"{count:,}", DEAD_LETTER_MEANINGS.get(reason, ""))
    if not summary.dead_letters:
        letters.add_row("none", "0", "")

    flow = Table(title="Inputs of the whole run", box=box.SIMPLE_HEAD)
    flow.add_column("")
    flow.add_column("", justify="right")
    flow.add_row("inputs consumed", f"{summary.consumed:,}")
    flow.add_row("applied", f"{summary.applied:,}")
    flow.add_row("duplicates", f"{summary.duplicates:,}")
    flow.add_row("dead-lettered", f"{sum(summary.dead_letters.values()):,}")
    flow.add_row("handovers (engine's own entries)", f"{sum(summary.handovers.values()):,}")
    flow.add_row("migrations (engine's own entries)", f"{sum(summary.migrations.values()):,}")
    flow.add_row("history rows", f"{summary.history_rows:,}")
    flow.add_row("status events out", f"{summary.status_events:,}")
    flow.add_row("deadline warnings", f"{summary.notices['deadline-warning']:,}")
    flow.add_row("overdue notices", f"{summary.notices['overdue']:,}")
    if summary.events_per_second is not None and summary.seconds is not None:
        flow.add_row("time to catch up", f"{summary.seconds:.1f} s")
        flow.add_row("[bold]events/s", f"[bold]{summary.events_per_second:,.0f}")

    console.print(Columns([statuses, figures]))
    console.print(Columns([money, letters]))
    if summary.handovers:
        console.print(handover_line(summary))
    if summary.migrations:
        console.print(migration_line(summary))
    console.print(Columns([flow, _checks_table(summary)]) if summary.checks else flow)


def handover_line(summary: Summary) -> str:
    """The handovers in one line: how many, by former → new level, and what became of them."""
    return _own_steps_line(
        "[bold]handovers[/] (contract 1.1): {total:,} dossiers open at an ended agency passed "
        "to its successor",
        summary.handovers,
        summary.handed_over,
    )


def migration_line(summary: Summary) -> str:
    """The migrations in one line: how many, by the versions' levels, and what became of them."""
    return _own_steps_line(
        "[bold]migrations[/] (workflow plans): {total:,} dossiers open at a plan's cutover "
        "moved to its version",
        summary.migrations,
        summary.migrated,
    )


def _own_steps_line(opening: str, counts: Mapping[str, int], fates: Fates) -> str:
    levels = ", ".join(f"{k} {n:,}" for k, n in sorted(counts.items()))
    return (
        f"{opening.format(total=sum(counts.values()))} ({levels}); now {fates.finished:,} "
        f"finished ({fates.returned:,} returned, {fates.resolved:,} resolved), "
        f"{fates.closed:,} withdrawn or stopped, {fates.open:,} still open"
    )


def _checks_table(summary: Summary) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title="Accounting: produced vs engine", box=box.SIMPLE_HEAD)
    table.add_column("")
    table.add_column("produced", justify="right")
    table.add_column("engine", justify="right")
    table.add_column("")
    for check in summary.checks:
        mark = "[green]✓" if check.ok else "[red bold]✗"
        table.add_row(check.name, f"{check.expected:,}", f"{check.actual:,}", mark)
    return table
