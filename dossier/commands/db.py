"""`dossier db`: migrate the engine's database and show which schema revision it is at."""

from __future__ import annotations

import argparse
from typing import Any

from dossier.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="migrate and inspect the engine's database")
    actions = parser.add_subparsers(dest="db_action", required=True, metavar="ACTION")

    upgrade = actions.add_parser("upgrade", help="migrate the database schema (to the newest)")
    upgrade.add_argument("--url", help="SQLAlchemy URL (default: DOSSIER_DATABASE_URL)")
    upgrade.add_argument(
        "--revision", default="head", help="target revision (default: head, the newest)"
    )
    upgrade.set_defaults(func=run)

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

    from engine.store.migrate import current_revision, head_revision, upgrade
    from engine.store.sql import create_db_engine

    url: str = args.url or settings.database_url
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_db_engine(url)
    try:
        if args.db_action == "upgrade":
            upgrade(engine, args.revision)
            print(f"{shown}: at revision {current_revision(engine) or 'none'}")
            return 0
        at, head = current_revision(engine), head_revision()
        state = "up to date" if at == head else f"behind (newest: {head})"
        print(f"{shown}: at revision {at or 'none'}, {state}")
        return 1 if args.check and at != head else 0
    finally:
        engine.dispose()
