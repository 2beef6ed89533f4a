"""The SQL adapter of `engine.application.ports`: SQLAlchemy 2 Core over SQLite or PostgreSQL
(psycopg 3).

Core, not the ORM: the engine writes thousands of rows per batch, and the ORM's identity map
and per-object flush cost more than the database does. A batch write is one statement per
table: on PostgreSQL an INSERT/UPDATE over `unnest()` of one array parameter per column (see
`_pg_rows` for why not executemany), elsewhere an executemany. Batched reads are IN queries
chunked at `CHUNK` values.

The schema and the mapping of records to rows are `engine.store.tables` (re-exported here);
the reads that are not a batch's are `engine.store.queries`.
"""

from __future__ import annotations

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
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    Executable,
    Integer,
    String,
    Table,
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
    literal,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.types import UserDefinedType

from engine.application.ports import (
    ConcurrencyError,
    HandoverScan,
    HistoryRow,
    LedgerEntry,
    MigrationScan,
    NoticeScan,
    OutboxMessage,
    ParkedInput,
    StoredDossier,
)
from engine.audit import GENESIS, link, row_content
from engine.store import queries
from engine.store.privacy import PersonalDataVault
from engine.store.tables import (
    STORED_COLUMNS,
    UtcDateTime,
    audit_checkpoint_heads,
    audit_checkpoints,
    consumer_positions,
    dossier_columns,
    dossiers,
    engine_clock,
    history,
    history_columns,
    input_ledger,
    input_outcomes,
    json_dumps,
    metadata,
    outbox,
    parked_columns,
    parked_input,
    parked_inputs,
    require_aware,
    stored_dossier,
)
from engine.store.writer import ChangeSetWriter

# No inbound partition is negative: what `_of_partitions_not_by_index` reads a NULL as.
_NO_PARTITION = -1

# Values per IN list: well under SQLite's bound-parameter limit, and PostgreSQL plans a list
# this size as quickly as a smaller one.
CHUNK = 1000


# ---------------------------------------------------------------------------------------------
# Engine and unit of work
# ---------------------------------------------------------------------------------------------


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
            _private_sqlite_file(Path(database).expanduser())
        engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


def _private_sqlite_file(database: Path) -> None:
    """Make the database file 0600, and the directories missing above it 0700, before SQLite
    opens it: SQLite would create it 0644 less the umask, and it gives the -wal and -shm files
    the database file's own mode, so this decides all three, whatever the process's umask (the
    history and the outbox hold personal data). A file of ours that others could read is
    tightened; one we cannot open is left to SQLite to report."""
    for directory in reversed([d for d in database.parents if not d.exists()]):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to change
        os.chmod(directory, 0o700)  # mkdir's mode passes through the umask
    # By path, never by opening an existing file: closing any descriptor of a file releases
    # every POSIX lock this process holds on it, and SQLite's locks on the database and its
    # -shm are POSIX locks. A second engine made in a process that has the database open (a
    # migration beside the batch engine, a test's writer beside its reader) would otherwise
    # strip the first one's locks, and a reader in another process was seen to read a stale
    # snapshot for good (tests/integration/test_relay_process.py, under load).
    with suppress(OSError):  # there already (or not ours to make): its mode is seen to below
        os.close(os.open(database, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        try:
            mode = path.stat().st_mode
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
        except OSError:
            continue


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
        # Deleted rows are overwritten with zeros: an erased person's dead letters and key do
        # not linger in free pages of the file (engine.store.erasure).
        cursor.execute("PRAGMA secure_delete=ON")
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

    def __init__(
        self, engine: Engine, *, writes: bool = False, vault: PersonalDataVault | None = None
    ) -> None:
        """`writes=True` for a unit of work that will write (a batch): on SQLite it takes the
        write lock when it begins, so it waits for another writer instead of failing later.
        `vault` seals personal data on its way in (`engine.store.privacy`); without one it is
        stored as it came, which only tests of the store itself should want."""
        self.engine = engine
        self.writes = writes
        self.vault = vault
        self._connection: Connection | None = None
        self._repo: SqlRepository | None = None

    def __enter__(self) -> Self:
        if self._connection is not None:
            raise RuntimeError("unit of work already entered")
        self._connection = self.engine.connect()
        self._connection.info["dossier_writes"] = self.writes
        self.repo = self._repo = SqlRepository(self._connection, self.vault)
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

    def __init__(self, connection: Connection, vault: PersonalDataVault | None = None) -> None:
        self.connection = connection
        self.vault = vault
        # Set when a write failed in this transaction (`conflicted`: with ConcurrencyError):
        # the unit of work then refuses to commit.
        self.failed = False
        self.conflicted = False

    # --- dossiers ----------------------------------------------------------------------------
    def load_dossiers(self, codes: Iterable[str]) -> dict[str, StoredDossier]:
        c = dossiers.c
        found: dict[str, StoredDossier] = {}
        for chunk in _chunks(sorted(set(codes))):
            query = select(c.code, *STORED_COLUMNS).where(self._in(c.code, chunk))
            for code, *stored in self.connection.execute(query).all():
                found[code] = stored_dossier(*stored)
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

    def notices_due(self, now: datetime, scan: NoticeScan) -> list[StoredDossier]:
        require_aware(now)
        c = dossiers.c
        query = (
            select(*STORED_COLUMNS)
            .where(c.next_notice_at <= now)
            .order_by(c.next_notice_at, c.code)
            .limit(scan.limit)
        )
        if scan.partitions is not None:
            owned = self._in(c.partition, sorted(scan.partitions)) if scan.partitions else false()
            query = query.where(or_(owned, c.partition.is_(None)))
        if scan.lock:
            # Engine processes share the due dossiers: each takes the ones no other is
            # notifying right now, instead of all racing for the same rows and retrying.
            query = query.with_for_update(skip_locked=True)
        return [stored_dossier(*row) for row in self.connection.execute(query).all()]

    def partition_clocks(self, partitions: Collection[int] | None) -> dict[int, datetime]:
        c = dossiers.c
        query: Any
        if partitions is None:
            query = (
                select(c.partition, func.max(c.last_event_at))
                .where(c.partition.is_not(None))
                .group_by(c.partition)
            )
        elif not partitions:
            return {}
        else:
            # One max() per partition, each read off the end of its range of
            # ix_dossiers_partition_last_event_at, in one round trip.
            query = union_all(
                *(
                    select(
                        literal(p, Integer).label("partition"),
                        func.max(c.last_event_at).label("at"),
                    ).where(c.partition == p)
                    for p in sorted(partitions)
                )
            )
        return {int(p): at for p, at in self.connection.execute(query).all() if at is not None}

    def handovers_due(self, scan: HandoverScan) -> list[StoredDossier]:
        c = dossiers.c
        if not scan.cutovers:
            return []
        by_cutover: dict[datetime, list[str]] = {}
        for code, cutover in scan.cutovers.items():
            require_aware(cutover)
            by_cutover.setdefault(cutover.astimezone(UTC), []).append(code)
        # Dossier.opened_clock is kept in the snapshot, in UTC (RFC 3339 with +00:00): as text
        # it orders as the instants do.
        opened = c.snapshot["opened_clock"].as_string()
        held = or_(
            *(
                and_(
                    self._in(c.agency, sorted(codes)),
                    or_(opened.is_(None), opened < cutover.isoformat()),
                )
                for cutover, codes in sorted(by_cutover.items())
            )
        )
        query = select(*STORED_COLUMNS).where(~c.final, held).order_by(c.code).limit(scan.limit)
        if scan.partitions is not None:
            query = query.where(self._of_partitions_not_by_index(scan.partitions))
        if scan.lock:
            query = query.with_for_update(skip_locked=True)
        return [stored_dossier(*row) for row in self.connection.execute(query).all()]

    def migrations_due(self, scan: MigrationScan) -> list[StoredDossier]:
        c = dossiers.c
        if not scan.plans:
            return []
        # Plans made by one import share their cutover and states: one clause per such group.
        groups: dict[tuple[int, datetime, frozenset[str]], list[str]] = {}
        for (procedure, version), (cutover, states) in scan.plans.items():
            require_aware(cutover)
            key = (version, cutover.astimezone(UTC), states)
            groups.setdefault(key, []).append(procedure)
        opened = c.snapshot["opened_clock"].as_string()
        covered = or_(
            *(
                and_(
                    self._in(c.procedure, sorted(procedures)),
                    c.workflow_version == version,
                    self._in(c.state, sorted(states)),
                    or_(opened.is_(None), opened < cutover.isoformat()),
                )
                for (version, cutover, states), procedures in sorted(
                    groups.items(), key=lambda item: (item[0][0], item[0][1], sorted(item[0][2]))
                )
            )
        )
        # The plans' procedures and versions as terms of their own: what the planner finds the
        # partial index ix_dossiers_open_procedure_version by (an OR of groups alone it reads
        # row by row).
        procedures = sorted({procedure for procedure, _ in scan.plans})
        versions = sorted({version for _, version in scan.plans})
        query = (
            select(*STORED_COLUMNS)
            .where(
                ~c.final,
                self._in(c.procedure, procedures),
                self._in(c.workflow_version, versions),
                covered,
            )
            .order_by(c.code)
            .limit(scan.limit)
        )
        if scan.partitions is not None:
            query = query.where(self._of_partitions_not_by_index(scan.partitions))
        if scan.lock:
            query = query.with_for_update(skip_locked=True)
        return [stored_dossier(*row) for row in self.connection.execute(query).all()]

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
        if self.vault is not None:
            # Sealed before chaining: the chain covers the ciphertext, so erasing a person's
            # key later leaves every hash as it was.
            with _conflicts(self):
                rows = self.vault.seal_history(self.connection, rows)
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
        return queries.dossier_history(self.connection, dossier_code)

    # --- parked inputs -----------------------------------------------------------------------
    def _park(self, inputs: Sequence[ParkedInput]) -> None:
        if not inputs:
            return
        if self.vault is not None:
            with _conflicts(self):
                inputs = self.vault.seal_parked(self.connection, inputs)
        rows = [parked_columns(p) for p in inputs]
        self.insert_rows(parked_inputs, rows)

    def parked_for(self, dossier_codes: Iterable[str]) -> list[ParkedInput]:
        c = parked_inputs.c
        found: list[ParkedInput] = []
        for chunk in _chunks(sorted(set(dossier_codes))):
            query = select(parked_inputs).where(self._in(c.dossier_code, chunk))
            found.extend(parked_input(r) for r in self.connection.execute(query).all())
        found.sort(key=lambda p: p.id or 0)
        return self._opened(found)

    def parked_expired(self, now: datetime, limit: int) -> list[ParkedInput]:
        require_aware(now)
        c = parked_inputs.c
        query = (
            select(parked_inputs)
            .where(c.expires_at <= now)
            .order_by(c.expires_at, c.id)
            .limit(limit)
        )
        return self._opened([parked_input(r) for r in self.connection.execute(query).all()])

    def _opened(self, parked: list[ParkedInput]) -> list[ParkedInput]:
        if self.vault is None or not parked:
            return parked
        return self.vault.open_parked(self.connection, parked)

    def _unpark(self, ids: Iterable[int]) -> None:
        for chunk in _chunks(sorted(set(ids))):
            self._execute(delete(parked_inputs).where(self._in(parked_inputs.c.id, chunk)))

    def parked_count(self) -> int:
        return queries.parked_count(self.connection)

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
        return queries.outbox_backlog(self.connection)

    def purge_sent(self, topic: str, sent_before: datetime, limit: int) -> int:
        require_aware(sent_before)
        c = outbox.c
        oldest = (
            select(c.id)
            .where(c.topic == topic, c.sent_at.is_not(None), c.sent_at < sent_before)
            .order_by(c.sent_at)
            .limit(limit)
        )
        ids = list(self.connection.scalars(oldest))
        for chunk in _chunks(ids):
            self._execute(delete(outbox).where(self._in(c.id, chunk)))
        return len(ids)

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
        return queries.positions(self.connection, group)

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
        return queries.outcome_counts(self.connection, group)

    # --- business clock ----------------------------------------------------------------------
    def get_clock(self) -> datetime | None:
        return queries.business_clock(self.connection)

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

    def _of_partitions_not_by_index(self, partitions: Collection[int]) -> ColumnElement[bool]:
        """Dossiers of these inbound partitions or of none known, as an expression of the
        column rather than the column itself, so that no planner scans the partition index for
        it: a handover or migration scan then reads its own partial index (the open dossiers of
        ended agencies, of the versions a plan moves), a few rows once they have moved, instead
        of every dossier of the partitions (measured, SQLite, 10,000 dossiers on one partition:
        12 ms a scan before, in every batch)."""
        known = dossiers.c.partition
        return self._in(func.coalesce(known, _NO_PARTITION), [*sorted(partitions), _NO_PARTITION])

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
                    require_aware(v)  # psycopg sends the offset: no conversion needed
        arrays[f"a_{name}"] = values
    return arrays


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
    "input_outcomes",
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
        fd = os.open(f"{database}-relay.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_file = fd
        return True
