"""The pieces of the parallel replay that need no worker processes: how shards are cut, how
the serial clock and notice scan are reproduced, and how rows are encoded for SQLite."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dossier.replay.parallel import (
    AppliedAt,
    OrderTracker,
    notice_cutoff,
    serial_clock,
    write_shard,
)
from engine.application.ports import ChangeSet, LedgerEntry, StoredDossier, UnitOfWork
from engine.store.bulk import sqlite_time
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from engine.store.migrate import upgrade
from engine.store.queries import shard_of
from engine.store.sql import SqlRepository, SqlUnitOfWork, create_db_engine
from tests.store_contract import ICT, T0, make_dossier, make_history, make_message, make_parked

CODE = "000.00.19.H56-250303-0001"
OTHER = "000.00.19.H56-250303-0002"


def test_shards_are_stable_and_even() -> None:
    # The same function as the SQL expression on PostgreSQL: md5's first 32 bits, unsigned.
    assert shard_of("abc", 1 << 32) == 0x90015098
    codes = [f"000.00.19.H56-2503{d:02d}-{n:04d}" for d in range(1, 29) for n in range(1, 200)]
    sizes = Counter(shard_of(code, 3) for code in codes)
    assert set(sizes) == {0, 1, 2}
    assert max(sizes.values()) < 1.1 * len(codes) / 3


def test_sqlite_time_is_what_sqlalchemy_writes(tmp_path: Path) -> None:
    db = create_db_engine(f"sqlite:///{tmp_path / 'clock.db'}")
    upgrade(db)
    value = datetime(2025, 3, 3, 8, 15, 30, tzinfo=ICT)  # no microseconds: still six digits
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(ChangeSet(clock=value))
        uow.commit()
    with db.connect() as connection:
        stored = connection.exec_driver_sql("SELECT business_time FROM engine_clock").scalar()
    db.dispose()
    assert stored == sqlite_time(value) == "2025-03-03 01:15:30.000000"


def test_serial_clock_is_the_first_latest_event_or_the_stored_clock() -> None:
    early = datetime(2025, 3, 3, 8, 0, tzinfo=ICT)
    late = early + timedelta(hours=1)
    same_instant_in_utc = late.astimezone(UTC)
    # max() keeps the first of equal times, with the offset it was written with.
    assert serial_clock(None, [(same_instant_in_utc, 9), None, (late, 4)]) is late
    assert serial_clock(None, [(late, 4), (same_instant_in_utc, 9)]) is late
    assert serial_clock(early.astimezone(UTC), [(late, 4)]) is late
    # A batch with nothing later keeps the clock the store read back, in UTC.
    stored = late.astimezone(UTC)
    assert serial_clock(stored, [(early, 1), None]) is stored
    assert serial_clock(None, [None, None]) is None


def test_notice_cutoff_falls_where_the_serial_scan_stops() -> None:
    t = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
    share_a = [(t, "A1"), (t + timedelta(hours=2), "A2"), (t + timedelta(hours=9), "A3")]
    share_b = [(t, "B1"), (t + timedelta(hours=1), "B2")]
    now = t + timedelta(hours=3)
    assert notice_cutoff([share_a, share_b], now, limit=5) is None  # four due: all reached
    assert notice_cutoff([share_a, share_b], now, limit=4) is None
    assert notice_cutoff([share_a, share_b], now, limit=3) == (t + timedelta(hours=1), "B2")
    assert notice_cutoff([share_a, share_b], now, limit=1) == (t, "A1")  # ties: by code
    assert notice_cutoff([share_a, share_b], None, limit=1) is None


def _fill(uow_factory: Any) -> None:
    """The same writes, through any unit of work."""
    dossier = make_dossier(CODE, paid_online=None, paused_at=T0 + timedelta(hours=2))
    finished = make_dossier(
        OTHER, received_at=None, final=True, finished_at=T0 + timedelta(days=1), paid_online=True
    )
    uow: UnitOfWork
    with uow_factory() as uow:
        history_rows = [make_history(CODE, 1), make_history(CODE, 2)]
        uow.repo.write(
            ChangeSet(
                dossiers=[
                    StoredDossier(dossier, 0, datetime(2025, 3, 11, 10, 0, 0, 7, tzinfo=ICT)),
                    StoredDossier(finished, 0, None),
                ],
                history=[
                    *history_rows,
                    make_history(OTHER, 1, state_before="x", envelope={"a": "ệ"}),
                ],
                ledger=[
                    LedgerEntry(r.source, r.event_id, f"hash-{r.seq}", CODE) for r in history_rows
                ],
                parked=[make_parked(CODE, 1), make_parked(OTHER, 2, key=None, headers=[])],
                outbox=[make_message("m1"), make_message("m2", key=None)],
                group="g",
                outcomes={("dossier.commune", "applied"): 3},
                clock=T0 + timedelta(hours=5),
            )
        )
        uow.commit()
    with uow_factory() as uow:  # an update: revision 2
        stored = uow.repo.load_dossiers([CODE])[CODE]
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(stored.dossier, stored.revision, None)]))
        uow.commit()


def _rows(path: Path, table: str, skip: set[str]) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        names = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        kept = [n for n in names if n not in skip and not n.startswith("replay_")]
        listed = ", ".join(f'"{n}"' for n in kept)
        return db.execute(f"SELECT {listed} FROM {table} ORDER BY rowid").fetchall()


def test_shard_files_hold_exactly_what_the_sql_store_writes(tmp_path: Path) -> None:
    via_sql = create_db_engine(f"sqlite:///{tmp_path / 'sql.db'}")
    upgrade(via_sql)
    _fill(lambda: SqlUnitOfWork(via_sql, writes=True))
    via_sql.dispose()

    store = InMemoryStore()
    _fill(lambda: InMemoryUnitOfWork(store))
    tracker = OrderTracker(store)
    for rows in store.history.values():
        for n, row in enumerate(rows):
            tracker.applied[(row.source, row.event_id)] = AppliedAt(0, n, n)
    for ident in store.parked:
        tracker.parked_order[ident] = (0, ident)
    for ident in store.outbox:
        tracker.outbox_order[ident] = (0, 1, ident, "", "", ident)
    for n, key in enumerate(store.ledger):
        tracker.applied.setdefault(key, AppliedAt(0, n, n))
    tracker.outcome_batch[("dossier.commune", "applied")] = 0
    write_shard(tmp_path / "shard.db", store, tracker)

    for table, skip in {
        "dossiers": set(),
        "history": {"id", "recorded_at"},
        "input_ledger": set(),
        "parked_inputs": {"id"},
        "outbox": {"id"},
        "input_outcomes": set(),
        "engine_clock": set(),
    }.items():
        expected = _rows(tmp_path / "sql.db", table, skip)
        assert _rows(tmp_path / "shard.db", table, skip) == expected, table
        assert expected

    # And read through the SQL store, the shard gives back what the memory store holds.
    shard = create_db_engine(f"sqlite:///{tmp_path / 'shard.db'}")
    with shard.connect() as connection:
        repo = SqlRepository(connection)
        assert repo.load_dossiers([CODE, OTHER]) == store.dossiers
        for code, rows in store.history.items():
            read = repo.history(code)
            assert read == list(rows)
            assert [(r.prev_hash, r.chain_hash) for r in read] == [
                (r.prev_hash, r.chain_hash) for r in rows
            ]
        assert repo.get_clock() == store.clock
        assert repo.outcome_counts("g") == {("dossier.commune", "applied"): 3}
        assert [m.message_id for m in repo.unsent_outbox(10)] == ["m1", "m2"]
    shard.dispose()
