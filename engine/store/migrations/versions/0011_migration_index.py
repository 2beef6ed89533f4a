"""An index for workflow migrations (`engine.procedures.MigrationPlan`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 00:00:00

Once the clock has passed a plan's cutover, each batch looks for the open dossiers still
pinned to the version the plan moves (`SqlRepository.migrations_due`: by procedure, version and
state, not final, by code). Without this index that would read the whole dossiers table in
every batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_dossiers_open_procedure_version",
        "dossiers",
        ["procedure", "workflow_version", "code"],
        postgresql_where=sa.text("NOT final"),
        sqlite_where=sa.text("NOT final"),
    )


def downgrade() -> None:
    op.drop_index("ix_dossiers_open_procedure_version", "dossiers")
