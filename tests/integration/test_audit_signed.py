"""Signed checkpoints (issue #18) on SQLite and PostgreSQL, with a real checkpoint topic.

The insider attack of the issue, done with the project's own functions: change a dossier's
`resolved` outcome from approved to rejected, recompute that dossier's chain, the checkpoint
heads and every root. The database alone then verifies clean; the signatures find the
rewritten checkpoints, and the published checkpoints name the dossier.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, update

from dossier import kafka_clients
from dossier.audit_keys import published_checkpoints, read_anchor, write_anchor
from dossier.cli import main
from dossier.composition import build_relay
from dossier.settings import Settings
from engine.application.ports import ChangeSet, HistoryRow, Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.audit import (
    CHANGED,
    DIVERGED,
    DROPPED,
    GENESIS,
    REWRITTEN,
    SIGNATURE,
    UNPUBLISHED,
    UNREADABLE,
    UNSIGNED,
    Head,
    PublishedCheckpoints,
    checkpoint_root,
    link,
    row_content,
)
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.events import ALL_TOPICS, AUDIT_CHECKPOINT_TOPIC
from engine.procedures import load_catalogue
from engine.signing import PublicKeys, Signer, generate_private_key, public_key_pem
from engine.store.audit import latest_signed_checkpoint, verify, write_checkpoint
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from engine.store.tables import (
    HISTORY_ROW_COLUMNS,
    audit_checkpoint_heads,
    audit_checkpoints,
    history,
    history_row,
    outbox,
)
from schemas.codec import ContractCodec, encode_outbound
from tests.fixtures import events as ev
from tests.fixtures.tamper import tampering

A = f"{ev.COMMUNE_AGENCY}-250303-0001"
B = f"{ev.COMMUNE_AGENCY}-250303-0002"
ENGINE = "urn:test:engine"
SIGNER = Signer.of(generate_private_key())
KEYS = PublicKeys([SIGNER.private_key.public_key()])


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A's whole life, checkpoint 1; B's whole life, checkpoint 2: both signed."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'signed.db'}"
    else:
        url = request.getfixturevalue("pg_schema")
    engine = create_db_engine(url)
    upgrade(engine)
    processor = BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load()),
        ContractCodec(),
        ServiceConfig(ENGINE, "audit-signed-test", timedelta(days=7)),
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

    feed(ev.residence_lifecycle(A))
    assert write_checkpoint(engine, ENGINE, encode_outbound, signer=SIGNER) is not None
    feed(ev.residence_lifecycle(B))
    assert write_checkpoint(engine, ENGINE, encode_outbound, signer=SIGNER) is not None
    yield engine
    engine.dispose()


# --- the insider ---------------------------------------------------------------------------


def insider_rewrites_outcome(engine: Engine, code: str) -> int:
    """The issue's attack: `resolved` approved -> rejected, then the chain from that row on,
    the dossier's checkpoint heads and every root recomputed, as the engine would have.
    Returns the seq of the edited row."""
    h = history.c
    with tampering(engine) as connection:
        rows = [
            history_row(r)
            for r in connection.execute(
                select(*HISTORY_ROW_COLUMNS).where(h.dossier_code == code).order_by(h.seq)
            )
        ]
        target = next(r for r in rows if r.type.endswith(".resolved"))
        envelope = copy.deepcopy(dict(target.envelope))
        assert envelope["data"]["outcome"] == "approved"
        envelope["data"]["outcome"] = "rejected"
        prev = GENESIS if target.seq == 1 else rows[target.seq - 2].chain_hash
        assert prev is not None
        rehashed: dict[int, str] = {}
        for row in rows[target.seq - 1 :]:
            edited = replace(row, envelope=envelope) if row.seq == target.seq else row
            current = link(prev, row_content(edited))
            values: dict[str, Any] = {"prev_hash": prev, "chain_hash": current}
            if row.seq == target.seq:
                values["envelope"] = envelope
            connection.execute(
                update(history).where(h.dossier_code == code, h.seq == row.seq).values(**values)
            )
            rehashed[row.seq] = prev = current
        hc = audit_checkpoint_heads.c
        for checkpoint_id, seq in connection.execute(
            select(hc.checkpoint_id, hc.seq).where(hc.dossier_code == code)
        ).all():
            if seq in rehashed:
                connection.execute(
                    update(audit_checkpoint_heads)
                    .where(hc.checkpoint_id == checkpoint_id, hc.dossier_code == code)
                    .values(chain_hash=rehashed[seq])
                )
        prev_root = GENESIS
        c = audit_checkpoints.c
        for cp in connection.execute(select(audit_checkpoints).order_by(c.id)).all():
            heads = [
                Head(d, s, ch)
                for d, s, ch in connection.execute(
                    select(hc.dossier_code, hc.seq, hc.chain_hash).where(hc.checkpoint_id == cp.id)
                )
            ]
            root = checkpoint_root(prev_root, cp.history_id, cp.rows, cp.chains, heads)
            connection.execute(
                update(audit_checkpoints)
                .where(c.id == cp.id)
                .values(prev_root=prev_root, root=root)
            )
            prev_root = root
    return target.seq


def kinds(findings: list[Any]) -> list[tuple[str, int | None, str]]:
    return [(f.dossier_code, f.seq, f.kind) for f in findings]


# --- the signatures ------------------------------------------------------------------------


def test_signed_checkpoints_verify(db: Engine) -> None:
    result = verify(db, public_keys=KEYS)
    assert result.ok, result.findings
    assert (result.checkpoints, result.signed, result.rows) == (2, 2, 14)
    with db.connect() as connection:
        key_ids = connection.scalars(select(audit_checkpoints.c.key_id)).all()
    assert key_ids == [SIGNER.key_id, SIGNER.key_id]


def test_insider_rewrite_is_found_by_the_signatures(db: Engine) -> None:
    assert insider_rewrites_outcome(db, A) == 6
    # What the issue saw: the database alone cannot tell.
    assert verify(db).ok
    found = verify(db, public_keys=KEYS).findings
    assert kinds(found) == [("checkpoint 1", None, SIGNATURE), ("checkpoint 2", None, SIGNATURE)]
    assert all("--against-topic" in f.detail for f in found)


def test_unsigned_checkpoints_are_findings_when_keys_are_given(db: Engine) -> None:
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(ChangeSet(history=[_extra_row(db, B, 8)]))
        uow.commit()
    assert write_checkpoint(db, ENGINE, encode_outbound) is not None  # no signer
    assert verify(db).ok
    assert kinds(verify(db, public_keys=KEYS).findings) == [("checkpoint 3", None, UNSIGNED)]


def test_edited_signed_bytes_are_found(db: Engine) -> None:
    # A signed input keeps its signature and bytes beside the row: the chain covers them.
    row = replace(_extra_row(db, B, 8), signature="k1:c2lnbmF0dXJl", signed_value=b'{"x":1}')
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(ChangeSet(history=[row]))
        uow.commit()
    assert verify(db).ok
    with tampering(db) as connection:
        connection.execute(
            update(history)
            .where(history.c.dossier_code == B, history.c.seq == 8)
            .values(signed_value=b'{"x":2}')
        )
    assert kinds(verify(db).findings) == [(B, 8, CHANGED)]


def _extra_row(db: Engine, code: str, seq: int) -> HistoryRow:
    """A row appended after the dossier's last (a copy of it under a new event id)."""
    with SqlUnitOfWork(db) as uow:
        last = uow.repo.history(code)[-1]
    assert last.seq == seq - 1
    return replace(last, seq=seq, event_id=f"extra-{seq}", prev_hash=None, chain_hash=None)


# --- the anchor ----------------------------------------------------------------------------


def test_anchor_finds_a_rewritten_and_a_deleted_checkpoint(db: Engine, tmp_path: Path) -> None:
    path = tmp_path / "anchor.json"
    latest = latest_signed_checkpoint(db)
    assert latest is not None and latest.id == 2
    write_anchor(path, latest.header)
    assert path.stat().st_mode & 0o777 == 0o600
    anchor = read_anchor(path)
    assert verify(db, public_keys=KEYS, anchor=anchor).ok
    insider_rewrites_outcome(db, A)
    assert ("checkpoint 2", None, REWRITTEN) in kinds(verify(db, anchor=anchor).findings)
    with tampering(db) as connection:
        connection.execute(delete(audit_checkpoints).where(audit_checkpoints.c.id == 2))
    assert ("checkpoint 2", None, DROPPED) in kinds(verify(db, anchor=anchor).findings)


# --- against the topic ---------------------------------------------------------------------


@pytest.fixture
def deployment(settings: Settings, kafka_bootstrap: str) -> Iterator[Settings]:
    """Settings with a topic prefix of their own; the contract's topics made, deleted after."""
    prefixed = replace(settings, topic_prefix=f"signed{uuid.uuid4().hex[:10]}.")
    names = [prefixed.topic(t) for t in ALL_TOPICS]
    kafka_clients.ensure_topics(prefixed, names, 1)
    yield prefixed
    with contextlib.suppress(Exception):
        kafka_clients.delete_topics(prefixed, names)


def publish(settings: Settings, db: Engine) -> int:
    """What the engine's relay does: every pending outbox message to its topic."""
    job = build_relay(settings, db, lease=False, warm=False)
    try:
        return job.drain()
    finally:
        job.close()


def test_insider_rewrite_names_the_dossier_against_the_topic(
    db: Engine, deployment: Settings
) -> None:
    publish(deployment, db)
    published = published_checkpoints(deployment)
    assert sorted(cp_id for cp_id, _ in published.headers) == [1, 2]
    assert set(published.heads) == {A, B}
    assert verify(db, public_keys=KEYS, published=published).ok
    insider_rewrites_outcome(db, A)
    found = verify(db, public_keys=KEYS, published=published_checkpoints(deployment)).findings
    assert (A, 7, DIVERGED) in kinds(found)
    assert next(f for f in found if f.dossier_code == A).detail == (
        "hash differs from the one checkpoint 1 as published recorded"
    )
    assert ("checkpoint 1", None, REWRITTEN) in kinds(found)
    assert ("checkpoint 2", None, REWRITTEN) in kinds(found)
    assert B not in {f.dossier_code for f in found}


def test_the_command_names_the_dossier(
    db: Engine,
    deployment: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish(deployment, db)
    insider_rewrites_outcome(db, A)
    key = tmp_path / "engine.pub"
    key.write_bytes(public_key_pem(SIGNER.private_key.public_key()))
    monkeypatch.setenv("DOSSIER_TOPIC_PREFIX", deployment.topic_prefix)
    url = db.url.render_as_string(hide_password=False)
    assert main(["audit", "verify", "--url", url]) == 0  # the database alone: blind
    capsys.readouterr()
    code = main(["audit", "verify", "--url", url, "--public-key", str(key), "--against-topic"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{A} seq 7: diverged" in out
    assert "checkpoint 1: signature" in out


def test_deleted_and_unpublished_checkpoints_against_the_topic(
    db: Engine, deployment: Settings
) -> None:
    publish(deployment, db)
    # A checkpoint whose message waits in the outbox is not news; one marked sent that never
    # reached the topic is.
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(ChangeSet(history=[_extra_row(db, B, 8)]))
        uow.commit()
    assert write_checkpoint(db, ENGINE, encode_outbound, signer=SIGNER) is not None
    published = published_checkpoints(deployment)
    assert verify(db, public_keys=KEYS, published=published).ok
    with db.begin() as connection:
        connection.execute(
            update(outbox)
            .where(outbox.c.topic == AUDIT_CHECKPOINT_TOPIC, outbox.c.sent_at.is_(None))
            .values(sent_at=outbox.c.created_at)
        )
    assert kinds(verify(db, published=published).findings) == [("checkpoint 3", None, UNPUBLISHED)]
    # The insider deletes the last published checkpoint (and its heads) to hide it.
    with tampering(db) as connection:
        for table, column in (
            (audit_checkpoint_heads, audit_checkpoint_heads.c.checkpoint_id),
            (audit_checkpoints, audit_checkpoints.c.id),
        ):
            connection.execute(delete(table).where(column == 2))
    found = kinds(verify(db, published=published).findings)
    assert ("checkpoint 2", None, DROPPED) in found


def test_garbage_on_the_topic_is_reported_not_fatal(db: Engine, deployment: Settings) -> None:
    publish(deployment, db)
    producer = kafka_clients.producer(deployment)
    topic = deployment.topic(AUDIT_CHECKPOINT_TOPIC)
    for value in (b"\xff\xfe garbage", b"[]", b'{"data": {"checkpoint": "one"}}', None):
        producer.send(topic, key=b"x", value=value)
    producer.flush()
    producer.close()
    published = published_checkpoints(deployment)
    found = verify(db, public_keys=KEYS, published=published).findings
    assert [f.kind for f in found] == [UNREADABLE] * 4
    assert all(f.dossier_code.startswith(topic) for f in found)
    insider_rewrites_outcome(db, A)
    assert (A, 7, DIVERGED) in kinds(verify(db, published=published).findings)


def test_a_checkpoint_written_while_verifying_is_no_finding(
    db: Engine, deployment: Settings
) -> None:
    publish(deployment, db)
    with SqlUnitOfWork(db, writes=True) as uow:
        uow.repo.write(ChangeSet(history=[_extra_row(db, B, 8)]))
        uow.commit()

    def meanwhile(up_to: int) -> PublishedCheckpoints:
        # The engine checkpoints and publishes between verify's read of the database and its
        # read of the topic: the topic holds a checkpoint (and a head of B) verify has not seen.
        assert up_to == 2
        assert write_checkpoint(db, ENGINE, encode_outbound, signer=SIGNER) is not None
        publish(deployment, db)
        return published_checkpoints(deployment, up_to=up_to)

    result = verify(db, public_keys=KEYS, published=meanwhile)
    assert result.ok, result.findings
    assert result.published == 3
