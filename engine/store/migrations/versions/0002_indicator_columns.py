"""What monitoring reads: paused time as a column, and indexes for the indicators and gauges.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00

- `paused_seconds` (working seconds spent waiting for the applicant) lets the average
  processing time (Decision 766, 2.2) leave supplementation out without reading snapshots.
- `ix_dossiers_received_at` and `ix_dossiers_finished_at` keep the indicator query of a period
  proportional to the dossiers of that period, not to the whole history.
- `ix_dossiers_open`, partial over dossiers not final, answers "open dossiers by status code
  and level, and how many are overdue" from the index alone, so a scrape's cost follows the
  open dossiers and stays one query.

Types are spelled out here, as in 0001: a migration is a frozen record of one schema step.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "dossiers",
        sa.Column("paused_seconds", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    # Dossiers stored before this revision keep their paused time in the snapshot only.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE dossiers SET paused_seconds = (snapshot->>'paused_seconds')::integer"
            " WHERE (snapshot->>'paused_seconds')::integer > 0"
        )
    else:
        op.execute(
            "UPDATE dossiers SET paused_seconds = json_extract(snapshot, '$.paused_seconds')"
            " WHERE json_extract(snapshot, '$.paused_seconds') > 0"
        )
    op.create_index("ix_dossiers_received_at", "dossiers", ["received_at"])
    op.create_index("ix_dossiers_finished_at", "dossiers", ["finished_at"])
    op.create_index(
        "ix_dossiers_open",
        "dossiers",
        ["status_code", "level", "due_at", "final"],
        # Spelt as SQLAlchemy renders `~dossiers.c.final` per dialect: SQLite's planner uses
        # a partial index only when the query's condition matches it term for term.
        postgresql_where=sa.text("NOT final"),
        sqlite_where=sa.text("final = 0"),
    )


def downgrade() -> None:
    op.drop_index("ix_dossiers_open", table_name="dossiers")
    op.drop_index("ix_dossiers_finished_at", table_name="dossiers")
    op.drop_index("ix_dossiers_received_at", table_name="dossiers")
    with op.batch_alter_table("dossiers") as batch:
        batch.drop_column("paused_seconds")
