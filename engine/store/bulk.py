"""Bulk copies of the SQL store's tables, outside the batch path: the values SQLAlchemy would
bind for the store's column types on SQLite (`encode_rows`, `sqlite_time`), and scratch files
(`write_scratch`) merged in order into a target database (`merge_scratch`).

The parallel replays (`dossier.replay.parallel`, `dossier.replay.kafka`) fold shards of the
history in worker processes; each worker writes what its store holds into a scratch SQLite file
with the store's tables and column types but none of its indexes (`scratch_table`), plus the
ordering columns below, `replay_*`, which the worker fills in with where each row goes in the
serial replay's order. The parent ATTACHes the scratch files to a SQLite target and copies every
table with one `INSERT ... SELECT ... ORDER BY` each, in one transaction; into PostgreSQL it
copies the same ordered rows through `SqlRepository.insert_rows`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, suppress
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Engine, Table
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from engine.application.ports import ChangeSet
from engine.store.sql import SqlUnitOfWork
from engine.store.tables import (
    UtcDateTime,
    consumer_positions,
    dossiers,
    history,
    input_ledger,
    json_dumps,
    metadata,
    outbox,
    parked_inputs,
)

# Told (tables merged, tables in all) as a merge goes.
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Values as SQLAlchemy binds them on SQLite
# ---------------------------------------------------------------------------------------------


def sqlite_time(value: datetime | None) -> str | None:
    """`UtcDateTime` on SQLite: naive UTC, in SQLAlchemy's fixed-width SQLite text format."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware datetimes")
    # Without the "+00:00" that an aware value's isoformat ends with.
    return value.astimezone(UTC).isoformat(sep=" ", timespec="microseconds")[:-6]


def _sqlite_bool(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _read_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _read_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _read_json(value: str | bytes) -> Any:
    return orjson.loads(value)


Codec = Callable[[Any], Any] | None


def _encoders(table: Table, names: Sequence[str]) -> list[Codec]:
    encoders: list[Codec] = []
    for name in names:
        type_ = table.c[name].type if name in table.c else None
        if isinstance(type_, UtcDateTime):
            encoders.append(sqlite_time)
        elif isinstance(type_, Boolean):
            encoders.append(_sqlite_bool)
        elif isinstance(type_, JSON):
            encoders.append(json_dumps)  # the serializer `create_db_engine` gives SQLAlchemy
        else:
            encoders.append(None)
    return encoders


def _decoders(table: Table, names: Sequence[str]) -> list[Codec]:
    decoders: list[Codec] = []
    for name in names:
        type_ = table.c[name].type
        if isinstance(type_, UtcDateTime):
            decoders.append(_read_time)
        elif isinstance(type_, Boolean):
            decoders.append(_read_bool)
        elif isinstance(type_, JSON):
            decoders.append(_read_json)
        else:
            decoders.append(None)
    return decoders


def encode_rows(
    table: str, names: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> Iterator[list[Any]]:
    """`rows` (dicts of column values) as the values SQLAlchemy would bind into the store's
    table `table` on SQLite, in the order of `names`."""
    encoded = [(i, encode) for i, encode in enumerate(_encoders(_table(table), names)) if encode]
    if len(names) == 1:
        only = names[0]
        for row in rows:
            values = [row[only]]
            for i, encode in encoded:
                values[i] = encode(values[i])
            yield values
        return
    getter = itemgetter(*names)
    for row in rows:
        values = list(getter(row))
        for i, encode in encoded:
            values[i] = encode(values[i])
        yield values


# ---------------------------------------------------------------------------------------------
# Scratch files
# ---------------------------------------------------------------------------------------------

# The extra columns of the scratch tables: where each row goes in the merged order.
_ORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "dossiers": ("replay_batch", "replay_rank"),
    "history": ("replay_batch",),
    "input_ledger": ("replay_batch", "replay_rank", "replay_seq"),
    "parked_inputs": ("replay_batch", "replay_rank"),
    "input_outcomes": ("replay_batch",),
    "consumer_positions": ("replay_batch",),
    "outbox": (
        "replay_batch",
        "replay_phase",
        "replay_rank",
        "replay_due",
        "replay_code",
        "replay_seq",
    ),
}
_TEXT_ORDER_COLUMNS = frozenset({"replay_due", "replay_code"})

# Each copied table: its columns (surrogate ids left to the target) and the merged order.
_MERGED: dict[str, tuple[Table, str]] = {
    "dossiers": (dossiers, "replay_batch, replay_rank"),
    "history": (history, "replay_batch, dossier_code, seq"),
    "input_ledger": (input_ledger, "replay_batch, replay_rank, replay_seq, replay_worker"),
    "parked_inputs": (parked_inputs, "replay_batch, replay_rank, replay_worker"),
    "outbox": (
        outbox,
        "replay_batch, replay_phase, replay_rank, replay_due, replay_code, replay_seq,"
        " replay_worker",
    ),
    # The serial batches insert the partitions they see first, sorted, and update the others.
    "consumer_positions": (consumer_positions, 'replay_batch, topic, "partition"'),
}


def columns(table: str, *, ids: bool = True) -> list[str]:
    """The columns of the store's table `table`, in the table's order; without `ids`, less
    its surrogate id (which a copy leaves to the target)."""
    return [c.name for c in _table(table).c if ids or c.name != "id"]


def insert_statement(table: str, names: Sequence[str]) -> str:
    """A plain sqlite3 INSERT into `table` of the columns `names`, one `?` each, in order: for
    `executemany` with `encode_rows`."""
    listed = ", ".join(_quoted(n) for n in names)
    return f"INSERT INTO {table} ({listed}) VALUES ({', '.join('?' for _ in names)})"


def write_scratch(path: Path, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """A fresh scratch file at `path`: every scratch table, holding `rows` (by table name:
    dicts of the store's column values and the table's ordering columns; tables left out, or
    given no rows, stay empty), encoded as the SQL store would store them."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=OFF")  # a scratch file: a crash discards it anyway
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        for name in SCRATCH_TABLES:
            db.execute(scratch_table(name))
        for name, table_rows in rows.items():
            _insert(db, name, table_rows)
        db.execute("COMMIT")


# The tables a scratch file has: the store's, but the audit checkpoints (a replay writes none).
SCRATCH_TABLES = (
    "dossiers",
    "history",
    "input_ledger",
    "parked_inputs",
    "outbox",
    "input_outcomes",
    "consumer_positions",
    "engine_clock",
)


def _table(name: str) -> Table:
    return metadata.tables[name]


def scratch_table(name: str) -> str:
    """`CREATE TABLE` for a scratch copy of `table`: the store's columns with their SQLite
    types (so values are stored as the store stores them), the ordering columns, and no index
    or constraint. The target checks the rows as they are merged; a scratch file that kept the
    store's indexes would be half as large again and slower to write."""
    table = _table(name)
    dialect = sqlite_dialect()
    columns = [
        f"{_quoted(c.name)} INTEGER PRIMARY KEY"
        if c.primary_key and c.autoincrement is True
        else f"{_quoted(c.name)} {c.type.compile(dialect=dialect)}"
        for c in table.c
    ]
    columns += [
        f"{name} {'TEXT' if name in _TEXT_ORDER_COLUMNS else 'INTEGER'}"
        for name in _ORDER_COLUMNS.get(table.name, ())
    ]
    return f"CREATE TABLE {table.name} ({', '.join(columns)})"


def _insert(db: sqlite3.Connection, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return
    names = list(first)
    db.executemany(
        insert_statement(table, names), encode_rows(table, names, _chain(first, iterator))
    )


def _chain(first: Mapping[str, Any], rest: Iterator[Mapping[str, Any]]) -> Iterator[Any]:
    yield first
    yield from rest


def _quoted(name: str) -> str:
    return f'"{name}"'  # `offset` is a keyword


# ---------------------------------------------------------------------------------------------
# The merge
# ---------------------------------------------------------------------------------------------


def attach_limit() -> int:
    """How many scratch files one merge can read: SQLite's limit on attached databases."""
    with closing(sqlite3.connect(":memory:")) as probe:
        return probe.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED)


def merge_scratch(
    target: Engine,
    paths: Sequence[Path],
    clock: datetime | None,
    progress: Progress | None = None,
) -> None:
    """Copy the scratch files into the (empty) target, each table's rows in the order of its
    ordering columns, in one transaction; `clock` becomes the target's business clock. Into
    SQLite: the files attached, one `INSERT ... SELECT ... ORDER BY` per table. Elsewhere: the
    same ordered rows through `SqlRepository`'s batch insert."""
    if target.dialect.name == "sqlite":
        _merge_into_sqlite(target, paths, clock, progress)
    else:
        _merge_through_repository(target, paths, clock, progress)


def _merged(progress: Progress | None, tables: int) -> None:
    if progress is not None:
        progress(tables, len(_MERGED) + 1)  # and the summed outcomes


def _union(tables: str, names: Sequence[str], extra: Sequence[str], shards: int) -> str:
    """Every shard's rows of `tables`, with the shard's number as `replay_worker`."""
    columns = ", ".join([*(_quoted(n) for n in names), *extra])
    return " UNION ALL ".join(
        f"SELECT {columns}, {k} AS replay_worker FROM shard{k}.{tables}" for k in range(shards)
    )


def _ordered_select(name: str, shards: int) -> tuple[Table, list[str], str]:
    table, order = _MERGED[name]
    names = columns(name, ids=False)
    union = _union(name, names, _ORDER_COLUMNS.get(name, ()), shards)
    listed = ", ".join(_quoted(n) for n in names)
    return table, names, f"SELECT {listed} FROM ({union}) ORDER BY {order}"


def _outcomes_select(shards: int) -> str:
    """Counts summed over the shards, in the order the serial replay first wrote them."""
    names = ["group_id", "topic", "outcome", "count"]
    union = _union("input_outcomes", names, ("replay_batch",), shards)
    return (
        'SELECT group_id, topic, outcome, sum("count") FROM'
        f" ({union}) GROUP BY group_id, topic, outcome"
        " ORDER BY min(replay_batch), group_id, topic, outcome"
    )


def _attach(db: sqlite3.Connection, paths: Sequence[Path]) -> None:
    for k, path in enumerate(paths):
        db.execute(f"ATTACH DATABASE ? AS shard{k}", (str(path),))


def _detach(db: sqlite3.Connection, paths: Sequence[Path]) -> None:
    for k in range(len(paths)):
        with suppress(sqlite3.Error):
            db.execute(f"DETACH DATABASE shard{k}")


def _merge_into_sqlite(
    target: Engine, paths: Sequence[Path], clock: datetime | None, progress: Progress | None
) -> None:
    raw = target.raw_connection()
    try:
        db = raw.driver_connection
        assert isinstance(db, sqlite3.Connection)
        _attach(db, paths)  # outside a transaction, as ATTACH must be
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for done, name in enumerate(_MERGED, 1):
                    table, names, query = _ordered_select(name, len(paths))
                    listed = ", ".join(_quoted(n) for n in names)
                    # The outbox skips a message id already taken, as the store's write does; the
                    # ORDER BY keeps the first, as the serial replay does.
                    conflict = " ON CONFLICT DO NOTHING" if table is outbox else ""
                    db.execute(f"INSERT INTO main.{name} ({listed}) {query}{conflict}")
                    _merged(progress, done)
                db.execute(
                    'INSERT INTO main.input_outcomes (group_id, topic, outcome, "count") '
                    + _outcomes_select(len(paths))
                )
                _merged(progress, len(_MERGED) + 1)
                if clock is not None:
                    db.execute(
                        "INSERT INTO main.engine_clock (id, business_time) VALUES (1, ?)",
                        (sqlite_time(clock),),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            _detach(db, paths)
    finally:
        raw.close()


def _merge_through_repository(
    target: Engine,
    paths: Sequence[Path],
    clock: datetime | None,
    progress: Progress | None,
    chunk: int = 5000,
) -> None:
    with closing(sqlite3.connect(":memory:")) as db, SqlUnitOfWork(target, writes=True) as uow:
        _attach(db, paths)
        repo = uow.repo
        for done, name in enumerate(_MERGED, 1):
            table, names, query = _ordered_select(name, len(paths))
            decoders = _decoders(table, names)
            cursor = db.execute(query)
            while rows := cursor.fetchmany(chunk):
                values = [
                    {
                        n: v if decode is None or v is None else decode(v)
                        for n, v, decode in zip(names, row, decoders, strict=True)
                    }
                    for row in rows
                ]
                repo.insert_rows(table, values, skip_duplicates=table is outbox)
            _merged(progress, done)
        outcomes = db.execute(_outcomes_select(len(paths))).fetchall()
        by_group: dict[str, dict[tuple[str, str], int]] = {}
        for group_id, topic, outcome, count in outcomes:
            by_group.setdefault(group_id, {})[(topic, outcome)] = int(count)
        for group_id, changes in by_group.items():
            repo.write(ChangeSet(group=group_id, outcomes=changes))
        _merged(progress, len(_MERGED) + 1)
        repo.write(ChangeSet(clock=clock))
        uow.commit()
