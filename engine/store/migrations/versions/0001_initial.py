"""The initial schema: dossiers, history, input ledger, parked inputs, outbox, positions, clock.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Types are spelled out here rather than imported from `engine.store.sql`: a migration is a
frozen record of one schema step and must not change when the current model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SNAPSHOT_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dossiers",
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("procedure", sa.String(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("procedure_group", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(), nullable=False),
        sa.Column("agency", sa.String(), nullable=False),
        sa.Column("receiving_agency", sa.String(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("full_online", sa.Boolean(), nullable=False),
        sa.Column("vneid_authenticated", sa.Boolean(), nullable=False),
        sa.Column("digitised", sa.Boolean(), nullable=False),
        sa.Column("paid_online", sa.Boolean(), nullable=True),
        sa.Column("submitted_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=True),
        sa.Column("due_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("last_event_at", TIMESTAMP, nullable=False),
        sa.Column("next_notice_at", TIMESTAMP, nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("snapshot", SNAPSHOT_JSON, nullable=False),
        sa.PrimaryKeyConstraint("code", name="pk_dossiers"),
    )
    op.create_index("ix_dossiers_next_notice_at", "dossiers", ["next_notice_at"])

    op.create_table(
        "history",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("dossier_code", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("event_time", TIMESTAMP, nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("state_before", sa.String(), nullable=True),
        sa.Column("state_after", sa.String(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.Column("chain_hash", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_history"),
        sa.UniqueConstraint("dossier_code", "seq", name="uq_history_dossier_code_seq"),
    )

    op.create_table(
        "input_ledger",
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("content_hash", sa.String(), nullable=False),
        sa.Column("dossier_code", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("source", "event_id", name="pk_input_ledger"),
    )

    op.create_table(
        "parked_inputs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("dossier_code", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("parked_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_parked_inputs"),
    )
    op.create_index("ix_parked_inputs_dossier_code", "parked_inputs", ["dossier_code"])
    op.create_index("ix_parked_inputs_expires_at", "parked_inputs", ["expires_at"])

    op.create_table(
        "outbox",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_id"),
    )
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )

    op.create_table(
        "consumer_positions",
        sa.Column("group_id", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition", name="pk_consumer_positions"),
    )

    op.create_table(
        "engine_clock",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("business_time", TIMESTAMP, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_engine_clock_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_engine_clock"),
    )


def downgrade() -> None:
    op.drop_table("engine_clock")
    op.drop_table("consumer_positions")
    op.drop_index("ix_outbox_unsent", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_parked_inputs_expires_at", table_name="parked_inputs")
    op.drop_index("ix_parked_inputs_dossier_code", table_name="parked_inputs")
    op.drop_table("parked_inputs")
    op.drop_table("input_ledger")
    op.drop_table("history")
    op.drop_index("ix_dossiers_next_notice_at", table_name="dossiers")
    op.drop_table("dossiers")
