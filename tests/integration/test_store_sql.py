"""The storage contract against the SQL adapter on SQLite and PostgreSQL, and the migrations.

PostgreSQL tests run each in a schema of their own (`t_<uuid>`, dropped afterwards), reached
through the URL option `-csearch_path=...`. Without a reachable server they are skipped, or
fail when CI=true.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from dossier.cli import main as cli_main
from dossier.settings import SettingError, Settings
from engine.application.ports import (
    ChangeSet,
    ConcurrencyError,
    HandoverScan,
    MigrationScan,
    NoticeScan,
    StoredDossier,
    UnitOfWork,
)
from engine.store.migrate import current_revision, downgrade, head_revision, upgrade
from engine.store.sql import (
    RelayLease,
    SqlUnitOfWork,
    create_db_engine,
    engine_clock,
    metadata,
)
from tests.store_contract import StoreContract, UowFactory, make_dossier

pytestmark = pytest.mark.integration

BACKENDS = ["sqlite", "postgresql"]


def _postgres_base_url() -> str:
    return os.environ.get("DOSSIER_TEST_POSTGRES_URL") or Settings.from_env().postgres_url


@pytest.fixture(scope="module")
def store_pg_admin() -> Iterator[Engine]:
    """An engine on the PostgreSQL database, as its owner, or a skip (a failure under
    CI=true)."""
    try:
        url = _postgres_base_url()
    except SettingError as exc:  # no password file: deploy/postgres.sh never ran here
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    engine = create_db_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        shown = make_url(url).render_as_string(hide_password=True)
        message = f"PostgreSQL unreachable at {shown}: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture
def store_pg_url(store_pg_admin: Engine) -> Iterator[str]:
    """URL of a fresh, empty schema of its own on the PostgreSQL database."""
    schema = f"t_{uuid.uuid4().hex}"
    with store_pg_admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = store_pg_admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with store_pg_admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("store_pg_url")
    return url


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def uow_factory(db_engine: Engine) -> UowFactory:
    upgrade(db_engine)

    def factory() -> UnitOfWork:
        return SqlUnitOfWork(db_engine)

    return factory


class TestSqlStore(StoreContract):
    pass


# --- migrations ------------------------------------------------------------------------------


def test_migrations_create_exactly_the_model(db_engine: Engine) -> None:
    assert current_revision(db_engine) is None
    upgrade(db_engine)
    assert current_revision(db_engine) == head_revision() == "0011"
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}


def test_upgrade_is_idempotent_and_downgrade_drops_everything(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)
    downgrade(db_url, "base")
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        assert current_revision(engine) is None
    finally:
        engine.dispose()


def test_schema_per_test_isolation(store_pg_url: str, store_pg_admin: Engine) -> None:
    upgrade(store_pg_url)
    schema = make_url(store_pg_url).query["options"]
    assert isinstance(schema, str)
    schema = schema.removeprefix("-csearch_path=")
    with store_pg_admin.connect() as conn:
        assert "dossiers" in inspect(conn).get_table_names(schema=schema)
        assert "dossiers" not in inspect(conn).get_table_names(schema="public")


# --- SQL specifics ---------------------------------------------------------------------------


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_the_handover_and_migration_scans_read_their_partial_indexes(tmp_path: Path) -> None:
    """The scans run in every batch: each must find the few open dossiers it looks for by its
    own partial index, not read every dossier of the process's partitions (SQLite uses a
    partial index only when the query names its condition as the index does; 0011)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'scans.db'}")
    upgrade(engine)
    statements: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "ORDER BY dossiers.code" in statement:
            statements.append((statement, parameters))

    cutover = datetime(2025, 7, 1, tzinfo=UTC)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with SqlUnitOfWork(engine) as uow:
            uow.repo.handovers_due(
                HandoverScan({"000.00.12.H56": cutover}, 10, lock=False, partitions={0, 2})
            )
            plans = {("DD.GCN.LD", 1): (cutover, frozenset({"received", "verifying"}))}
            uow.repo.migrations_due(MigrationScan(plans, 10, lock=False, partitions={1}))
        with engine.connect() as conn:
            plans_read = [
                " / ".join(
                    row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
                )
                for sql, params in statements
            ]
    finally:
        event.remove(engine, "before_cursor_execute", capture)
        engine.dispose()
    assert len(plans_read) == 2
    assert "USING INDEX ix_dossiers_open_agency (agency=?)" in plans_read[0], plans_read[0]
    assert (
        "USING INDEX ix_dossiers_open_procedure_version (procedure=? AND workflow_version=?)"
        in plans_read[1]
    ), plans_read[1]


def test_sqlite_reads_see_the_transaction_snapshot(tmp_path: Path) -> None:
    """A batch's reads and writes are one transaction, even though sqlite3 alone would not
    begin one before the first write."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    try:
        reader, writer = SqlUnitOfWork(engine), SqlUnitOfWork(engine)
        with reader:
            assert reader.repo.get_clock() is None
            with writer:
                writer.repo.write(ChangeSet(clock=datetime(2025, 1, 1, tzinfo=UTC)))
                writer.commit()
            assert reader.repo.get_clock() is None
    finally:
        engine.dispose()


def test_concurrent_update_of_one_dossier(db_engine: Engine) -> None:
    """Two engines load the same revision; the second to write gets ConcurrencyError."""
    upgrade(db_engine)
    dossier = make_dossier()
    with SqlUnitOfWork(db_engine) as uow:
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(dossier, 0, None)]))
        uow.commit()
    first, second = SqlUnitOfWork(db_engine), SqlUnitOfWork(db_engine)
    with first:
        stored = first.repo.load_dossiers([dossier.code])[dossier.code]
        first.repo.write(ChangeSet(dossiers=[StoredDossier(dossier, stored.revision, None)]))
        first.commit()
    with second:
        with pytest.raises(ConcurrencyError):
            second.repo.write(ChangeSet(dossiers=[StoredDossier(dossier, stored.revision, None)]))
        with pytest.raises(ConcurrencyError):
            second.commit()


def test_not_null_violation_is_not_a_conflict(db_engine: Engine) -> None:
    """Only key collisions mean "retry"; other integrity errors are bugs and propagate."""
    upgrade(db_engine)
    dossier = make_dossier(state=None)
    with SqlUnitOfWork(db_engine) as uow:
        with pytest.raises(Exception) as caught:
            uow.repo.write(ChangeSet(dossiers=[StoredDossier(dossier, 0, None)]))
        assert not isinstance(caught.value, ConcurrencyError)
        with pytest.raises(RuntimeError, match="roll back"):
            uow.commit()  # PostgreSQL would turn this COMMIT into a silent rollback
        uow.rollback()
        uow.repo.write(ChangeSet(clock=datetime(2025, 1, 1, tzinfo=UTC)))
        uow.commit()


_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@settings(max_examples=60, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=_OFFSETS
    )
)
def test_sqlite_datetimes_round_trip_as_equal_aware_utc(moment: datetime) -> None:
    engine = create_db_engine("sqlite://")
    try:
        with engine.begin() as conn:
            engine_clock.create(conn)
            conn.execute(engine_clock.insert().values(id=1, business_time=moment))
            back = conn.execute(engine_clock.select()).one().business_time
            later = conn.scalar(
                engine_clock.select()
                .with_only_columns(engine_clock.c.id)
                .where(engine_clock.c.business_time > moment - timedelta(microseconds=1))
            )
    finally:
        engine.dispose()
    assert back == moment and back.tzinfo is UTC
    assert later == 1  # comparisons bind through the same UTC normalisation


# --- CLI -------------------------------------------------------------------------------------


def test_cli_db_upgrade_and_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'cli.db'}"
    monkeypatch.setenv("DOSSIER_DATABASE_URL", url)
    assert cli_main(["db", "current", "--check"]) == 1
    assert "none" in capsys.readouterr().out
    head = head_revision()
    assert head is not None
    assert cli_main(["db", "upgrade"]) == 0
    assert head in capsys.readouterr().out
    assert cli_main(["db", "current", "--check"]) == 0
    out = capsys.readouterr().out
    assert head in out and "up to date" in out


def test_relay_lease_is_held_by_one_holder_at_a_time(db_url: str) -> None:
    first_engine, second_engine = create_db_engine(db_url), create_db_engine(db_url)
    first, second = RelayLease(first_engine), RelayLease(second_engine)
    try:
        assert first.held()
        assert first.held()  # kept, not taken again
        assert not second.held()
        first.release()
        assert second.held()
        assert not first.held()
    finally:
        first.release()
        second.release()
        first_engine.dispose()
        second_engine.dispose()


def test_notices_due_skips_dossiers_another_transaction_is_notifying(
    store_pg_url: str,
) -> None:
    """Two engine processes scanning for due notices take disjoint dossiers, not turns."""
    db = create_db_engine(store_pg_url)
    upgrade(db)
    due = datetime(2025, 3, 1, tzinfo=UTC)
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(
            ChangeSet(
                dossiers=[StoredDossier(make_dossier(code=f"D-{i}"), 0, due) for i in range(4)]
            )
        )
        uow.commit()
    now = due + timedelta(days=1)
    with SqlUnitOfWork(db) as first, SqlUnitOfWork(db) as second:
        taken = {s.dossier.code for s in first.repo.notices_due(now, NoticeScan(2))}
        others = {s.dossier.code for s in second.repo.notices_due(now, NoticeScan(10))}
    db.dispose()
    assert taken == {"D-0", "D-1"}
    assert others == {"D-2", "D-3"}


def test_engine_processes_starting_together_migrate_one_after_the_other(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = [pool.apply_async(upgrade, (db_url,)) for _ in range(4)]
        for result in results:
            result.get(timeout=120)  # raises what the process raised
    check = create_db_engine(db_url)
    assert current_revision(check) == head_revision()
    check.dispose()
