"""Append-only evidence: the database itself refuses UPDATE, DELETE and TRUNCATE of the history,
the audit checkpoints and the disclosures.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:00:00

The hash chains and checkpoints make an edit detectable; these triggers make it impossible
without first changing the schema, which only the owner role can do (the engine's role may
INSERT and SELECT these tables and nothing else: `engine.store.grants`). SQLite has no roles,
so there the triggers are the whole rule, and the file's mode (0600) is its access control.

A trigger refuses every UPDATE and DELETE, whoever runs it; on PostgreSQL a statement trigger
also refuses TRUNCATE, which fires no row trigger. The error is an integrity error on both
backends (SQLite: SQLITE_CONSTRAINT_TRIGGER; PostgreSQL: SQLSTATE 23001), never one the engine
retries. Migrations that come later and must rewrite one of these tables (a backfill) drop the
trigger, do it and create it again, in their own transaction. On SQLite, a later migration that
rebuilds one of these tables in batch mode drops its triggers with the old table and must
create them again: `tests/integration/test_store_sql.py` checks that every one exists at head.

PostgreSQL also gets `history_lock_for_checkpoint()`: writing an audit checkpoint locks
`history` in SHARE ROW EXCLUSIVE mode (engine.store.audit), and PostgreSQL lets only a role with
UPDATE, DELETE or TRUNCATE on a table take that lock. The function takes it with its owner's
rights (SECURITY DEFINER, a fixed search_path) and can do nothing else, so the engine's role
needs none of those privileges; the lock lasts until the caller's transaction ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables of evidence: rows are appended, never changed or removed.
APPEND_ONLY = ("history", "audit_checkpoints", "audit_checkpoint_heads", "disclosures")

REFUSE_FUNCTION = "refuse_change_of_evidence"
LOCK_FUNCTION = "history_lock_for_checkpoint"


def _message(table: str, operation: str) -> str:
    return (
        f"{table} is append-only evidence: {operation} refused"
        " (rows are only ever inserted; see migration 0009)"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _upgrade_postgresql(bind)
        return
    for table in APPEND_ONLY:
        for operation in ("UPDATE", "DELETE"):
            # The message is a literal: SQLite's RAISE takes no expression.
            op.execute(
                f"CREATE TRIGGER {table}_append_only_{operation.lower()}"
                f" BEFORE {operation} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{_message(table, operation)}'); END"
            )


def _upgrade_postgresql(bind: sa.Connection) -> None:
    op.execute(
        f"""
        CREATE FUNCTION {REFUSE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '{_message("%", "%")}', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {REFUSE_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only_truncate BEFORE TRUNCATE ON {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {REFUSE_FUNCTION}()"
        )
    # The table is named with its schema, and the function's search_path holds only the
    # catalog: a SECURITY DEFINER function must not resolve a name through its caller's path.
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    qualified = f"{bind.dialect.identifier_preparer.quote_identifier(schema)}.history"
    op.execute(
        f"""
        CREATE FUNCTION {LOCK_FUNCTION}() RETURNS void LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            LOCK TABLE {qualified} IN SHARE ROW EXCLUSIVE MODE;
        END
        $$
        """
    )
    # Functions are executable by PUBLIC unless revoked; the grants give it to the engine.
    op.execute(f"REVOKE ALL ON FUNCTION {LOCK_FUNCTION}() FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {LOCK_FUNCTION}()")
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_append_only_truncate ON {table}")
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION {REFUSE_FUNCTION}()")
        return
    for table in APPEND_ONLY:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER {table}_append_only_{operation}")
