"""The secure broker (contract 1.1, "Transport"): SASL_SSL with SCRAM-SHA-512 and ACLs.

One broker for the session, started by the code behind `dossier kafka up --secure` on free
ports and a data dir of its own (the plaintext broker the other tests use is left alone), and
stopped at the end. Each test gets its own topic prefix and engine group, with the principals'
ACLs granted for them (deploy/kafka-principals.yaml), as a deployment would have them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from deploy import local_kafka
from dossier import kafka_clients
from dossier.settings import Settings
from dossier.tools.supervision import EngineProcess, wait_caught_up
from dossier.tools.workload import read_topic
from engine.events import ALL_TOPICS, DLQ_TOPIC
from tests.fixtures import events as ev
from tests.integration.conftest import unavailable

COMMUNE = ev.COMMUNE_AGENCY
DISTRICT = ev.DISTRICT_AGENCY


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def secure_broker(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The settings of a secure broker started for this session (the super user's topics and
    ACL administration go through `kafka_clients.super_user_settings(...)`)."""
    if shutil.which("java") is None and not __import__("os").environ.get("JAVA_HOME"):
        unavailable("Java for the secure Kafka broker", "kafka", "no java on PATH")
    data_dir = tmp_path_factory.mktemp("kafka-secure")
    broker = replace(
        settings,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        kafka_data_dir=data_dir,
        # The broker's own settings: no client logs in with whatever the environment says.
        kafka_security_protocol="PLAINTEXT",
        kafka_heap="-Xms128m -Xmx512m",
    )
    try:
        code = kafka_clients.local_broker("up", broker, secure=True)
        if code != 0:
            pytest.fail(f"`dossier kafka up --secure` failed ({code}); see {data_dir}/logs")
        yield broker
    finally:
        local_kafka.down(broker)


@pytest.fixture
def deployment(secure_broker: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A deployment of its own on the secure broker: topic prefix, engine group, SQLite file,
    topics created and the principals' ACLs granted by the super user, all removed after."""
    tag = uuid.uuid4().hex[:10]
    run = replace(
        secure_broker,
        topic_prefix=f"sec{tag}.",
        consumer_group=f"sec-{tag}",
        topic_partitions=3,
        database_url=f"sqlite:///{tmp_path / 'engine.db'}",
        metrics_port=0,
        batch_timeout_ms=50,
        kafka_data_dir=tmp_path / "kafka-client",
    )
    admin = kafka_clients.super_user_settings(secure_broker)
    names = [run.topic(t) for t in ALL_TOPICS]
    kafka_clients.ensure_topics(admin, names, 3)
    bindings = kafka_clients.authorize(secure_broker, run)
    try:
        yield run
    finally:
        with contextlib.suppress(Exception):
            kafka_clients.delete_topics(admin, names)
        with contextlib.suppress(Exception):
            kafka_clients.revoke(admin, bindings)


def as_principal(secure_broker: Settings, run: Settings, name: str) -> Settings:
    """`run` as principal `name` of the secure broker (its password file and CA)."""
    return kafka_clients.principal_settings(secure_broker, name, onto=run)


@pytest.fixture
def sender(
    secure_broker: Settings, deployment: Settings
) -> Iterator[Callable[[str, str, dict[str, Any]], None]]:
    """send(principal, topic, event): one producer per principal, closed after the test."""
    producers: dict[str, Any] = {}

    def send(principal: str, topic: str, event: dict[str, Any]) -> None:
        if principal not in producers:
            producers[principal] = kafka_clients.producer(
                as_principal(secure_broker, deployment, principal), linger_ms=0
            )
        producers[principal].send(
            deployment.topic(topic), key=str(event["subject"]).encode(), value=ev.to_bytes(event)
        ).get(timeout=30)

    yield send
    for producer in producers.values():
        producer.close(timeout=10)


def broker_log_since(broker: Settings, offset: int) -> str:
    log = local_kafka.layout(broker).server_log
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def broker_log_size(broker: Settings) -> int:
    return local_kafka.layout(broker).server_log.stat().st_size


# --- the engine over SASL_SSL ------------------------------------------------------------------


def test_the_engine_runs_end_to_end_over_sasl_ssl(
    secure_broker: Settings,
    deployment: Settings,
    sender: Callable[[str, str, dict[str, Any]], None],
    tmp_path: Path,
) -> None:
    birth = f"{COMMUNE}-250303-0001"
    land = f"{COMMUNE}-250630-0001"
    day = "2025-06-30"
    script: list[tuple[str, str, dict[str, Any]]] = [
        (
            "portal",
            "dossier.submission",
            ev.submitted(procedure="1.001193", dossier=birth, time="2025-03-03T08:00:00+07:00"),
        ),
        (
            "commune",
            "dossier.commune",
            ev.received(dossier=birth, time="2025-03-03T09:00:00+07:00"),
        ),
        (
            "commune",
            "dossier.commune",
            ev.processing_started(dossier=birth, time="2025-03-03T09:30:00+07:00"),
        ),
        (
            "commune",
            "dossier.commune",
            ev.resolved(dossier=birth, time="2025-03-03T14:00:00+07:00"),
        ),
        (
            "commune",
            "dossier.commune",
            ev.result_returned(dossier=birth, time="2025-03-03T15:00:00+07:00"),
        ),
        (
            "portal",
            "dossier.submission",
            ev.submitted(
                procedure="DD.GCN.LD", dossier=land, full_online=True, time=f"{day}T08:00:00+07:00"
            ),
        ),
        ("commune", "dossier.commune", ev.received(dossier=land, time=f"{day}T08:30:00+07:00")),
        (
            "commune",
            "dossier.commune",
            ev.processing_started(dossier=land, time=f"{day}T09:00:00+07:00"),
        ),
        (
            "commune",
            "dossier.commune",
            ev.transferred(
                dossier=land, to_level="district", to_agency=DISTRICT, time=f"{day}T10:00:00+07:00"
            ),
        ),
        (
            "district",
            "dossier.district",
            ev.payment_requested(dossier=land, agency=DISTRICT, time=f"{day}T11:00:00+07:00"),
        ),
        (
            "payment",
            "dossier.submission",
            ev.payment_completed(dossier=land, time=f"{day}T14:00:00+07:00"),
        ),
    ]
    for principal, topic, event in script:
        sender(principal, topic, event)
    engine_settings = as_principal(secure_broker, deployment, "engine")
    with EngineProcess(engine_settings, tmp_path / "engine.log") as engine:
        wait_caught_up(engine_settings, 120, engine)
    log = (tmp_path / "engine.log").read_text(encoding="utf-8", errors="replace")
    assert "AuthorizationFailed" not in log, log[-3000:]

    downstream = as_principal(secure_broker, deployment, "downstream")
    statuses: dict[str, list[int]] = {}
    for record in read_topic(downstream, deployment.topic("dossier.status"), timeout_s=15):
        event = json.loads(record.value)
        statuses.setdefault(event["subject"], []).append(event["data"]["status_code"])
    assert sorted(statuses[birth]) == [1, 2, 4, 9, 10]
    assert statuses[land][:4] == [1, 2, 4, 4]
    discounts = read_topic(downstream, deployment.topic("dossier.fee-discount"), timeout_s=10)
    assert [json.loads(r.value)["subject"] for r in discounts] == [land]
    operator = as_principal(secure_broker, deployment, "operator")
    assert read_topic(operator, deployment.topic(DLQ_TOPIC), timeout_s=5) == []


# --- what the ACLs refuse ---------------------------------------------------------------------


def test_a_commune_system_cannot_write_the_province_topic(
    secure_broker: Settings, deployment: Settings
) -> None:
    commune = as_principal(secure_broker, deployment, "commune")
    producer = kafka_clients.producer(commune, linger_ms=0, max_block_ms=15_000)
    try:
        event = ev.resolved(dossier=f"{COMMUNE}-250303-0009", agency=ev.PROVINCE_AGENCY)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(
                deployment.topic("dossier.province"),
                key=str(event["subject"]).encode(),
                value=ev.to_bytes(event),
            ).get(timeout=30)
        # Its own topic it may write.
        own = ev.received(dossier=f"{COMMUNE}-250303-0009")
        producer.send(
            deployment.topic("dossier.commune"),
            key=str(own["subject"]).encode(),
            value=ev.to_bytes(own),
        ).get(timeout=30)
    finally:
        producer.close(timeout=10)


def test_a_downstream_system_cannot_read_the_dead_letters(
    secure_broker: Settings, deployment: Settings
) -> None:
    # A dead letter on the topic (as the engine, the only writer), which the operator reads.
    engine = as_principal(secure_broker, deployment, "engine")
    producer = kafka_clients.producer(engine, linger_ms=0)
    try:
        producer.send(deployment.topic(DLQ_TOPIC), key=b"k", value=b'{"personal":"data"}').get(
            timeout=30
        )
    finally:
        producer.close(timeout=10)
    operator = as_principal(secure_broker, deployment, "operator")
    assert len(read_topic(operator, deployment.topic(DLQ_TOPIC), timeout_s=10, expect=1)) == 1

    downstream = as_principal(secure_broker, deployment, "downstream")
    consumer = kafka_clients.consumer(downstream, auto_offset_reset="earliest")
    try:
        dlq = deployment.topic(DLQ_TOPIC)
        assert not consumer.partitions_for_topic(dlq)  # not even visible to it
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.end_offsets([TopicPartition(dlq, p) for p in range(3)])
        consumer.assign([TopicPartition(dlq, p) for p in range(3)])
        assert not any(consumer.poll(timeout_ms=3000).values())
    finally:
        consumer.close()
    # What it is there for, it reads. A consumer of its own: one still assigned the dead
    # letters refreshes their metadata too, and may be refused for them on any later call.
    reader = kafka_clients.consumer(downstream, auto_offset_reset="earliest")
    try:
        status = deployment.topic("dossier.status")
        assert reader.end_offsets([TopicPartition(status, 0)]) == {TopicPartition(status, 0): 0}
    finally:
        reader.close()


def test_a_plaintext_client_cannot_connect(secure_broker: Settings) -> None:
    plaintext = replace(secure_broker, kafka_security_protocol="PLAINTEXT")
    before = broker_log_size(secure_broker)
    with (
        pytest.raises(KafkaError),
        kafka_clients.quiet_kafka_logs(),
        kafka_clients.admin(
            plaintext, request_timeout_ms=5000, bootstrap_timeout_ms=5000
        ) as client,
    ):
        client.list_topics()
    assert "(SSL handshake failed)" in broker_log_since(secure_broker, before)


def test_a_wrong_password_cannot_connect(secure_broker: Settings, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password", encoding="utf-8")
    impostor = replace(
        kafka_clients.principal_settings(secure_broker, "operator"), kafka_sasl_password_file=wrong
    )
    before = broker_log_size(secure_broker)
    with (
        pytest.raises(KafkaError),
        kafka_clients.quiet_kafka_logs(),
        kafka_clients.admin(impostor, request_timeout_ms=5000, bootstrap_timeout_ms=5000) as client,
    ):
        client.list_topics()
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in broker_log_since(
        secure_broker, before
    )


def test_secrets_are_private_and_client_config_names_files_only(
    secure_broker: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = local_kafka.layout(secure_broker)
    assert paths.secrets_dir.stat().st_mode & 0o777 == 0o700
    for path in paths.secrets_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    config = kafka_clients.client_config(secure_broker, "commune")
    password = local_kafka.read_password(paths, "commune")
    assert password not in json.dumps(config)
    assert config["sasl_plain_password_file"] == str(paths.password_file("commune"))
    assert config["ssl_cafile"] == str(paths.ca_cert)
    # And the `up` output printed no password either.
    kafka_clients.local_broker("up", secure_broker, secure=True)
    out = capsys.readouterr().out
    assert "already running" in out
    for user in local_kafka.load_principals().users:
        assert local_kafka.read_password(paths, user) not in out
