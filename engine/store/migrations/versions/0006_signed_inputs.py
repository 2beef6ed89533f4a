"""Signed inputs (contract 1.1): each history row keeps the signature it was verified with.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 00:00:00

An input of an agency or sender the registry gives public keys must carry a `ce-signature`
Kafka header (`<key id>:<base64 Ed25519 signature of the message value>`). The row's envelope is
the decoded event, not the bytes that were signed, so both are kept beside it: an auditor can
check the signature again against the registry's key years later (`dossier audit show`). Rows
of unsigned inputs, and every row written before this revision, keep NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("history") as batch:
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))
        batch.add_column(sa.Column("signed_value", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("history") as batch:
        batch.drop_column("signed_value")
        batch.drop_column("signature")
