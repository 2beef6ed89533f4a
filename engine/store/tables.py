"""The SQL store's schema: its tables, the types its values are stored as, and how the port's
records map to and from rows (`engine.store.sql` writes them, `engine.store.queries` reads them,
`engine.store.bulk` copies them). The migrations (`engine.store.migrations`) create it.

The `dossiers` table keeps the full snapshot as JSON plus flat copies of the fields that
indicators (Decision 766: on-time rate, online rate, ...) need, so those can be computed in SQL.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql

from engine.application.ports import HistoryRow, ParkedInput, Position, StoredDossier
from engine.dossier import Dossier


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC; reads return aware UTC datetimes.

    SQLite has no timezone type and SQLAlchemy's SQLite DATETIME drops `tzinfo` silently, so
    values are normalised to UTC before storing: equal instants compare equal on both backends,
    and SQLite's string comparison of stored values orders them correctly. Naive datetimes are
    refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        require_aware(value)
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
_ID = BigInteger().with_variant(Integer(), "sqlite")
# JSONB for the snapshot so indicators can reach into it; the audit trail (envelopes) stays
# plain JSON, which PostgreSQL stores as the text it was given (JSONB would re-spell numbers and
# reject \u0000), so a hash over stored envelopes later recomputes exactly.
_SNAPSHOT_JSON = JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

dossiers = Table(
    "dossiers",
    metadata,
    Column("code", String, primary_key=True),
    Column("procedure", String, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("procedure_group", String, nullable=False),
    Column("state", String, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("level", String, nullable=False),
    Column("agency", String, nullable=False),
    Column("receiving_agency", String, nullable=False),
    Column("channel", Integer, nullable=False),
    Column("full_online", Boolean, nullable=False),
    Column("vneid_authenticated", Boolean, nullable=False),
    Column("digitised", Boolean, nullable=False),
    Column("paid_online", Boolean, nullable=True),
    Column("submitted_at", UtcDateTime, nullable=False),
    Column("received_at", UtcDateTime, nullable=True),
    Column("due_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("final", Boolean, nullable=False),
    Column("last_event_at", UtcDateTime, nullable=False),
    Column("next_notice_at", UtcDateTime, nullable=True, index=True),
    Column("revision", Integer, nullable=False),
    Column("snapshot", _SNAPSHOT_JSON, nullable=False),
    # Working seconds waiting for the applicant: processing time (indicator 2.2) excludes it.
    Column("paused_seconds", Integer, nullable=False, server_default=text("0")),
    # The inbound partition the dossier's inputs arrive on: whose deadline notices these are.
    Column("partition", Integer, nullable=True),
)
# Monitoring (engine/indicators.py, dossier/monitoring.py): the indicators of a period read
# dossiers by reception and finish time; the open-dossier gauges read only the partial index.
Index("ix_dossiers_received_at", dossiers.c.received_at)
Index("ix_dossiers_finished_at", dossiers.c.finished_at)
Index(
    "ix_dossiers_open",
    dossiers.c.status_code,
    dossiers.c.level,
    dossiers.c.due_at,
    # `final` again as a column: SQLite counts a partial index as covering only if every column
    # the query names is in it, its WHERE clause included.
    dossiers.c.final,
    postgresql_where=~dossiers.c.final,
    sqlite_where=~dossiers.c.final,
)

# Handovers (contract 1.1): an ended agency's open dossiers, by code; a partition's clock.
Index(
    "ix_dossiers_open_agency",
    dossiers.c.agency,
    dossiers.c.code,
    postgresql_where=~dossiers.c.final,
    sqlite_where=~dossiers.c.final,
)
Index("ix_dossiers_partition_last_event_at", dossiers.c.partition, dossiers.c.last_event_at)
# Workflow migrations: the open dossiers still pinned to a version a plan moves, by code.
Index(
    "ix_dossiers_open_procedure_version",
    dossiers.c.procedure,
    dossiers.c.workflow_version,
    dossiers.c.code,
    postgresql_where=~dossiers.c.final,
    sqlite_where=~dossiers.c.final,
)

history = Table(
    "history",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("dossier_code", String, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("source", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("type", String, nullable=False),
    Column("event_time", UtcDateTime, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("envelope", JSON, nullable=False),
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=True),
    Column("offset", BigInteger, nullable=True),
    Column("state_before", String, nullable=True),
    Column("state_after", String, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("workflow_version", Integer, nullable=False),
    # Wall clock, for operators only: business logic never reads it, so replays stay exact.
    Column("recorded_at", UtcDateTime, nullable=False),
    # The tamper-evident hash chain (engine.audit): nullable only for rows written before
    # migration 0004, which computes theirs.
    Column("chain_hash", Text, nullable=True),
    Column("prev_hash", Text, nullable=True),
    # Contract 1.1, "Signed inputs" (migration 0006): the verified ce-signature header and the
    # bytes it signs, for inputs of signing agencies and senders; NULL for the others.
    Column("signature", Text, nullable=True),
    Column("signed_value", LargeBinary, nullable=True),
    UniqueConstraint("dossier_code", "seq"),
)

input_ledger = Table(
    "input_ledger",
    metadata,
    Column("source", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("content_hash", String, nullable=False),
    Column("dossier_code", String, nullable=False),
    PrimaryKeyConstraint("source", "event_id"),
)

parked_inputs = Table(
    "parked_inputs",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("source", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("dossier_code", String, nullable=False, index=True),
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=True),
    Column("offset", BigInteger, nullable=True),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),  # [[name, base64 value], ...]
    Column("parked_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),
    Column("detail", Text, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("message_id", String, nullable=False, unique=True),
    Column("topic", String, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime, nullable=True),
)
# The relay scans unsent messages in id order; a partial index keeps that scan proportional
# to the backlog, not to everything ever sent.
# The dead letters the relay sent, oldest first: what the retention purge deletes (their bytes
# may hold personal data; the dead-letter topic is their record).
Index(
    "ix_outbox_sent_dead_letters",
    outbox.c.sent_at,
    postgresql_where=text("topic = 'dossier.dlq' AND sent_at IS NOT NULL"),
    sqlite_where=text("topic = 'dossier.dlq' AND sent_at IS NOT NULL"),
)
Index(
    "ix_outbox_unsent",
    outbox.c.id,
    postgresql_where=outbox.c.sent_at.is_(None),
    sqlite_where=outbox.c.sent_at.is_(None),
)

consumer_positions = Table(
    "consumer_positions",
    metadata,
    Column("group_id", String, nullable=False),
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
)

input_outcomes = Table(
    "input_outcomes",
    metadata,
    Column("group_id", String, nullable=False),
    Column("topic", String, nullable=False),
    Column("outcome", String, nullable=False),
    Column("count", BigInteger, nullable=False),
    PrimaryKeyConstraint("group_id", "topic", "outcome"),
)

# Periodic roots over all chains (engine.audit): what `dossier audit verify` holds the history
# against, and what is published to `dossier.audit-checkpoint`.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("business_time", UtcDateTime, nullable=True),
    Column("history_id", BigInteger, nullable=False),  # highest history row id covered
    Column("rows", BigInteger, nullable=False),
    Column("chains", BigInteger, nullable=False),
    Column("prev_root", Text, nullable=False),
    Column("root", Text, nullable=False),
    # The engine's Ed25519 signature of the checkpoint (migration 0007) and the id of the key
    # that made it; NULL for checkpoints written before signing, or by an engine without a key.
    Column("key_id", Text, nullable=True),
    Column("signature", Text, nullable=True),
)

# The chain heads that moved since the previous checkpoint (only those: a checkpoint costs
# what changed, not the whole history).
audit_checkpoint_heads = Table(
    "audit_checkpoint_heads",
    metadata,
    Column("checkpoint_id", BigInteger, nullable=False),
    Column("dossier_code", String, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("chain_hash", Text, nullable=False),
    PrimaryKeyConstraint("checkpoint_id", "dossier_code"),
)

# One AES-256-GCM key per person (migration 0008), found by a keyed digest of the person's
# identity number: deleting a row makes that person's personal fields in history unreadable.
personal_data_keys = Table(
    "personal_data_keys",
    metadata,
    Column("person", Text, primary_key=True),
    Column("key_id", Text, nullable=False, unique=True),
    Column("key", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Whose key a dossier's personal fields are sealed under: written with its first sealed row.
dossier_persons = Table(
    "dossier_persons",
    metadata,
    Column("dossier_code", String, primary_key=True),
    Column("key_id", Text, nullable=False, index=True),
)

# Every time personal data was shown in clear: append-only and chained like the history.
disclosures = Table(
    "disclosures",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("disclosed_at", UtcDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("dossier_code", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("chain_hash", Text, nullable=False),
)

engine_clock = Table(
    "engine_clock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("business_time", UtcDateTime, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)


# ---------------------------------------------------------------------------------------------
# Values as stored
# ---------------------------------------------------------------------------------------------


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware datetimes")


# ---------------------------------------------------------------------------------------------
# The port's records as rows, and back
# ---------------------------------------------------------------------------------------------


def dossier_columns(stored: StoredDossier) -> dict[str, Any]:
    """The dossier's row without its key and revision."""
    d = stored.dossier
    return {
        "procedure": d.procedure,
        "workflow_version": d.workflow_version,
        "procedure_group": d.group,
        "state": d.state,
        "status_code": d.status_code,
        "level": d.level,
        "agency": d.agency,
        "receiving_agency": d.receiving_agency,
        "channel": d.channel,
        "full_online": d.full_online,
        "vneid_authenticated": d.vneid_authenticated,
        "digitised": d.digitised,
        "paid_online": d.paid_online,
        "submitted_at": d.submitted_at,
        "received_at": d.received_at,
        "due_at": d.due_at,
        "finished_at": d.finished_at,
        "final": d.final,
        "last_event_at": d.last_event_at,
        "next_notice_at": stored.next_notice_at,
        "paused_seconds": d.paused_seconds,
        "partition": stored.partition,
        "snapshot": d.to_json(),
    }


# What a `StoredDossier` is read from, in `stored_dossier`'s order.
STORED_COLUMNS = (
    dossiers.c.revision,
    dossiers.c.next_notice_at,
    dossiers.c.partition,
    dossiers.c.snapshot,
)


def stored_dossier(
    revision: int, next_notice_at: datetime | None, partition: int | None, snapshot: Any
) -> StoredDossier:
    return StoredDossier(Dossier.from_json(snapshot), revision, next_notice_at, partition)


def history_columns(
    r: HistoryRow, recorded_at: datetime, prev_hash: str | None, chain_hash: str | None
) -> dict[str, Any]:
    """A history row as the `history` table's columns, with its place in the chain."""
    return {
        "dossier_code": r.dossier_code,
        "seq": r.seq,
        "source": r.source,
        "event_id": r.event_id,
        "type": r.type,
        "event_time": r.event_time,
        "schema_version": r.schema_version,
        "envelope": r.envelope,
        "topic": r.position.topic,
        "partition": r.position.partition,
        "offset": r.position.offset,
        "state_before": r.state_before,
        "state_after": r.state_after,
        "status_code": r.status_code,
        "workflow_version": r.workflow_version,
        "recorded_at": recorded_at,
        "prev_hash": prev_hash,
        "chain_hash": chain_hash,
        "signature": r.signature,
        "signed_value": r.signed_value,
    }


# What a `HistoryRow` is read from, in `history_row`'s order.
HISTORY_ROW_COLUMNS = (
    history.c.dossier_code,
    history.c.seq,
    history.c.source,
    history.c.event_id,
    history.c.type,
    history.c.event_time,
    history.c.schema_version,
    history.c.envelope,
    history.c.topic,
    history.c.partition,
    history.c.offset,
    history.c.state_before,
    history.c.state_after,
    history.c.status_code,
    history.c.workflow_version,
    history.c.prev_hash,
    history.c.chain_hash,
    history.c.signature,
    history.c.signed_value,
)


def history_row(row: Any) -> HistoryRow:
    """A row of `HISTORY_ROW_COLUMNS` as the port's record."""
    return HistoryRow(
        dossier_code=row.dossier_code,
        seq=row.seq,
        source=row.source,
        event_id=row.event_id,
        type=row.type,
        event_time=row.event_time,
        schema_version=row.schema_version,
        envelope=row.envelope,
        position=Position(row.topic, row.partition, row.offset),
        state_before=row.state_before,
        state_after=row.state_after,
        status_code=row.status_code,
        workflow_version=row.workflow_version,
        prev_hash=row.prev_hash,
        chain_hash=row.chain_hash,
        signature=row.signature,
        signed_value=None if row.signed_value is None else bytes(row.signed_value),
    )


def parked_columns(p: ParkedInput) -> dict[str, Any]:
    """A parked input as the `parked_inputs` table's columns, without its id."""
    return {
        "source": p.source,
        "event_id": p.event_id,
        "dossier_code": p.dossier_code,
        "topic": p.position.topic,
        "partition": p.position.partition,
        "offset": p.position.offset,
        "key": p.key,
        "value": p.value,
        "headers": [[name, base64.b64encode(value).decode()] for name, value in p.headers],
        "parked_at": p.parked_at,
        "expires_at": p.expires_at,
        "detail": p.detail,
    }


def parked_input(row: Row[Any]) -> ParkedInput:
    """A row of `parked_inputs` as the port's record."""
    return ParkedInput(
        source=row.source,
        event_id=row.event_id,
        dossier_code=row.dossier_code,
        position=Position(row.topic, row.partition, row.offset),
        key=None if row.key is None else bytes(row.key),
        value=bytes(row.value),
        headers=tuple((name, base64.b64decode(value)) for name, value in row.headers),
        parked_at=row.parked_at,
        expires_at=row.expires_at,
        detail=row.detail,
        id=row.id,
    )
