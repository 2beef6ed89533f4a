"""Personal data under keys that can be destroyed, and a record of every disclosure.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 00:00:01

`personal_data_keys` holds one AES-256-GCM key per person, found by a keyed digest of the
person's identity number (never the number itself). History keeps personal fields only as
ciphertext under that key; deleting the row (`dossier privacy forget`) makes them unreadable
while every hash over them still recomputes (crypto-shredding). `dossier_persons` says whose
key a dossier's later inputs are sealed under, and which dossiers an erasure reaches.

`disclosures` records each time someone had personal data shown in clear: who, when, why and
which dossier, chained like the history so a removed or edited record is found.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "personal_data_keys",
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("person", name="pk_personal_data_keys"),
        sa.UniqueConstraint("key_id", name="uq_personal_data_keys_key_id"),
    )
    op.create_table(
        "dossier_persons",
        sa.Column("dossier_code", sa.String(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("dossier_code", name="pk_dossier_persons"),
    )
    op.create_index("ix_dossier_persons_key_id", "dossier_persons", ["key_id"])
    sent_dead_letters = sa.text("topic = 'dossier.dlq' AND sent_at IS NOT NULL")
    op.create_index(
        "ix_outbox_sent_dead_letters",
        "outbox",
        ["sent_at"],
        postgresql_where=sent_dead_letters,
        sqlite_where=sent_dead_letters,
    )
    op.create_table(
        "disclosures",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("disclosed_at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dossier_code", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("chain_hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_disclosures"),
    )


def downgrade() -> None:
    op.drop_table("disclosures")
    op.drop_index("ix_outbox_sent_dead_letters", table_name="outbox")
    op.drop_index("ix_dossier_persons_key_id", table_name="dossier_persons")
    op.drop_table("dossier_persons")
    op.drop_table("personal_data_keys")
