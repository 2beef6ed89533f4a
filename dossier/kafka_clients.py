"""Every Kafka client of the project is built here, from the settings.

The engine's consumer (faust), the outbox relay's producer, the metrics' offset reader, the
replay's reader, the simulator's producer, topic administration and the benchmarks all take
their connection options from `client_options`: one place for the brokers' address and how to
reach them. Adapters receive the clients (or a factory) from the composition root; they never
build one themselves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from dossier.settings import Settings
from engine.events import ALL_TOPICS, AUDIT_CHECKPOINT_TOPIC

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

# The audit checkpoints are one ordered stream: one partition.
SINGLE_PARTITION_TOPICS = frozenset({AUDIT_CHECKPOINT_TOPIC})


class TopicsNotCreated(RuntimeError):
    pass


class KafkaSecurityError(ValueError):
    """The security settings cannot make a client: the message says which setting to fix."""


def client_options(settings: Settings) -> dict[str, Any]:
    """The kafka-python keyword arguments every client of this deployment starts from: the
    brokers' address and, with SASL_SSL, TLS and the SASL login (the password read from its
    file here, when the client is built, so it is in no setting, log or environment)."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers.split(",")}
    if settings.kafka_security_protocol == "PLAINTEXT":
        return options
    username, password = sasl_login(settings)
    options.update(
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_plain_username=username,
        sasl_plain_password=password,
    )
    if settings.kafka_ssl_cafile is not None:
        options["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return options


def sasl_login(settings: Settings) -> tuple[str, str]:
    """(user, password) of the SASL settings; the password from DOSSIER_KAFKA_SASL_PASSWORD_FILE."""
    if not settings.kafka_sasl_username:
        raise KafkaSecurityError(
            f"DOSSIER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
            "DOSSIER_KAFKA_SASL_USERNAME"
        )
    if settings.kafka_sasl_password_file is None:
        raise KafkaSecurityError(
            f"DOSSIER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
            "DOSSIER_KAFKA_SASL_PASSWORD_FILE"
        )
    try:
        password = settings.kafka_sasl_password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KafkaSecurityError(
            f"DOSSIER_KAFKA_SASL_PASSWORD_FILE: cannot read {settings.kafka_sasl_password_file} "
            f"({exc.strerror or exc})"
        ) from None
    if not password:
        raise KafkaSecurityError(
            f"DOSSIER_KAFKA_SASL_PASSWORD_FILE: {settings.kafka_sasl_password_file} is empty"
        )
    return settings.kafka_sasl_username, password


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """faust's `broker_credentials` for the engine's consumer: None with PLAINTEXT, else the
    same SASL login and CA as every other client (faust.SASLCredentials over TLS)."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    import ssl

    from faust import SASLCredentials

    username, password = sasl_login(settings)
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile is not None else None
    return SASLCredentials(
        username=username,
        password=password,
        ssl_context=ssl.create_default_context(cafile=cafile),
        mechanism=settings.kafka_sasl_mechanism,
    )


def faust_broker_url(settings: Settings) -> str:
    """'h1:1,h2:2' -> 'kafka://h1:1;kafka://h2:2', the list form faust accepts."""
    servers = settings.kafka_bootstrap_servers.split(",")
    return ";".join(f"kafka://{s.strip()}" for s in servers if s.strip())


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer with acks=all: a retried send never duplicates or reorders."""
    config: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        # kafka-python's default 16 KiB holds ~25 outputs: a request each, and most of the
        # client's time went to them (62 µs of CPU a message; 31 µs at 256 KiB, measured).
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 30_000,
        "client_id": "dossier-engine-relay",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def consumer(settings: Settings, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer that commits nothing to the broker (the database keeps what was consumed)."""
    config: dict[str, Any] = {**client_options(settings), "enable_auto_commit": False}
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


@contextlib.contextmanager
def admin(
    settings: Settings, request_timeout_ms: int = 30_000, **overrides: Any
) -> Iterator[KafkaAdminClient]:
    """An admin client that is always closed, even when a call fails."""
    config: dict[str, Any] = {
        **client_options(settings),
        "client_id": "dossier-admin",
        "request_timeout_ms": request_timeout_ms,
    }
    config.update(overrides)
    client = KafkaAdminClient(**config)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """kafka-python logs every connection attempt while a broker starts; keep start-up readable."""
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kafka_log.setLevel(level)


def list_topics(settings: Settings) -> list[str]:
    """Topic names on the broker, internal ones (`__consumer_offsets`) left out."""
    with admin(settings, request_timeout_ms=10_000) as client:
        return sorted(t for t in client.list_topics() if not t.startswith("__"))


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int) -> list[str]:
    """Create the given topics (deployed names, prefix already applied) where missing.

    Replication factor 1: the local broker is a single node. Returns the names created; topics
    that already exist are left as they are, even with another partition count.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = list(dict.fromkeys(names))
    created: list[str] = []
    with admin(settings) as client:
        # Another creator may race us (two `up`s, a test in parallel): re-list and retry.
        for _ in range(5):
            existing = set(client.list_topics())
            missing = [name for name in wanted if name not in existing]
            if not missing:
                break
            try:
                client.create_topics(
                    [
                        NewTopic(name, num_partitions=partitions, replication_factor=1)
                        for name in missing
                    ],
                    timeout_ms=30_000,
                )
            except TopicAlreadyExistsError:
                continue
            created.extend(missing)
            break
        else:
            still_missing = set(wanted) - set(client.list_topics())
            if still_missing:
                raise TopicsNotCreated(f"could not create topics {sorted(still_missing)}")
        wait = getattr(client, "wait_for_topics", None)
        if created and wait is not None:
            # A created topic has no partition leader for a moment; a producer sent at it
            # then fails, so return only once it is usable.
            wait(created, timeout_ms=30_000)
    return created


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete topics that exist among `names` (deployed names)."""
    with admin(settings) as client:
        existing = set(client.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            client.delete_topics(doomed, timeout_ms=30_000)


def ensure_contract_topics(settings: Settings) -> list[str]:
    """Every topic of the contract, with the deployment prefix applied."""
    many = [settings.topic(n) for n in ALL_TOPICS if n not in SINGLE_PARTITION_TOPICS]
    single = [settings.topic(n) for n in ALL_TOPICS if n in SINGLE_PARTITION_TOPICS]
    with quiet_kafka_logs():
        return ensure_topics(settings, many, settings.topic_partitions) + ensure_topics(
            settings, single, 1
        )


class ContractTopics:
    """The topic administration `deploy.local_kafka` needs once its broker runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def list_topics(self) -> list[str]:
        with quiet_kafka_logs():
            return list_topics(self.settings)

    def ensure_contract_topics(self) -> list[str]:
        return ensure_contract_topics(self.settings)


def local_broker(action: str, settings: Settings) -> int:
    """`dossier kafka up|down|status`: the local broker of deploy/, with this module's clients."""
    from deploy import local_kafka

    if action == "down":
        return local_kafka.down(settings)
    topics = ContractTopics(settings)
    return (
        local_kafka.up(settings, topics) if action == "up" else local_kafka.status(settings, topics)
    )
