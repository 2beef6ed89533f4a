"""The store's read models (`engine.store.queries`) on SQLite, over rows written through the port.

Monitoring, the indicators, the report, the audit trail and the replays test them in use; this
checks each query's own promise on a small store, the ones no other test pins down included.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection

from engine.application.ports import ChangeSet, LedgerEntry, StoredDossier
from engine.store import queries
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.store_contract import T0, make_dossier, make_history, make_message, make_parked

A, B = "000.00.19.H56-250303-0001", "000.00.19.H56-250303-0002"


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[Connection]:
    db = create_db_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(db)
    late = T0 - timedelta(days=30)
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(
            ChangeSet(
                dossiers=[
                    StoredDossier(make_dossier(A, due_at=late), 0, None),
                    StoredDossier(
                        make_dossier(B, final=True, finished_at=T0, paid_online=None), 0, None
                    ),
                ],
                history=[make_history(A, 1), make_history(A, 2), make_history(B, 1)],
                ledger=[LedgerEntry("s", "e1", "h1", A)],
                parked=[make_parked(A, 1)],
                outbox=[
                    make_message("m1"),
                    make_message("m2", topic="dossier.dlq", key=B.encode()),
                    make_message("m3", key=B.encode()),
                ],
                group="g",
                positions={("dossier.commune", 0): 10, ("dossier.commune", 1): 5},
                outcomes={("dossier.commune", "applied"): 3},
                clock=T0,
            )
        )
        [first, *_] = uow.repo.unsent_outbox(10)
        assert first.id is not None
        uow.repo.mark_sent([first.id], T0)
        uow.commit()
    with db.connect() as connection:
        yield connection
    db.dispose()


def test_the_engine_state(connection: Connection) -> None:
    assert queries.business_clock(connection) == T0
    assert queries.positions(connection, "g") == {
        ("dossier.commune", 0): 10,
        ("dossier.commune", 1): 5,
    }
    assert queries.positions(connection, "other") == {}
    assert queries.consumed_inputs(connection, "g") == 15
    assert queries.consumed_inputs(connection, "other") == 0
    assert queries.outcome_counts(connection, "g") == {("dossier.commune", "applied"): 3}
    assert queries.parked_count(connection) == 1
    assert queries.outbox_backlog(connection) == 2
    assert queries.last_outbox_id(connection) == 3
    assert queries.history_count(connection) == 3
    assert queries.dossier_count(connection) == 2


def test_open_dossiers_and_the_overdue_among_them(connection: Connection) -> None:
    # A is open and past its appointment at the clock; B is final.
    assert queries.open_dossiers(connection, T0) == {(4, "commune"): (1, 1)}
    assert queries.open_dossiers(connection, None) == {(4, "commune"): (1, 0)}


def test_dossier_records_and_snapshots(connection: Connection) -> None:
    records = {r.code: r for r in queries.dossier_records(connection)}
    assert set(records) == {A, B}
    assert records[B].final is True and records[B].paid_online is None
    assert records[A].finished_at is None and records[A].paused_seconds == 0
    assert records[A].submitted_at == make_dossier(A).submitted_at
    snapshots = queries.dossier_snapshots(connection)
    assert snapshots[A]["code"] == A and snapshots[B]["final"] is True


def test_history_reads(connection: Connection) -> None:
    rows = queries.dossier_history(connection, A)
    assert [r.seq for r in rows] == [1, 2]
    assert rows == [make_history(A, 1), make_history(A, 2)]
    assert rows[1].prev_hash == rows[0].chain_hash  # chained by the store
    until = make_history(A, 1).event_time
    assert [r.seq for r in queries.dossier_history(connection, A, until=until)] == [1]
    assert queries.status_sequences(connection) == {
        A: [("received", 2), ("received", 2)],
        B: [("received", 2)],
    }
    applied = list(queries.applied_inputs(connection))
    assert [(code, offset) for _, code, _, _, offset, *_ in applied] == [
        (A, 1001),
        (A, 1002),
        (B, 1001),
    ]
    assert [row[0] for row in applied] == sorted(row[0] for row in applied)
    assert len(list(queries.applied_inputs(connection, last_id=applied[1][0]))) == 2
    assert queries.batch_bounds(connection, 2) == [applied[1][0], applied[2][0]]


def test_a_shard_of_the_applied_inputs(connection: Connection) -> None:
    # SQLite filters in SQL with `shard_of` registered as a function, as a replay's engine does.
    queries.register_shard_function(connection.connection.driver_connection, None)
    shards = 2
    mine = {
        shard: [row[1] for row in queries.applied_inputs(connection, shard=(shard, shards))]
        for shard in range(shards)
    }
    assert sorted(mine[0] + mine[1]) == [A, A, B]
    for shard, codes in mine.items():
        assert all(queries.shard_of(code, shards) == shard for code in codes)


def test_outbox_messages_by_topic_and_key(connection: Connection) -> None:
    everything = queries.outbox_messages(connection, ["dossier.status", "dossier.dlq"])
    assert [m.message_id for m in everything] == ["m1", "m2", "m3"]  # sent or not, by id
    status_of_b = queries.outbox_messages(connection, ["dossier.status"], key=B.encode())
    assert [m.message_id for m in status_of_b] == ["m3"]
    assert queries.outbox_counts(connection, ["dossier.status", "dossier.dlq"]) == {
        "dossier.status": 2,
        "dossier.dlq": 1,
    }
    assert queries.outbox_counts(connection, ["dossier.deadline"]) == {}
