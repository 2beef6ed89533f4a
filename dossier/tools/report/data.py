"""What a run left in the engine's database, read once for the summary and the report.

Everything here comes from the database the engine wrote (dossiers, history, outbox, consumer
positions, parked inputs), never from what the simulator meant to happen: comparing the two
is the point of the summary's accounting check. The Decision 766 figures use the definitions
of `engine.indicators`, so the report says what `dossier kpi` and the metrics endpoint say.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection

from engine import indicators as ind
from engine.calendar import WorkingCalendar
from engine.events import DEADLINE_TOPIC, DLQ_TOPIC, FEE_DISCOUNT_TOPIC, STATUS_TOPIC
from engine.procedures import Catalogue, ProcedureVersion
from engine.store import queries


@dataclass(frozen=True, slots=True)
class DossierRow:
    code: str
    procedure: str
    workflow_version: int
    receiving_agency: str
    receiving_level: str  # the procedure version's receiving level (indicators count there)
    deciding_level: str  # the level that decides: the upper one for inter-level handling
    agency: str  # the agency holding it now
    status_code: int
    final: bool
    channel: int
    digitised: bool
    vneid_authenticated: bool
    paid_online: bool | None
    submitted_at: datetime
    received_at: datetime | None
    due_at: datetime | None
    finished_at: datetime | None
    last_event_at: datetime
    paused_seconds: int
    allowed_seconds: int | None  # the procedure's processing time in working seconds
    # Contract 1.1, "Handover": when the agency holding it ended and its successor took it over,
    # and the successor's level (None: never handed over).
    handed_over_at: datetime | None = None
    handed_over_to_level: str | None = None
    # A workflow migration plan's cutover, when one moved it to the version it is pinned to now
    # (None: never migrated).
    migrated_at: datetime | None = None

    @property
    def reception_level(self) -> str:
        """The level that received it: its procedure's receiving level, or its successor's when
        the agency that should have received it had ended and handed it over first."""
        if (
            self.handed_over_at is not None
            and self.handed_over_to_level is not None
            and self.received_at is not None
            and self.handed_over_at <= self.received_at
        ):
            return self.handed_over_to_level
        return self.receiving_level

    @property
    def closed_at(self) -> datetime | None:
        """When the agency's work on it ended: finished, or withdrawn (its last event)."""
        if self.finished_at is not None:
            return self.finished_at
        return self.last_event_at if self.final else None

    def facts(self) -> ind.DossierFacts:
        return ind.DossierFacts(
            agency=self.receiving_agency,
            level=self.receiving_level,
            channel=self.channel,
            digitised=self.digitised,
            vneid_authenticated=self.vneid_authenticated,
            paid_online=self.paid_online,
            received_at=self.received_at,
            due_at=self.due_at,
            finished_at=self.finished_at,
            paused_seconds=self.paused_seconds,
        )


@dataclass(frozen=True, slots=True)
class Discount:
    time: datetime  # business time of the action that granted or revoked it
    granted: bool  # False: revoked
    amount: int  # VND


@dataclass
class RunData:
    rows: list[DossierRow]
    dead_letters: Counter[str]  # by reason
    discounts: list[Discount]
    notices: Counter[str]  # "deadline-warning" / "overdue"
    status_events: int
    applied_inputs: int  # history rows of inputs: one per input applied
    consumed_inputs: int  # inputs whose positions the database committed
    parked: int
    outbox_backlog: int
    clock: datetime | None  # the engine's business clock
    agency_names: Mapping[str, str] = field(default_factory=dict)
    # Contract 1.1, "Handover": the engine's own history entries, and every history row.
    handovers: list[queries.HandoverRecord] = field(default_factory=list)
    history_rows: int = 0
    # Workflow migrations (engine.procedures.MigrationPlan), the engine's other own entries:
    # by the two versions' levels, as the simulator's manifest counts them.
    migrations_by_levels: Counter[str] = field(default_factory=Counter)

    @property
    def handovers_by_level(self) -> Counter[str]:
        """Handovers by former → new level ("district → province")."""
        return Counter(handover_levels(h.level, h.to_level) for h in self.handovers)

    def handed_over_rows(self) -> list[DossierRow]:
        return [r for r in self.rows if r.handed_over_at is not None]

    def migrated_rows(self) -> list[DossierRow]:
        return [r for r in self.rows if r.migrated_at is not None]

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def duplicates(self) -> int:
        """Consumed inputs that were neither applied, dead-lettered nor left parked."""
        return self.consumed_inputs - self.applied_inputs - self.dead_lettered - self.parked

    def submitted_in(self, period: ind.Period) -> list[DossierRow]:
        return [r for r in self.rows if r.submitted_at in period]

    def status_counts(self, period: ind.Period | None = None) -> Counter[int]:
        rows = self.rows if period is None else self.submitted_in(period)
        return Counter(r.status_code for r in rows)

    def discount_totals(self, period: ind.Period) -> tuple[int, int, int, int]:
        """(granted, granted VND, revoked, revoked VND) for actions within the period."""
        within = [d for d in self.discounts if d.time in period]
        granted = [d.amount for d in within if d.granted]
        revoked = [d.amount for d in within if not d.granted]
        return len(granted), sum(granted), len(revoked), sum(revoked)

    def name(self, agency: str) -> str:
        return self.agency_names.get(agency, agency)

    def period(self, start: datetime | None = None) -> ind.Period:
        """From the first submission (or `start`) to just after the engine clock."""
        first = start or min((r.submitted_at for r in self.rows), default=None)
        last = self.clock or max((r.submitted_at for r in self.rows), default=None)
        if first is None or last is None:
            now = datetime.now().astimezone()
            return ind.Period(now - timedelta(days=1), now)
        return ind.Period(first, max(last, first) + timedelta(microseconds=1))

    def indicators(self, calendar: WorkingCalendar, period: ind.Period) -> ind.Report:
        return ind.report((r.facts() for r in self.rows), period, calendar)


def load_run(
    connection: Connection,
    catalogue: Catalogue,
    consumer_group: str,
    agency_names: Mapping[str, str] | None = None,
) -> RunData:
    versions = {(v.code, v.version): v for v in catalogue.all_versions()}
    handovers = queries.handovers(connection)
    # A dossier handed over twice (a successor that ended too) keeps its last one.
    handed_over = {h.dossier_code: h for h in handovers}
    migrations = queries.migrations(connection)
    migrated = {m.dossier_code: m for m in migrations}
    migrations_by_levels = Counter(
        migration_levels(
            versions.get((m.procedure, m.from_version)),
            versions.get((m.procedure, m.to_version)),
            m,
        )
        for m in migrations
    )
    rows: list[DossierRow] = []
    for r in queries.dossier_records(connection):
        handover = handed_over.get(r.code)
        version = versions.get((r.procedure, r.workflow_version))
        migration = migrated.get(r.code)
        received_under = version
        if migration is not None and r.received_at is not None and r.received_at < migration.time:
            # Received under the version it was migrated from, at that version's level.
            received_under = versions.get((r.procedure, migration.from_version)) or version
        rows.append(
            DossierRow(
                code=r.code,
                procedure=r.procedure,
                workflow_version=r.workflow_version,
                receiving_agency=r.receiving_agency,
                # A procedure gone from the catalogue: the level it is at is the best guess.
                receiving_level=received_under.receiving_level if received_under else r.level,
                deciding_level=version.levels[-1] if version else r.level,
                agency=r.agency,
                status_code=r.status_code,
                final=r.final,
                channel=r.channel,
                digitised=r.digitised,
                vneid_authenticated=r.vneid_authenticated,
                paid_online=r.paid_online,
                submitted_at=r.submitted_at,
                received_at=r.received_at,
                due_at=r.due_at,
                finished_at=r.finished_at,
                last_event_at=r.last_event_at,
                paused_seconds=r.paused_seconds,
                allowed_seconds=version.deadline.working_seconds if version else None,
                handed_over_at=handover.time if handover is not None else None,
                handed_over_to_level=handover.to_level if handover is not None else None,
                migrated_at=migration.time if migration is not None else None,
            )
        )
    letters, notices = Counter[str](), Counter[str]()
    discounts: list[Discount] = []
    for message in queries.outbox_messages(connection, [DLQ_TOPIC, FEE_DISCOUNT_TOPIC]):
        event = json.loads(message.value)
        data = event.get("data") or {}
        if message.topic == DLQ_TOPIC:
            letters[str(data.get("reason"))] += 1
        else:
            granted = str(event.get("type", "")).endswith("granted")
            amount = int(data.get("discount_amount", 0))
            discounts.append(Discount(message.created_at, granted, amount))
    for message in queries.outbox_messages(connection, [DEADLINE_TOPIC]):
        notices[str(json.loads(message.value)["type"]).rsplit(".", 1)[-1]] += 1
    return RunData(
        rows=rows,
        dead_letters=letters,
        discounts=discounts,
        notices=notices,
        status_events=queries.outbox_counts(connection, [STATUS_TOPIC]).get(STATUS_TOPIC, 0),
        applied_inputs=queries.history_count(connection),
        consumed_inputs=queries.consumed_inputs(connection, consumer_group),
        parked=queries.parked_count(connection),
        outbox_backlog=queries.outbox_backlog(connection),
        clock=queries.business_clock(connection),
        agency_names=dict(agency_names or {}),
        handovers=handovers,
        history_rows=queries.history_rows(connection),
        migrations_by_levels=migrations_by_levels,
    )


def handover_levels(former: str, new: str) -> str:
    """How the summary names a handover's levels, as the simulator's manifest does."""
    return f"{former} → {new}"


def migration_levels(
    source: ProcedureVersion | None,
    target: ProcedureVersion | None,
    record: queries.MigrationRecord,
) -> str:
    """How the summary names a migration: the two versions' levels, as the simulator's manifest
    does ("commune/district → commune/province"); by its versions when the catalogue no longer
    has them."""
    if source is None or target is None:
        return f"{record.procedure} v{record.from_version} → v{record.to_version}"
    return f"{'/'.join(source.levels)} → {'/'.join(target.levels)}"


# ---------------------------------------------------------------------------------------------
# Series for the charts
# ---------------------------------------------------------------------------------------------


def weeks(period: ind.Period) -> list[ind.Period]:
    """Monday-to-Monday weeks covering the period, clipped to it."""
    start = period.start
    monday = (start - timedelta(days=start.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    result: list[ind.Period] = []
    while monday < period.end:
        following = monday + timedelta(days=7)
        lo, hi = max(monday, period.start), min(following, period.end)
        if lo < hi:
            result.append(ind.Period(lo, hi))
        monday = following
    return result


def days(period: ind.Period) -> list[ind.Period]:
    midnight = period.start.replace(hour=0, minute=0, second=0, microsecond=0)
    result: list[ind.Period] = []
    while midnight < period.end:
        following = midnight + timedelta(days=1)
        lo, hi = max(midnight, period.start), min(following, period.end)
        if lo < hi:
            result.append(ind.Period(lo, hi))
        midnight = following
    return result


def figures_by(
    rows: Iterable[DossierRow],
    periods: Sequence[ind.Period],
    calendar: WorkingCalendar,
    key: str = "receiving_level",
) -> dict[str, list[Mapping[str, ind.Figure]]]:
    """Per group (a DossierRow attribute) and period, the Decision 766 figures."""
    groups: dict[str, list[DossierRow]] = {}
    for row in rows:
        groups.setdefault(str(getattr(row, key)), []).append(row)
    result: dict[str, list[Mapping[str, ind.Figure]]] = {}
    for group, members in groups.items():
        facts = [m.facts() for m in members]
        series: list[Mapping[str, ind.Figure]] = []
        for period in periods:
            tally = ind.Tally()
            for f in facts:
                tally.add(f, period, calendar)
            series.append(ind.figures(tally))
        result[group] = series
    return result
