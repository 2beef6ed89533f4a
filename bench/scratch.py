"""Scratch PostgreSQL schemas and Kafka topics for a benchmark run, removed when it exits."""

from __future__ import annotations

import atexit
import contextlib
import uuid
from collections.abc import Iterable

from sqlalchemy import text

from dossier import kafka_clients
from dossier.settings import Settings
from engine.store.sql import create_db_engine


def schema_url(base_url: str) -> str:
    """A SQLAlchemy URL bound to a new schema of `base_url`'s database, dropped at exit."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    db = create_db_engine(base_url)
    with db.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    db.dispose()
    atexit.register(_drop_schema, base_url, schema)
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options=-csearch_path%3D{schema}"


def topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    """Create these topics now; delete them at exit."""
    created = list(names)
    kafka_clients.ensure_topics(settings, created, partitions)
    atexit.register(_delete_topics, settings, created)


def _drop_schema(base_url: str, schema: str) -> None:
    db = create_db_engine(base_url)
    with contextlib.suppress(Exception), db.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    db.dispose()


def _delete_topics(settings: Settings, names: list[str]) -> None:
    with contextlib.suppress(Exception):
        kafka_clients.delete_topics(settings, names)
