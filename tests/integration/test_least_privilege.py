"""Least privilege in the database (issue 18, part 2).

The engine's PostgreSQL role may append to the evidence and read it, but not UPDATE, DELETE or
TRUNCATE it, nor change the schema; and the triggers of migration 0009 refuse UPDATE and DELETE
of the evidence whoever asks, the owner included, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from dossier.cli import main as cli
from dossier.composition import MigrationRefused, Runtime
from dossier.settings import Settings
from engine.application.ports import Position
from engine.application.service import RawInput
from engine.store.audit import verify, write_checkpoint
from engine.store.disclosures import record_disclosure
from engine.store.grants import ENGINE_PRIVILEGES, EVIDENCE, GrantError, grant_engine_role
from engine.store.migrate import current_revision, upgrade
from engine.store.sql import create_db_engine, metadata
from schemas.codec import encode_outbound
from tests.fixtures import events as ev
from tests.fixtures.tamper import APPEND_ONLY
from tests.integration.conftest import as_engine_role

A = f"{ev.COMMUNE_AGENCY}-250303-0001"
B = f"{ev.COMMUNE_AGENCY}-250303-0002"
NOW = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)

# One row of each evidence table is the target of every forbidden statement below.
WHERE = {
    "history": "dossier_code = :a AND seq = 1",
    "audit_checkpoints": "id = 1",
    "audit_checkpoint_heads": "checkpoint_id = 1",
    "disclosures": "id = 1",
}
SET = {
    "history": "source = 'urn:forged'",
    "audit_checkpoints": "root = 'forged'",
    "audit_checkpoint_heads": "chain_hash = 'forged'",
    "disclosures": "actor = 'nobody'",
}


def feed(runtime: Runtime) -> None:
    """Two dossiers' lives through the engine's own batch path (which checkpoints after its
    first batch), a checkpoint written here (it must not fail: the engine's loop would only log
    it), and one disclosure: rows in every table of evidence."""
    applied = 0
    offsets: dict[str, int] = {}
    for code in (A, B):
        inputs = []
        for topic, event in ev.residence_lifecycle(code):
            offsets[topic] = offset = offsets.get(topic, -1) + 1
            inputs.append(
                RawInput(topic, Position(topic, 0, offset), code.encode(), ev.to_bytes(event))
            )
        result = runtime.process(inputs)
        applied += sum(n for (_, outcome), n in result.outcomes.items() if outcome == "applied")
    assert applied == 14
    assert write_checkpoint(runtime.db, "urn:test:engine", encode_outbound) is not None
    record_disclosure(runtime.db, "auditor", "a test of least privilege", A, NOW)


def snapshot(db: Engine) -> dict[str, list[tuple[object, ...]]]:
    with db.connect() as connection:
        return {
            table: [tuple(r) for r in connection.execute(text(f"SELECT * FROM {table}")).all()]
            for table in EVIDENCE
        }


@pytest.fixture(params=["sqlite", "postgresql"])
def owner_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("pg_schema")
    return url


@pytest.fixture
def fed(owner_url: str, settings: Settings, tmp_path: Path) -> Iterator[Engine]:
    """A database holding evidence, written by the engine (as the owner here)."""
    local = replace(settings, database_url=owner_url, privacy_key_file=tmp_path / "privacy.key")
    runtime = Runtime.create(local)
    try:
        feed(runtime)
    finally:
        runtime.close()
    db = create_db_engine(owner_url)
    yield db
    db.dispose()


# --- the triggers: nobody changes evidence -----------------------------------------------------


def test_every_table_of_evidence_has_its_triggers_at_head(owner_url: str) -> None:
    # A later migration that rebuilt one of these tables (SQLite batch mode) would drop them.
    db = create_db_engine(owner_url)
    try:
        upgrade(db)
        with db.connect() as connection:
            if db.dialect.name == "sqlite":
                rows = connection.execute(
                    text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")
                ).all()
                expected = {
                    (t, f"{t}_append_only_{op}") for t in APPEND_ONLY for op in ("update", "delete")
                }
            else:
                rows = connection.execute(
                    text(
                        "SELECT c.relname, t.tgname FROM pg_trigger t"
                        " JOIN pg_class c ON c.oid = t.tgrelid"
                        " WHERE NOT t.tgisinternal"
                        " AND c.relnamespace = current_schema()::regnamespace"
                    )
                ).all()
                expected = {
                    (t, f"{t}_append_only{suffix}")
                    for t in APPEND_ONLY
                    for suffix in ("", "_truncate")
                }
        assert {tuple(r) for r in rows} == expected
        assert set(APPEND_ONLY) == set(EVIDENCE)
    finally:
        db.dispose()


@pytest.mark.parametrize("table", EVIDENCE)
def test_even_the_owner_cannot_update_or_delete_evidence(fed: Engine, table: str) -> None:
    before = snapshot(fed)
    statements = [f"UPDATE {table} SET {SET[table]} WHERE {WHERE[table]}"]
    statements.append(f"DELETE FROM {table} WHERE {WHERE[table]}")
    if fed.dialect.name == "postgresql":
        statements.append(f"TRUNCATE {table}")
    for statement in statements:
        refusal = pytest.raises(IntegrityError, match=f"{table} is append-only evidence")
        with refusal, fed.begin() as connection:
            connection.execute(text(statement), {"a": A})
    assert snapshot(fed) == before
    assert verify(fed).ok


# --- the engine's role: appends, never changes -------------------------------------------------


@pytest.fixture
def engine_role(
    pg_schema: str, postgres_engine_url: str, settings: Settings, tmp_path: Path
) -> Iterator[tuple[Engine, Engine]]:
    """(as the engine's role, as the owner) on one schema, fed by the engine running with the
    engine's role only: the owner migrated it and granted the privileges, nothing more."""
    engine_url = as_engine_role(pg_schema, postgres_engine_url)
    local = replace(
        settings,
        database_url=engine_url,
        migration_database_url=pg_schema,
        privacy_key_file=tmp_path / "privacy.key",
    )
    assert local.engine_grantee() == settings.postgres_engine_user
    runtime = Runtime.create(local)  # migrates as the owner, grants the engine's role
    try:
        feed(runtime)  # batches, a checkpoint and a disclosure, as the engine's role
        assert runtime.db.url.username == settings.postgres_engine_user
    finally:
        runtime.close()
    as_engine, as_owner = create_db_engine(engine_url), create_db_engine(pg_schema)
    yield as_engine, as_owner
    as_engine.dispose()
    as_owner.dispose()


def refused(db: Engine, statement: str) -> str:
    """The SQLSTATE PostgreSQL refused `statement` with (it must refuse it)."""
    with pytest.raises((ProgrammingError, IntegrityError)) as caught, db.begin() as connection:
        connection.execute(text(statement), {"a": A})
    sqlstate = getattr(caught.value.orig, "sqlstate", None)
    assert isinstance(sqlstate, str)
    return sqlstate


@pytest.mark.parametrize("table", EVIDENCE)
def test_the_engine_role_cannot_update_delete_or_truncate_evidence(
    engine_role: tuple[Engine, Engine], table: str
) -> None:
    as_engine, as_owner = engine_role
    before = snapshot(as_owner)
    # 42501 insufficient_privilege: refused for want of the privilege, before any trigger.
    assert refused(as_engine, f"UPDATE {table} SET {SET[table]} WHERE {WHERE[table]}") == "42501"
    assert refused(as_engine, f"DELETE FROM {table} WHERE {WHERE[table]}") == "42501"
    assert refused(as_engine, f"TRUNCATE {table}") == "42501"
    # Nor can it lift the triggers, or take the lock only writers of the table may take.
    assert refused(as_engine, f"ALTER TABLE {table} DISABLE TRIGGER USER") == "42501"
    assert refused(as_engine, f"DROP TRIGGER {table}_append_only ON {table}") == "42501"
    assert refused(as_engine, f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE") == "42501"
    assert snapshot(as_owner) == before
    with as_engine.connect() as connection:  # what it may do: read
        assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() > 0


def test_the_engine_role_has_no_ddl_and_no_other_privilege(
    engine_role: tuple[Engine, Engine], settings: Settings
) -> None:
    as_engine, as_owner = engine_role
    assert refused(as_engine, "CREATE TABLE intruder (id integer)") == "42501"
    assert refused(as_engine, "DROP TABLE history") == "42501"
    assert refused(as_engine, "ALTER TABLE dossiers ADD COLUMN x integer") == "42501"
    assert refused(as_engine, "TRUNCATE dossiers") == "42501"
    assert refused(as_engine, "UPDATE alembic_version SET version_num = '0001'") == "42501"
    sequence = "pg_get_serial_sequence('history', 'id')"
    assert refused(as_engine, f"SELECT setval({sequence}, 1)") == "42501"
    with as_owner.connect() as connection:
        granted = connection.execute(
            text(
                "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type)"
                " FROM information_schema.role_table_grants"
                " WHERE grantee = :role AND table_schema = current_schema()"
                " GROUP BY table_name"
            ),
            {"role": settings.postgres_engine_user},
        ).all()
    assert {t: set(p.split(",")) for t, p in granted} == {
        t: set(p) for t, p in ENGINE_PRIVILEGES.items()
    }


def test_the_owner_tampering_as_an_insider_is_still_found(
    engine_role: tuple[Engine, Engine],
) -> None:
    # The owner can lift the triggers (tests/fixtures/tamper.py); the chains then tell.
    from tests.fixtures.tamper import tamper

    _, as_owner = engine_role
    tamper(as_owner, f"UPDATE history SET {SET['history']} WHERE {WHERE['history']}", a=A)
    assert [(f.dossier_code, f.seq) for f in verify(as_owner).findings] == [(A, 1)]


def test_the_engine_role_cannot_migrate(
    pg_schema: str, postgres_engine_url: str, settings: Settings, tmp_path: Path
) -> None:
    # The schema at 0008: `dossier run` as the engine's role alone says what to do.
    upgrade(pg_schema, "0008", grant_to=settings.postgres_engine_user)
    local = replace(
        settings,
        database_url=as_engine_role(pg_schema, postgres_engine_url),
        privacy_key_file=tmp_path / "privacy.key",
    )
    with pytest.raises(MigrationRefused, match="dossier db upgrade"):
        Runtime.create(local)


def test_grants_refuse_the_owner_itself(pg_schema: str, settings: Settings) -> None:
    db = create_db_engine(pg_schema)
    try:
        upgrade(db)
        with pytest.raises(GrantError, match="runs the migrations"), db.begin() as connection:
            grant_engine_role(connection, settings.postgres_user)
    finally:
        db.dispose()


def test_db_upgrade_migrates_as_the_owner_and_grants_the_engine_role(
    pg_schema: str,
    postgres_engine_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine_url = as_engine_role(pg_schema, postgres_engine_url)
    monkeypatch.setenv("DOSSIER_DATABASE_URL", engine_url)
    monkeypatch.setenv("DOSSIER_MIGRATION_DATABASE_URL", pg_schema)
    assert cli(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert f"role {settings.postgres_engine_user} granted" in out
    assert "dossier_engine:" not in out.replace("dossier_engine:***", "")  # no password
    as_engine = create_db_engine(engine_url)
    try:
        assert current_revision(as_engine) == "0011"
        assert refused(as_engine, "DELETE FROM history") == "42501"
        with as_engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO engine_clock VALUES (1, now())"))
    finally:
        as_engine.dispose()


def test_the_privileges_cover_every_table() -> None:
    # A table a migration adds must be given to the engine's role deliberately.
    assert set(ENGINE_PRIVILEGES) == set(metadata.tables) | {"alembic_version"}
    for table in EVIDENCE:
        assert set(ENGINE_PRIVILEGES[table]) == {"SELECT", "INSERT"}
    for table, privileges in ENGINE_PRIVILEGES.items():
        assert "TRUNCATE" not in privileges, table
