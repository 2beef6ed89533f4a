"""Every Kafka client of the project is built here, from the settings.

The engine's consumer (faust), the outbox relay's producer, the metrics' offset reader, the
replay's reader, the simulator's producer, topic administration and the benchmarks all take
their connection options from `client_options`: one place for the brokers' address and how to
reach them. Adapters receive the clients (or a factory) from the composition root; they never
build one themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from dossier.settings import Settings
from engine.events import ALL_TOPICS, AUDIT_CHECKPOINT_TOPIC

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from deploy.local_kafka import AclBinding

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


class TopicNotFound(LookupError):
    pass


def read_topic(
    settings: Settings, topic: str, *, stall_timeout_s: float = 30.0
) -> Iterator[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record on `topic` (a deployed name) from its start to
    its end as of the call, in offset order per partition: an auditor's read of a whole topic.

    No consumer group: nothing is committed and nobody's offsets move. Records are yielded as
    they are fetched, so memory stays at one fetch whatever the topic's size. Raises
    TopicNotFound if the topic does not exist, TimeoutError if the broker sends nothing for
    `stall_timeout_s` while records remain.
    """
    from kafka import TopicPartition

    client = consumer(
        settings,
        group_id=None,
        client_id="dossier-audit-reader",
        auto_offset_reset="earliest",
    )
    try:
        partitions = client.partitions_for_topic(topic)
        if not partitions:
            raise TopicNotFound(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        client.assign(assigned)
        client.seek_to_beginning(*assigned)
        end = client.end_offsets(assigned)
        remaining = {tp for tp in assigned if client.position(tp) < end[tp]}
        last_progress = time.monotonic()
        while remaining:
            fetched = client.poll(timeout_ms=500, max_records=500)
            if not fetched:
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise TimeoutError(f"{topic}: no records for {stall_timeout_s:.0f} s")
                continue
            last_progress = time.monotonic()
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < end[tp]:
                        yield tp.partition, record.offset, record.value
            # By position, not by the last record's offset: transaction markers and compacted
            # records leave offsets that no record carries.
            remaining = {tp for tp in remaining if client.position(tp) < end[tp]}
    finally:
        client.close()


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
    """The administration `deploy.local_kafka` needs once its broker runs: topics, and for a
    secure broker SCRAM logins and ACLs. Built with the super user's settings there."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def list_topics(self) -> list[str]:
        with quiet_kafka_logs():
            return list_topics(self.settings)

    def ensure_contract_topics(self) -> list[str]:
        return ensure_contract_topics(self.settings)

    def ensure_scram_users(self, passwords: Mapping[str, str]) -> list[str]:
        return ensure_scram_users(self.settings, passwords)

    def grant(self, bindings: Sequence[AclBinding]) -> None:
        grant(self.settings, bindings)


# --- the local secure broker's principals ------------------------------------------------------


def secure_broker_settings(settings: Settings) -> Settings:
    """The settings of the local *secure* broker: where the address, controller port and data
    dir are left at their defaults, the secure broker's own (9094, 9095, state dir
    kafka-secure), so it runs beside the plaintext one; set ones are kept."""
    from deploy import local_kafka

    defaults = Settings()
    changes: dict[str, Any] = {}
    offset = local_kafka.SECURE_PORT_OFFSET
    if settings.kafka_bootstrap_servers == defaults.kafka_bootstrap_servers:
        host, port = defaults.kafka_listen
        changes["kafka_bootstrap_servers"] = f"{host}:{port + offset}"
    if settings.kafka_controller_port == defaults.kafka_controller_port:
        changes["kafka_controller_port"] = defaults.kafka_controller_port + offset
    if settings.kafka_data_dir == defaults.kafka_data_dir:
        changes["kafka_data_dir"] = (
            defaults.kafka_data_dir.parent / local_kafka.SECURE_DATA_DIR_NAME
        )
    return dataclasses.replace(settings, **changes) if changes else settings


def principal_settings(
    settings: Settings, principal: str, onto: Settings | None = None
) -> Settings:
    """`onto` (by default `settings`) logged in as `principal` of deploy/kafka-principals.yaml,
    or as the super user, on the local secure broker whose settings are `settings`
    (secure_broker_settings): SASL_SSL, its password file, the CA."""
    from deploy import local_kafka

    paths = local_kafka.layout(settings)
    names = local_kafka.load_principals(known_topics=ALL_TOPICS).users
    if principal not in names:
        raise KafkaSecurityError(
            f"no principal {principal!r} in {local_kafka.PRINCIPALS_FILE} "
            f"(there are: {', '.join(names[1:])})"
        )
    return dataclasses.replace(
        settings if onto is None else onto,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",  # the secure broker's (deploy.local_kafka)
        kafka_sasl_username=principal,
        kafka_sasl_password_file=paths.password_file(principal),
        kafka_ssl_cafile=paths.ca_cert,
    )


def super_user_settings(settings: Settings, onto: Settings | None = None) -> Settings:
    """The secure broker's own principal: topics, logins and ACLs are administered as it."""
    from deploy import local_kafka

    return principal_settings(settings, local_kafka.load_principals().super_user, onto)


def client_config(settings: Settings, principal: str) -> dict[str, Any]:
    """What `dossier kafka client-config PRINCIPAL` prints: kafka-python's keyword arguments
    for that principal, with the password's file in place of the password."""
    chosen = principal_settings(settings, principal)
    return {
        "bootstrap_servers": chosen.kafka_bootstrap_servers.split(","),
        "security_protocol": chosen.kafka_security_protocol,
        "sasl_mechanism": chosen.kafka_sasl_mechanism,
        "sasl_plain_username": chosen.kafka_sasl_username,
        # Not a kafka-python argument: read it and pass its text as sasl_plain_password.
        "sasl_plain_password_file": str(chosen.kafka_sasl_password_file),
        "ssl_cafile": str(chosen.kafka_ssl_cafile),
    }


def client_env(settings: Settings, principal: str) -> dict[str, str]:
    """The DOSSIER_KAFKA_* settings that make this project's clients that principal."""
    chosen = principal_settings(settings, principal)
    return {
        "DOSSIER_KAFKA_BOOTSTRAP_SERVERS": chosen.kafka_bootstrap_servers,
        "DOSSIER_KAFKA_SECURITY_PROTOCOL": chosen.kafka_security_protocol,
        "DOSSIER_KAFKA_SASL_MECHANISM": chosen.kafka_sasl_mechanism,
        "DOSSIER_KAFKA_SASL_USERNAME": chosen.kafka_sasl_username,
        "DOSSIER_KAFKA_SASL_PASSWORD_FILE": str(chosen.kafka_sasl_password_file),
        "DOSSIER_KAFKA_SSL_CAFILE": str(chosen.kafka_ssl_cafile),
    }


def ensure_scram_users(settings: Settings, passwords: Mapping[str, str]) -> list[str]:
    """Give every user without one a SCRAM login with its password (those the storage format
    did not bootstrap: principals added to the file later). The names of those added."""
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    with quiet_kafka_logs(), admin(settings) as client:
        known = client.describe_user_scram_credentials()
        missing = [
            user
            for user in passwords
            if user not in known or known[user]["error"] or not known[user]["credential_infos"]
        ]
        if not missing:
            return []
        mechanism = ScramMechanism[settings.kafka_sasl_mechanism.replace("-", "_")]
        errors = client.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, mechanism, passwords[user]) for user in missing]
        )
    failed = {user: error for user, error in errors.items() if error}
    if failed:
        raise KafkaSecurityError(f"SCRAM logins not created: {failed}")
    return missing


def _acls(bindings: Sequence[AclBinding]) -> list[Any]:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    return [
        ACL(
            principal=b.principal,
            host="*",
            operation=ACLOperation[b.operation.upper()],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[b.resource_type.upper()],
                b.name,
                ACLResourcePatternType[b.pattern.upper()],
            ),
        )
        for b in bindings
    ]


def grant(settings: Settings, bindings: Sequence[AclBinding]) -> None:
    """Create the ACLs (as the super user); one that exists already is left as it is."""
    if not bindings:
        return
    acls = _acls(bindings)
    with quiet_kafka_logs(), admin(settings) as client:
        result = client.create_acls(acls)
        if result["failed"]:
            raise KafkaSecurityError(f"ACLs not created: {result['failed']}")
        # The controller has them; the broker's authorizer learns them from the metadata log
        # a moment later, and a client refused meanwhile would not retry: wait for them.
        wanted = {_acl_key(acl) for acl in acls}
        deadline = time.monotonic() + 30
        while True:
            present = {_acl_key(acl) for acl in _describe_all_acls(client)}
            if wanted <= present:
                return
            if time.monotonic() > deadline:
                raise KafkaSecurityError(f"{len(wanted - present)} ACLs not in force after 30 s")
            time.sleep(0.1)


def _acl_key(acl: Any) -> tuple[Any, ...]:
    pattern = acl.resource_pattern
    return (
        acl.principal,
        acl.operation,
        pattern.resource_type,
        pattern.resource_name,
        pattern.pattern_type,
    )


def _describe_all_acls(client: KafkaAdminClient) -> list[Any]:
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    acls, _ = client.describe_acls(
        ACLFilter(
            principal=None,
            host=None,
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePatternFilter(
                ResourceType.ANY, None, ACLResourcePatternType.ANY
            ),
        )
    )
    return list(acls)


def revoke(settings: Settings, bindings: Sequence[AclBinding]) -> None:
    """Delete exactly these ACLs (a demo's or a test's, when its topics go)."""
    from kafka.admin import ACLFilter

    if not bindings:
        return
    filters = [
        ACLFilter(
            principal=acl.principal,
            host=acl.host,
            operation=acl.operation,
            permission_type=acl.permission_type,
            resource_pattern=acl.resource_pattern,
        )
        for acl in _acls(bindings)
    ]
    with quiet_kafka_logs(), admin(settings) as client:
        client.delete_acls(filters)


def deployment_acls(settings: Settings) -> list[AclBinding]:
    """The principals' ACLs for the topic prefix and engine group of `settings`."""
    from deploy import local_kafka

    principals = local_kafka.load_principals(known_topics=ALL_TOPICS)
    return local_kafka.acl_bindings(principals, settings.topic_prefix, settings.consumer_group)


def authorize(broker: Settings, deployment: Settings) -> list[AclBinding]:
    """Grant the principals' ACLs for another deployment on the secure broker (a demo's, a
    test's or a benchmark's own topic prefix and engine group); the bindings, for `revoke`."""
    bindings = deployment_acls(deployment)
    grant(super_user_settings(broker), bindings)
    return bindings


def local_broker(action: str, settings: Settings, secure: bool = False) -> int:
    """`dossier kafka up|down|status [--secure]`: the local broker of deploy/, with this
    module's clients (as the super user, for a secure broker)."""
    from deploy import local_kafka

    if secure:
        settings = secure_broker_settings(settings)
    if action == "down":
        return local_kafka.down(settings)
    try:
        topics = ContractTopics(super_user_settings(settings) if secure else settings)
    except local_kafka.LocalKafkaError as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return local_kafka.EXIT_FAILED
    if action == "up":
        return local_kafka.up(settings, topics, secure=secure)
    return local_kafka.status(settings, topics)
