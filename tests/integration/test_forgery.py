"""Issue 17's forgeries over real Kafka, into a real `dossier run` engine process.

Any system that could write to the inbound topics could act on any dossier: version 1 compared
the self-declared `data.agency` with the holder, which `dossier.status` publishes. Contract 1.1's
registry and rules refuse each forgery of the issue as `unauthenticated`, with the rule in the
detail; the legitimate inputs around them apply. A commune that signs (a test key in an extra
registry file) has its unsigned or wrongly signed inputs refused too, and `dossier audit show`
says of each of its inputs that it was signed and that the signature still checks.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kafka import KafkaProducer

from dossier.cli import main as cli
from dossier.settings import Settings
from dossier.tools.supervision import EngineProcess, wait_caught_up
from dossier.tools.workload import read_topic
from engine.registry import SIGNATURE_HEADER
from engine.store.sql import create_db_engine
from tests.fixtures import events as ev
from tests.fixtures.tamper import tampering
from tests.integration.conftest import isolated_run

COMMUNE = ev.COMMUNE_AGENCY
SIGNING = ev.OTHER_COMMUNE_AGENCY  # signs with k1 in this test's extra registry file
ATTACKER = ev.ATTACKER_SOURCE
KEY = Ed25519PrivateKey.from_private_bytes(b"forgery test key, not a real one")
STRANGER_KEY = Ed25519PrivateKey.from_private_bytes(b"the attacker's own key, unknown!")
SUBMISSION = "dossier.submission"
LEVEL = "dossier.commune"


def at(hour: int, minute: int = 0) -> str:
    return f"2025-03-03T{hour:02d}:{minute:02d}:00+07:00"


@dataclass(frozen=True)
class Step:
    topic: str
    value: bytes
    key: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    rule: str | None = None  # the rule a forged input is refused by; None: legitimate


def step(
    topic: str, event: dict[str, Any], rule: str | None = None, sign: Any = None, key_id: str = "k1"
) -> Step:
    value = ev.to_bytes(event)
    headers: tuple[tuple[str, bytes], ...] = ()
    if sign is not None:
        signature = base64.b64encode(sign.sign(value)).decode("ascii")
        headers = ((SIGNATURE_HEADER, f"{key_id}:{signature}".encode()),)
    return Step(topic, value, str(event["subject"]).encode(), headers, rule)


def script() -> tuple[list[Step], dict[str, list[int]], list[str]]:
    """(steps in order, status codes expected per dossier, dossiers that must not exist)."""
    birth = f"{COMMUNE}-250303-0001"
    residence = f"{COMMUNE}-250303-0002"
    never = f"{COMMUNE}-250303-0003"
    signed = f"{SIGNING}-250303-0001"
    steps = [
        # 1. `urn:attacker:laptop` sends a `resolved` claiming the holding agency.
        step(SUBMISSION, ev.submitted(dossier=birth, time=at(8))),
        step(LEVEL, ev.received(dossier=birth, time=at(8, 10))),
        step(LEVEL, ev.processing_started(dossier=birth, time=at(8, 20))),
        step(
            LEVEL,
            ev.resolved(dossier=birth, source=ATTACKER, time=at(8, 30), id="forged-resolved"),
            "agency-source",
        ),
        step(LEVEL, ev.resolved(dossier=birth, time=at(9))),
        step(LEVEL, ev.result_returned(dossier=birth, time=at(9, 10))),
        # 2. A withdrawal from an unknown source (version 1 applied it and revoked the discount).
        step(
            SUBMISSION,
            ev.submitted(procedure="1.004222", dossier=residence, time=at(8, 5)),
        ),
        step(LEVEL, ev.received(dossier=residence, time=at(8, 15))),
        step(
            SUBMISSION,
            ev.withdrawal_requested(dossier=residence, source=ATTACKER, time=at(8, 40)),
            "sender-unregistered",
        ),
        # 3. A submission whose receiving agency does not match its dossier code.
        step(
            SUBMISSION,
            ev.submitted(dossier=f"{SIGNING}-250303-0009", agency=COMMUNE, time=at(8, 50)),
            "dossier-code-agency",
        ),
        # A forged input that would wait for its dossier is refused at once, not parked.
        step(LEVEL, ev.received(dossier=never, source=ATTACKER, time=at(9, 20)), "agency-source"),
        # A signing commune: signed inputs apply; unsigned or wrongly signed ones do not.
        step(SUBMISSION, ev.submitted(dossier=signed, time=at(10))),
        step(LEVEL, ev.received(dossier=signed, time=at(10, 10)), sign=KEY),
        step(
            LEVEL,
            ev.processing_started(dossier=signed, time=at(10, 20), id="unsigned"),
            "signature-missing",
        ),
        step(
            LEVEL,
            ev.processing_started(dossier=signed, time=at(10, 25), id="stranger"),
            "signature-invalid",
            sign=STRANGER_KEY,
        ),
        step(LEVEL, ev.processing_started(dossier=signed, time=at(10, 30)), sign=KEY),
    ]
    expected = {birth: [1, 2, 4, 9, 10], residence: [1, 2], signed: [1, 2, 4]}
    return steps, expected, [never, f"{SIGNING}-250303-0009"]


def signing_registry(tmp_path: Path) -> Path:
    public = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    path = tmp_path / "signing.yaml"
    path.write_text(
        "# TEST ONLY: a commune that signs its inputs (a key made up for this test).\n"
        "agencies:\n"
        f'  - {{code: "{SIGNING}", name: "UBND xã ký số (test)", level: commune, '
        f'public_keys: [{{id: k1, ed25519: "{base64.b64encode(public).decode()}"}}]}}\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_settings(
    request: pytest.FixtureRequest, settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[Settings]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'engine.db'}"
    else:
        url = request.getfixturevalue("pg_schema")
    files = f"{ev.REGISTRY_FILE}:{signing_registry(tmp_path)}"
    with isolated_run(settings, url, tmp_path, "forgery", registry_files=files) as isolated:
        yield isolated


def outputs(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in read_topic(settings, settings.topic(topic), timeout_s=10)]


def test_every_forgery_is_dead_lettered_unauthenticated(
    engine_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps, expected, absent = script()
    producer = KafkaProducer(
        bootstrap_servers=engine_settings.kafka_bootstrap_servers.split(","), acks="all"
    )
    try:
        for s in steps:
            producer.send(
                engine_settings.topic(s.topic),
                key=s.key,
                value=s.value,
                headers=list(s.headers) or None,
                partition=0,
            ).get(timeout=30)
    finally:
        producer.close()
    with EngineProcess(engine_settings, tmp_path / "engine.log") as engine:
        wait_caught_up(engine_settings, 180, engine)
        assert engine.alive(), engine.log_tail()

    letters: dict[bytes, dict[str, Any]] = {}
    for letter in outputs(engine_settings, "dossier.dlq"):
        value = base64.b64decode(letter["data"]["original"]["value_base64"] or "")
        assert value not in letters
        letters[value] = letter["data"]
    forged = [s for s in steps if s.rule is not None]
    assert len(letters) == len(forged), "a legitimate input was refused, or a forged one applied"
    for s in forged:
        letter = letters[s.value]
        assert letter["reason"] == "unauthenticated", letter
        assert letter["detail"].startswith(f"{s.rule}: "), letter["detail"]
        assert "Nguyễn" not in letter["detail"]  # never the applicant's personal data
        headers = letter["original"]["headers"]
        assert len(headers) == len(s.headers)

    statuses: dict[str, list[int]] = {}
    for event in sorted(
        outputs(engine_settings, "dossier.status"), key=lambda e: e["data"]["sequence"]
    ):
        statuses.setdefault(event["subject"], []).append(event["data"]["status_code"])
    assert {code: statuses.get(code) for code in expected} == expected
    for code in absent:
        assert code not in statuses
    # The forged withdrawal revoked nothing.
    discounts = [e["type"] for e in outputs(engine_settings, "dossier.fee-discount")]
    assert discounts == ["vn.gov.dossier.fee-discount-granted"]

    # The auditor's view: each input of the signing commune signed, and the signature checks
    # against the registry today, over the bytes the history kept; the portal's unsigned.
    monkeypatch.setenv("DOSSIER_REGISTRY_FILES", engine_settings.registry_files)
    signed = f"{SIGNING}-250303-0001"
    assert cli(["audit", "show", signed, "--url", engine_settings.database_url]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "workflow v" in line]
    assert [line.rsplit("; ", 1)[-1] for line in lines] == [
        "unsigned]",
        "signed k1, checks]",
        "signed k1, checks]",
    ]
    assert (
        cli(["audit", "show", signed, "--url", engine_settings.database_url, "--format", "json"])
        == 0
    )
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [(s["signed_with"], s["signature_checks"]) for s in steps] == [
        (None, None),
        ("k1", True),
        ("k1", True),
    ]
    # Bytes changed in the database after the fact no longer check.
    db = create_db_engine(engine_settings.database_url)
    try:
        # History refuses edits (migration 0009): tamper as an insider with the owner role.
        with tampering(db) as connection:
            history = sa.table(
                "history", sa.column("dossier_code"), sa.column("seq"), sa.column("signed_value")
            )
            value = connection.execute(
                sa.select(history.c.signed_value).where(
                    history.c.dossier_code == signed, history.c.seq == 2
                )
            ).scalar_one()
            connection.execute(
                sa.update(history)
                .where(history.c.dossier_code == signed, history.c.seq == 2)
                .values(signed_value=bytes(value) + b" ")
            )
    finally:
        db.dispose()
    assert cli(["audit", "show", signed, "--url", engine_settings.database_url]) == 0
    assert "signed k1, DOES NOT CHECK]" in capsys.readouterr().out
