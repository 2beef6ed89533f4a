"""The SQL store's read models: every read of the database that is not a batch's.

The batch reads through its port (`engine.application.ports.BatchRepository`); everything else
that reads the store (monitoring, the indicators, the report, the audit trail, replays and their
verification, the command line, the tools) calls a function here, so the tables are known to
`engine.store` alone and a schema change is made in one package.

Each function takes a `Connection`: a caller reading several things sees them in one snapshot
and decides how long it keeps the connection. The records returned are the port's
(`HistoryRow`, `OutboxMessage`), the domain's (`DossierFacts`) or plain tuples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, and_, case, func, or_, select, text

from engine.application.ports import HistoryRow, OutboxMessage
from engine.calendar import WorkingCalendar
from engine.decider import HANDED_OVER_TYPE
from engine.history import ENGINE_TOPIC
from engine.indicators import DossierFacts, LevelOf, Period, Report, report
from engine.procedures import MIGRATED_TYPE
from engine.store.tables import (
    HISTORY_ROW_COLUMNS,
    consumer_positions,
    dossiers,
    engine_clock,
    history,
    history_row,
    input_outcomes,
    outbox,
    parked_inputs,
)

# ---------------------------------------------------------------------------------------------
# The engine's state: clock, positions, counts
# ---------------------------------------------------------------------------------------------


def business_clock(connection: Connection) -> datetime | None:
    """The engine's clock (latest business time applied, or wall time in wall-clock mode)."""
    value: datetime | None = connection.scalar(
        select(engine_clock.c.business_time).where(engine_clock.c.id == 1)
    )
    return value


def partition_clocks(connection: Connection) -> dict[int, datetime]:
    """The business clock of each inbound partition: the latest time applied from it (what
    handovers and workflow migrations are judged by, docs/CONTRACT.md)."""
    c = dossiers.c
    query = (
        select(c.partition, func.max(c.last_event_at))
        .where(c.partition.is_not(None))
        .group_by(c.partition)
    )
    return {int(p): at for p, at in connection.execute(query) if at is not None}


def positions(connection: Connection, group: str) -> dict[tuple[str, int], int]:
    """Next offset to consume per (topic, partition) that the group committed."""
    c = consumer_positions.c
    query = select(c.topic, c.partition, c.next_offset).where(c.group_id == group)
    return {(topic, partition): offset for topic, partition, offset in connection.execute(query)}


def consumed_inputs(connection: Connection, group: str) -> int:
    """Inputs whose positions the group committed: the sum of its next offsets."""
    c = consumer_positions.c
    query = select(func.coalesce(func.sum(c.next_offset), 0)).where(c.group_id == group)
    return int(connection.scalar(query) or 0)


def outcome_counts(connection: Connection, group: str) -> dict[tuple[str, str], int]:
    """Consumed inputs of the group by (contract topic, outcome)."""
    c = input_outcomes.c
    query = select(c.topic, c.outcome, c["count"]).where(c.group_id == group)
    return {(topic, outcome): int(n) for topic, outcome, n in connection.execute(query)}


def parked_count(connection: Connection) -> int:
    return int(connection.scalar(select(func.count()).select_from(parked_inputs)) or 0)


def outbox_backlog(connection: Connection) -> int:
    """Committed outputs not yet marked sent."""
    query = select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
    return int(connection.scalar(query) or 0)


def last_outbox_id(connection: Connection) -> int:
    """The highest outbox id committed (0 for none): outputs are numbered in commit order."""
    return int(connection.scalar(select(func.max(outbox.c.id))) or 0)


def history_count(connection: Connection) -> int:
    """History rows of inputs: one per input applied (the engine's own entries, handovers and
    migrations, are not inputs: `handover_count`, `migration_count`)."""
    query = select(func.count()).select_from(history).where(history.c.topic != ENGINE_TOPIC)
    return int(connection.scalar(query) or 0)


def handover_count(connection: Connection) -> int:
    """The engine's own history entries of handovers (contract 1.1, "Handover")."""
    query = (
        select(func.count())
        .select_from(history)
        .where(history.c.topic == ENGINE_TOPIC, history.c.type == HANDED_OVER_TYPE)
    )
    return int(connection.scalar(query) or 0)


def migration_count(connection: Connection) -> int:
    """The engine's own history entries of workflow migrations (`MigrationPlan`)."""
    query = (
        select(func.count())
        .select_from(history)
        .where(history.c.topic == ENGINE_TOPIC, history.c.type == MIGRATED_TYPE)
    )
    return int(connection.scalar(query) or 0)


def history_rows(connection: Connection) -> int:
    """Every history row: the inputs applied and the engine's own entries (handovers and
    migrations)."""
    return int(connection.scalar(select(func.count()).select_from(history)) or 0)


class HandoverRecord(NamedTuple):
    """One handover (contract 1.1, "Handover"), as the engine's own history entry records it."""

    dossier_code: str
    time: datetime  # the cutover
    agency: str  # the agency that ended
    level: str
    to_agency: str  # its successor
    to_level: str


def handovers(connection: Connection) -> list[HandoverRecord]:
    """Every handover the engine made, in the order it recorded them."""
    query = (
        select(history.c.dossier_code, history.c.event_time, history.c.envelope)
        .where(history.c.topic == ENGINE_TOPIC, history.c.type == HANDED_OVER_TYPE)
        .order_by(history.c.id)
    )
    records: list[HandoverRecord] = []
    for code, at, envelope in connection.execute(query):
        data = envelope.get("data") or {}
        records.append(
            HandoverRecord(
                code,
                at,
                str(data.get("agency", "")),
                str(data.get("level", "")),
                str(data.get("to_agency", "")),
                str(data.get("to_level", "")),
            )
        )
    return records


class MigrationRecord(NamedTuple):
    """One dossier moved by a workflow migration plan, as its history entry records it."""

    dossier_code: str
    time: datetime  # the plan's cutover
    procedure: str
    from_version: int
    to_version: int
    state_before: str
    state_after: str


def migrations(connection: Connection) -> list[MigrationRecord]:
    """Every migration the engine made, in the order it recorded them."""
    h = history.c
    query = (
        select(h.dossier_code, h.event_time, h.envelope, h.state_before, h.state_after)
        .where(h.topic == ENGINE_TOPIC, h.type == MIGRATED_TYPE)
        .order_by(h.id)
    )
    records: list[MigrationRecord] = []
    for code, at, envelope, before, after in connection.execute(query):
        data = envelope.get("data") or {}
        records.append(
            MigrationRecord(
                code,
                at,
                str(data.get("procedure", "")),
                int(data.get("from_version", 0)),
                int(data.get("to_version", 0)),
                str(before or ""),
                str(after),
            )
        )
    return records


def open_by_version_state(
    connection: Connection, procedures: Collection[str]
) -> dict[tuple[str, int, str], list[str]]:
    """The open dossiers of these procedures by (procedure, workflow version, state): their
    codes, in order (what a migration plan's dry run counts)."""
    c = dossiers.c
    found: dict[tuple[str, int, str], list[str]] = {}
    wanted = sorted(set(procedures))
    for start in range(0, len(wanted), 500):
        query = (
            select(c.procedure, c.workflow_version, c.state, c.code)
            .where(~c.final, c.procedure.in_(wanted[start : start + 500]))
            .order_by(c.procedure, c.workflow_version, c.state, c.code)
        )
        for procedure, version, state, code in connection.execute(query):
            found.setdefault((procedure, int(version), state), []).append(code)
    return found


def dossier_count(connection: Connection) -> int:
    return int(connection.scalar(select(func.count()).select_from(dossiers)) or 0)


def open_dossiers(
    connection: Connection, clock: datetime | None
) -> dict[tuple[int, str], tuple[int, int]]:
    """Dossiers not final by (status code, level): how many, and how many of those are past
    their appointment at `clock` (none when there is no clock)."""
    c = dossiers.c
    overdue = func.sum(case((c.due_at < clock, 1), else_=0)) if clock is not None else func.sum(0)
    # Everything this touches is in the partial index ix_dossiers_open: an index-only scan over
    # the open dossiers, not a read of their snapshots.
    query = (
        select(c.status_code, c.level, func.count(), overdue)
        .where(~c.final)
        .group_by(c.status_code, c.level)
    )
    return {
        (int(code), str(level)): (int(count), int(late or 0))
        for code, level, count, late in connection.execute(query)
    }


def pinned_versions(db: Engine) -> dict[tuple[str, int], int]:
    """How many stored dossiers each (procedure, workflow version) holds."""
    d = dossiers.c
    query = select(d.procedure, d.workflow_version, func.count()).group_by(
        d.procedure, d.workflow_version
    )
    with db.connect() as connection:
        return {(code, version): count for code, version, count in connection.execute(query)}


# ---------------------------------------------------------------------------------------------
# Dossiers
# ---------------------------------------------------------------------------------------------


class DossierRecord(NamedTuple):
    """A dossier's flat columns: what a report of a run reads of every dossier."""

    code: str
    procedure: str
    workflow_version: int
    receiving_agency: str
    agency: str
    level: str
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


def dossier_records(connection: Connection) -> Iterator[DossierRecord]:
    """Every dossier's flat columns (not its snapshot), in no particular order."""
    c = dossiers.c
    query = select(*(c[name] for name in DossierRecord._fields))
    for r in connection.execute(query):
        yield DossierRecord(
            code=r.code,
            procedure=r.procedure,
            workflow_version=r.workflow_version,
            receiving_agency=r.receiving_agency,
            agency=r.agency,
            level=r.level,
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
        )


def dossier_snapshots(connection: Connection) -> dict[str, dict[str, Any]]:
    """Every dossier's snapshot (`Dossier.to_json`), by code."""
    c = dossiers.c
    query = select(c.code, c.snapshot)
    return {code: dict(snapshot) for code, snapshot in connection.execute(query)}


def dossier_facts(
    connection: Connection, period: Period, level_of: LevelOf, agency: str | None = None
) -> Iterator[DossierFacts]:
    """What the indicators need of the dossiers received or finished in `period` (of one
    receiving agency, or all); each of the two time indexes serves one side of the OR."""
    c = dossiers.c
    query = select(
        c.receiving_agency,
        c.procedure,
        c.workflow_version,
        c.level,
        c.channel,
        c.digitised,
        c.vneid_authenticated,
        c.paid_online,
        c.received_at,
        c.due_at,
        c.finished_at,
        c.paused_seconds,
    ).where(
        or_(
            and_(c.received_at >= period.start, c.received_at < period.end),
            and_(c.finished_at >= period.start, c.finished_at < period.end),
        )
    )
    if agency is not None:
        query = query.where(c.receiving_agency == agency)
    for row in connection.execute(query):
        (
            receiving_agency,
            procedure,
            version,
            current_level,
            channel,
            digitised,
            vneid,
            paid_online,
            received_at,
            due_at,
            finished_at,
            paused_seconds,
        ) = row
        yield DossierFacts(
            agency=receiving_agency,
            # A procedure no longer in the catalogue: the level the dossier is at is the best
            # remaining guess, and for finished dossiers it is the returning level.
            level=level_of(procedure, version) or current_level,
            channel=channel,
            digitised=bool(digitised),
            vneid_authenticated=bool(vneid),
            paid_online=None if paid_online is None else bool(paid_online),
            received_at=received_at,
            due_at=due_at,
            finished_at=finished_at,
            paused_seconds=int(paused_seconds or 0),
        )


def indicator_report(
    connection: Connection,
    period: Period,
    calendar: WorkingCalendar,
    level_of: LevelOf,
    agency: str | None = None,
) -> Report:
    """The Decision 766 figures of `period` (`engine.indicators`) over the stored dossiers."""
    return report(dossier_facts(connection, period, level_of, agency), period, calendar)


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------


def dossier_history(
    connection: Connection, code: str, *, until: datetime | None = None
) -> list[HistoryRow]:
    """A dossier's applied inputs in order (only those of business time up to `until`)."""
    c = history.c
    query = select(*HISTORY_ROW_COLUMNS).where(c.dossier_code == code).order_by(c.seq)
    if until is not None:
        query = query.where(c.event_time <= until)
    return [history_row(row) for row in connection.execute(query)]


def status_sequences(connection: Connection) -> dict[str, list[tuple[str, int]]]:
    """Every dossier's (state, status code) after each input, in order."""
    h = history.c
    sequences: dict[str, list[tuple[str, int]]] = {}
    query = select(h.dossier_code, h.state_after, h.status_code).order_by(h.dossier_code, h.seq)
    for code, state, status in connection.execution_options(yield_per=50_000).execute(query):
        sequences.setdefault(code, []).append((state, status))
    return sequences


# (history id, dossier code, topic, partition, offset, schema version, envelope)
# (history id, dossier, topic, partition, offset, schema version, envelope, signature, signed bytes)
AppliedInputRow = tuple[int, str, str, int | None, int | None, int, Any, str | None, bytes | None]


def applied_inputs(
    connection: Connection,
    *,
    yield_per: int = 10_000,
    last_id: int | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[AppliedInputRow]:
    """The applied inputs in the order they were applied (history id), with the engine's own
    entries (handovers, topic `ENGINE_TOPIC`) where they stand, streamed: every one,
    or those up to `last_id`; with `shard` = (shard, shards), only the dossiers of that shard
    (`shard_of`), filtered in SQL where the database can (see `register_shard_function`)."""
    h = history.c
    query = select(
        h.id,
        h.dossier_code,
        h.topic,
        h.partition,
        h.offset,
        h.schema_version,
        h.envelope,
        h.signature,
        h.signed_value,
    ).order_by(h.id)
    if last_id is not None:
        query = query.where(h.id <= last_id)
    condition = None
    if shard is not None:
        condition = _shard_filter(connection.dialect.name, shard[1], shard[0])
        if condition is not None:
            query = query.where(condition)
    rows = connection.execution_options(stream_results=True, yield_per=yield_per).execute(query)
    for row in rows:
        if shard is not None and condition is None and shard_of(row[1], shard[1]) != shard[0]:
            continue
        signed = row[8]
        yield (*tuple(row)[:8], None if signed is None else bytes(signed))


def batch_bounds(connection: Connection, batch_size: int) -> list[int]:
    """The last history id of each batch of `batch_size` inputs in history order (the last
    batch may be shorter)."""
    h = history.c
    numbered = select(h.id, func.row_number().over(order_by=h.id).label("n")).subquery()
    query = select(numbered.c.id).where(numbered.c.n % batch_size == 0).order_by(numbered.c.id)
    bounds = [int(i) for i in connection.scalars(query)]
    last = connection.scalar(select(func.max(h.id)))
    if last is not None and (not bounds or bounds[-1] != last):
        bounds.append(int(last))
    return bounds


def shard_of(code: str, shards: int) -> int:
    """The shard of a dossier code; `_shard_filter` computes the same in SQL."""
    digest = hashlib.md5(code.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % shards


def register_shard_function(dbapi_connection: Any, _record: object) -> None:
    """A `connect` listener for SQLite engines: `shard_of` as the SQL function
    `dossier_shard`, so that `applied_inputs` filters a shard in SQL there too."""
    dbapi_connection.create_function("dossier_shard", 2, shard_of, deterministic=True)


def _shard_filter(dialect: str, shards: int, shard: int) -> Any:
    h = history.c
    if dialect == "sqlite":
        return func.dossier_shard(h.dossier_code, shards) == shard
    if dialect == "postgresql":
        # The first 32 bits of md5, unsigned: `shard_of` in SQL.
        return text(
            "mod(('x' || substr(md5(dossier_code), 1, 8))::bit(32)::bigint, :shards) = :shard"
        ).bindparams(shards=shards, shard=shard)
    return None


# ---------------------------------------------------------------------------------------------
# Outbox
# ---------------------------------------------------------------------------------------------


def outbox_messages(
    connection: Connection, topics: Collection[str], *, key: bytes | None = None
) -> Iterator[OutboxMessage]:
    """The outputs stored for these contract topics (of one key, if given), sent or not, in
    the order they were committed (id)."""
    c = outbox.c
    query = (
        select(c.id, c.topic, c.key, c.value, c.message_id, c.created_at)
        .where(c.topic.in_(sorted(topics)))
        .order_by(c.id)
    )
    if key is not None:
        query = query.where(c.key == key)
    for ident, topic, key_, value, message_id, created_at in connection.execute(query):
        yield OutboxMessage(
            topic=topic,
            key=None if key_ is None else bytes(key_),
            value=bytes(value),
            message_id=message_id,
            created_at=created_at,
            id=ident,
        )


def outbox_counts(connection: Connection, topics: Collection[str]) -> dict[str, int]:
    """Outputs stored by contract topic, for these topics (sent or not)."""
    c = outbox.c
    query = select(c.topic, func.count()).where(c.topic.in_(sorted(topics))).group_by(c.topic)
    return {topic: int(count) for topic, count in connection.execute(query)}
