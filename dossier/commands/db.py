"""`dossier db`: migrate the engine's database, grant the engine's role its privileges, and
show which schema revision it is at."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dossier.settings import Settings

URL_HELP = "SQLAlchemy URL, as the schema's owner (default: DOSSIER_MIGRATION_DATABASE_URL)"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="migrate and inspect the engine's database")
    actions = parser.add_subparsers(dest="db_action", required=True, metavar="ACTION")

    upgrade = actions.add_parser(
        "upgrade",
        help="migrate the database schema (to the newest), then grant the engine's role its"
        " privileges (PostgreSQL; DOSSIER_ENGINE_DB_ROLE)",
    )
    upgrade.add_argument("--url", help=URL_HELP)
    upgrade.add_argument(
        "--revision", default="head", help="target revision (default: head, the newest)"
    )
    upgrade.set_defaults(func=run)

    grant = actions.add_parser(
        "grant",
        help="give a PostgreSQL role the engine's privileges and no others: SELECT and INSERT"
        " on history and the other evidence, no UPDATE, DELETE, TRUNCATE or DDL",
    )
    grant.add_argument("role", help="the role the engine logs in as")
    grant.add_argument("--url", help=URL_HELP)
    grant.set_defaults(func=run)

    current = actions.add_parser("current", help="print the schema revision of the database")
    current.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    current.add_argument(
        "--check", action="store_true", help="exit with status 1 unless the schema is the newest"
    )
    current.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: SQLAlchemy and Alembic take a while to load, and other commands need
    # neither.
    from sqlalchemy.engine import make_url

    from engine.store.grants import GrantError, grant_engine_role
    from engine.store.migrate import current_revision, head_revision, upgrade
    from engine.store.sql import create_db_engine

    default = settings.database_url if args.db_action == "current" else settings.migration_url
    url: str = args.url or default
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_db_engine(url)
    try:
        if args.db_action == "upgrade":
            grantee = settings.engine_grantee(url)
            upgrade(engine, args.revision, grant_to=grantee)
            granted = f"; role {grantee} granted the engine's privileges" if grantee else ""
            print(f"{shown}: at revision {current_revision(engine) or 'none'}{granted}")
            return 0
        if args.db_action == "grant":
            if engine.dialect.name != "postgresql":
                print(f"dossier db grant: {shown} has no roles (PostgreSQL only)", file=sys.stderr)
                return 2
            with engine.begin() as connection:
                grant_engine_role(connection, args.role)
            print(f"{shown}: role {args.role} granted the engine's privileges")
            return 0
        at, head = current_revision(engine), head_revision()
        state = "up to date" if at == head else f"behind (newest: {head})"
        print(f"{shown}: at revision {at or 'none'}, {state}")
        return 1 if args.check and at != head else 0
    except GrantError as exc:
        print(f"dossier db {args.db_action}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
