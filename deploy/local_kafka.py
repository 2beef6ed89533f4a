"""A local single-node Apache Kafka (KRaft, combined broker and controller) without Docker.

The broker's jars come from Maven Central through the machine's `mvn`, into a cache outside
the repository, so only the first start needs the network. Everything the broker writes
(config, KRaft log, server log, PID file) lives in `settings.kafka_data_dir`.

Kafka 3.9.x rather than 4.x: Kafka 4 removed old protocol versions that aiokafka (under
faust-streaming) still sends, and it dropped the reload4j logging set-up used here.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


class TopicAdmin(Protocol):
    """The Kafka client side of `up` and `status`, handed in by the command line
    (dossier.kafka_clients): deploy/ builds no client of its own."""

    def list_topics(self) -> list[str]: ...

    def ensure_contract_topics(self) -> list[str]: ...


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


def layout(settings: BrokerSettings) -> Layout:
    return Layout(
        data_dir=settings.kafka_data_dir,
        libs_dir=settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs",
    )


# --- Commands ------------------------------------------------------------------------------


def up(settings: BrokerSettings, topics: TopicAdmin) -> int:
    """Start the broker if it is not running, then make sure every contract topic exists."""
    paths = layout(settings)
    host, port = settings.kafka_listen
    try:
        with _locked(paths):
            pid = running_pid(paths)
            if pid is not None:
                _check_running_matches(settings, paths, pid)
                print(f"kafka: already running (pid {pid}) on {host}:{port}; nothing to start")
            else:
                _start(settings, paths, topics)
            try:
                created = topics.ensure_contract_topics()
            except Exception as exc:  # kafka-python raises many types; all mean the same here
                raise LocalKafkaError(
                    f"the broker on {host}:{port} did not accept the contract topics "
                    f"({type(exc).__name__}: {exc}); see {paths.server_log}"
                ) from exc
    except LocalKafkaError as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if created:
        print(f"kafka: created topics: {', '.join(created)}")
    else:
        print("kafka: all contract topics exist")
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


def _start(settings: BrokerSettings, paths: Layout, topics: TopicAdmin) -> None:
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
    _write_config(settings, paths)
    _format_storage(java, libs, paths)
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


def _check_running_matches(settings: BrokerSettings, paths: Layout, pid: int) -> None:
    """A broker started with other ports keeps them until restarted: say so, do not hang."""
    host, port = settings.kafka_listen
    wanted = f"PLAINTEXT://{host}:{port}"
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


def _write_config(settings: BrokerSettings, paths: Layout) -> None:
    host, port = settings.kafka_listen
    controller = settings.kafka_controller_port
    # The controller listener only serves this one node, so it never leaves loopback.
    properties = {
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


def _format_storage(java: str, libs: Path, paths: Layout) -> None:
    if (paths.log_dirs / "meta.properties").is_file():
        return
    cluster_id = _read_text(paths.cluster_id_file) or _new_cluster_id()
    paths.cluster_id_file.write_text(f"{cluster_id}\n", encoding="utf-8")
    command = [
        java,
        f"-Dlog4j.configuration={paths.log4j_properties.as_uri()}",
        "-cp",
        str(libs / "*"),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(paths.server_properties),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalKafkaError(
            f"formatting the KRaft storage failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )


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
