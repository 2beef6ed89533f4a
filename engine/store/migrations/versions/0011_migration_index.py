"""Indexes for workflow migrations (`engine.procedures.MigrationPlan`) and, on SQLite, for
handovers as queried.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 00:00:00

Once the clock has passed a plan's cutover, each batch looks for the open dossiers still
pinned to a version a plan moves (`SqlRepository.migrations_due`: by procedure, version and
state, not final, by code). Without an index that would read the whole dossiers table in every
batch.

SQLite uses a partial index only when the query's WHERE names the index's own condition: the
queries say `final = 0` (SQLAlchemy's rendering of `NOT final` for SQLite), so 0010's
`ix_dossiers_open_agency ... WHERE NOT final` was never used there, and a handover scan read
every dossier of the process's partitions (12 ms a batch at 10,000 dossiers). On SQLite it is
made again with the condition as the queries write it; PostgreSQL matches either.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_OPEN = sa.text("final = 0")
POSTGRESQL_OPEN = sa.text("NOT final")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_dossiers_open_agency", "dossiers")
        op.create_index(
            "ix_dossiers_open_agency", "dossiers", ["agency", "code"], sqlite_where=SQLITE_OPEN
        )
    op.create_index(
        "ix_dossiers_open_procedure_version",
        "dossiers",
        ["procedure", "workflow_version", "code"],
        postgresql_where=POSTGRESQL_OPEN,
        sqlite_where=SQLITE_OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_dossiers_open_procedure_version", "dossiers")
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_dossiers_open_agency", "dossiers")
        op.create_index(
            "ix_dossiers_open_agency",
            "dossiers",
            ["agency", "code"],
            sqlite_where=sa.text("NOT final"),
        )
