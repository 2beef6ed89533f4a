"""`dossier kpi` and `dossier metrics show` print the same figures for the same period."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dossier.cli import main as cli_main
from engine.application.ports import ChangeSet, StoredDossier
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.store_contract import make_dossier

CLOCK = datetime(2025, 3, 20, 9, 0, tzinfo=UTC)
A1, A2 = "000.00.19.H56", "000.00.20.H56"


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'kpi.db'}"
    db = create_db_engine(url)
    upgrade(db)
    day = timedelta(days=1)
    dossiers = [
        # A1: two finished (one late), one open; one paid online.
        make_dossier(
            f"{A1}-250303-0001",
            receiving_agency=A1,
            received_at=CLOCK - 10 * day,
            due_at=CLOCK - 8 * day,
            finished_at=CLOCK - 9 * day,
            paid_online=True,
            status_code=10,
            final=True,
        ),
        make_dossier(
            f"{A1}-250303-0002",
            receiving_agency=A1,
            channel=1,
            received_at=CLOCK - 10 * day,
            due_at=CLOCK - 8 * day,
            finished_at=CLOCK - 2 * day,
            status_code=10,
            final=True,
        ),
        make_dossier(f"{A1}-250303-0003", receiving_agency=A1, received_at=CLOCK - day),
        # A2: only before the window.
        make_dossier(f"{A2}-250101-0001", receiving_agency=A2, received_at=CLOCK - 40 * day),
    ]
    with SqlUnitOfWork(db) as uow:
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(d, 0, None) for d in dossiers]))
        uow.repo.write(ChangeSet(clock=CLOCK))
        uow.commit()
    db.dispose()
    monkeypatch.setenv("DOSSIER_DATABASE_URL", url)
    return url


def window_args() -> list[str]:
    end = CLOCK + timedelta(microseconds=1)  # the gauges' window includes the clock itself
    return ["--from", (end - timedelta(days=30)).isoformat(), "--to", end.isoformat()]


def test_kpi_json_equals_the_exported_gauges(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["kpi", *window_args(), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert cli_main(["metrics", "show"]) == 0
    exposition = capsys.readouterr().out

    gauges: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name in ("dossier_indicator_ratio", "dossier_indicator_seconds"):
            for s in family.samples:
                key = (s.labels["indicator"], s.labels["agency"], s.labels["level"])
                gauges[key] = s.value
    from_kpi = {
        (figure["key"], group["agency"], group["level"]): figure["value"]
        for group in printed["agencies"]
        for figure in group["indicators"].values()
        if figure["value"] is not None
    }
    assert gauges == from_kpi
    assert gauges[("2.1_on_time", A1, "commune")] == 0.5
    assert gauges[("3.6_online_payment", A1, "commune")] == 1.0
    assert not any(agency == A2 for _, agency, _ in gauges)  # nothing in the window: no series


def test_kpi_table_says_na_and_complaints(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["kpi", "--from", "2025-03-01", "--to", "2025-03-31", "--agency", A1]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("commune"))
    assert A1 in row and "50.0% (1/2)" in row
    assert "complaints as 0" in out
    assert cli_main(["kpi", "--from", "2024-01-01", "--to", "2024-01-31"]) == 0
    empty = capsys.readouterr().out
    all_row = next(line for line in empty.splitlines() if line.startswith("all"))
    assert all_row.split()[2:] == ["N/A"] * 7


def test_kpi_refuses_a_naive_time(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["kpi", "--from", "2025-03-01T00:00", "--to", "2025-03-31"]) == 2
    assert "offset" in capsys.readouterr().err
