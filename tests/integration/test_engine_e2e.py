"""The engine process end to end through real Kafka, into SQLite and PostgreSQL.

Each test gets its own topic prefix, consumer group and database, so tests never see each
other's messages or rows.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from dossier.settings import Settings
from dossier.tools.supervision import EngineProcess, wait_caught_up
from dossier.tools.workload import read_topic
from engine.store.sql import SqlUnitOfWork, create_db_engine
from tests.fixtures import events as ev
from tests.integration.conftest import isolated_run

COMMUNE = ev.COMMUNE_AGENCY
DISTRICT = ev.DISTRICT_AGENCY
PROVINCE = ev.PROVINCE_AGENCY


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_settings(
    request: pytest.FixtureRequest, settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[Settings]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'engine.db'}"
    else:
        url = request.getfixturevalue("pg_schema")
    with isolated_run(settings, url, tmp_path, "e2e") as isolated:
        yield isolated


@pytest.fixture
def send(engine_settings: Settings) -> Iterator[Callable[[str, Any], None]]:
    producer = KafkaProducer(
        bootstrap_servers=engine_settings.kafka_bootstrap_servers.split(","),
        acks="all",
        max_request_size=8 * 1024 * 1024,
    )

    def send_one(topic: str, event: Any, key: bytes | None = None) -> None:
        value = event if isinstance(event, bytes) else ev.to_bytes(event)
        if key is None and isinstance(event, dict):
            key = str(event["subject"]).encode()
        producer.send(engine_settings.topic(topic), key=key, value=value).get(timeout=30)

    yield send_one
    producer.close()


def run_engine_until_caught_up(settings: Settings, tmp_path: Path, timeout_s: float = 90) -> None:
    with EngineProcess(settings, tmp_path / "engine.log") as engine:
        wait_caught_up(settings, timeout_s, engine)


def outputs(settings: Settings, topic: str) -> list[dict[str, Any]]:
    records = read_topic(settings, settings.topic(topic), timeout_s=10)
    return [json.loads(r.value) for r in records]


def statuses_by_dossier(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = {}
    for event in outputs(settings, "dossier.status"):
        result.setdefault(event["subject"], []).append(event)
    for events in result.values():
        events.sort(key=lambda e: e["data"]["sequence"])
    return result


def land_certificate(
    code: str, start: str, upper: str, upper_agency: str
) -> list[tuple[str, dict[str, Any]]]:
    day = start[:10]
    return [
        (
            "dossier.submission",
            ev.submitted(
                procedure="DD.GCN.LD", dossier=code, full_online=True, time=f"{day}T08:00:00+07:00"
            ),
        ),
        ("dossier.commune", ev.received(dossier=code, time=f"{day}T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=code, time=f"{day}T09:00:00+07:00")),
        (
            "dossier.commune",
            ev.transferred(
                dossier=code, to_level=upper, to_agency=upper_agency, time=f"{day}T10:00:00+07:00"
            ),
        ),
        (
            f"dossier.{upper}",
            ev.payment_requested(dossier=code, agency=upper_agency, time=f"{day}T11:00:00+07:00"),
        ),
        ("dossier.submission", ev.payment_completed(dossier=code, time=f"{day}T14:00:00+07:00")),
        (
            f"dossier.{upper}",
            ev.resolved(dossier=code, agency=upper_agency, time=f"{day}T15:00:00+07:00"),
        ),
        (
            f"dossier.{upper}",
            ev.transferred(
                dossier=code,
                agency=upper_agency,
                to_level="commune",
                to_agency=COMMUNE,
                time=f"{day}T16:00:00+07:00",
            ),
        ),
        ("dossier.commune", ev.result_returned(dossier=code, time=f"{day}T16:30:00+07:00")),
    ]


def test_reference_procedures_end_to_end(
    engine_settings: Settings, send: Callable[..., None], tmp_path: Path
) -> None:
    birth = f"{COMMUNE}-250303-0001"
    residence = f"{COMMUNE}-250303-0002"
    land_district = f"{COMMUNE}-250630-0001"
    land_province = f"{COMMUNE}-250702-0001"
    script: list[tuple[str, dict[str, Any]]] = [
        (
            "dossier.submission",
            ev.submitted(procedure="1.001193", dossier=birth, time="2025-03-03T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=birth, time="2025-03-03T09:00:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=birth, time="2025-03-03T09:30:00+07:00")),
        ("dossier.commune", ev.resolved(dossier=birth, time="2025-03-03T14:00:00+07:00")),
        ("dossier.commune", ev.result_returned(dossier=birth, time="2025-03-03T15:00:00+07:00")),
        (
            "dossier.submission",
            ev.submitted(
                procedure="1.004222", dossier=residence, channel=2, time="2025-03-03T08:00:00+07:00"
            ),
        ),
        ("dossier.commune", ev.received(dossier=residence, time="2025-03-03T10:00:00+07:00")),
        (
            "dossier.submission",
            ev.withdrawal_requested(dossier=residence, time="2025-03-04T10:00:00+07:00"),
        ),
        *land_certificate(land_district, "2025-06-30", "district", DISTRICT),
        *land_certificate(land_province, "2025-07-02", "province", PROVINCE),
    ]
    for topic, event in script:
        send(topic, event)
    run_engine_until_caught_up(engine_settings, tmp_path)

    statuses = statuses_by_dossier(engine_settings)
    codes = {code: [e["data"]["status_code"] for e in events] for code, events in statuses.items()}
    assert codes[birth] == [1, 2, 4, 9, 10]
    assert codes[residence] == [1, 2, 7]
    assert codes[land_district] == [1, 2, 4, 4, 6, 4, 9, 9, 10]
    assert codes[land_province] == [1, 2, 4, 4, 6, 4, 9, 9, 10]
    for events in statuses.values():
        assert [e["data"]["sequence"] for e in events] == list(range(1, len(events) + 1))
        assert all(e["source"] == engine_settings.engine_source for e in events)
    assert statuses[birth][1]["data"]["due_at"] == "2025-03-04T09:00:00+07:00"
    assert [e["data"]["level"] for e in statuses[land_district]][3] == "district"
    assert [e["data"]["level"] for e in statuses[land_province]][3] == "province"
    assert statuses[land_district][0]["data"]["workflow_version"] == 1
    assert statuses[land_province][0]["data"]["workflow_version"] == 2

    discounts = outputs(engine_settings, "dossier.fee-discount")
    kinds = sorted((d["subject"], d["type"].rsplit(".", 1)[1]) for d in discounts)
    assert kinds == sorted(
        [
            (residence, "fee-discount-granted"),
            (residence, "fee-discount-revoked"),
            (land_district, "fee-discount-granted"),
            (land_province, "fee-discount-granted"),
        ]
    )
    assert {d["data"]["discount_amount"] for d in discounts if d["subject"] == land_province} == {
        50000
    }
    assert outputs(engine_settings, "dossier.dlq") == []


def subject_of(value: bytes, otherwise: str) -> str:
    """The key a producer sends an input with: its subject (contract 1.1: any other key is
    malformed), or `otherwise` for bytes that have none."""
    try:
        subject = json.loads(value)["subject"]
    except (ValueError, KeyError, TypeError):
        return otherwise
    return subject if isinstance(subject, str) else otherwise


def test_bad_inputs_are_dead_lettered_with_their_bytes_and_good_traffic_continues(
    engine_settings: Settings, send: Callable[..., None], tmp_path: Path
) -> None:
    good = f"{COMMUNE}-250303-0101"
    conflict_source = ev.submitted(
        procedure="1.001193", dossier=good, time="2025-03-03T08:00:00+07:00"
    )
    conflicting = dict(conflict_source, data={**conflict_source["data"], "channel": 1})
    unknown_type = ev.received(dossier=good, time="2025-03-03T09:00:00+07:00")
    unknown_type["type"] = "vn.gov.dossier.teleported"
    unknown_type["id"] = "teleport-1"
    schema_violation = ev.received(dossier=good, time="2025-03-03T09:00:00+07:00", id="bad-time")
    schema_violation["time"] = "2025-03-03 09:00"
    bad: list[tuple[str, bytes, str]] = [
        ("dossier.commune", b"\xff\xfe not utf-8", "malformed"),
        ("dossier.commune", b"{not json", "malformed"),
        ("dossier.commune", b'{"hello": "world"}', "malformed"),
        ("dossier.commune", ev.to_bytes(unknown_type), "schema"),
        ("dossier.commune", ev.to_bytes(schema_violation), "schema"),
        (
            "dossier.commune",
            b'{"specversion":"1.0","pad":"' + b"x" * (1024 * 1024 + 10) + b'"}',
            "malformed",
        ),
        (
            "dossier.submission",
            ev.to_bytes(ev.submitted(procedure="0.000000", dossier=f"{COMMUNE}-250303-0199")),
            "unknown-procedure",
        ),
        (
            "dossier.commune",
            ev.to_bytes(
                ev.received(dossier=good, agency="000.00.99.H56", time="2025-03-03T08:40:00+07:00")
            ),
            "unauthenticated",
        ),
        ("dossier.submission", ev.to_bytes(conflicting), "conflict"),
        (
            "dossier.submission",  # a second submission of a dossier that exists
            ev.to_bytes(
                ev.submitted(
                    procedure="1.001193", dossier=good, time="2025-03-03T08:20:00+07:00", id="again"
                )
            ),
            "invalid-transition",
        ),
    ]
    # Waits for a submission that never comes, and so expires after the (1 s) parking limit.
    orphan = ev.to_bytes(
        ev.received(dossier=f"{COMMUNE}-250303-0198", time="2025-03-03T08:50:00+07:00")
    )
    send("dossier.submission", conflict_source)
    for topic, value, _ in bad:
        send(topic, value, key=subject_of(value, good).encode())
    send("dossier.commune", orphan, key=f"{COMMUNE}-250303-0198".encode())
    send("dossier.commune", ev.received(dossier=good, time="2025-03-03T09:00:00+07:00"))
    expiring = replace(engine_settings, parked_ttl_seconds=1)
    with EngineProcess(expiring, tmp_path / "engine.log") as engine:
        wait_caught_up(expiring, 90, engine)
        time.sleep(1.5)  # expiry is checked when a batch runs: the next input brings one
        send(
            "dossier.commune", ev.processing_started(dossier=good, time="2025-03-03T10:00:00+07:00")
        )
        wait_caught_up(expiring, 90, engine)
    bad.append(("dossier.commune", orphan, "parked-expired"))

    letters = outputs(engine_settings, "dossier.dlq")
    by_bytes = {
        base64.b64decode(letter["data"]["original"]["value_base64"]): letter for letter in letters
    }
    for topic, value, reason in bad:
        assert value in by_bytes, f"{reason} input not dead-lettered"
        letter = by_bytes[value]
        assert letter["data"]["reason"] == reason, letter["data"]["detail"]
        assert letter["data"]["original"]["topic"] == engine_settings.topic(topic)
        assert letter["data"]["original"]["key"] == (
            f"{COMMUNE}-250303-0198" if value == orphan else subject_of(value, good)
        )
    assert len(letters) == len(bad)
    codes = [e["data"]["status_code"] for e in statuses_by_dossier(engine_settings)[good]]
    assert codes == [1, 2, 4]  # good traffic went on around the bad inputs


def test_out_of_order_across_topics_and_duplicates(
    engine_settings: Settings, send: Callable[..., None], tmp_path: Path
) -> None:
    code = f"{COMMUNE}-250303-0201"
    script = land_certificate(code, "2025-03-03", "district", DISTRICT)
    by_type = {
        event["type"].rsplit(".", 1)[1] + str(i): (t, event) for i, (t, event) in enumerate(script)
    }
    order = list(by_type)
    # The district acts before the commune's transfer arrives; the payment before its request.
    order.remove("payment-requested4")
    order.remove("payment-completed5")
    order.insert(2, "payment-completed5")
    order.insert(3, "payment-requested4")
    for name in order:
        topic, event = by_type[name]
        send(topic, event)
    send(*by_type["received1"])  # a duplicate: same source, id and content
    run_engine_until_caught_up(engine_settings, tmp_path)

    codes = [e["data"]["status_code"] for e in statuses_by_dossier(engine_settings)[code]]
    assert codes == [1, 2, 4, 4, 6, 4, 9, 9, 10]
    assert outputs(engine_settings, "dossier.dlq") == []
    db = create_db_engine(engine_settings.database_url)
    with SqlUnitOfWork(db) as uow:
        history = uow.repo.history(code)
        assert uow.repo.parked_count() == 0
    db.dispose()
    assert [row.seq for row in history] == list(range(1, 10))


def test_run_exits_with_a_clear_error_when_kafka_or_the_database_is_unreachable(
    settings: Settings, tmp_path: Path
) -> None:
    no_broker = replace(
        settings,
        kafka_bootstrap_servers="127.0.0.1:1",
        database_url=f"sqlite:///{tmp_path / 'engine.db'}",
        metrics_port=0,
    )
    no_database = replace(
        settings,
        database_url="postgresql://nobody:wrong@127.0.0.1:1/none",
        metrics_port=0,
    )
    for broken, expected in ((no_broker, "unreachable"), (no_database, "database")):
        engine = EngineProcess(broken, tmp_path / f"{expected}.log")
        engine.start()
        assert engine.process is not None
        code = engine.process.wait(timeout=60)
        engine.stop()
        assert code == 2
        assert expected in engine.log_tail(), engine.log_tail()
