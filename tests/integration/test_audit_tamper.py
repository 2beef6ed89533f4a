"""Tamper evidence on SQLite and PostgreSQL: every kind of edit made directly in SQL is found
and named by `verify` (dossier code, seq, what is wrong)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from engine.application.ports import ChangeSet, Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.audit import (
    CHANGED,
    CHECKPOINT,
    DELETED,
    DIVERGED,
    INSERTED,
    MISSING,
    REORDERED,
    TRUNCATED,
    UNLINKED,
    link,
    row_content,
)
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.procedures import load_catalogue
from engine.store.audit import verify, write_checkpoint
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec, encode_outbound
from tests.fixtures import events as ev
from tests.fixtures.tamper import tamper, tampering

A = f"{ev.COMMUNE_AGENCY}-250303-0001"
B = f"{ev.COMMUNE_AGENCY}-250303-0002"


def lifecycle(code: str) -> list[tuple[str, dict[str, Any]]]:
    return ev.residence_lifecycle(code)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        url = request.getfixturevalue("pg_schema")
    engine = create_db_engine(url)
    upgrade(engine)
    processor = BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load()),
        ContractCodec(),
        ServiceConfig("urn:test:engine", "audit-test", timedelta(days=7)),
    )
    offsets: dict[str, int] = {}

    def feed(items: list[tuple[str, dict[str, Any]]]) -> None:
        inputs = []
        for topic, event in items:
            offset = offsets.get(topic, 0)
            offsets[topic] = offset + 1
            inputs.append(
                RawInput(
                    topic, Position(topic, 0, offset), event["subject"].encode(), ev.to_bytes(event)
                )
            )
        processor.process(SqlUnitOfWork(engine, writes=True), inputs)

    a, b = lifecycle(A), lifecycle(B)
    # Several batches, so chains continue across batches (the batched head lookup).
    feed(a[:3] + b[:2])
    feed(a[3:5] + b[2:])
    assert write_checkpoint(engine, "urn:test:engine", encode_outbound) is not None
    feed(a[5:])
    yield engine
    engine.dispose()


def findings(engine: Engine) -> list[tuple[str, int | None, str]]:
    return [(f.dossier_code, f.seq, f.kind) for f in verify(engine).findings]


def sql(engine: Engine, statement: str, **params: Any) -> None:
    # The tables refuse edits (migration 0009): tamper as an insider with the owner role would.
    tamper(engine, statement, **params)


def test_untouched_history_verifies(db: Engine) -> None:
    result = verify(db)
    assert result.ok, result.findings
    assert (result.rows, result.chains, result.checkpoint) == (14, 2, 1)


def test_changed_payload(db: Engine) -> None:
    # Text surgery on the JSON works on both backends (JSON, not JSONB, on PostgreSQL).
    edited = "REPLACE(CAST(envelope AS TEXT), '10000', '1000')"
    if db.dialect.name == "postgresql":
        edited = f"CAST({edited} AS JSON)"
    sql(db, f"UPDATE history SET envelope = {edited} WHERE dossier_code = :c AND seq = 5", c=A)
    assert findings(db) == [(A, 5, CHANGED)]


def test_changed_state_column(db: Engine) -> None:
    sql(db, "UPDATE history SET status_code = 10 WHERE dossier_code = :c AND seq = 6", c=A)
    assert findings(db) == [(A, 6, CHANGED)]


def test_deleted_middle_row(db: Engine) -> None:
    sql(db, "DELETE FROM history WHERE dossier_code = :c AND seq = 3", c=B)
    assert findings(db) == [(B, 4, DELETED)]
    assert "seq 3 missing" in verify(db).findings[0].detail


def test_deleted_first_row(db: Engine) -> None:
    sql(db, "DELETE FROM history WHERE dossier_code = :c AND seq = 1", c=A)
    assert findings(db) == [(A, 2, DELETED)]


def test_swapped_rows(db: Engine) -> None:
    for old, new in ((2, -2), (3, 2), (-2, 3)):
        sql(
            db,
            "UPDATE history SET seq = :new WHERE dossier_code = :c AND seq = :old",
            c=B,
            old=old,
            new=new,
        )
    found = verify(db).findings
    assert [(f.dossier_code, f.seq, f.kind) for f in found] == [
        (B, 2, REORDERED),
        (B, 3, REORDERED),
    ]
    assert [f.detail for f in found] == ["row was written as seq 3", "row was written as seq 2"]


def test_inserted_copy_of_a_row(db: Engine) -> None:
    sql(
        db,
        "INSERT INTO history (dossier_code, seq, source, event_id, type, event_time,"
        ' schema_version, envelope, topic, partition, "offset", state_before, state_after,'
        " status_code, workflow_version, recorded_at, chain_hash, prev_hash)"
        " SELECT dossier_code, 8, source, event_id, type, event_time, schema_version, envelope,"
        ' topic, partition, "offset", state_before, state_after, status_code,'
        " workflow_version, recorded_at, chain_hash, prev_hash"
        " FROM history WHERE dossier_code = :c AND seq = 6",
        c=A,
    )
    found = verify(db).findings
    assert [(f.dossier_code, f.seq, f.kind) for f in found] == [(A, 8, INSERTED)]
    assert found[0].detail == "a copy of the row at seq 6"


def test_inserted_row_without_hash(db: Engine) -> None:
    sql(
        db,
        "INSERT INTO history (dossier_code, seq, source, event_id, type, event_time,"
        ' schema_version, envelope, topic, partition, "offset", state_before, state_after,'
        " status_code, workflow_version, recorded_at)"
        " SELECT dossier_code, 8, source, 'forged', type, event_time, schema_version, envelope,"
        ' topic, partition, "offset", state_before, state_after, status_code,'
        " workflow_version, recorded_at FROM history WHERE dossier_code = :c AND seq = 7",
        c=A,
    )
    assert findings(db) == [(A, 8, INSERTED)]


def test_changed_hash(db: Engine) -> None:
    sql(
        db,
        "UPDATE history SET chain_hash = :h WHERE dossier_code = :c AND seq = 3",
        h="0" * 64,
        c=A,
    )
    assert findings(db) == [(A, 3, CHANGED)]


def test_row_rehashed_after_an_edit_is_unlinked_from_its_successor(db: Engine) -> None:
    # Whoever knows the algorithm can rehash the row they edited; the next row's link still
    # names the original.
    with SqlUnitOfWork(db) as uow:
        row = uow.repo.history(A)[2]
    assert row.prev_hash is not None
    edited = replace(row, source="urn:forged")
    with tampering(db) as connection:
        connection.execute(
            text(
                "UPDATE history SET source = 'urn:forged', chain_hash = :h"
                " WHERE dossier_code = :c AND seq = 3"
            ),
            {"h": link(row.prev_hash, row_content(edited)), "c": A},
        )
    assert findings(db) == [(A, 4, UNLINKED)]


def test_truncated_tail_is_found_against_the_checkpoint(db: Engine) -> None:
    # B ended before the checkpoint: its tail is covered. A grew after it: rows 6-7 are not.
    sql(db, "DELETE FROM history WHERE dossier_code = :c AND seq >= 6", c=B)
    found = verify(db).findings
    assert [(f.dossier_code, f.seq, f.kind) for f in found] == [(B, 6, TRUNCATED)]
    assert found[0].detail == "chain ends at seq 5; checkpoint 1 recorded seq 7"


def test_truncation_after_the_last_checkpoint_is_invisible_until_the_next(db: Engine) -> None:
    sql(db, "DELETE FROM history WHERE dossier_code = :c AND seq = 7", c=A)
    assert findings(db) == []  # the documented limit: nothing recorded seq 7 yet
    write_checkpoint(db, "urn:test:engine", encode_outbound)
    sql(db, "DELETE FROM history WHERE dossier_code = :c AND seq = 6", c=A)
    assert findings(db) == [(A, 6, TRUNCATED)]


def test_rewritten_chain_diverges_from_the_checkpoint(db: Engine) -> None:
    # A forger who rehashes every row after an edit leaves consistent chains, but the head
    # the checkpoint recorded (and published) no longer matches.
    with SqlUnitOfWork(db) as uow:
        rows = uow.repo.history(B)
    with tampering(db) as connection:
        connection.execute(text("DELETE FROM history WHERE dossier_code = :c"), {"c": B})
    forged = [replace(r, source="urn:forged") if r.seq == 2 else r for r in rows]
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(ChangeSet(history=forged))
        uow.commit()
    assert findings(db) == [(B, 7, DIVERGED)]


def test_deleted_chain_is_missing(db: Engine) -> None:
    sql(db, "DELETE FROM history WHERE dossier_code = :c", c=B)
    assert findings(db) == [(B, None, MISSING)]


def test_edited_checkpoint_heads_break_the_root(db: Engine) -> None:
    sql(db, "UPDATE audit_checkpoint_heads SET seq = 6 WHERE dossier_code = :c", c=B)
    found = findings(db)
    assert ("checkpoint 1", None, CHECKPOINT) in found


def test_checkpoint_is_published_through_the_outbox(db: Engine) -> None:
    with SqlUnitOfWork(db) as uow:
        messages = [
            m for m in uow.repo.unsent_outbox(10_000) if m.topic == "dossier.audit-checkpoint"
        ]
    assert len(messages) == 1
    assert messages[0].message_id.startswith("audit-checkpoint/")
    second = write_checkpoint(db, "urn:test:engine", encode_outbound)
    assert second is not None and (second.id, second.rows, second.heads) == (2, 14, 1)
    # Nothing appended since: no third, identical checkpoint.
    assert write_checkpoint(db, "urn:test:engine", encode_outbound) is None
