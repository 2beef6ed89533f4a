"""Old history stays readable: a legacy (schema version 0) input stored in history replays
through the upcaster; a district-era land certificate replays under the workflow version it
ran under; and `dossier audit show` prints the trail, masking personal data."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from dossier.cli import main as cli
from dossier.replay.jobs import replay_from_db
from dossier.replay.serial import compare
from dossier.settings import Settings
from engine.application.ports import ChangeSet, Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.procedures import load_catalogue
from engine.store.audit import verify
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec
from schemas.upcasting import upcast
from tests.fixtures import events as ev
from tests.integration.test_engine_e2e import land_certificate

CODE = f"{ev.COMMUNE_AGENCY}-250630-0001"


def live_db(path: Path) -> Engine:
    db = create_db_engine(f"sqlite:///{path}")
    upgrade(db)
    processor = BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load()),
        ContractCodec(),
        ServiceConfig("urn:test:engine", "live", timedelta(days=7)),
    )
    items = land_certificate(CODE, "2025-06-30", "district", ev.DISTRICT_AGENCY)
    inputs = [
        RawInput(t, Position(t, 0, i), e["subject"].encode(), ev.to_bytes(e))
        for i, (t, e) in enumerate(items)
    ]
    processor.process(SqlUnitOfWork(db, writes=True), inputs)
    return db


def as_legacy(envelope: dict[str, Any]) -> dict[str, Any]:
    data = dict(envelope["data"])
    data["kenh"] = {1: "truc_tiep", 2: "truc_tuyen", 3: "buu_chinh"}[data.pop("channel")]
    data["toan_trinh"] = data.pop("full_online")
    return {**envelope, "data": data}


def test_legacy_input_and_district_era_history_replay(tmp_path: Path) -> None:
    live = live_db(tmp_path / "live.db")
    with SqlUnitOfWork(live) as uow:
        rows = uow.repo.history(CODE)
    assert [r.workflow_version for r in rows] == [1] * len(rows)  # district era: v1
    assert "district" in {r.position.topic.removeprefix("dossier.") for r in rows}
    legacy_envelope = as_legacy(dict(rows[0].envelope))
    assert upcast(legacy_envelope, 0) == rows[0].envelope
    # A province's import of its pre-contract history: the submission as its old system sent it.
    imported = create_db_engine(f"sqlite:///{tmp_path / 'imported.db'}")
    upgrade(imported)
    with SqlUnitOfWork(imported) as uow:
        legacy = replace(rows[0], schema_version=0, envelope=legacy_envelope)
        uow.repo.write(ChangeSet(history=[legacy, *rows[1:]]))
        uow.commit()
    assert verify(imported).findings == []

    rebuilt = create_db_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    replay_from_db(Settings.from_env(), imported, rebuilt)  # the registry live had
    result = compare(rebuilt, live)
    assert result.differences == [] and result.matching == 1
    with SqlUnitOfWork(rebuilt) as uow:
        stored = uow.repo.load_dossiers([CODE])[CODE].dossier
    assert (stored.workflow_version, stored.status_code, stored.channel) == (1, 10, 2)


def test_audit_show_masks_personal_data_unless_revealed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    live_db(tmp_path / "live.db").dispose()
    url = f"sqlite:///{tmp_path / 'live.db'}"
    name = ev.CITIZEN["name"]
    assert cli(["audit", "show", CODE, "--url", url]) == 0
    out = capsys.readouterr().out
    assert name not in out and "[masked]" in out
    assert "received Mon 2025-06-30 08:30 + 30 working days = " in out
    assert "legal basis" in out and "workflow v1" in out
    assert not [r for r in caplog.records if "revealed" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="dossier.audit"):
        assert (
            cli(["audit", "show", CODE, "--url", url, "--reveal-personal-data", "--reason", "test"])
            == 0
        )
    assert name in capsys.readouterr().out
    (record,) = [r for r in caplog.records if "revealed" in r.getMessage()]
    assert CODE in record.getMessage() and name not in record.getMessage()

    assert (
        cli(
            [
                "audit",
                "show",
                CODE,
                "--url",
                url,
                "--format",
                "json",
                "--as-of",
                "2025-06-30T09:30:00+07:00",
            ]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert [s["type"] for s in document["steps"]] == ["submitted", "received", "processing-started"]
    for fmt in ("csv", "html"):
        assert cli(["audit", "show", CODE, "--url", url, "--format", fmt]) == 0
        assert name not in capsys.readouterr().out
