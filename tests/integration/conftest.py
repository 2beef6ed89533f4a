"""Fixtures for tests against the real services that deploy/ starts.

Start them with `dossier kafka up` and `dossier postgres up` (or run `bash .ci/run`). When a
service is unreachable its tests are skipped, except under CI=true, where that is a failure:
a CI run that silently skipped every integration test would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dossier import kafka_clients
from dossier.settings import SettingError, Settings

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only the ones collected from this folder.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(what: str, service: str, detail: str) -> NoReturn:
    message = f"{what} is not reachable ({detail})"
    if in_ci():
        pytest.fail(f"{message}; CI=true requires `dossier {service} up` first", pytrace=False)
    pytest.skip(f"{message}; start it with `dossier {service} up`")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


# --- Kafka -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> str:
    """The bootstrap servers of a broker that answers, or skip (fail under CI=true)."""
    host, port = settings.kafka_listen
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        unavailable("Kafka broker", "kafka", f"{settings.kafka_bootstrap_servers}: {exc}")
    try:
        kafka_clients.list_topics(settings)
    except Exception as exc:  # whatever the client raises, the broker is not usable
        unavailable("Kafka broker", "kafka", f"{settings.kafka_bootstrap_servers}: {exc!r}")
    return settings.kafka_bootstrap_servers


@pytest.fixture
def unique_topic(settings: Settings, kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: `unique_topic("roundtrip", partitions=1)` creates a fresh topic, deleted after.

    Names carry the deployment prefix and a random suffix, so reruns and parallel runs
    never read each other's messages.
    """
    created: list[str] = []

    def make(base: str = "topic", partitions: int = 1) -> str:
        name = settings.topic(f"test.{base}.{uuid.uuid4().hex[:12]}")
        kafka_clients.ensure_topics(settings, [name], partitions)
        created.append(name)
        return name

    yield make
    if created:
        # Cleanup must not turn a passing test into an error, nor hide a failing one.
        with contextlib.suppress(Exception):
            kafka_clients.delete_topics(settings, created)


@pytest.fixture
def unique_group(settings: Settings, kafka_bootstrap: str) -> Iterator[str]:
    """A consumer group id nobody has used, so offsets start from scratch."""
    group = f"test-{uuid.uuid4().hex[:12]}"
    yield group
    # Best effort: a group that never committed may already be gone.
    with (
        contextlib.suppress(Exception),
        kafka_clients.quiet_kafka_logs(),
        kafka_clients.admin(settings) as admin,
    ):
        admin.delete_groups([group])


# --- PostgreSQL --------------------------------------------------------------------------------


def _reachable_postgres(settings: Settings, url_of: Callable[[Settings], str]) -> str:
    try:
        url = url_of(settings)  # reads the role's password file
    except SettingError as exc:
        unavailable("PostgreSQL", "postgres", str(exc))
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any driver error means no usable database
        shown = sa.make_url(url).render_as_string(hide_password=True)
        unavailable("PostgreSQL", "postgres", f"{shown}: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def postgres_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the deploy/ PostgreSQL as the owner role (migrations, schemas of
    tests, tampering), or skip (fail under CI=true)."""
    return _reachable_postgres(settings, lambda s: s.postgres_url)


@pytest.fixture(scope="session")
def postgres_engine_url(settings: Settings, postgres_url: str) -> str:
    """The same database as the engine's role (deploy/postgres.sh), which owns nothing."""
    return _reachable_postgres(settings, lambda s: s.postgres_engine_url)


def as_engine_role(owner_url: str, engine_url: str) -> str:
    """The engine role's URL onto the schema that `owner_url` (a `pg_schema`) reaches."""
    options = sa.make_url(owner_url).query.get("options")
    url = sa.make_url(engine_url)
    if options:
        url = url.update_query_dict({"options": options})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def pg_engine_role(pg_schema: str, postgres_engine_url: str, settings: Settings) -> str:
    """A fresh schema migrated by the owner, who granted the engine's role its privileges
    (engine.store.grants); the URL the engine's role reaches it with."""
    from engine.store.migrate import upgrade

    upgrade(pg_schema, grant_to=settings.postgres_engine_user)
    return as_engine_role(pg_schema, postgres_engine_url)


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A URL whose connections see only a fresh schema (search_path), dropped afterwards.

    Pass it wherever a database URL goes (DOSSIER_DATABASE_URL, create_engine, alembic);
    `pg_engine` is an engine already bound to it.
    """
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as connection:
            # A connection a test forgot to close would block the drop forever.
            connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def pg_engine(pg_schema: str) -> Iterator[Engine]:
    engine = sa.create_engine(pg_schema)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schemas(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Factory of URLs of fresh PostgreSQL schemas, dropped afterwards."""
    admin = sa.create_engine(postgres_url)
    made: list[str] = []

    def make() -> str:
        schema = f"test_{uuid.uuid4().hex[:12]}"
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    yield make
    with admin.begin() as connection:
        connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        for schema in made:
            with contextlib.suppress(Exception):
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


# --- an isolated engine run ---------------------------------------------------------------------


@contextlib.contextmanager
def isolated_run(
    settings: Settings, database_url: str, workdir: Path, name: str, **overrides: Any
) -> Iterator[Settings]:
    """Settings of an engine run that shares nothing with any other: its own topic prefix
    (the contract topics are created, then deleted), consumer group and database."""
    from dataclasses import replace

    from engine.events import ALL_TOPICS

    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "topic_prefix": f"{name}{tag}.",
        "consumer_group": f"{name}-{tag}",
        "topic_partitions": 3,
        "database_url": database_url,
        "metrics_port": 0,
        "batch_timeout_ms": 50,
        "kafka_data_dir": workdir / f"kafka-client-{tag}",
    }
    isolated = replace(settings, **(values | overrides))
    names = [isolated.topic(t) for t in ALL_TOPICS]
    kafka_clients.ensure_topics(isolated, names, 3)
    try:
        yield isolated
    finally:
        # A broker restarted by a test may refuse for a moment; the names are unique anyway.
        with contextlib.suppress(Exception):
            kafka_clients.delete_topics(isolated, names)
