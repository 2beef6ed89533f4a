"""The database side of the metrics on PostgreSQL: the same queries as on SQLite (tested in
tests/unit), over the dialect the province runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dossier import monitoring as m
from engine import indicators as ind
from engine.application.ports import ChangeSet, StoredDossier
from engine.calendar import WorkingCalendar
from engine.store.migrate import downgrade, upgrade
from engine.store.queries import indicator_report
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.store_contract import make_dossier
from tests.unit import test_indicators as fixture
from tests.unit.test_metrics import NOW, populate


@pytest.fixture
def pg(pg_schema: str) -> Iterator[Engine]:
    engine = create_db_engine(pg_schema)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_state_on_postgresql(pg: Engine) -> None:
    populate(pg)
    state = m.read_state(pg)
    assert state.open == {
        (4, "commune"): 2,
        (5, "commune"): 1,
        (9, "commune"): 1,
        (6, "province"): 1,
    }
    assert state.overdue == {
        (4, "commune"): 1,
        (5, "commune"): 0,
        (9, "commune"): 0,
        (6, "province"): 1,
    }
    assert (state.outbox_unsent, state.parked, state.clock) == (2, 1, NOW)


def test_indicators_on_postgresql(pg: Engine) -> None:
    calendar = WorkingCalendar.load()
    stored = fixture.stored_dossiers(fixture.CASES)
    with SqlUnitOfWork(pg) as uow:
        uow.repo.write(ChangeSet(dossiers=stored))
        uow.commit()
    expected = ind.report((fixture.facts(c) for c in fixture.CASES), fixture.MARCH, calendar)
    with pg.connect() as connection:
        report = indicator_report(connection, fixture.MARCH, calendar, fixture.level_of)
    assert fixture.by_agency(report) == fixture.by_agency(expected)
    assert report.total.figures == expected.total.figures


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0002_backfills_paused_time_from_snapshots(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'm.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_schema")
    )
    db = create_db_engine(url)
    try:
        upgrade(db)
        paused = make_dossier("000.00.19.H56-250303-0001", paused_seconds=5400)
        plain = make_dossier("000.00.19.H56-250303-0002")
        with SqlUnitOfWork(db) as uow:
            uow.repo.write(
                ChangeSet(dossiers=[StoredDossier(paused, 0, None), StoredDossier(plain, 0, None)])
            )
            uow.commit()
        downgrade(db, "0001")  # the rows as a database migrated before 0002 holds them
        upgrade(db)
        with db.connect() as connection:
            query = text("SELECT code, paused_seconds FROM dossiers")
            rows = {code: paused for code, paused in connection.execute(query)}
    finally:
        db.dispose()
    assert rows == {paused.code: 5400, plain.code: 0}
