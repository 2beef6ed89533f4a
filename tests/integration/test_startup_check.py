"""`dossier run` refuses to start when stored dossiers are pinned to workflow versions that the
catalogue no longer has: each of their inputs would fail, batch after batch."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from sqlalchemy import update

from dossier.composition import Runtime
from dossier.settings import Settings
from engine.application.ports import Position
from engine.application.service import RawInput
from engine.store.sql import dossiers
from tests.fixtures import events as ev

CODE = "000.00.19.H56-250303-0001"


def seeded(settings: Settings, tmp_path: Path) -> tuple[Settings, Runtime]:
    local = replace(settings, database_url=f"sqlite:///{tmp_path / 'engine.db'}")
    runtime = Runtime.create(local)
    event = ev.submitted(dossier=CODE, procedure="1.004222")
    topic = "dossier.submission"
    runtime.process([RawInput(topic, Position(topic, 0, 0), CODE.encode(), ev.to_bytes(event))])
    return local, runtime


def test_missing_versions_lists_what_stored_dossiers_are_pinned_to(
    settings: Settings, tmp_path: Path
) -> None:
    _, runtime = seeded(settings, tmp_path)
    try:
        assert runtime.missing_versions() == []
        with runtime.db.begin() as connection:
            connection.execute(update(dossiers).values(workflow_version=99))
        assert runtime.missing_versions() == [("1.004222", 99, 1)]
    finally:
        runtime.close()


def test_dossier_run_exits_2_naming_each_missing_version(
    settings: Settings, tmp_path: Path, kafka_bootstrap: str
) -> None:
    local, runtime = seeded(settings, tmp_path)
    with runtime.db.begin() as connection:
        connection.execute(update(dossiers).values(workflow_version=99))
    runtime.close()
    env = dict(os.environ)
    env.update(
        DOSSIER_DATABASE_URL=local.database_url,
        DOSSIER_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DOSSIER_METRICS_PORT="0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "dossier.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "1.004222 v99: 1 dossier(s)" in done.stderr


def test_dossier_run_exits_2_naming_the_problems_of_a_broken_registry(
    settings: Settings, tmp_path: Path, kafka_bootstrap: str
) -> None:
    broken = tmp_path / "registry.yaml"
    broken.write_text(
        "agencies:\n  - code: '000.00.77.H56'\n    level: borough\n    name: Nowhere\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env.update(
        DOSSIER_DATABASE_URL=f"sqlite:///{tmp_path / 'engine.db'}",
        DOSSIER_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DOSSIER_METRICS_PORT="0",
        DOSSIER_REGISTRY_FILES=str(broken),
    )
    done = subprocess.run(
        [sys.executable, "-m", "dossier.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "level" in done.stderr and str(broken) in done.stderr


def test_dossier_run_exits_2_when_its_privacy_secret_does_not_open_the_stored_keys(
    settings: Settings, tmp_path: Path, kafka_bootstrap: str
) -> None:
    # A submission sealed under the secret of the session's settings, then a restart with
    # another secret (a key file lost, a path mistyped): sealing under it would make the new
    # data of every known person unreadable with the old one, and the old with the new.
    local, runtime = seeded(settings, tmp_path)
    runtime.close()
    other = tmp_path / "other-privacy.key"
    other.write_text(base64.b64encode(secrets.token_bytes(32)).decode(), encoding="utf-8")
    env = dict(os.environ)
    env.update(
        DOSSIER_DATABASE_URL=local.database_url,
        DOSSIER_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DOSSIER_METRICS_PORT="0",
        DOSSIER_PRIVACY_KEY_FILE=str(other),
    )
    env.pop("DOSSIER_PRIVACY_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "dossier.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "does not open stored key" in done.stderr
