"""The SQL adapter of `engine.application.ports`: SQLAlchemy 2 Core over SQLite or PostgreSQL
(psycopg 3).

Core, not the ORM: the engine writes thousands of rows per batch, and the ORM's identity map
and per-object flush cost more than the database does. A batch write is one statement per
table: on PostgreSQL an INSERT/UPDATE over `unnest()` of one array parameter per column (see
`_pg_rows` for why not executemany), elsewhere an executemany. Batched reads are IN queries
chunked at `CHUNK` values.

The `dossiers` table keeps the full snapshot as JSON plus flat copies of the fields that
indicators (Decision 766: on-time rate, online rate, ...) need, so those can be computed in SQL.
"""

from __future__ import annotations

import base64
import fcntl
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    Executable,
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
    and_,
    any_,
    bindparam,
    cast,
    column,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.types import UserDefinedType

from engine.application.ports import (
    ConcurrencyError,
    HistoryRow,
    LedgerEntry,
    OutboxMessage,
    ParkedInput,
    Position,
    StoredDossier,
)
from engine.audit import GENESIS, link, row_content
from engine.dossier import Dossier
from engine.store.writer import ChangeSetWriter

# Values per IN list: well under SQLite's bound-parameter limit, and PostgreSQL plans a list
# this size as quickly as a smaller one.
CHUNK = 1000


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
        _require_aware(value)
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

engine_clock = Table(
    "engine_clock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("business_time", UtcDateTime, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)


# ---------------------------------------------------------------------------------------------
# Engine and unit of work
# ---------------------------------------------------------------------------------------------


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def create_db_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An Engine tuned for the engine's workload; `kwargs` go to `sqlalchemy.create_engine`.

    PostgreSQL URLs are switched to psycopg 3. A per-test (or per-tenant) schema can be chosen
    with the libpq option in the URL: `?options=-csearch_path%3Dmyschema`.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    # Snapshots and envelopes are JSON columns written and read for every input: orjson does
    # that several times faster than the standard library.
    kwargs.setdefault("json_serializer", json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
        event.listen(engine, "connect", _postgresql_on_connect)
        return engine
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


def _postgresql_on_connect(dbapi_connection: Any, _record: object) -> None:
    # Python lists go as binary arrays: psycopg's text array format escapes every element with
    # regular expressions in Python (30 ms for 500 snapshots, against 0.6 ms in binary).
    from psycopg.types.array import ListBinaryDumper  # here: SQLite users never load psycopg

    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # Take transaction control away from the sqlite3 module, which would only BEGIN at the
    # first write: reads of a batch must see the same snapshot as its writes.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # A writing unit of work begins IMMEDIATE: it takes the write lock up front, waiting (busy
    # timeout) for another writer such as the outbox relay. A deferred transaction that read
    # first would instead fail at its first write with SQLITE_BUSY_SNAPSHOT, which no waiting
    # can fix, and the whole batch would be retried.
    writes = connection.info.get("dossier_writes", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class SqlUnitOfWork:
    """`with uow:` opens a connection and a transaction; `commit()` commits it, and leaving the
    block without committing rolls back. Reusable: each `with` is a new transaction."""

    repo: SqlRepository

    def __init__(self, engine: Engine, *, writes: bool = False) -> None:
        """`writes=True` for a unit of work that will write (a batch): on SQLite it takes the
        write lock when it begins, so it waits for another writer instead of failing later."""
        self.engine = engine
        self.writes = writes
        self._connection: Connection | None = None
        self._repo: SqlRepository | None = None

    def __enter__(self) -> Self:
        if self._connection is not None:
            raise RuntimeError("unit of work already entered")
        self._connection = self.engine.connect()
        self._connection.info["dossier_writes"] = self.writes
        self.repo = self._repo = SqlRepository(self._connection)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.rollback()
        finally:
            connection.close()

    def commit(self) -> None:
        connection, repo = self._active()
        # A failed write may have left part of a batch written (SQLite keeps the rows before
        # the failing one) or the transaction aborted: such a transaction is never committed.
        if repo.conflicted:
            raise ConcurrencyError("a conflict was raised in this unit of work: roll back")
        if repo.failed:
            raise RuntimeError("a write failed in this unit of work: roll back")
        with _conflicts(repo):
            connection.commit()

    def rollback(self) -> None:
        connection, repo = self._active()
        connection.rollback()
        repo.failed = repo.conflicted = False

    def _active(self) -> tuple[Connection, SqlRepository]:
        if self._connection is None or self._repo is None:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._connection, self._repo


# ---------------------------------------------------------------------------------------------
# Repository
# ---------------------------------------------------------------------------------------------

dossiers_table = dossiers  # for methods whose `dossiers` parameter shadows the table


# PostgreSQL batch statements. psycopg's pipelined executemany spends ~40 us of Python per row
# on protocol work, and SQLAlchemy's multi-row VALUES ("insertmanyvalues") makes psycopg parse
# a huge query text every time. Passing each column as one array parameter and unnesting it
# server-side keeps the statement text constant (prepared once) and a batch one round trip.


class _PgArrayElement(UserDefinedType[Any]):
    """An array element type spelt as in PostgreSQL, with no Python-side processing.

    The values are prepared once, column by column, in `_as_arrays`; SQLAlchemy's per-element
    processors (datetime normalisation, bytes wrapping, JSON) would run again for every value.
    """

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec


_PG_DIALECT = PGDialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy


def _pg_element(type_: Any) -> _PgArrayElement:
    # JSON goes as text and is cast back by `_pg_value`: SQLAlchemy would read nested JSON
    # lists as array dimensions.
    spec = "TEXT" if isinstance(type_, JSON) else type_.compile(dialect=_PG_DIALECT)
    return _PgArrayElement(spec)


def _pg_rows(names: Sequence[str], types: Mapping[str, Any]) -> Any:
    """unnest(:a_col1, :a_col2, ...) WITH ORDINALITY AS v(col1, col2, ..., ord)."""
    element = {n: _pg_element(types[n]) for n in names}
    arrays = [bindparam(f"a_{n}", type_=postgresql.ARRAY(element[n], dimensions=1)) for n in names]
    return (
        func.unnest(*arrays)
        .table_valued(*[column(n, element[n]) for n in names], with_ordinality="ord")
        .render_derived(name="v")
    )


def _pg_value(rows: Any, name: str, type_: Any) -> Any:
    """A column of `_pg_rows` as the table's type."""
    value = rows.c[name]
    return cast(value, type_) if isinstance(type_, JSON) else type_coerce(value, type_)


_pg_insert_cache: dict[tuple[str, tuple[str, ...], bool], Executable] = {}


def _pg_insert_statement(table: Table, names: tuple[str, ...], skip_duplicates: bool) -> Executable:
    key = (table.name, names, skip_duplicates)
    statement = _pg_insert_cache.get(key)
    if statement is None:
        types = {n: table.c[n].type for n in names}
        rows = _pg_rows(names, types)
        # ORDER BY ordinality: identity values follow the batch's order (the outbox relay's).
        source = select(*[_pg_value(rows, n, types[n]) for n in names]).order_by(rows.c.ord)
        insert_ = postgresql.insert(table).from_select(list(names), source)
        statement = insert_.on_conflict_do_nothing() if skip_duplicates else insert_
        _pg_insert_cache[key] = statement
    return statement


def _pg_update_dossiers_statement() -> Executable:
    names = ["b_code", "b_revision", *(c.name for c in dossiers.c if c.name != "code")]
    types: dict[str, Any] = {n: dossiers.c[n].type for n in names[2:]}
    types.update(b_code=String(), b_revision=Integer())
    rows = _pg_rows(names, types)
    return (
        update(dossiers)
        .where(dossiers.c.code == rows.c.b_code, dossiers.c.revision == rows.c.b_revision)
        .values({n: _pg_value(rows, n, types[n]) for n in names[2:]})
    )


_pg_update_dossiers = _pg_update_dossiers_statement()


def _pg_lookup(table: Table, keys: Mapping[str, tuple[str, Any]], *columns: str) -> Any:
    """SELECT `columns` of `table` for rows whose key columns match parallel array parameters.

    `keys` maps each key column to (bind parameter name, element type). Joining the unnested
    arrays probes the primary key once per key; `a = $1 AND b IN (...)` made the planner scan.
    """
    wanted = (
        func.unnest(
            *(bindparam(name, type_=postgresql.ARRAY(kind)) for name, kind in keys.values())
        )
        .table_valued(*(column(key, kind) for key, (_, kind) in keys.items()))
        .render_derived(name="k")
    )
    return (
        select(*(table.c[name] for name in columns))
        .select_from(wanted)
        .join(table, and_(*(table.c[key] == wanted.c[key] for key in keys)))
    )


_pg_applied_hashes = _pg_lookup(
    input_ledger,
    {"source": ("k_sources", String), "event_id": ("k_ids", String)},
    "source",
    "event_id",
    "content_hash",
)
_pg_chain_heads = _pg_lookup(
    history,
    {"dossier_code": ("h_codes", String), "seq": ("h_seqs", Integer)},
    "dossier_code",
    "seq",
    "chain_hash",
)
_update_dossier = (
    update(dossiers)
    .where(dossiers.c.code == bindparam("b_code"))
    .where(dossiers.c.revision == bindparam("b_revision"))
)


class SqlRepository(ChangeSetWriter):
    """`engine.application.ports.BatchRepository` and `Outbox` on one connection, inside the
    unit of work's transaction, and the read models a unit of work is handy for (a dossier's
    history, counts); the other read models are `engine.store.queries`."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # Set when a write failed in this transaction (`conflicted`: with ConcurrencyError):
        # the unit of work then refuses to commit.
        self.failed = False
        self.conflicted = False

    # --- dossiers ----------------------------------------------------------------------------
    def load_dossiers(self, codes: Iterable[str]) -> dict[str, StoredDossier]:
        c = dossiers.c
        found: dict[str, StoredDossier] = {}
        for chunk in _chunks(sorted(set(codes))):
            query = select(c.code, *_STORED_COLUMNS).where(self._in(c.code, chunk))
            for code, *stored in self.connection.execute(query).all():
                found[code] = _stored_dossier(*stored)
        return found

    def _save_dossiers(self, dossiers: Sequence[StoredDossier]) -> None:
        new = [d for d in dossiers if d.revision == 0]
        # A stable row order keeps two writers' row locks in one order: no deadlocks.
        known = sorted((d for d in dossiers if d.revision != 0), key=lambda d: d.dossier.code)
        if known:
            rows = [
                {
                    "b_code": d.dossier.code,
                    "b_revision": d.revision,
                    **dossier_columns(d),
                    "revision": d.revision + 1,
                }
                for d in known
            ]
            if self._postgresql:
                result = self._execute(_pg_update_dossiers, _as_arrays(dossiers_table, rows))
            else:
                result = self._execute(_update_dossier, rows)
            if result.rowcount != len(known):
                self.failed = self.conflicted = True
                raise ConcurrencyError(
                    f"{len(known) - result.rowcount} of {len(known)} dossiers changed since"
                    " they were loaded"
                )
        if new:
            self.insert_rows(
                dossiers_table,
                [{"code": d.dossier.code, **dossier_columns(d), "revision": 1} for d in new],
            )

    def notices_due(
        self,
        now: datetime,
        limit: int,
        *,
        lock: bool = True,
        partitions: Collection[int] | None = None,
    ) -> list[StoredDossier]:
        _require_aware(now)
        c = dossiers.c
        query = (
            select(*_STORED_COLUMNS)
            .where(c.next_notice_at <= now)
            .order_by(c.next_notice_at, c.code)
            .limit(limit)
        )
        if partitions is not None:
            owned = self._in(c.partition, sorted(partitions)) if partitions else false()
            query = query.where(or_(owned, c.partition.is_(None)))
        if lock:
            # Engine processes share the due dossiers: each takes the ones no other is
            # notifying right now, instead of all racing for the same rows and retrying.
            query = query.with_for_update(skip_locked=True)
        return [_stored_dossier(*row) for row in self.connection.execute(query).all()]

    # --- input ledger ------------------------------------------------------------------------
    def applied_hashes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        unique = sorted(set(keys))
        found: dict[tuple[str, str], str] = {}
        if self.connection.dialect.name == "postgresql":
            # `source = $1 AND event_id IN ($2, ...)` is a trap on PostgreSQL: with few sources
            # the planner scans the whole source's index range and filters it against the
            # unhashed parameter list (measured: 150 ms for 500 keys over 15,000 rows).
            # Joining the keys as an unnested array probes the primary key once per key.
            for chunk in _chunks(unique):
                params = {"k_sources": [s for s, _ in chunk], "k_ids": [i for _, i in chunk]}
                for source, event_id, content_hash in self.connection.execute(
                    _pg_applied_hashes, params
                ).all():
                    found[(source, event_id)] = content_hash
            return found
        # SQLite: one row-value IN per chunk; a query per source cost one round trip for each
        # of a province's hundreds of agency sources in every batch.
        c = input_ledger.c
        for chunk in _chunks(unique, 400):
            query = select(c.source, c.event_id, c.content_hash).where(
                tuple_(c.source, c.event_id).in_(chunk)
            )
            for source, event_id, content_hash in self.connection.execute(query).all():
                found[(source, event_id)] = content_hash
        return found

    def _record_applied(self, entries: Sequence[LedgerEntry]) -> None:
        """Raises ConcurrencyError if an entry's (source, event_id) is already recorded."""
        if not entries:
            return
        rows = [
            {
                "source": e.source,
                "event_id": e.event_id,
                "content_hash": e.content_hash,
                "dossier_code": e.dossier_code,
            }
            for e in entries
        ]
        self.insert_rows(input_ledger, rows)

    # --- history -----------------------------------------------------------------------------
    def _append_history(self, rows: Sequence[HistoryRow]) -> None:
        """Raises ConcurrencyError if a (dossier_code, seq) is already taken.

        Each row is chained over its dossier's previous row (engine.audit). The heads of the
        chains this batch continues come from one batched query; a concurrent writer that
        appended to the same dossier meanwhile collides on (dossier_code, seq), so a hash is
        never computed over a predecessor that is not the one stored.
        """
        if not rows:
            return
        recorded_at = datetime.now(UTC)
        ordered = sorted(rows, key=lambda r: (r.dossier_code, r.seq))
        first: dict[str, int] = {}
        for r in ordered:
            first.setdefault(r.dossier_code, r.seq)
        heads = self._chain_heads([(code, seq - 1) for code, seq in first.items() if seq > 1])
        values: list[dict[str, Any]] = []
        prev = GENESIS
        for r in ordered:
            if first[r.dossier_code] == r.seq:
                # A missing predecessor chains from GENESIS: verification reports the gap.
                prev = heads.get((r.dossier_code, r.seq - 1)) or GENESIS
            current = link(prev, row_content(r))
            values.append(history_columns(r, recorded_at, prev, current))
            prev = current
        self.insert_rows(history, values)

    def _chain_heads(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """chain_hash of each stored (dossier_code, seq) asked for."""
        found: dict[tuple[str, int], str] = {}
        c = history.c
        for chunk in _chunks(sorted(keys), 400):
            if self._postgresql:
                # Joined as unnested arrays, for the reason given in `applied_hashes`.
                params = {"h_codes": [k for k, _ in chunk], "h_seqs": [s for _, s in chunk]}
                result = self.connection.execute(_pg_chain_heads, params)
            else:
                query = select(c.dossier_code, c.seq, c.chain_hash).where(
                    tuple_(c.dossier_code, c.seq).in_(chunk)
                )
                result = self.connection.execute(query)
            for code, seq, chain_hash in result.all():
                if chain_hash is not None:
                    found[(code, seq)] = chain_hash
        return found

    def history(self, dossier_code: str) -> list[HistoryRow]:
        c = history.c
        query = (
            select(
                c.dossier_code,
                c.seq,
                c.source,
                c.event_id,
                c.type,
                c.event_time,
                c.schema_version,
                c.envelope,
                c.topic,
                c.partition,
                c.offset,
                c.state_before,
                c.state_after,
                c.status_code,
                c.workflow_version,
                c.prev_hash,
                c.chain_hash,
            )
            .where(c.dossier_code == dossier_code)
            .order_by(c.seq)
        )
        return [
            HistoryRow(
                dossier_code=r.dossier_code,
                seq=r.seq,
                source=r.source,
                event_id=r.event_id,
                type=r.type,
                event_time=r.event_time,
                schema_version=r.schema_version,
                envelope=r.envelope,
                position=Position(r.topic, r.partition, r.offset),
                state_before=r.state_before,
                state_after=r.state_after,
                status_code=r.status_code,
                workflow_version=r.workflow_version,
                prev_hash=r.prev_hash,
                chain_hash=r.chain_hash,
            )
            for r in self.connection.execute(query).all()
        ]

    # --- parked inputs -----------------------------------------------------------------------
    def _park(self, inputs: Sequence[ParkedInput]) -> None:
        if not inputs:
            return
        rows = [parked_columns(p) for p in inputs]
        self.insert_rows(parked_inputs, rows)

    def parked_for(self, dossier_codes: Iterable[str]) -> list[ParkedInput]:
        c = parked_inputs.c
        found: list[ParkedInput] = []
        for chunk in _chunks(sorted(set(dossier_codes))):
            query = select(parked_inputs).where(self._in(c.dossier_code, chunk))
            found.extend(_parked(r) for r in self.connection.execute(query).all())
        found.sort(key=lambda p: p.id or 0)
        return found

    def parked_expired(self, now: datetime, limit: int) -> list[ParkedInput]:
        _require_aware(now)
        c = parked_inputs.c
        query = (
            select(parked_inputs)
            .where(c.expires_at <= now)
            .order_by(c.expires_at, c.id)
            .limit(limit)
        )
        return [_parked(r) for r in self.connection.execute(query).all()]

    def _unpark(self, ids: Iterable[int]) -> None:
        for chunk in _chunks(sorted(set(ids))):
            self._execute(delete(parked_inputs).where(self._in(parked_inputs.c.id, chunk)))

    def parked_count(self) -> int:
        count = self.connection.scalar(select(func.count()).select_from(parked_inputs))
        return int(count or 0)

    # --- outbox ------------------------------------------------------------------------------
    def _add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        rows: list[dict[str, Any]] = [
            {
                "message_id": m.message_id,
                "topic": m.topic,
                "key": m.key,
                "value": m.value,
                "created_at": m.created_at,
            }
            for m in messages
        ]
        if self.connection.dialect.name in _UPSERT_INSERTS:
            self.insert_rows(outbox, rows, skip_duplicates=True)
            return
        # Other databases: skip ids already stored or repeated within the batch.
        stored: set[str] = set()
        for chunk in _chunks(sorted({m.message_id for m in messages})):
            query = select(outbox.c.message_id).where(outbox.c.message_id.in_(chunk))
            stored.update(self.connection.scalars(query))
        fresh: list[dict[str, Any]] = []
        for row in rows:
            if row["message_id"] not in stored:
                stored.add(row["message_id"])
                fresh.append(row)
        if fresh:
            self.insert_rows(outbox, fresh)

    def unsent_outbox(self, limit: int) -> list[OutboxMessage]:
        c = outbox.c
        query = (
            select(c.id, c.topic, c.key, c.value, c.message_id, c.created_at)
            .where(c.sent_at.is_(None))
            .order_by(c.id)
            .limit(limit)
        )
        return [
            OutboxMessage(
                topic=r.topic,
                key=None if r.key is None else bytes(r.key),
                value=bytes(r.value),
                message_id=r.message_id,
                created_at=r.created_at,
                id=r.id,
            )
            for r in self.connection.execute(query).all()
        ]

    def mark_sent(self, ids: Sequence[int], sent_at: datetime) -> None:
        c = outbox.c
        for chunk in _chunks(sorted(set(ids))):
            self._execute(
                update(outbox)
                .where(self._in(c.id, chunk), c.sent_at.is_(None))
                .values(sent_at=sent_at)
            )

    def outbox_backlog(self) -> int:
        query = select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
        return int(self.connection.scalar(query) or 0)

    # --- consumer positions ------------------------------------------------------------------
    def _save_positions(self, group: str, positions: Mapping[tuple[str, int], int]) -> None:
        if not positions:
            return
        rows = [
            {"group_id": group, "topic": topic, "partition": partition, "next_offset": offset}
            for (topic, partition), offset in sorted(positions.items())
        ]
        self._upsert(consumer_positions, rows, ["next_offset"])

    def load_positions(self, group: str) -> dict[tuple[str, int], int]:
        c = consumer_positions.c
        query = select(c.topic, c.partition, c.next_offset).where(c.group_id == group)
        return {
            (topic, partition): offset
            for topic, partition, offset in self.connection.execute(query).all()
        }

    def _add_outcomes(self, group: str, changes: Mapping[tuple[str, str], int]) -> None:
        rows = [
            {"group_id": group, "topic": topic, "outcome": outcome, "count": delta}
            for (topic, outcome), delta in sorted(changes.items())
            if delta
        ]
        if not rows:
            return
        dialect = self.connection.dialect.name
        stmt = _UPSERT_INSERTS[dialect](input_outcomes)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(input_outcomes.primary_key.columns),
            set_={"count": input_outcomes.c["count"] + stmt.excluded["count"]},
        )
        self._execute(stmt, rows)

    def outcome_counts(self, group: str) -> dict[tuple[str, str], int]:
        c = input_outcomes.c
        query = select(c.topic, c.outcome, c["count"]).where(c.group_id == group)
        return {(t, o): n for t, o, n in self.connection.execute(query).all()}

    # --- business clock ----------------------------------------------------------------------
    def get_clock(self) -> datetime | None:
        query = select(engine_clock.c.business_time).where(engine_clock.c.id == 1)
        value: datetime | None = self.connection.scalar(query)
        return value

    def _set_clock(self, now: datetime) -> None:
        self._upsert(engine_clock, [{"id": 1, "business_time": now}], ["business_time"])

    # -----------------------------------------------------------------------------------------
    def _execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        """Execute a write (reads go to the connection directly, keeping their row types).

        Every write can meet another writer (a key taken, SQLite's lock), so every write turns
        that into ConcurrencyError.
        """
        try:
            with _conflicts(self):
                return self.connection.execute(statement, parameters)
        except StatementError as exc:
            # A value our types refused (a naive datetime): the caller's bug, so raise it as
            # the caller's ValueError, as the in-memory store does, not as a database error.
            if isinstance(exc.orig, ValueError) and not isinstance(exc, DBAPIError):
                raise exc.orig from exc
            raise

    @property
    def _postgresql(self) -> bool:
        return self.connection.dialect.name == "postgresql"

    def _in(self, col: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """`col IN values`; on PostgreSQL `col = ANY(:array)`: one parameter and a short,
        constant query text, which psycopg would otherwise re-parse for every call."""
        if self._postgresql:
            array = postgresql.ARRAY(_pg_element(col.type), dimensions=1)
            return col == any_(bindparam(None, list(values), type_=array))
        return col.in_(values)

    def insert_rows(
        self, table: Table, rows: list[dict[str, Any]], *, skip_duplicates: bool = False
    ) -> None:
        """Insert `rows` (all with the same keys, the table's columns) in their order, in one
        statement; with `skip_duplicates`, rows colliding with a unique key (stored or earlier
        in `rows`) are left out. The batch writes and bulk copies (a parallel replay's merge)
        go through here."""
        if self._postgresql:
            statement = _pg_insert_statement(table, tuple(rows[0]), skip_duplicates)
            self._execute(statement, _as_arrays(table, rows))
            return
        if skip_duplicates:
            upsert = _UPSERT_INSERTS[self.connection.dialect.name](table)
            self._execute(upsert.on_conflict_do_nothing(), rows)
        else:
            self._execute(insert(table), rows)

    def _upsert(self, table: Table, rows: list[dict[str, Any]], columns: list[str]) -> None:
        dialect = self.connection.dialect.name
        if dialect in _UPSERT_INSERTS:
            stmt = _UPSERT_INSERTS[dialect](table)
            stmt = stmt.on_conflict_do_update(
                index_elements=list(table.primary_key.columns),
                set_={name: stmt.excluded[name] for name in columns},
            )
            self._execute(stmt, rows)
            return
        keys = [col.name for col in table.primary_key.columns]
        for row in rows:
            match = [table.c[k] == row[k] for k in keys]
            result = self._execute(
                update(table).where(*match).values({name: row[name] for name in columns})
            )
            if result.rowcount == 0:
                self._execute(insert(table), row)


# Dialect inserts with ON CONFLICT, by dialect name.
_UPSERT_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def pinned_versions(db: Engine) -> dict[tuple[str, int], int]:
    """How many stored dossiers each (procedure, workflow version) holds."""
    d = dossiers.c
    query = select(d.procedure, d.workflow_version, func.count()).group_by(
        d.procedure, d.workflow_version
    )
    with db.connect() as connection:
        return {(code, version): count for code, version, count in connection.execute(query)}


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
    }


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


# What a `StoredDossier` is read from, in `_stored_dossier`'s order.
_STORED_COLUMNS = (
    dossiers.c.revision,
    dossiers.c.next_notice_at,
    dossiers.c.partition,
    dossiers.c.snapshot,
)


def _stored_dossier(
    revision: int, next_notice_at: datetime | None, partition: int | None, snapshot: Any
) -> StoredDossier:
    return StoredDossier(Dossier.from_json(snapshot), revision, next_notice_at, partition)


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


def _as_arrays(table: Table, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts as one array parameter per column, for the `_pg_rows` statements, with the
    work of the columns' types done here (see `_PgArrayElement`)."""
    arrays: dict[str, list[Any]] = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        type_ = table.c[name].type if name in table.c else None
        if isinstance(type_, JSON):
            values = [json_dumps(v) for v in values]
        elif isinstance(type_, UtcDateTime):
            for v in values:
                if v is not None:
                    _require_aware(v)  # psycopg sends the offset: no conversion needed
        arrays[f"a_{name}"] = values
    return arrays


def _parked(row: Row[Any]) -> ParkedInput:
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


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware datetimes")


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# Errors that mean "someone else wrote first": retrying the batch is the cure.
_PG_CONFLICTS = frozenset({"23505", "40001", "40P01"})  # unique, serialization, deadlock
_SQLITE_CONFLICTS = frozenset(
    {
        "SQLITE_CONSTRAINT_PRIMARYKEY",
        "SQLITE_CONSTRAINT_UNIQUE",
        "SQLITE_BUSY",
        "SQLITE_BUSY_SNAPSHOT",
        "SQLITE_LOCKED",
    }
)


def _is_conflict(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_CONFLICTS:
        return True
    return getattr(orig, "sqlite_errorname", None) in _SQLITE_CONFLICTS


@contextmanager
def _conflicts(repo: SqlRepository) -> Iterator[None]:
    """Turn a concurrent writer's traces into ConcurrencyError and remember it on `repo`.

    Integrity errors that are not key collisions (a NOT NULL, say) are bugs, not conflicts:
    they propagate as they are, so a retry loop does not spin on them.
    """
    try:
        yield
    except DBAPIError as exc:
        # Either way the transaction is spoilt: PostgreSQL aborted it (and would answer a
        # COMMIT with a silent rollback), SQLite may hold part of the batch.
        repo.failed = True
        if not _is_conflict(exc):
            raise
        repo.conflicted = True
        raise ConcurrencyError(str(exc.orig)) from exc


__all__ = [
    "CHUNK",
    "SqlRepository",
    "SqlUnitOfWork",
    "UtcDateTime",
    "audit_checkpoint_heads",
    "audit_checkpoints",
    "consumer_positions",
    "create_db_engine",
    "dossiers",
    "engine_clock",
    "history",
    "input_ledger",
    "metadata",
    "outbox",
    "parked_inputs",
]


# ---------------------------------------------------------------------------------------------
# Relay lease
# ---------------------------------------------------------------------------------------------


class RelayLease:
    """At most one outbox relay publishes from a database at a time.

    Every engine process runs a relay; if two published at once, each would send the rows the
    other is sending (duplicates the contract tolerates, at double the cost) and two dossier's
    outputs could leave out of order. PostgreSQL: a session advisory lock, per schema, held by
    a connection of its own, so it is released the moment the holder's process dies. SQLite
    (one host): an exclusive `flock` on a file beside the database, released likewise.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._lock_file: int | None = None

    def held(self) -> bool:
        """Whether this process may publish now: keeps the lease, or takes it if it is free."""
        if self._engine.dialect.name == "postgresql":
            return self._hold_advisory_lock()
        if self._engine.dialect.name == "sqlite":
            return self._hold_file_lock()
        return True

    def release(self) -> None:
        if self._connection is not None:
            # Closed for real, not returned to the pool: a pooled session would keep the lock.
            with suppress(Exception):
                self._connection.invalidate()
                self._connection.close()
            self._connection = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _hold_advisory_lock(self) -> bool:
        try:
            if self._connection is not None:
                self._connection.execute(text("SELECT 1")).scalar()  # still ours if alive
                return True
            # Autocommit: a session lock outlives transactions, and an idle connection must
            # not hold one open (it would hold back vacuum).
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            taken = connection.execute(
                text("SELECT pg_try_advisory_lock(hashtext(current_schema() || '.outbox-relay'))")
            ).scalar()
        except DBAPIError:
            self.release()  # the lock went with the connection
            return False
        if taken:
            self._connection = connection
            return True
        connection.close()  # returned to the pool: it holds no lock
        return False

    def _hold_file_lock(self) -> bool:
        if self._lock_file is not None:
            return True
        database = self._engine.url.database
        if not database or database == ":memory:":
            return True  # a private database: no other process can reach it
        fd = os.open(f"{database}-relay.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_file = fd
        return True
