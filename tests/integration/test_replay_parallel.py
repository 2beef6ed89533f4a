"""The parallel replay from a database rebuilds the very rows the serial one does.

A history is made by the live path from a simulated province, then disordered on purpose so
that the replay parks inputs (some across batch boundaries), retries them, dead-letters one and
leaves one parked for good. It is replayed serially and in 2 and 3 worker processes, with small
batches and a small notice scan limit so that the clock moves in many steps and the limit
bites; every table is compared row by row, in id order, except the wall-clock columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from dossier.cli import main as cli
from dossier.replay.jobs import replay_from_db
from dossier.replay.parallel import replay_from_db_parallel
from dossier.replay.serial import FOLDED, MERGED, compare, make_processor
from dossier.settings import Settings
from dossier.tools.simulation import Workload
from engine.application.ports import ChangeSet, HistoryRow, Position
from engine.application.service import RawInput
from engine.calendar import WorkingCalendar
from engine.procedures import load_catalogue
from engine.store.audit import verify
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine, history, metadata

# Wall-clock columns: when a row was written or parked, not what was decided.
WALL_CLOCK = {"recorded_at", "parked_at", "expires_at"}
TABLES = (
    "dossiers",
    "history",
    "input_ledger",
    "parked_inputs",
    "outbox",
    "input_outcomes",
    "engine_clock",
    "consumer_positions",
)


def run_live(settings: Settings, db: Engine, dossiers: int = 300) -> None:
    """The live path (decode, apply, commit) over a simulated province, into `db`."""
    messages = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=11,
        start=datetime.fromisoformat("2025-05-02T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-07-20T00:00:00+07:00"),
        dossiers=dossiers,
        procedures=("1.001193", "1.004222", "DD.GCN.LD"),
        duplicate_share=0.02,
        bad_share=0.01,
        reorder_share=0.05,
    ).messages()
    upgrade(db)
    processor = make_processor(settings, "live")
    offsets: dict[str, int] = {}
    inputs: list[RawInput] = []
    for m in messages:
        offsets[m.topic] = offsets.get(m.topic, -1) + 1
        inputs.append(
            RawInput(m.topic, Position(m.topic, 0, offsets[m.topic]), m.key, m.value, m.headers)
        )
    for start in range(0, len(inputs), 500):
        processor.process(SqlUnitOfWork(db, writes=True), inputs[start : start + 500])


def disorder(live: Engine, source: Engine) -> None:
    """`live`'s history into `source` in another order: the second input of every seventh
    dossier before its first (parked, then retried), a second submission of one dossier
    (dead-lettered), and an input for a dossier never submitted (parked for good)."""
    upgrade(source)
    with SqlUnitOfWork(live) as uow:
        codes = [
            code
            for (code,) in uow.repo.connection.execute(  # type: ignore[attr-defined]
                sa.select(history.c.dossier_code)
                .group_by(history.c.dossier_code)
                .order_by(sa.func.min(history.c.id))
            )
        ]
        rows = {code: uow.repo.history(code) for code in codes}
        order = [
            (code, seq)
            for code, seq in uow.repo.connection.execute(  # type: ignore[attr-defined]
                sa.select(history.c.dossier_code, history.c.seq).order_by(history.c.id)
            )
        ]
    swapped = {code for n, code in enumerate(codes) if n % 7 == 3 and len(rows[code]) > 2}
    ordered: list[HistoryRow] = []
    for code, seq in order:
        if code in swapped and seq in (1, 2):
            seq = 3 - seq
        ordered.append(rows[code][seq - 1])
    submitted = rows[codes[0]][0]
    again = dict(submitted.envelope, id=f"{submitted.event_id}-again")
    ordered.insert(
        len(ordered) // 2, replace(submitted, event_id=again["id"], seq=999, envelope=again)
    )
    stray = rows[codes[1]][1]
    never = f"{stray.dossier_code}-never"
    ordered.insert(
        len(ordered) // 3,
        replace(
            stray,
            dossier_code=never,
            seq=1,
            event_id=f"{stray.event_id}-never",
            envelope=dict(stray.envelope, subject=never, id=f"{stray.event_id}-never"),
            position=Position(stray.position.topic, 0, 10_000_000),
        ),
    )
    with SqlUnitOfWork(source, writes=True) as uow:
        for row in ordered:  # one by one: ids follow this order
            uow.repo.write(ChangeSet(history=[row]))
        uow.commit()


def table_rows(db: Engine, table: str) -> list[tuple[Any, ...]]:
    columns = [c.name for c in metadata.tables[table].c if c.name not in WALL_CLOCK | {"id"}]
    if db.dialect.name == "sqlite":
        order = "rowid"
    elif "id" in metadata.tables[table].c:
        order = "id"
    else:
        order = ", ".join(c.name for c in metadata.tables[table].primary_key.columns)
    listed = ", ".join(f'"{c}"' for c in columns)
    with db.connect() as connection:
        return list(connection.exec_driver_sql(f"SELECT {listed} FROM {table} ORDER BY {order}"))


def assert_same_rows(rebuilt: Engine, expected: Engine) -> None:
    for table in TABLES:
        mine, theirs = table_rows(rebuilt, table), table_rows(expected, table)
        assert len(mine) == len(theirs), table
        for n, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert a == b, f"{table} row {n}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Callable[[str], str]:
    return lambda name: f"sqlite:///{tmp_path / name}.db"


@pytest.fixture(scope="module")
def disordered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A disordered SQLite history, made once for the module's tests."""
    settings = Settings.from_env()
    folder = tmp_path_factory.mktemp("replay-parallel")
    live = create_db_engine(f"sqlite:///{folder / 'live.db'}")
    source = create_db_engine(f"sqlite:///{folder / 'source.db'}")
    run_live(settings, live)
    disorder(live, source)
    live.dispose()
    source.dispose()
    yield f"sqlite:///{folder / 'source.db'}"


def test_parallel_replay_rebuilds_the_serial_rows(
    settings: Settings, disordered: str, sqlite_url: Callable[[str], str]
) -> None:
    source = create_db_engine(disordered)
    serial = create_db_engine(sqlite_url("serial"))
    options: dict[str, Any] = {"batch_size": 250, "notice_scan_limit": 3}
    told: list[tuple[str, int, int]] = []
    report = replay_from_db(settings, source, serial, progress=lambda *a: told.append(a), **options)
    assert report.outcomes["parked"] > 20 and report.outcomes["dead_lettered"] == 1
    # One call per batch folded, each with the number of batches in all.
    assert told == [(FOLDED, n, report.batches) for n in range(1, report.batches + 1)]
    parked = table_rows(serial, "parked_inputs")
    assert len(parked) == 1  # the input of the dossier never submitted
    deadline = [r for r in table_rows(serial, "outbox") if r[1] == "dossier.deadline"]
    assert len(deadline) > 20
    for workers in (2, 3):
        rebuilt = create_db_engine(sqlite_url(f"parallel-{workers}"))
        told.clear()
        got = replay_from_db(
            settings,
            source,
            rebuilt,
            workers=workers,
            progress=lambda *a: told.append(a),
            **options,
        )
        folded = [(FOLDED, n, report.batches) for n in range(1, report.batches + 1)]
        merged = [(MERGED, n, 7) for n in range(1, 8)]  # 6 tables, then the outcomes
        assert told == folded + merged
        assert (got.inputs, got.batches, got.outcomes) == (
            report.inputs,
            report.batches,
            report.outcomes,
        )
        assert got.workers == workers
        assert_same_rows(rebuilt, serial)
        assert verify(rebuilt).findings == []
        assert compare(rebuilt, serial).ok
        rebuilt.dispose()
    serial.dispose()
    source.dispose()


def test_the_notice_limit_matters_and_is_reproduced(
    settings: Settings, disordered: str, sqlite_url: Callable[[str], str]
) -> None:
    """With the service's default scan limit the notices differ from the run above (so that
    test did exercise the limit), and the command line's parallel run still matches."""
    source = create_db_engine(disordered)
    serial = create_db_engine(sqlite_url("serial"))
    replay_from_db(settings, source, serial, batch_size=250)
    limited = create_db_engine(sqlite_url("limited"))
    replay_from_db(settings, source, limited, batch_size=250, notice_scan_limit=3)
    assert table_rows(serial, "outbox") != table_rows(limited, "outbox")
    into = sqlite_url("cli")
    args = ["replay", "--source", "db", "--from", disordered, "--into", into]
    assert cli([*args, "--batch-size", "250", "--workers", "2"]) == 0
    rebuilt = create_db_engine(into)
    assert_same_rows(rebuilt, serial)
    for db in (source, serial, limited, rebuilt):
        db.dispose()


def test_parallel_replay_from_and_into_postgresql(
    settings: Settings,
    disordered: str,
    pg_schemas: Callable[[], str],
    sqlite_url: Callable[[str], str],
) -> None:
    options: dict[str, Any] = {"batch_size": 400, "notice_scan_limit": 5}
    # From PostgreSQL (shards cut by md5 in SQL) into SQLite.
    pg_live = create_db_engine(pg_schemas())
    run_live(settings, pg_live, dossiers=150)
    serial = create_db_engine(sqlite_url("from-pg-serial"))
    replay_from_db(settings, pg_live, serial, **options)
    rebuilt = create_db_engine(sqlite_url("from-pg-parallel"))
    replay_from_db_parallel(settings, pg_live, rebuilt, workers=2, **options)
    assert_same_rows(rebuilt, serial)
    # From SQLite into PostgreSQL (merged through the SQL store).
    source = create_db_engine(disordered)
    pg_serial = create_db_engine(pg_schemas())
    replay_from_db(settings, source, pg_serial, **options)
    pg_rebuilt = create_db_engine(pg_schemas())
    replay_from_db_parallel(settings, source, pg_rebuilt, workers=2, **options)
    assert_same_rows(pg_rebuilt, pg_serial)
    assert verify(pg_rebuilt).findings == []
    for db in (pg_live, serial, rebuilt, source, pg_serial, pg_rebuilt):
        db.dispose()
