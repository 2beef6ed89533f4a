"""Issue 15's hostile inputs over real Kafka, into a real `dossier run` engine process.

Every hostile input of the corpus (tests/unit/test_hostile_corpus.py) is sent on partition 0 of
its topic, each followed by a legitimate dossier on the same partition. The engine must stay
alive, put each hostile input on dossier.dlq with the reason the contract gives it (its bytes
intact), apply every legitimate input around them, and expire a parked input on time with no
traffic at all.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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

AGENCY = ev.COMMUNE_AGENCY
SUBMISSION = "dossier.submission"
COMMUNE = "dossier.commune"
DAY = "2025-03-06"  # a Thursday: every legitimate time below falls on it
PARKED_TTL_S = 10
MIB = 1024 * 1024


def code(n: int) -> str:
    return f"{AGENCY}-250306-{n:04d}"


def at(hour: int, minute: int = 0) -> str:
    return f"{DAY}T{hour:02d}:{minute:02d}:00+07:00"


def spliced(event: dict[str, Any], placeholder: str, fragment: str) -> bytes:
    """The event's bytes with the JSON string `placeholder` replaced by raw JSON text."""
    value = ev.to_bytes(event)
    token = json.dumps(placeholder).encode()
    assert value.count(token) == 1
    return value.replace(token, fragment.encode())


@dataclass(frozen=True)
class Step:
    topic: str
    key: bytes | None
    value: bytes
    reason: str | None = None  # the dead-letter reason expected; None: a legitimate input


@dataclass
class Script:
    steps: list[Step] = field(default_factory=list)
    # dossier code -> the status codes its legitimate inputs lead to
    expected: dict[str, list[int]] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)  # dossiers that must not exist
    normal_serial: int = 0

    def legit(self, topic: str, event: dict[str, Any]) -> None:
        self.steps.append(Step(topic, str(event["subject"]).encode(), ev.to_bytes(event)))

    def hostile(
        self, topic: str, value: bytes, reason: str, key: bytes | str | None = "subject"
    ) -> None:
        if key == "subject":
            key = str(json.loads(value)["subject"]).encode()
        assert not isinstance(key, str)
        self.steps.append(Step(topic, key, value, reason))
        self.normal_dossier()

    def normal_dossier(self) -> None:
        """A legitimate dossier after each hostile input, on the same partition."""
        self.normal_serial += 1
        n = 500 + self.normal_serial
        self.legit(
            SUBMISSION,
            ev.submitted(procedure="1.001193", dossier=code(n), time=at(8, self.normal_serial)),
        )
        self.legit(COMMUNE, ev.received(dossier=code(n), time=at(9, self.normal_serial)))
        self.expected[code(n)] = [1, 2]


def hostile_script(wall: datetime) -> Script:
    s = Script()
    citizen = dict(ev.CITIZEN)

    # Strings: a lone low surrogate in the applicant's name.
    event = ev.submitted(dossier=code(1), time=at(8), applicant={**citizen, "name": "@@X@@"})
    s.hostile(SUBMISSION, spliced(event, "@@X@@", '"Nguy\\udc00n"'), "malformed")
    s.absent.append(code(1))

    # The same surrogate in an extra field of a level input for a dossier not submitted yet,
    # then the legitimate submission and reception.
    event = ev.received(dossier=code(2), time=at(8, 30), data_extra={"note": "@@X@@"})
    s.hostile(COMMUNE, spliced(event, "@@X@@", '"\\udc00"'), "malformed")
    s.legit(SUBMISSION, ev.submitted(dossier=code(2), time=at(8, 40)))
    s.legit(COMMUNE, ev.received(dossier=code(2), time=at(9, 40)))
    s.expected[code(2)] = [1, 2]

    # Time: the instant after year 9999, and a reception in year 9999 of a dossier that exists.
    event = ev.submitted(dossier=code(3), time="9999-12-31T23:59:59-23:59")
    s.hostile(SUBMISSION, ev.to_bytes(event), "schema")
    s.absent.append(code(3))
    s.legit(SUBMISSION, ev.submitted(dossier=code(4), time=at(8, 5)))
    s.hostile(
        COMMUNE, ev.to_bytes(ev.received(dossier=code(4), time="9999-12-28T00:00:00Z")), "schema"
    )
    s.legit(COMMUNE, ev.received(dossier=code(4), time=at(9, 5)))
    s.expected[code(4)] = [1, 2]

    for n, hostile_time in (
        (18, "0001-01-01T00:00:00+23:59"),
        (19, "1999-12-31T23:59:59Z"),
        (20, (wall + timedelta(days=2)).isoformat()),
    ):
        event = ev.submitted(dossier=code(n), time=hostile_time)
        s.hostile(SUBMISSION, ev.to_bytes(event), "schema")
        s.absent.append(code(n))

    # A far but allowed time on an input that is dead-lettered: the clock must not follow it.
    far = (wall + timedelta(hours=12)).isoformat()
    event = ev.submitted(procedure="0.000000", dossier=code(5), time=far)
    s.hostile(SUBMISSION, ev.to_bytes(event), "unknown-procedure")
    s.absent.append(code(5))

    # A conflicting copy of a parked input (its submission comes later in event time too).
    original = ev.received(dossier=code(6), officer="Trần Thị Bình", time=at(9, 10))
    s.legit(COMMUNE, original)
    forged = dict(original, data={**original["data"], "officer": "Kẻ Giả Mạo"})
    s.hostile(COMMUNE, ev.to_bytes(forged), "conflict")
    s.legit(COMMUNE, original)  # an identical copy: a duplicate, no output
    s.legit(SUBMISSION, ev.submitted(dossier=code(6), time=at(9, 20)))
    s.expected[code(6)] = [1, 2]

    # Money: fixed fees forged, and a payment that is not the amount payable.
    for n, amount in ((7, 9_007_199_254_740_991), (8, 1)):
        event = ev.submitted(
            procedure="1.004222", dossier=code(n), channel=2, fees=[("LP-CT", amount)], time=at(8)
        )
        s.hostile(SUBMISSION, ev.to_bytes(event), "schema")
        s.absent.append(code(n))
    residence = ev.submitted(procedure="1.004222", dossier=code(9), channel=2, time=at(8))
    s.legit(SUBMISSION, residence)  # online in 2025: LP-CT 20,000 less 50%
    s.legit(COMMUNE, ev.received(dossier=code(9), time=at(8, 30)))
    s.legit(COMMUNE, ev.processing_started(dossier=code(9), time=at(9)))
    s.legit(COMMUNE, ev.payment_requested(dossier=code(9), fees=[("LP-CT", 20_000)], time=at(10)))
    wrong = ev.payment_completed(dossier=code(9), amount=1, time=at(11), id="pay-1")
    s.hostile(SUBMISSION, ev.to_bytes(wrong), "invalid-transition")
    s.legit(
        SUBMISSION, ev.payment_completed(dossier=code(9), amount=10_000, time=at(12), id="pay-2")
    )
    s.expected[code(9)] = [1, 2, 4, 6, 4]

    # Strings: `subject` twice, a key that is not the subject, no key.
    event = ev.submitted(dossier=code(10), time=at(8))
    event["@@X@@"] = code(11)
    s.hostile(SUBMISSION, spliced(event, "@@X@@", '"subject"'), "malformed", key=code(10).encode())
    s.absent += [code(10), code(11)]
    event = ev.submitted(dossier=code(12), time=at(8))
    s.hostile(SUBMISSION, ev.to_bytes(event), "malformed", key=code(13).encode())
    event = ev.submitted(dossier=code(14), time=at(8))
    s.hostile(SUBMISSION, ev.to_bytes(event), "malformed", key=None)
    s.absent += [code(12), code(13), code(14)]

    # A dossier code dated 30 February.
    event = ev.submitted(dossier=f"{AGENCY}-250230-0001", time=at(8))
    s.hostile(SUBMISSION, ev.to_bytes(event), "schema")
    s.absent.append(f"{AGENCY}-250230-0001")

    # Names of (almost) 1 MiB: over the name's maximum length; over the message size limit.
    bare = len(ev.to_bytes(ev.submitted(dossier=code(15), applicant={**citizen, "name": ""})))
    for n, chars, reason in ((15, MIB - bare - 64, "schema"), (16, MIB, "malformed")):
        event = ev.submitted(
            dossier=code(n), time=at(8), applicant={**citizen, "name": "a" * chars}
        )
        s.hostile(SUBMISSION, ev.to_bytes(event), reason)
        s.absent.append(code(n))

    # A reception for a dossier never submitted: parked, then expired with no traffic.
    event = ev.received(dossier=code(17), time=at(9, 50))
    s.hostile(COMMUNE, ev.to_bytes(event), "parked-expired")
    s.absent.append(code(17))
    return s


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_settings(
    request: pytest.FixtureRequest, settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[Settings]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'engine.db'}"
    else:
        url = request.getfixturevalue("pg_schema")
    with isolated_run(
        settings, url, tmp_path, "hostile", parked_ttl_seconds=PARKED_TTL_S, parked_sweep_seconds=1
    ) as isolated:
        yield isolated


def send_all(settings: Settings, steps: list[Step]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        acks="all",
        max_request_size=8 * MIB,
    )
    try:
        for step in steps:
            future = producer.send(
                settings.topic(step.topic), key=step.key, value=step.value, partition=0
            )
            future.get(timeout=30)
    finally:
        producer.close()


def outputs(settings: Settings, topic: str) -> list[dict[str, Any]]:
    records = read_topic(settings, settings.topic(topic), timeout_s=10)
    return [json.loads(r.value) for r in records]


def dead_letters_by_value(settings: Settings) -> dict[bytes, list[dict[str, Any]]]:
    found: dict[bytes, list[dict[str, Any]]] = {}
    for letter in outputs(settings, "dossier.dlq"):
        value = base64.b64decode(letter["data"]["original"]["value_base64"] or "")
        found.setdefault(value, []).append(letter["data"])
    return found


def test_hostile_inputs_are_dead_lettered_and_the_engine_goes_on(
    engine_settings: Settings, tmp_path: Path
) -> None:
    script = hostile_script(datetime.now(UTC))
    send_all(engine_settings, script.steps)
    hostile = [step for step in script.steps if step.reason is not None]
    with EngineProcess(engine_settings, tmp_path / "engine.log") as engine:
        wait_caught_up(engine_settings, 180, engine)
        # No more traffic: the parked reception must still expire, by the engine's timer.
        orphan = hostile[-1]
        deadline = time.monotonic() + PARKED_TTL_S + 60
        while orphan.value not in dead_letters_by_value(engine_settings):
            assert engine.alive(), engine.log_tail()
            assert time.monotonic() < deadline, "the parked input did not expire with no traffic"
            time.sleep(1)
        wait_caught_up(engine_settings, 60, engine)
        assert engine.alive(), engine.log_tail()
        log_tail = engine.log_tail(200)

    letters = dead_letters_by_value(engine_settings)
    for step in hostile:
        assert step.value in letters, f"{step.reason} input not dead-lettered\n{log_tail}"
        [letter] = letters[step.value]
        assert letter["reason"] == step.reason, letter["detail"]
        assert letter["original"]["topic"] == engine_settings.topic(step.topic)
        assert letter["original"]["partition"] == 0
        key_b64 = letter["original"].get("key_base64")
        assert key_b64 == (None if step.key is None else base64.b64encode(step.key).decode())
    assert sum(len(v) for v in letters.values()) == len(hostile), "legitimate inputs refused"

    statuses: dict[str, list[int]] = {}
    for event in sorted(
        outputs(engine_settings, "dossier.status"), key=lambda e: e["data"]["sequence"]
    ):
        statuses.setdefault(event["subject"], []).append(event["data"]["status_code"])
    for dossier, codes in script.expected.items():
        assert statuses.get(dossier) == codes, (dossier, statuses.get(dossier))
    for dossier in script.absent:
        assert dossier not in statuses, dossier
    # The clock followed applied inputs only: nothing is overdue on a day of legitimate traffic.
    notices = outputs(engine_settings, "dossier.deadline")
    assert [n for n in notices if n["type"].endswith(".overdue")] == []

    db = create_db_engine(engine_settings.database_url)
    try:
        with SqlUnitOfWork(db) as uow:
            assert uow.repo.parked_count() == 0
            clock = uow.repo.get_clock()
            [received] = [r for r in uow.repo.history(code(6)) if r.type.endswith(".received")]
    finally:
        db.dispose()
    assert clock is not None and clock <= datetime.fromisoformat(at(12))
    assert received.envelope["data"]["officer"] == "Trần Thị Bình"  # not the forged copy


def test_the_script_is_well_formed() -> None:
    """Every hostile step names a reason of the contract, and the values are unique, so each
    dead letter is found by its bytes."""
    script = hostile_script(datetime(2026, 12, 6, tzinfo=UTC))
    hostile = [step for step in script.steps if step.reason is not None]
    assert len({step.value for step in hostile}) == len(hostile) >= 15
    assert {step.reason for step in hostile} == {
        "malformed",
        "schema",
        "unknown-procedure",
        "conflict",
        "invalid-transition",
        "parked-expired",
    }
