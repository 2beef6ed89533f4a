"""A contract event survives the broker byte for byte, for kafka-python and for a faust agent.

Both client stacks the project uses are exercised against the real local broker: kafka-python
(producers, admin, tools) and faust-streaming on aiokafka (the engine's consumers). If the
broker version and a client stop agreeing on protocol versions, this is where it shows.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
FAUST_APP = HERE / "faust_echo_app.py"
TIMEOUT_S = 60.0
CONTENT_TYPE = ("content-type", b"application/cloudevents+json")


def submitted_event() -> dict[str, Any]:
    """A `vn.gov.dossier.submitted` CloudEvent as a national-portal submission would send it."""
    serial = uuid.uuid4().int % 10_000
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:vn:portal:dichvucong.gov.vn",
        "type": "vn.gov.dossier.submitted",
        "subject": f"000.00.19.H56-250314-{serial:04d}",
        "time": "2025-03-14T09:30:00+07:00",
        "datacontenttype": "application/json",
        "data": {
            "procedure": "1.001193",
            "agency": "000.00.19.H56",
            "channel": 2,
            "full_online": True,
            "applicant": {
                "kind": "citizen",
                "id_number": "001203012345",
                "name": "Nguyễn Thị Hồng Nhung",
            },
            "vneid_authenticated": True,
            "digitised": True,
        },
    }


def encode(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) on the wire: the dossier code, and structured-mode JSON in UTF-8."""
    key = event["subject"].encode("utf-8")
    value = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return key, value


def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        metadata = producer.send(topic, key=key, value=value, headers=[CONTENT_TYPE]).get(
            timeout=TIMEOUT_S
        )
        assert metadata.topic == topic
    finally:
        producer.close(timeout=10)


def test_event_roundtrip_with_kafka_python(
    kafka_bootstrap: str, unique_topic: Callable[..., str], unique_group: str
) -> None:
    event = submitted_event()
    key, value = encode(event)
    assert "Nguyễn".encode() in value, "the name must travel as UTF-8, not \\u escapes"
    topic = unique_topic("roundtrip")
    produce(kafka_bootstrap, topic, key, value)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        records: list[Any] = []
        deadline = time.monotonic() + TIMEOUT_S
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        consumer.close()

    assert len(records) == 1, f"expected the one produced message within {TIMEOUT_S} s"
    record = records[0]
    assert record.key == key
    assert record.value == value
    assert (CONTENT_TYPE[0], CONTENT_TYPE[1]) in [(k, v) for k, v in record.headers]
    decoded = json.loads(record.value.decode("utf-8"))
    assert decoded == event
    assert decoded["data"]["applicant"]["name"] == "Nguyễn Thị Hồng Nhung"


def test_event_roundtrip_with_faust_agent(
    kafka_bootstrap: str, unique_topic: Callable[..., str], unique_group: str, tmp_path: Path
) -> None:
    event = submitted_event()
    key, value = encode(event)
    topic = unique_topic("faust")
    produce(kafka_bootstrap, topic, key, value)

    out = tmp_path / "consumed.json"
    command = [
        sys.executable,
        str(FAUST_APP),
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        # The faust app id is its consumer group.
        "--app-id",
        unique_group,
        "--datadir",
        str(tmp_path / "faust-data"),
        "--out",
        str(out),
        "--timeout",
        str(TIMEOUT_S),
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S + 30, cwd=tmp_path
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the faust worker did not exit: {exc.stderr!r}")
    assert result.returncode == 0, (
        f"faust worker exited {result.returncode}\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    consumed = json.loads(out.read_text(encoding="utf-8"))
    assert consumed["topic"] == topic
    assert consumed["offset"] == 0
    assert not consumed["key_is_none"]
    assert base64.b64decode(consumed["key_b64"]) == key
    assert base64.b64decode(consumed["value_b64"]) == value
    assert json.loads(base64.b64decode(consumed["value_b64"])) == event
