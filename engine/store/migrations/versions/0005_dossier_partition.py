"""The inbound partition each dossier's inputs arrive on.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05 00:00:00

Inbound topics are keyed by dossier code and co-partitioned, so every input of a dossier comes
from one partition number, and the consumer group gives that partition to one engine process.
Recording it lets each process scan for due deadline notices only among the dossiers it owns:
several processes no longer pick the same due dossier and collide on its next revision. Rows
written before this revision (and rebuilt from the database, which has no partitions) keep
NULL, which every process scans, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dossiers") as batch:
        batch.add_column(sa.Column("partition", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dossiers") as batch:
        batch.drop_column("partition")
