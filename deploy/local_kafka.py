"""A local single-node Apache Kafka (KRaft, combined broker and controller) without Docker.

The broker's jars come from Maven Central through the machine's `mvn`, into a cache outside
the repository, so only the first start needs the network. Everything the broker writes
(config, KRaft log, server log, PID file) lives in `settings.kafka_data_dir`.

Kafka 3.9.x rather than 4.x: Kafka 4 removed old protocol versions that aiokafka (under
faust-streaming) still sends, and it dropped the reload4j logging set-up used here.

`up(..., secure=True)` starts the same broker with one client listener, SASL_SSL
(SCRAM-SHA-512 over TLS), KRaft's StandardAuthorizer with nothing allowed unless granted, and
the principals and ACLs of deploy/kafka-principals.yaml. At the first start it makes a CA and
the broker's certificate (openssl), a password per principal (files mode 0600 in a 0700
directory under the data dir; never printed) and bootstraps the SCRAM credentials when it
formats the storage. The KRaft controller listener stays on loopback, over mutual TLS with the
broker's own certificate.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import secrets as token
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml


class BrokerSettings(Protocol):
    """What starting the local broker needs of the settings (dossier.settings.Settings has it):
    deploy/ reads them without importing the engine's packages."""

    @property
    def kafka_listen(self) -> tuple[str, int]: ...

    @property
    def kafka_controller_port(self) -> int: ...

    @property
    def kafka_data_dir(self) -> Path: ...

    @property
    def cache_dir(self) -> Path: ...

    @property
    def kafka_version(self) -> str: ...

    @property
    def kafka_heap(self) -> str: ...

    @property
    def topic_partitions(self) -> int: ...

    @property
    def maven_repo_local(self) -> Path | None: ...

    @property
    def topic_prefix(self) -> str: ...

    @property
    def consumer_group(self) -> str: ...


class TopicAdmin(Protocol):
    """The Kafka client side of `up` and `status`, handed in by the command line
    (dossier.kafka_clients): deploy/ builds no client of its own. For a secure broker it
    connects as the super user."""

    def list_topics(self) -> list[str]: ...

    def ensure_contract_topics(self) -> list[str]: ...

    def ensure_scram_users(self, passwords: Mapping[str, str]) -> list[str]:
        """Give each user a SCRAM-SHA-512 login with that password if it has none; the
        names of the users created."""
        ...

    def grant(self, bindings: Sequence[AclBinding]) -> None:
        """Create these ACLs (creating one that exists changes nothing)."""
        ...


KAFKA_GROUP = "org.apache.kafka"
KAFKA_ARTIFACT = "kafka_2.13"
# Kafka 3.9 logs through slf4j 1.7; without a binding on the class path it would log nothing.
# reload4j is pinned to the version Kafka's own 3.9 distribution ships (the binding's pom
# would pull an older one).
LOGGING_DEPENDENCIES = (
    ("org.slf4j", "slf4j-reload4j", "1.7.36"),
    ("ch.qos.reload4j", "reload4j", "1.2.25"),
)
# Pinned so the result does not depend on whatever plugin version the local Maven defaults to.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0
# Checkpoints are rare and must stay totally ordered.
NODE_ID = 1
COMPLETE_MARKER = ".complete"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3

PRINCIPALS_FILE = Path(__file__).resolve().parent / "kafka-principals.yaml"
SASL_MECHANISM = "SCRAM-SHA-512"
# Where the settings leave the broker's address and data dir at their defaults, a secure broker
# takes these instead, so it runs beside the plaintext one (`dossier kafka up --secure`).
SECURE_PORT_OFFSET = 2  # 9092 -> 9094, controller 9093 -> 9095
SECURE_DATA_DIR_NAME = "kafka-secure"
CERT_DAYS = 825
CA_DAYS = 3650


class LocalKafkaError(RuntimeError):
    """Something the operator has to fix; the message says what."""


@dataclass(frozen=True)
class Layout:
    """Where the local broker keeps its files."""

    data_dir: Path
    libs_dir: Path

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.data_dir / "log4j.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kraft-combined-logs"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout and stderr: startup crashes land here, not in server.log."""
        return self.logs_dir / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def version_file(self) -> Path:
        return self.data_dir / "kafka.version"

    @property
    def cluster_id_file(self) -> Path:
        return self.data_dir / "cluster-id"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / ".lock"

    # --- a secure broker's files ---

    @property
    def secrets_dir(self) -> Path:
        """Mode 0700: passwords, the CA's key and the broker's key (files mode 0600)."""
        return self.data_dir / "secrets"

    @property
    def tls_dir(self) -> Path:
        """Public: the CA certificate clients trust, and the broker's certificate."""
        return self.data_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def broker_cert(self) -> Path:
        return self.tls_dir / "broker.pem"

    @property
    def ca_key(self) -> Path:
        return self.secrets_dir / "ca.key"

    @property
    def broker_keystore(self) -> Path:
        """The broker's private key, its certificate and the CA's: Kafka's PEM key store."""
        return self.secrets_dir / "broker-keystore.pem"

    @property
    def security_file(self) -> Path:
        """Written when the storage is formatted for a secure broker: its mode for good."""
        return self.data_dir / "security"

    def password_file(self, principal: str) -> Path:
        return self.secrets_dir / f"{principal}.password"


def layout(settings: BrokerSettings) -> Layout:
    return Layout(
        data_dir=settings.kafka_data_dir,
        libs_dir=settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs",
    )


# --- Principals and ACLs (deploy/kafka-principals.yaml) ------------------------------------

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
CONSUMER_GROUP_PLACEHOLDER = "{consumer_group}"
# What `admin: true` may do to the deployment's topics.
ADMIN_OPERATIONS = ("create", "delete", "alter", "describe", "describe_configs", "alter_configs")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    admin: bool = False


@dataclass(frozen=True)
class Principals:
    super_user: str
    principals: dict[str, Principal] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        """Every SCRAM login: the super user first."""
        return [self.super_user, *self.principals]


@dataclass(frozen=True)
class AclBinding:
    """One ALLOW ACL, in words kafka-python's ACL types are named by (lower case)."""

    principal: str  # "User:engine"
    resource_type: str  # "topic" | "group"
    name: str
    pattern: str  # "literal" | "prefixed"
    operation: str  # "read", "write", "create", ...


def load_principals(
    path: Path = PRINCIPALS_FILE, known_topics: Sequence[str] | None = None
) -> Principals:
    """The principals file, checked: a mistake in it must stop `up`, not open a topic."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LocalKafkaError(f"{path}: cannot read the principals ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("principals"), dict):
        raise LocalKafkaError(f"{path}: expected `super_user:` and a `principals:` mapping")
    super_user = str(data.get("super_user", ""))
    if not _NAME.match(super_user):
        raise LocalKafkaError(f"{path}: super_user {super_user!r} is not a valid name")
    result: dict[str, Principal] = {}
    for name, entry in data["principals"].items():
        where = f"{path}: principal {name!r}"
        if not isinstance(name, str) or not _NAME.match(name) or name == super_user:
            raise LocalKafkaError(f"{where}: names are [a-z][a-z0-9_-]*, not the super user's")
        if not isinstance(entry, dict):
            raise LocalKafkaError(f"{where}: expected a mapping")
        unknown = set(entry) - {"role", "read", "write", "groups", "admin"}
        if unknown:
            raise LocalKafkaError(f"{where}: unknown keys {sorted(unknown)}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("read", "write", "groups"):
            values = entry.get(key, [])
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise LocalKafkaError(f"{where}: `{key}` must be a list of names")
            lists[key] = tuple(values)
        if known_topics is not None:
            strange = [t for t in lists["read"] + lists["write"] if t not in known_topics]
            if strange:
                raise LocalKafkaError(f"{where}: not contract topics: {', '.join(strange)}")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise LocalKafkaError(f"{where}: `admin` is true or false")
        result[name] = Principal(name, str(entry.get("role", "")), admin=admin, **lists)
    if not result:
        raise LocalKafkaError(f"{path}: no principals")
    return Principals(super_user, result)


def acl_bindings(
    principals: Principals, topic_prefix: str, consumer_group: str
) -> list[AclBinding]:
    """The ACLs of the principals for one deployment: its topic prefix and engine's group."""
    bindings: list[AclBinding] = []
    for p in principals.principals.values():
        user = f"User:{p.name}"
        for operation, topics in (("read", p.read), ("write", p.write)):
            bindings += [
                AclBinding(user, "topic", f"{topic_prefix}{t}", "literal", operation)
                for t in topics
            ]
        for group in p.groups:
            if group == CONSUMER_GROUP_PLACEHOLDER:
                bindings.append(AclBinding(user, "group", consumer_group, "literal", "read"))
            else:
                bindings.append(AclBinding(user, "group", group, "prefixed", "read"))
        if p.admin:
            bindings += [
                AclBinding(user, "topic", f"{topic_prefix}dossier.", "prefixed", operation)
                for operation in ADMIN_OPERATIONS
            ]
    return bindings


# --- Commands ------------------------------------------------------------------------------


def up(settings: BrokerSettings, topics: TopicAdmin, secure: bool = False) -> int:
    """Start the broker if it is not running, then make sure every contract topic exists; a
    secure broker also gets every principal's login and the ACLs of the settings' prefix."""
    paths = layout(settings)
    host, port = settings.kafka_listen
    try:
        principals = load_principals() if secure else None
        with _locked(paths):
            _check_mode(paths, secure)
            passwords = _prepare_secure(settings, paths, principals) if principals else {}
            pid = running_pid(paths)
            if pid is not None:
                _check_running_matches(settings, paths, pid, secure)
                print(f"kafka: already running (pid {pid}) on {host}:{port}; nothing to start")
            else:
                _start(settings, paths, topics, passwords)
            try:
                users = topics.ensure_scram_users(passwords) if passwords else []
                created = topics.ensure_contract_topics()
                if principals is not None:
                    topics.grant(
                        acl_bindings(principals, settings.topic_prefix, settings.consumer_group)
                    )
            except Exception as exc:  # kafka-python raises many types; all mean the same here
                raise LocalKafkaError(
                    f"the broker on {host}:{port} did not accept the contract topics, logins "
                    f"or ACLs ({type(exc).__name__}: {exc}); see {paths.server_log}"
                ) from exc
    except LocalKafkaError as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if created:
        print(f"kafka: created topics: {', '.join(created)}")
    else:
        print("kafka: all contract topics exist")
    if principals is not None:
        if users:
            print(f"kafka: SCRAM logins added after the first start: {', '.join(users)}")
        print(
            f"kafka: SASL_SSL ({SASL_MECHANISM}) only; principals: "
            f"{', '.join(principals.principals)}; ACLs for topic prefix "
            f"{settings.topic_prefix or '(none)'!r} and engine group {settings.consumer_group!r}"
        )
        print(f"kafka: CA certificate {paths.ca_cert}; passwords in {paths.secrets_dir} (0700)")
        print("kafka: `dossier kafka client-config NAME --secure` prints a principal's settings")
    return EXIT_OK


def down(settings: BrokerSettings) -> int:
    """Stop exactly the broker process `up` started, and nothing else."""
    paths = layout(settings)
    with _locked(paths):
        pid = _read_pid(paths)
        if pid is None:
            print("kafka: not running (no PID file)")
            return EXIT_OK
        if not _is_our_broker(pid, paths):
            paths.pid_file.unlink(missing_ok=True)
            print(f"kafka: not running (removed stale PID file for pid {pid})")
            return EXIT_OK
        print(f"kafka: stopping pid {pid} ...")
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, STOP_TIMEOUT_S):
            print(f"kafka: pid {pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, KILL_TIMEOUT_S):
                print(f"kafka: pid {pid} survived SIGKILL", file=sys.stderr)
                return EXIT_FAILED
        paths.pid_file.unlink(missing_ok=True)
        print(f"kafka: stopped in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def status(settings: BrokerSettings, topics: TopicAdmin) -> int:
    paths = layout(settings)
    host, port = settings.kafka_listen
    pid = running_pid(paths)
    version = _read_text(paths.version_file) or settings.kafka_version
    print(f"kafka: {'running' if pid is not None else 'not running'}")
    print(f"  pid:        {pid if pid is not None else '-'}")
    print(f"  listen:     {host}:{port} (controller {host}:{settings.kafka_controller_port})")
    print(f"  version:    {version}")
    print(f"  security:   {'SASL_SSL, ACLs' if is_secure(paths) else 'PLAINTEXT'}")
    print(f"  data dir:   {paths.data_dir}")
    print(f"  server log: {paths.server_log}")
    print(f"  console:    {paths.console_log}")
    if pid is None:
        if _port_open(host, port):
            print(f"  note: something else answers on {host}:{port} (not from this data dir)")
        return EXIT_NOT_RUNNING
    try:
        names = topics.list_topics()
    except Exception as exc:  # the broker may be starting or wedged; status must still answer
        print(f"  topics:     unavailable ({type(exc).__name__}: {exc})")
    else:
        print(f"  topics:     {', '.join(names) if names else '(none)'}")
    return EXIT_OK


# --- Jars ----------------------------------------------------------------------------------


def fetch_libs(settings: BrokerSettings) -> Path:
    """The broker's class path directory, resolved with Maven on first use only."""
    libs = layout(settings).libs_dir
    if _libs_complete(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "Maven ('mvn') is needed once to fetch the Kafka jars and was not found on PATH "
            "(Debian: apt-get install maven)"
        )
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    pom = work / "pom.xml"
    pom.write_text(_pom(settings.kafka_version), encoding="utf-8")
    staging = work / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    if settings.maven_repo_local is not None:
        command.append(f"-Dmaven.repo.local={settings.maven_repo_local}")
    print(f"kafka: fetching Apache Kafka {settings.kafka_version} jars with Maven into {libs}")
    started = time.monotonic()
    # Quiet Maven still writes terminal escape codes; keep its output for failures only.
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise LocalKafkaError(
            f"Maven could not resolve {KAFKA_GROUP}:{KAFKA_ARTIFACT}:{settings.kafka_version} "
            f"(exit {result.returncode}); command: {shlex.join(command)}\n{output}"
        )
    jars = sorted(p.name for p in staging.glob("*.jar"))
    if not any(j.startswith(f"{KAFKA_ARTIFACT}-") for j in jars):
        raise LocalKafkaError(f"Maven finished but {staging} holds no {KAFKA_ARTIFACT} jar")
    # Rename then mark: a run interrupted half-way leaves no marker and is redone next time.
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (libs / COMPLETE_MARKER).write_text("\n".join(jars) + "\n", encoding="utf-8")
    print(f"kafka: {len(jars)} jars fetched in {time.monotonic() - started:.1f} s")
    return libs


def _libs_complete(libs: Path) -> bool:
    marker = libs / COMPLETE_MARKER
    if not marker.is_file():
        return False
    names = marker.read_text(encoding="utf-8").split()
    return bool(names) and all((libs / name).is_file() for name in names)


def _pom(version: str) -> str:
    dependencies = [(KAFKA_GROUP, KAFKA_ARTIFACT, version), *LOGGING_DEPENDENCIES]
    xml = "".join(
        f"    <dependency>\n      <groupId>{group}</groupId>\n"
        f"      <artifactId>{artifact}</artifactId>\n      <version>{ver}</version>\n"
        "    </dependency>\n"
        for group, artifact, ver in dependencies
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/local_kafka.py: the class path of a local Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.dossier-engine</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{xml}  </dependencies>
</project>
"""


# --- Broker process ------------------------------------------------------------------------


def _start(
    settings: BrokerSettings, paths: Layout, topics: TopicAdmin, passwords: Mapping[str, str]
) -> None:
    host, port = settings.kafka_listen
    if _port_open(host, port):
        raise LocalKafkaError(
            f"{host}:{port} is already in use by a process not started from {paths.data_dir}; "
            "stop it or set DOSSIER_KAFKA_BOOTSTRAP_SERVERS to another port"
        )
    java = _java()
    started = time.monotonic()
    libs = fetch_libs(settings)
    fetched = time.monotonic()
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    _write_config(settings, paths, next(iter(passwords), None))
    _format_storage(java, libs, paths, passwords)
    command = [
        java,
        *shlex.split(settings.kafka_heap),
        # The JVM options kafka-server-start.sh would pass.
        "-server",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration={paths.log4j_properties.as_uri()}",
        f"-Dkafka.logs.dir={paths.logs_dir}",
        "-cp",
        str(libs / "*"),
        "kafka.Kafka",
        str(paths.server_properties),
    ]
    with paths.console_log.open("ab") as console:
        process = subprocess.Popen(
            command,
            cwd=paths.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal that ran `up` must not stop the broker.
            start_new_session=True,
        )
    paths.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
    paths.version_file.write_text(f"{settings.kafka_version}\n", encoding="utf-8")
    print(f"kafka: started Apache Kafka {settings.kafka_version} (pid {process.pid}), waiting ...")
    try:
        _wait_ready(settings, paths, process, topics)
    except LocalKafkaError:
        # A half-started broker would hold the ports and the PID file: leave nothing behind.
        if process.poll() is None:
            process.kill()
            process.wait(timeout=KILL_TIMEOUT_S)
        paths.pid_file.unlink(missing_ok=True)
        raise
    ready = time.monotonic()
    print(
        f"kafka: ready on {host}:{port} in {ready - started:.1f} s "
        f"(jars {fetched - started:.1f} s, broker {ready - fetched:.1f} s)"
    )


def _check_running_matches(
    settings: BrokerSettings, paths: Layout, pid: int, secure: bool = False
) -> None:
    """A broker started with other ports keeps them until restarted: say so, do not hang."""
    host, port = settings.kafka_listen
    wanted = f"{'SASL_SSL' if secure else 'PLAINTEXT'}://{host}:{port}"
    properties = dict(
        line.split("=", 1)
        for line in _read_text(paths.server_properties).splitlines()
        if "=" in line and not line.startswith("#")
    )
    actual = properties.get("advertised.listeners", "")
    if actual != wanted:
        raise LocalKafkaError(
            f"the broker from {paths.data_dir} is running (pid {pid}) with listener {actual!r}, "
            f"but the settings ask for {wanted!r}; run `dossier kafka down` and `up` again"
        )


def _wait_ready(
    settings: BrokerSettings, paths: Layout, process: subprocess.Popen[bytes], topics: TopicAdmin
) -> None:
    """Until an admin client connects and the broker answers metadata requests."""
    host, port = settings.kafka_listen
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = "port not open yet"
    while True:
        code = process.poll()
        if code is not None:
            raise LocalKafkaError(
                f"the broker exited with code {code} during startup\n{_log_tail(paths)}"
            )
        if _port_open(host, port):
            try:
                topics.list_topics()
                return
            except Exception as exc:  # any client failure only means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise LocalKafkaError(
                f"the broker was not ready on {host}:{port} after {START_TIMEOUT_S:.0f} s "
                f"({last_error})\n{_log_tail(paths)}"
            )
        time.sleep(0.25)


def _write_config(settings: BrokerSettings, paths: Layout, super_user: str | None = None) -> None:
    """server.properties; with `super_user`, a secure broker's (that user is the broker's)."""
    host, port = settings.kafka_listen
    controller = settings.kafka_controller_port
    # The controller listener only serves this one node, so it never leaves loopback.
    properties: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(paths.log_dirs),
        "num.partitions": str(settings.topic_partitions),
        # One node: internal topics cannot have more replicas than that.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # Topics are part of the contract: a typo in a client must fail, not create a topic.
        "auto.create.topics.enable": "false",
        # Tests start fresh consumer groups constantly; the 3 s default delay is pure waiting.
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "168",
        # The engine dead-letters oversized inputs (over 1 MiB by default) with their bytes,
        # base64 inside a CloudEvent: the broker must accept both the input and its letter.
        "message.max.bytes": str(8 * 1024 * 1024),
        "replica.fetch.max.bytes": str(8 * 1024 * 1024),
    }
    if super_user is not None:
        properties.update(_secure_properties(settings, paths, super_user))
    text = "# Generated by deploy/local_kafka.py on every `up`; edits are overwritten.\n"
    text += "".join(f"{key}={value}\n" for key, value in properties.items())
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    paths.server_properties.write_text(text, encoding="utf-8")
    paths.log4j_properties.write_text(_log4j(paths), encoding="utf-8")


def _log4j(paths: Layout) -> str:
    log = paths.server_log
    return f"""# Generated by deploy/local_kafka.py: every broker log line goes to one rolling file.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=INFO
"""


def _format_storage(
    java: str, libs: Path, paths: Layout, passwords: Mapping[str, str] | None = None
) -> None:
    if (paths.log_dirs / "meta.properties").is_file():
        return
    cluster_id = _read_text(paths.cluster_id_file) or _new_cluster_id()
    paths.cluster_id_file.write_text(f"{cluster_id}\n", encoding="utf-8")
    tool = [
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(paths.server_properties),
    ]
    # SCRAM credentials bootstrapped into the metadata log (Kafka 3.5+), so the first client,
    # the broker itself included, can log in. The passwords go through a java @argfile in the
    # 0700 secrets directory, never on a command line another local user could read.
    for user, password in (passwords or {}).items():
        tool += ["--add-scram", f"{SASL_MECHANISM}=[name={user},password={password}]"]
    argfile = paths.secrets_dir / "format.args"
    command = [
        java,
        f"-Dlog4j.configuration={paths.log4j_properties.as_uri()}",
        "-cp",
        str(libs / "*"),
    ]
    if passwords:
        _write_private(argfile, "".join(f'"{arg}"\n' for arg in tool))
        command.append(f"@{argfile}")
    else:
        command += tool
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        argfile.unlink(missing_ok=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        for password in (passwords or {}).values():
            output = output.replace(password, "********")
        raise LocalKafkaError(
            f"formatting the KRaft storage failed (exit {result.returncode}):\n{output}"
        )
    if passwords:
        paths.security_file.write_text("SASL_SSL\n", encoding="utf-8")


def _new_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints: 16 random bytes, URL-safe base64."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        # Kafka's own generator rejects a leading '-', which a command line would take as a flag.
        if not text.startswith("-"):
            return text


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError(
            "Java 17+ is needed to run the broker and was not found "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    return found


# --- A secure broker: secrets, certificates, listeners --------------------------------------


def is_secure(paths: Layout) -> bool:
    return _read_text(paths.security_file) == "SASL_SSL"


def _check_mode(paths: Layout, secure: bool) -> None:
    """A data dir is formatted for one mode: its SCRAM logins exist only in a secure one."""
    formatted = (paths.log_dirs / "meta.properties").is_file()
    if formatted and is_secure(paths) != secure:
        have, want = ("secure", "plaintext") if is_secure(paths) else ("plaintext", "secure")
        raise LocalKafkaError(
            f"{paths.data_dir} holds a {have} broker's storage, and a {want} one was asked for; "
            + (
                "add --secure"
                if have == "secure"
                else "use another DOSSIER_KAFKA_DATA_DIR (or leave it at its default with --secure)"
            )
        )


def _prepare_secure(
    settings: BrokerSettings, paths: Layout, principals: Principals
) -> dict[str, str]:
    """Every login's password (made at first need) and the broker's certificate."""
    _private_dir(paths.secrets_dir)
    passwords = {user: _password(paths, user) for user in principals.users}
    _ensure_certificates(settings, paths, principals.super_user)
    return passwords


def read_password(paths: Layout, user: str) -> str:
    return paths.password_file(user).read_text(encoding="utf-8").strip()


def _password(paths: Layout, user: str) -> str:
    path = paths.password_file(user)
    if not path.is_file():
        # URL-safe: nothing in it that SCRAM's or the format tool's syntax would take apart.
        _write_private(path, token.token_urlsafe(24))
    os.chmod(path, 0o600)
    return read_password(paths, user)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created so (no window with wider permissions)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise LocalKafkaError(
            "openssl is needed once to make the secure broker's CA and certificate and was not "
            "found (Debian: apt-get install openssl)"
        )
    return found


def _run_openssl(*args: str) -> None:
    command = [_openssl(), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalKafkaError(
            f"openssl failed (exit {result.returncode}): {shlex.join(command)}\n"
            f"{result.stdout}{result.stderr}"
        )


def broker_hosts(settings: BrokerSettings) -> list[str]:
    """The names clients may reach the broker by: its certificate's subject alternative names."""
    host, _ = settings.kafka_listen
    return list(dict.fromkeys(["127.0.0.1", "localhost", host]))


def _ensure_certificates(settings: BrokerSettings, paths: Layout, super_user: str) -> None:
    """A CA (kept for the broker's next certificate) and the broker's certificate, CN = the
    super user (also its client certificate on the controller listener), EC P-256."""
    paths.tls_dir.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    if not (paths.ca_cert.is_file() and paths.ca_key.is_file()):
        paths.broker_keystore.unlink(missing_ok=True)  # signed by a CA that is gone
        _run_openssl(
            "req", "-x509", *curve, "-keyout", str(paths.ca_key), "-out", str(paths.ca_cert),
            "-days", str(CA_DAYS), "-subj", "/O=dossier-engine/CN=dossier-engine local Kafka CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        os.chmod(paths.ca_key, 0o600)
    names = broker_hosts(settings)
    san = ",".join(
        f"IP:{name}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", name) else f"DNS:{name}"
        for name in names
    )
    san_record = paths.tls_dir / "broker.san"
    if paths.broker_keystore.is_file() and _read_text(san_record) == f"{super_user} {san}":
        return
    key = paths.secrets_dir / "broker.key"
    request = paths.secrets_dir / "broker.csr"
    extensions = paths.secrets_dir / "broker.ext"
    extensions.write_text(
        f"subjectAltName={san}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"
        "extendedKeyUsage=serverAuth,clientAuth\n",
        encoding="utf-8",
    )
    try:
        _run_openssl(
            "req", "-new", *curve, "-keyout", str(key), "-out", str(request),
            "-subj", f"/CN={super_user}",
        )  # fmt: skip
        os.chmod(key, 0o600)
        _run_openssl(
            "x509", "-req", "-in", str(request), "-CA", str(paths.ca_cert),
            "-CAkey", str(paths.ca_key), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-days", str(CERT_DAYS), "-sha256", "-extfile", str(extensions),
            "-out", str(paths.broker_cert),
        )  # fmt: skip
        # Kafka's PEM key store: the (PKCS#8, unencrypted, 0600) key, then the chain.
        _write_private(
            paths.broker_keystore,
            key.read_text(encoding="utf-8")
            + paths.broker_cert.read_text(encoding="utf-8")
            + paths.ca_cert.read_text(encoding="utf-8"),
        )
    finally:
        for path in (key, request, extensions):
            path.unlink(missing_ok=True)
    san_record.write_text(f"{super_user} {san}", encoding="utf-8")


def _secure_properties(settings: BrokerSettings, paths: Layout, super_user: str) -> dict[str, str]:
    """SASL_SSL for clients (the only client listener), mutual TLS on the controller listener,
    StandardAuthorizer with deny by default. No secret is written here: the broker's password
    is read from its file by Kafka's DirectoryConfigProvider."""
    host, port = settings.kafka_listen
    controller = settings.kafka_controller_port
    principals_super = super_user
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{principals_super}" '
        f'password="${{dir:{paths.secrets_dir}:{principals_super}.password}}";'
    )
    return {
        "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"SASL_SSL://{host}:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
        f"listener.name.sasl_ssl.{SASL_MECHANISM.lower()}.sasl.jaas.config": jaas,
        "config.providers": "dir",
        "config.providers.dir.class": (
            "org.apache.kafka.common.config.provider.DirectoryConfigProvider"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(paths.broker_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(paths.ca_cert),
        # TLS 1.3, or 1.2 for clients that lack it (both kafka-python and aiokafka have 1.3).
        "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        # The controller channel: only a certificate from this CA gets in, and CN=broker is
        # the principal `broker`, the super user.
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([a-zA-Z0-9._-]+)$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{principals_super}",
    }


# --- Process bookkeeping -------------------------------------------------------------------


def running_pid(paths: Layout) -> int | None:
    """The PID in the PID file if it is alive and is our broker, else None."""
    pid = _read_pid(paths)
    if pid is None or not _is_our_broker(pid, paths):
        return None
    return pid


def _read_pid(paths: Layout) -> int | None:
    text = _read_text(paths.pid_file)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _is_our_broker(pid: int, paths: Layout) -> bool:
    """Alive, and a java running kafka.Kafka on our server.properties: PIDs get reused."""
    if not _alive(pid):
        return False
    args = _command_line(pid)
    return "kafka.Kafka" in args and str(paths.server_properties) in args


def _command_line(pid: int) -> list[str]:
    if Path("/proc/self").is_dir():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [a for a in raw.decode(errors="replace").split("\0") if a]
    # No /proc (macOS): ask ps.
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.split()


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our own child (up and down in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


@contextlib.contextmanager
def _locked(paths: Layout) -> Iterator[None]:
    """Two `up`s at once would both start a broker on one data dir."""
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with paths.lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def _log_tail(paths: Layout, lines: int = 40) -> str:
    parts = []
    for log in (paths.console_log, paths.server_log):
        try:
            text = log.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            continue
        # The cause of a failed start is an ERROR line, often far above a long stack trace.
        errors = [line for line in text if " ERROR " in line or " FATAL " in line][:5]
        if errors:
            parts.append(f"--- first errors in {log} ---\n" + "\n".join(errors))
        if text:
            parts.append(f"--- last lines of {log} ---\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) if parts else f"(no log output in {paths.logs_dir})"


# --- `python -m deploy.local_kafka up|down|status` -----------------------------------------
