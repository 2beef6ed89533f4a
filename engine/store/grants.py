"""What the engine's PostgreSQL role may do: least privilege (issue 18).

Two roles share a database. The owner owns the schema and its tables and runs the migrations
(`dossier db upgrade`, DOSSIER_MIGRATION_DATABASE_URL). The engine's role (DOSSIER_DATABASE_URL)
gets exactly `ENGINE_PRIVILEGES`, granted by the owner at the end of every migration
(`engine.store.migrate.upgrade(..., grant_to=ROLE)`, `dossier db grant ROLE`): it may append
to the evidence and read it, but not change, delete or truncate it, and it owns nothing, so it
can neither alter a table nor drop the triggers of migration 0009 that refuse such changes
whoever asks. A process taken over through the engine can therefore add rows, which the hash
chains show in order, but cannot rewrite what was recorded.

SQLite has no roles: there the triggers and the database file's mode (0600) are the rule.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, text

# Append-only evidence: read it, add to it; never UPDATE, DELETE or TRUNCATE.
EVIDENCE = ("history", "audit_checkpoints", "audit_checkpoint_heads", "disclosures")
# The engine's working state: rows change as dossiers move (UPDATE) and leave (parked inputs
# applied, dead letters past retention, a forgotten person's key: DELETE). No TRUNCATE.
WORKING = (
    "dossiers",
    "outbox",
    "parked_inputs",
    "input_ledger",
    "consumer_positions",
    "input_outcomes",
    "engine_clock",
    "personal_data_keys",
    "dossier_persons",
)

ENGINE_PRIVILEGES: Mapping[str, tuple[str, ...]] = {
    **{table: ("SELECT", "INSERT") for table in EVIDENCE},
    **{table: ("SELECT", "INSERT", "UPDATE", "DELETE") for table in WORKING},
    # `dossier run` checks at start that the schema is at head (and migrates nothing then).
    "alembic_version": ("SELECT",),
}

# Functions the engine calls: migration 0009's lock for writing an audit checkpoint.
ENGINE_FUNCTIONS = ("history_lock_for_checkpoint()",)


class GrantError(ValueError):
    """The role cannot be given least privilege (it is the owner, or a superuser)."""


def grant_engine_role(connection: Connection, role: str) -> list[str]:
    """Give `role` the engine's privileges on the tables of the connection's current schema,
    and take away any other it had there (one granted by hand, or by an older version); the
    statements it ran. Tables a partial migration has not created yet are skipped. Nothing on
    SQLite. Run it as the owner, in the migration's transaction."""
    if connection.dialect.name != "postgresql":
        return []
    me, is_super = connection.execute(
        text("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = :role)"),
        {"role": role},
    ).one()
    if role == me:
        raise GrantError(f"{role} runs the migrations: the engine needs a role of its own")
    if is_super:
        raise GrantError(f"{role} is a superuser: no privilege can be withheld from it")
    quote = connection.dialect.identifier_preparer.quote_identifier
    schema = quote(connection.execute(text("SELECT current_schema()")).scalar_one())
    grantee = quote(role)
    statements = [
        f"GRANT USAGE ON SCHEMA {schema} TO {grantee}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {grantee}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {grantee}",
    ]
    existing = set(
        connection.execute(
            text(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = current_schema() AND tablename = ANY(:names)"
            ),
            {"names": list(ENGINE_PRIVILEGES)},
        ).scalars()
    )
    for table, privileges in ENGINE_PRIVILEGES.items():
        if table in existing:
            statements.append(
                f"GRANT {', '.join(privileges)} ON TABLE {schema}.{quote(table)} TO {grantee}"
            )
    # The id columns' sequences: nextval (USAGE), never setval.
    statements.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {grantee}")
    for function in ENGINE_FUNCTIONS:
        found = connection.execute(
            text("SELECT to_regprocedure(:f)"), {"f": f"{schema}.{function}"}
        ).scalar()
        if found is not None:
            statements.append(f"GRANT EXECUTE ON FUNCTION {schema}.{function} TO {grantee}")
    for statement in statements:
        connection.execute(text(statement))
    return statements
