"""Signed audit checkpoints: each checkpoint carries the engine's Ed25519 signature.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 00:00:00

A checkpoint's root commits to every chain head ever recorded, but a root stored beside the
history it covers can be recomputed by whoever can write that history. The engine now signs
each checkpoint with a key that never enters the database (a file or an environment variable),
and records the key's id so keys can rotate; `dossier audit verify --public-key` checks them.
Checkpoints written before this revision keep NULL: they are reported as unsigned.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.add_column(sa.Column("key_id", sa.Text(), nullable=True))
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.drop_column("signature")
        batch.drop_column("key_id")
