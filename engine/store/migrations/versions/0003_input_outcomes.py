"""Outcomes of consumed inputs, counted in the same transaction as the positions.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00

With positions and counts committed together, "every consumed input ended as exactly one of
applied, duplicate, parked, dead-lettered" is a query, exact across crashes and restarts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "input_outcomes",
        sa.Column("group_id", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "outcome"),
    )


def downgrade() -> None:
    op.drop_table("input_outcomes")
