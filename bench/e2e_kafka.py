"""Throughput and latency of the real engine process through real Kafka.

    python bench/e2e_kafka.py [--events 30000] [--rate 1000] [--seconds 20] [--no-postgres]
                              [--no-sqlite] [--engines 2] [--secure]

For SQLite and PostgreSQL, each in a fresh database, topic prefix and consumer group:
  sustained : `dossier run` is up; a realistic mix is published as fast as Kafka takes it;
              events/s = inputs / time until every position is committed and every output sent;
  latency   : the engine runs, inputs are offered at a fixed rate; latency of each input is
              (record timestamp of the status-changed it caused) - (record timestamp of the
              input), both stamped by producers on this machine; p50/p99 printed;
  naive     : a kafka-python loop, one event per transaction and an offset commit per message,
              over the same backlog (a sample of it), in the same run.
With --secure, sustained and latency are measured again, in the same run, on the local secure
broker (`dossier kafka up --secure`: TLS, SASL/SCRAM-SHA-512, ACLs; started if it is not
running, and stopped again then): the engine logs in as `engine`, the inputs are published as
`simulator` and the statuses read as `downstream`, and the ratio to plaintext is printed.
Broker and database run on this same 2-core machine.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scratch  # bench/scratch.py, beside this script

from dossier import kafka_clients
from dossier.settings import Settings
from dossier.tools.simulation import SimulatedMessage, Workload
from dossier.tools.supervision import EngineProcess, wait_caught_up
from dossier.tools.workload import create_input_producer, publish, read_topic
from engine.application.ports import Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.events import ALL_TOPICS, INBOUND_TOPICS
from engine.procedures import load_catalogue
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec

REFERENCE_PROCEDURES = ("1.001193", "1.004222", "DD.GCN.LD")


def messages(
    count: int, seed: int, start: str = "2025-03-03", end: str = "2025-05-30"
) -> list[SimulatedMessage]:
    catalogue, calendar = load_catalogue(), WorkingCalendar.load()
    # About 7 inputs per dossier in this mix.
    workload = Workload(
        catalogue,
        calendar,
        seed=seed,
        start=datetime.fromisoformat(f"{start}T00:00:00+07:00"),
        end=datetime.fromisoformat(f"{end}T00:00:00+07:00"),
        dossiers=max(1, count // 7),
        procedures=REFERENCE_PROCEDURES,
        duplicate_share=0.01,
        bad_share=0.005,
        reorder_share=0.02,
    )
    return workload.messages()[:count]


@dataclass(frozen=True)
class Run:
    """One isolated run's settings: the engine's (also used to watch its progress), the
    publisher's and the status reader's. All three are one on the plaintext broker; on the
    secure one they are the principals `engine`, `simulator` and `downstream`."""

    engine: Settings
    publisher: Settings
    reader: Settings

    @property
    def settings(self) -> Settings:
        return self.engine


def isolated(
    base: Settings, database_url: str, tmp: Path, secure_broker: Settings | None = None
) -> Run:
    tag = uuid.uuid4().hex[:8]
    settings = replace(
        secure_broker or base,
        topic_prefix=f"bench{tag}.",
        consumer_group=f"bench-{tag}",
        database_url=database_url,
        metrics_port=0,
        batch_size=2000,
        kafka_data_dir=tmp / f"client-{tag}",
    )
    names = [settings.topic(t) for t in ALL_TOPICS]
    if secure_broker is None:
        scratch.topics(settings, names, base.topic_partitions)
        return Run(settings, settings, settings)
    admin = kafka_clients.super_user_settings(secure_broker)
    scratch.topics(replace(admin, topic_prefix=settings.topic_prefix), names, base.topic_partitions)
    bindings = kafka_clients.authorize(secure_broker, settings)
    atexit.register(_revoke, admin, bindings)

    def login(name: str) -> Settings:
        return kafka_clients.principal_settings(secure_broker, name, onto=settings)

    return Run(login("engine"), login("simulator"), login("downstream"))


def _revoke(admin: Settings, bindings: list[Any]) -> None:
    with contextlib.suppress(Exception):
        kafka_clients.revoke(admin, bindings)


def postgres_url(base: Settings) -> str:
    return scratch.schema_url(base.postgres_url)


def sustained(run: Run, stream: list[SimulatedMessage], tmp: Path, engines: int = 1) -> float:
    """Inputs/s from the first publish until the running engine processes (one consumer
    group) have committed the last input and published every output (start-up not counted)."""
    settings = run.engine
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(EngineProcess(settings, tmp / f"{settings.consumer_group}-{n}.log"))
            for n in range(engines)
        ]
        engine = processes[0]
        time.sleep(6 + 4 * (engines - 1))  # let the workers join and share before the clock
        before = cpu_ticks()
        started = time.perf_counter()
        producer = create_input_producer(run.publisher)
        publish(producer, stream, settings.topic)
        producer.close()
        wait_caught_up(settings, 900, engine, poll_s=0.2)
        elapsed = time.perf_counter() - started
        spent = cpu_spent(before, cpu_ticks())
    print(
        "            CPU per input: "
        + ", ".join(f"{who} {seconds / len(stream) * 1e6:,.0f} µs" for who, seconds in spent)
        + f"; {sum(s for _, s in spent) / elapsed:.2f} of {os.cpu_count()} cores busy"
    )
    return len(stream) / elapsed


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """CPU time (user + system, in clock ticks) and command line of every process."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        found[int(entry.name)] = (int(fields[11]) + int(fields[12]), command)
    return found


def cpu_spent(
    before: dict[int, tuple[int, str]], after: dict[int, tuple[int, str]]
) -> list[tuple[str, float]]:
    """Seconds of CPU each kind of process spent between two `cpu_ticks`: where an input's
    cost goes on this machine, the broker's and the database's included."""
    kinds = {
        "engine": "dossier.cli run",
        "relay child": "multiprocessing.spawn",
        "broker": "kafka.Kafka",
        "PostgreSQL": "postgres",
    }
    per_tick = 1 / os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for pid, (ticks, command) in after.items():
        delta = (ticks - before.get(pid, (0, ""))[0]) * per_tick
        if pid == os.getpid():
            kind = "this benchmark (producer)"
        else:
            kind = next((k for k, marker in kinds.items() if marker in command), "")
        if kind and delta > 0:
            spent[kind] = spent.get(kind, 0.0) + delta
    return sorted(spent.items(), key=lambda item: -item[1])


def latency(run: Run, stream: list[SimulatedMessage], rate: float, tmp: Path) -> list[float]:
    settings = run.engine
    with EngineProcess(settings, tmp / f"{settings.consumer_group}-latency.log") as engine:
        # A running engine is warm: joined to its group, statements compiled, connections
        # open, first checkpoint written. Warm it on other dossiers (January's) first.
        time.sleep(6)
        producer = create_input_producer(run.publisher)
        warm_up = messages(500, seed=9, start="2025-01-06", end="2025-01-31")
        publish(producer, warm_up, settings.topic)
        wait_caught_up(settings, 120, engine, poll_s=0.2)
        publish(producer, stream, settings.topic, rate=rate)
        producer.close()
        wait_caught_up(settings, 600, engine, poll_s=0.2)
    sent: dict[str, int] = {}
    for topic in INBOUND_TOPICS:
        for record in read_topic(settings, settings.topic(topic), timeout_s=20):
            try:
                sent[json.loads(record.value)["id"]] = record.timestamp
            except (ValueError, KeyError, TypeError):
                continue
    for message in warm_up:  # measured: only the offered stream
        try:
            sent.pop(json.loads(message.value)["id"], None)
        except (ValueError, KeyError, TypeError):
            continue
    delays: list[float] = []
    for record in read_topic(run.reader, settings.topic("dossier.status"), timeout_s=20):
        cause = json.loads(record.value)["data"]["caused_by"]["id"]
        if cause in sent:
            delays.append(record.timestamp - sent.pop(cause))  # one status per input at most
    return delays


def naive(run: Run, stream: list[SimulatedMessage]) -> float:
    """One event per transaction and an offset commit per message, kafka-python only."""
    settings = run.engine
    producer = create_input_producer(run.publisher)
    publish(producer, stream, settings.topic)
    producer.close()
    db = create_db_engine(settings.database_url)
    upgrade(db)
    processor = BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load()),
        ContractCodec(),
        ServiceConfig(settings.engine_source, settings.consumer_group, timedelta(days=7)),
    )
    consumer = kafka_clients.consumer(
        settings,
        *(settings.topic(t) for t in INBOUND_TOPICS),
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    done = 0
    started = time.perf_counter()
    deadline = started + 300
    while done < len(stream) and time.perf_counter() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=1).values():
            for r in records:
                contract = r.topic.removeprefix(settings.topic_prefix)
                processor.process(
                    SqlUnitOfWork(db),
                    [RawInput(contract, Position(r.topic, r.partition, r.offset), r.key, r.value)],
                )
                consumer.commit()
                done += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    db.dispose()
    return done / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--naive-events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--engines",
        type=int,
        default=2,
        help="also measure sustained throughput with this many engine processes in one group",
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="measure sustained and latency on the local secure broker too (TLS, SASL/SCRAM, "
        "ACLs), beside plaintext",
    )
    parser.add_argument(
        "--secure-first",
        action="store_true",
        help="with --secure: measure the secure broker before plaintext (on a shared machine, "
        "run both orders to see the drift)",
    )
    args = parser.parse_args()
    base = Settings.from_env()
    backlog = messages(args.events, seed=1)
    offered = messages(int(args.rate * args.seconds), seed=2)
    naive_stream = messages(args.naive_events, seed=3)
    print(
        f"mix: {len(backlog)} inputs "
        "(3 reference procedures, 1% duplicates, 0.5% bad, 2% reordered)"
    )
    transports: list[tuple[str, Settings | None]] = [("plaintext", None)]
    with contextlib.ExitStack() as stack:
        if args.secure:
            broker = stack.enter_context(secure_broker(base))
            transports.append(("SASL_SSL", broker))
            if args.secure_first:
                transports.reverse()
        with tempfile.TemporaryDirectory() as tmp_name:
            run_all(args, base, transports, backlog, offered, naive_stream, Path(tmp_name))
    return 0


@contextlib.contextmanager
def secure_broker(base: Settings) -> Iterator[Settings]:
    """The local secure broker's settings; started for this run (and stopped after) unless it
    was running already."""
    from deploy import local_kafka

    broker = kafka_clients.secure_broker_settings(base)
    was_running = local_kafka.running_pid(local_kafka.layout(broker)) is not None
    if kafka_clients.local_broker("up", base, secure=True) != 0:
        raise SystemExit("the secure broker did not start")
    if not was_running:
        # Registered before the scratch topics' and ACLs' removal: exit handlers run last
        # registered first, so the broker stops after them.
        atexit.register(local_kafka.down, broker)
    yield broker


def run_all(
    args: argparse.Namespace,
    base: Settings,
    transports: list[tuple[str, Settings | None]],
    backlog: list[SimulatedMessage],
    offered: list[SimulatedMessage],
    naive_stream: list[SimulatedMessage],
    tmp: Path,
) -> None:
    databases: list[tuple[str, Callable[[], str]]] = []
    if not args.no_sqlite:
        databases.append(("SQLite", lambda: f"sqlite:///{tmp / uuid.uuid4().hex}.db"))
    if not args.no_postgres:
        databases.append(("PostgreSQL", lambda: postgres_url(base)))
    for name, url in databases:
        results: dict[str, dict[str, float]] = {}
        for transport, broker in transports:
            label = f"{name} {transport}" if len(transports) > 1 else name
            mine = results.setdefault(transport, {})

            def run(broker: Settings | None = broker, url: Callable[[], str] = url) -> Run:
                return isolated(base, url(), tmp, broker)

            rate = sustained(run(), backlog, tmp)
            mine["sustained"] = rate
            print(
                f"{label:<11} sustained  : {rate:>8,.0f} events/s "
                f"({len(backlog)} inputs published at full speed)"
            )
            if args.engines > 1:
                rate = sustained(run(), backlog, tmp, args.engines)
                mine[f"sustained x{args.engines}"] = rate
                print(
                    f"{label:<11} sustained  : {rate:>8,.0f} events/s "
                    f"with {args.engines} engine processes in one group"
                )
            delays = latency(run(), offered, args.rate, tmp)
            if delays:
                mine["p50 ms"] = percentile(delays, 0.5)
                mine["p99 ms"] = percentile(delays, 0.99)
                print(
                    f"{label:<11} latency    : p50 {percentile(delays, 0.5):,.0f} ms, "
                    f"p99 {percentile(delays, 0.99):,.0f} ms, "
                    f"mean {statistics.fmean(delays):,.0f} ms "
                    f"at {args.rate:,.0f} events/s offered ({len(delays)} status events)"
                )
            if broker is None:  # the naive loop is the baseline of the design, not of TLS
                slow = naive(run(), naive_stream)
                print(
                    f"{label:<11} naive      : {slow:>8,.0f} events/s "
                    "(one transaction and offset commit per event)"
                )
        if "SASL_SSL" in results:
            plain, secure = results["plaintext"], results["SASL_SSL"]
            print(
                f"{name:<11} SASL_SSL vs plaintext: "
                + ", ".join(
                    f"{key} {secure[key] / plain[key] - 1:+.0%}"
                    for key in plain
                    if key in secure and plain[key]
                )
            )


if __name__ == "__main__":
    sys.exit(main())
