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
from typing import Any

from sqlalchemy import Connection, Select, func, select

from engine import indicators as ind
from engine.calendar import WorkingCalendar
from engine.events import DEADLINE_TOPIC, DLQ_TOPIC, FEE_DISCOUNT_TOPIC, STATUS_TOPIC
from engine.procedures import Catalogue
from engine.store.sql import consumer_positions, dossiers, history, outbox, parked_inputs


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
    applied_inputs: int  # history rows: one per input applied
    consumed_inputs: int  # inputs whose positions the database committed
    parked: int
    outbox_backlog: int
    clock: datetime | None  # the engine's business clock
    agency_names: Mapping[str, str] = field(default_factory=dict)

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
    c = dossiers.c
    rows: list[DossierRow] = []
    query = select(
        c.code,
        c.procedure,
        c.workflow_version,
        c.receiving_agency,
        c.agency,
        c.level,
        c.status_code,
        c.final,
        c.channel,
        c.digitised,
        c.vneid_authenticated,
        c.paid_online,
        c.submitted_at,
        c.received_at,
        c.due_at,
        c.finished_at,
        c.last_event_at,
        c.paused_seconds,
    )
    for r in connection.execute(query):
        version = versions.get((r.procedure, r.workflow_version))
        rows.append(
            DossierRow(
                code=r.code,
                procedure=r.procedure,
                workflow_version=r.workflow_version,
                receiving_agency=r.receiving_agency,
                # A procedure gone from the catalogue: the level it is at is the best guess.
                receiving_level=version.receiving_level if version else r.level,
                deciding_level=version.levels[-1] if version else r.level,
                agency=r.agency,
                status_code=r.status_code,
                final=bool(r.final),
                channel=r.channel,
                digitised=bool(r.digitised),
                vneid_authenticated=bool(r.vneid_authenticated),
                paid_online=None if r.paid_online is None else bool(r.paid_online),
                submitted_at=r.submitted_at,
                received_at=r.received_at,
                due_at=r.due_at,
                finished_at=r.finished_at,
                last_event_at=r.last_event_at,
                paused_seconds=int(r.paused_seconds or 0),
                allowed_seconds=version.deadline.working_seconds if version else None,
            )
        )
    letters, notices = Counter[str](), Counter[str]()
    discounts: list[Discount] = []
    status_events = 0
    o = outbox.c
    outputs = select(o.topic, o.value, o.created_at).where(
        o.topic.in_([DLQ_TOPIC, FEE_DISCOUNT_TOPIC])
    )
    for topic, value, created_at in connection.execute(outputs):
        event = json.loads(bytes(value))
        data = event.get("data") or {}
        if topic == DLQ_TOPIC:
            letters[str(data.get("reason"))] += 1
        else:
            granted = str(event.get("type", "")).endswith("granted")
            discounts.append(Discount(created_at, granted, int(data.get("discount_amount", 0))))
    by_topic = select(o.topic, func.count()).where(o.topic.in_([STATUS_TOPIC, DEADLINE_TOPIC]))
    for topic, count in connection.execute(by_topic.group_by(o.topic)):
        if topic == STATUS_TOPIC:
            status_events = int(count)
    deadline_types = select(o.value).where(o.topic == DEADLINE_TOPIC)
    for (value,) in connection.execute(deadline_types):
        notices[str(json.loads(bytes(value))["type"]).rsplit(".", 1)[-1]] += 1
    p = consumer_positions.c
    consumed = connection.scalar(
        select(func.coalesce(func.sum(p.next_offset), 0)).where(p.group_id == consumer_group)
    )
    return RunData(
        rows=rows,
        dead_letters=letters,
        discounts=discounts,
        notices=notices,
        status_events=status_events,
        applied_inputs=_count(connection, select(func.count()).select_from(history)),
        consumed_inputs=int(consumed or 0),
        parked=_count(connection, select(func.count()).select_from(parked_inputs)),
        outbox_backlog=_count(
            connection, select(func.count()).select_from(outbox).where(o.sent_at.is_(None))
        ),
        clock=ind.engine_clock_now(connection),
        agency_names=dict(agency_names or {}),
    )


def _count(connection: Connection, query: Select[Any]) -> int:
    return int(connection.scalar(query) or 0)


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
