"""Audit checkpoints and verification of the hash-chained history, on the SQL store.

A checkpoint records the chain heads that moved since the previous one and a root chained
over the previous root (engine.audit.checkpoint_root); it is written in one transaction with
an outbox message that publishes the root to `dossier.audit-checkpoint`, so a root is
published if and only if it is stored.

Verification streams the whole history in (dossier_code, seq) order, checks every chain,
then holds the chains against the heads that the checkpoints recorded: only that finds a
truncated tail or a chain rewritten end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select, text

from engine.application.ports import ChangeSet, HistoryRow, OutboxMessage, Position
from engine.audit import (
    CHECKPOINT,
    DIVERGED,
    GENESIS,
    MISSING,
    TRUNCATED,
    Finding,
    Head,
    checkpoint_root,
    verify_chain,
)
from engine.events import AUDIT_CHECKPOINT_TOPIC, TYPE_PREFIX, OutboundEvent
from engine.store.sql import (
    SqlRepository,
    audit_checkpoint_heads,
    audit_checkpoints,
    engine_clock,
    history,
)

CHECKPOINT_TYPE = f"{TYPE_PREFIX}audit-checkpoint"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: int
    created_at: datetime
    business_time: datetime | None
    history_id: int
    rows: int
    chains: int
    prev_root: str
    root: str
    heads: int  # heads recorded by this checkpoint (those that moved)


def write_checkpoint(
    db: Engine,
    engine_source: str,
    encode: Callable[[OutboundEvent, str], bytes],
    *,
    now: datetime | None = None,
) -> Checkpoint | None:
    """Record a checkpoint of the history as committed now; None when nothing was appended
    since the previous one (an idle engine should not fill the table with equal roots)."""
    created_at = now or datetime.now(UTC)
    with db.connect() as connection:
        connection.info["dossier_writes"] = True  # SQLite: BEGIN IMMEDIATE, one writer
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # Waits for batches in flight and holds new ones off for the few queries
                # below: every history id up to max(id) is then committed or never will be,
                # so "rows after the previous checkpoint's id" misses nothing.
                connection.execute(text("LOCK TABLE history IN SHARE ROW EXCLUSIVE MODE"))
            checkpoint = _write_checkpoint(connection, engine_source, encode, created_at)
        return checkpoint


def _write_checkpoint(
    connection: Connection,
    engine_source: str,
    encode: Callable[[OutboundEvent, str], bytes],
    created_at: datetime,
) -> Checkpoint | None:
    c = audit_checkpoints.c
    last = connection.execute(select(audit_checkpoints).order_by(c.id.desc()).limit(1)).first()
    last_id = int(last.history_id) if last is not None else 0
    prev_root: str = last.root if last is not None else GENESIS
    h = history.c
    top = connection.scalar(select(func.max(h.id)))
    if top is None or int(top) <= last_id:
        return None
    delta = connection.execute(
        select(
            h.dossier_code,
            func.max(h.seq),
            func.count(),
            func.sum(case((h.seq == 1, 1), else_=0)),
        )
        .where(h.id > last_id, h.id <= top)
        .group_by(h.dossier_code)
    ).all()
    added_rows = sum(int(n) for _, _, n, _ in delta)
    new_chains = sum(int(n or 0) for _, _, _, n in delta)
    repo = SqlRepository(connection)
    hashes = repo._chain_heads([(code, int(seq)) for code, seq, _, _ in delta])
    heads = [Head(code, int(seq), hashes[(code, int(seq))]) for code, seq, _, _ in delta]
    rows = (int(last.rows) if last is not None else 0) + added_rows
    chains = (int(last.chains) if last is not None else 0) + new_chains
    root = checkpoint_root(prev_root, int(top), rows, chains, heads)
    business_time = connection.scalar(select(engine_clock.c.business_time))
    checkpoint_id = connection.execute(
        audit_checkpoints.insert()
        .values(
            created_at=created_at,
            business_time=business_time,
            history_id=int(top),
            rows=rows,
            chains=chains,
            prev_root=prev_root,
            root=root,
        )
        .returning(c.id)
    ).scalar_one()
    if heads:
        connection.execute(
            audit_checkpoint_heads.insert(),
            [
                {
                    "checkpoint_id": checkpoint_id,
                    "dossier_code": head.dossier_code,
                    "seq": head.seq,
                    "chain_hash": head.chain_hash,
                }
                for head in heads
            ],
        )
    checkpoint = Checkpoint(
        checkpoint_id,
        created_at,
        business_time,
        int(top),
        rows,
        chains,
        prev_root,
        root,
        len(heads),
    )
    repo.write(ChangeSet(outbox=[_announcement(checkpoint, engine_source, encode)]))
    return checkpoint


def _announcement(
    checkpoint: Checkpoint, engine_source: str, encode: Callable[[OutboundEvent, str], bytes]
) -> OutboxMessage:
    event = OutboundEvent(
        topic=AUDIT_CHECKPOINT_TOPIC,
        key="",  # no subject: a checkpoint is about every dossier
        id=f"audit-checkpoint/{checkpoint.root}",
        type=CHECKPOINT_TYPE,
        time=checkpoint.created_at,
        data={
            "checkpoint": checkpoint.id,
            "root": checkpoint.root,
            "prev_root": checkpoint.prev_root,
            "rows": checkpoint.rows,
            "chains": checkpoint.chains,
            "history_id": checkpoint.history_id,
            "business_time": checkpoint.business_time,
        },
    )
    return OutboxMessage(
        topic=AUDIT_CHECKPOINT_TOPIC,
        key=None,
        value=encode(event, engine_source),
        message_id=event.id,
        created_at=checkpoint.created_at,
    )


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


@dataclass
class Verification:
    rows: int = 0
    chains: int = 0
    checkpoint: int | None = None  # the latest checkpoint held against
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(db: Engine, *, since: datetime | None = None, batch: int = 20_000) -> Verification:
    """Every chain (or, with `since`, every chain that grew since then) and the checkpoints."""
    result = Verification()
    with db.connect() as connection, connection.begin():
        heads, checkpoint_findings, latest = _checkpoint_heads(connection)
        result.findings.extend(checkpoint_findings)
        result.checkpoint = latest
        seen: set[str] = set()
        for code, rows, hashes in _chains(connection, since, batch):
            seen.add(code)
            result.chains += 1
            result.rows += len(rows)
            result.findings.extend(verify_chain(rows, hashes))
            head = heads.get(code)
            if head is not None:
                result.findings.extend(_against_head(code, rows, hashes, head))
        if since is None:
            for code in sorted(set(heads) - seen):
                head = heads[code]
                result.findings.append(
                    Finding(
                        code,
                        None,
                        MISSING,
                        f"no rows, but checkpoint {head[2]} recorded seq {head[0]}",
                    )
                )
    result.findings.sort(key=lambda f: (f.dossier_code, f.seq or 0))
    return result


def _against_head(
    code: str,
    rows: list[HistoryRow],
    hashes: list[tuple[str | None, str | None]],
    head: tuple[int, str, int],
) -> list[Finding]:
    seq, chain_hash, checkpoint_id = head
    for row, (_, stored) in zip(rows, hashes, strict=True):
        if row.seq == seq:
            if stored != chain_hash:
                return [
                    Finding(
                        code,
                        seq,
                        DIVERGED,
                        f"hash differs from the one checkpoint {checkpoint_id} recorded",
                    )
                ]
            return []
    last = rows[-1].seq if rows else 0
    if last < seq:
        return [
            Finding(
                code,
                last + 1,
                TRUNCATED,
                f"chain ends at seq {last}; checkpoint {checkpoint_id} recorded seq {seq}",
            )
        ]
    return [Finding(code, seq, DIVERGED, f"seq recorded by checkpoint {checkpoint_id} is gone")]


def _checkpoint_heads(
    connection: Connection,
) -> tuple[dict[str, tuple[int, str, int]], list[Finding], int | None]:
    """Latest recorded head per dossier, with findings for checkpoints whose roots do not
    recompute from their heads (the heads table was edited)."""
    c = audit_checkpoints.c
    checkpoints = connection.execute(select(audit_checkpoints).order_by(c.id)).all()
    by_checkpoint: dict[int, list[Head]] = {}
    hc = audit_checkpoint_heads.c
    for checkpoint_id, code, seq, chain_hash in connection.execute(
        select(hc.checkpoint_id, hc.dossier_code, hc.seq, hc.chain_hash).order_by(hc.checkpoint_id)
    ):
        by_checkpoint.setdefault(int(checkpoint_id), []).append(Head(code, int(seq), chain_hash))
    heads: dict[str, tuple[int, str, int]] = {}
    findings: list[Finding] = []
    prev_root = GENESIS
    for cp in checkpoints:
        recorded = by_checkpoint.get(int(cp.id), [])
        root = checkpoint_root(
            prev_root, int(cp.history_id), int(cp.rows), int(cp.chains), recorded
        )
        if cp.prev_root != prev_root or cp.root != root:
            findings.append(
                Finding(
                    f"checkpoint {cp.id}",
                    None,
                    CHECKPOINT,
                    "root does not recompute from the previous root and its recorded heads",
                )
            )
        prev_root = cp.root
        for head in recorded:
            heads[head.dossier_code] = (head.seq, head.chain_hash, int(cp.id))
    latest = int(checkpoints[-1].id) if checkpoints else None
    return heads, findings, latest


def _chains(
    connection: Connection, since: datetime | None, batch: int
) -> Iterator[tuple[str, list[HistoryRow], list[tuple[str | None, str | None]]]]:
    h = history.c
    query = select(
        h.dossier_code,
        h.seq,
        h.source,
        h.event_id,
        h.type,
        h.event_time,
        h.schema_version,
        h.envelope,
        h.topic,
        h.partition,
        h.offset,
        h.state_before,
        h.state_after,
        h.status_code,
        h.workflow_version,
        h.prev_hash,
        h.chain_hash,
    ).order_by(h.dossier_code, h.seq)
    if since is not None:
        grown = select(h.dossier_code).where(h.recorded_at >= since).distinct()
        query = query.where(h.dossier_code.in_(grown.scalar_subquery()))
    result = connection.execution_options(stream_results=True, yield_per=batch).execute(query)
    code: str | None = None
    rows: list[HistoryRow] = []
    hashes: list[tuple[str | None, str | None]] = []
    for r in result:
        if r[0] != code:
            if code is not None:
                yield code, rows, hashes
            code, rows, hashes = r[0], [], []
        rows.append(_row(r))
        hashes.append((r[15], r[16]))
    if code is not None:
        yield code, rows, hashes


def _row(r: Any) -> HistoryRow:
    return HistoryRow(
        dossier_code=r[0],
        seq=r[1],
        source=r[2],
        event_id=r[3],
        type=r[4],
        event_time=r[5],
        schema_version=r[6],
        envelope=r[7],
        position=Position(r[8], r[9], r[10]),
        state_before=r[11],
        state_after=r[12],
        status_code=r[13],
        workflow_version=r[14],
    )


def latest_checkpoint(db: Engine) -> Checkpoint | None:
    c = audit_checkpoints.c
    with db.connect() as connection:
        cp = connection.execute(select(audit_checkpoints).order_by(c.id.desc()).limit(1)).first()
        if cp is None:
            return None
        heads = connection.scalar(
            select(func.count())
            .select_from(audit_checkpoint_heads)
            .where(audit_checkpoint_heads.c.checkpoint_id == cp.id)
        )
    return Checkpoint(
        int(cp.id),
        cp.created_at,
        cp.business_time,
        int(cp.history_id),
        int(cp.rows),
        int(cp.chains),
        cp.prev_root,
        cp.root,
        int(heads or 0),
    )
