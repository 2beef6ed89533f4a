"""Indexes for handovers (contract 1.1, "Handover").

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 00:00:00

Each batch looks for the open dossiers of agencies whose window has ended
(`SqlRepository.handovers_due`: by agency, not final, by code) and for the business clock of
its partitions (`SqlRepository.partition_clocks`: the latest `last_event_at` of a partition's
dossiers). Without these indexes both would read the whole dossiers table in every batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_dossiers_open_agency",
        "dossiers",
        ["agency", "code"],
        postgresql_where=sa.text("NOT final"),
        sqlite_where=sa.text("NOT final"),
    )
    op.create_index(
        "ix_dossiers_partition_last_event_at", "dossiers", ["partition", "last_event_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_dossiers_partition_last_event_at", "dossiers")
    op.drop_index("ix_dossiers_open_agency", "dossiers")
