"""Schema migrations of the SQL store, driven from code: no alembic.ini at runtime.

The Alembic scripts live in the `engine.store.migrations` package, so they ship with the
installed project; developers generate a new revision with
`alembic -x ... revision` pointed at that directory, or by calling `alembic.command.revision`
with `alembic_config()`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from engine.store.grants import grant_engine_role
from engine.store.sql import create_db_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config for the store's scripts, bound to `connection` (preferred) or `url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation would read '%' in a URL-encoded option as a reference.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(
    target: str | URL | Engine, revision: str = "head", *, grant_to: str | None = None
) -> None:
    """Migrate the database at `target` (URL or Engine) to `revision`, in one transaction.

    `target` logs in as the owner of the schema. With `grant_to` (PostgreSQL), the engine's
    role is then given its privileges on the migrated tables, and only those
    (`engine.store.grants`), in the same transaction: a table a migration adds is never left
    without them, nor with more.

    Engine processes started together all migrate at start, so migrations take turns. SQLite:
    the transaction begins IMMEDIATE (see engine.store.sql), taking the write lock up front,
    so a second migrator waits instead of failing when its deferred transaction first writes.
    PostgreSQL: a transaction-scoped advisory lock per schema; without it the second fails
    creating a table the first is creating. Either way the second then finds the schema at
    head and does nothing.
    """
    engine = create_db_engine(target) if isinstance(target, str | URL) else target
    try:
        with engine.connect() as connection:
            connection.info["dossier_writes"] = True
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text(
                            "SELECT pg_advisory_xact_lock("
                            "hashtext(current_schema() || '.migrations'))"
                        )
                    )
                command.upgrade(alembic_config(connection), revision)
                if grant_to:
                    grant_engine_role(connection, grant_to)
    finally:
        if engine is not target:
            engine.dispose()


def downgrade(target: str | URL | Engine, revision: str) -> None:
    """Migrate the database at `target` back to `revision` ("base": drop everything)."""
    engine = create_db_engine(target) if isinstance(target, str | URL) else target
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        if engine is not target:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision the shipped scripts know."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
