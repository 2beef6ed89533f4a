"""Tamper-evident history: chain hashes for rows written before, and audit checkpoints.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04 00:00:00

Rows appended before this revision have no chain hash; they are chained here, in seq order
per dossier, so that a database upgraded in place is verifiable from its first row. The hash
function is imported rather than frozen here: it is itself versioned (engine.audit.GENESIS),
and a copy that drifted from it would chain rows that the store could never verify.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op

from engine.audit import GENESIS, content_fields, link

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("business_time", TIMESTAMP, nullable=True),
        sa.Column("history_id", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("chains", sa.BigInteger(), nullable=False),
        sa.Column("prev_root", sa.Text(), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
    )
    op.create_table(
        "audit_checkpoint_heads",
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("dossier_code", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("chain_hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "dossier_code", name="pk_audit_checkpoint_heads"),
    )
    _chain_existing_rows()


def _chain_existing_rows() -> None:
    bind = op.get_bind()
    history = sa.table(
        "history",
        *(
            sa.column(name)
            for name in (
                "id",
                "dossier_code",
                "seq",
                "source",
                "event_id",
                "type",
                "schema_version",
                "topic",
                "partition",
                "offset",
                "state_before",
                "state_after",
                "status_code",
                "workflow_version",
                "prev_hash",
                "chain_hash",
            )
        ),
        sa.column("event_time", TIMESTAMP),
        sa.column("envelope", sa.JSON()),
    )
    c = history.c
    rows = bind.execute(
        sa.select(history).where(c.chain_hash.is_(None)).order_by(c.dossier_code, c.seq)
    ).all()
    if not rows:
        return
    updates: list[dict[str, object]] = []
    code: str | None = None
    prev = GENESIS
    for r in rows:
        if r.dossier_code != code:
            code, prev = r.dossier_code, GENESIS
        event_time = r.event_time
        if event_time.tzinfo is None:  # SQLite keeps UTC without an offset
            event_time = event_time.replace(tzinfo=UTC)
        current = link(
            prev,
            content_fields(
                r.dossier_code,
                r.seq,
                r.source,
                r.event_id,
                r.type,
                event_time,
                r.schema_version,
                r.envelope,
                r.topic,
                r.partition,
                r.offset,
                r.state_before,
                r.state_after,
                r.status_code,
                r.workflow_version,
            ),
        )
        updates.append({"b_id": r.id, "b_prev": prev, "b_chain": current})
        prev = current
    bind.execute(
        sa.update(history)
        .where(c.id == sa.bindparam("b_id"))
        .values(prev_hash=sa.bindparam("b_prev"), chain_hash=sa.bindparam("b_chain")),
        updates,
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoint_heads")
    op.drop_table("audit_checkpoints")
    op.execute("UPDATE history SET prev_hash = NULL, chain_hash = NULL")
