"""Replay and audit throughput, each beside a baseline measured in the same run.

    python bench/replay.py [--dossiers 20000] [--workers N] [--verify-rows 1000000] [--no-kafka]

(a) replay from a database's history into SQLite (target >= 50,000 inputs/s), serial and
    parallel (`--workers`, default one per core) side by side, against the live path (the same
    inputs decoded and applied in the engine's usual batch size). The default workload is large
    enough that each worker's fixed start-up (interpreter, catalogue: about a second) does not
    dominate;
(b) replay from Kafka (target >= 20,000 inputs/s): the workload is published to scratch
    topics with a unique prefix and `DOSSIER_TOPIC_PARTITIONS` partitions (default 6, as the
    project creates its topics), then read, merged and applied, serially and in `--workers`
    processes (each reading its share of the partitions) side by side; the two rebuilt
    databases are compared;
(c) `audit verify` over `--verify-rows` history rows (target < 60 s): synthetic chains made
    by copying the workload's history under new dossier codes, chained by the store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import local_kafka
from dossier.gc_tuning import tune_for_batches
from dossier.replay import compare, make_processor, replay_from_db, replay_from_kafka
from dossier.settings import Settings
from dossier.simulation import Workload
from engine.calendar import WorkingCalendar
from engine.events import INBOUND_TOPICS
from engine.ports import Position
from engine.procedures import load_catalogue
from engine.service import RawInput
from engine.store.audit import verify, write_checkpoint
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from producers.workload import create_input_producer, publish


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dossiers", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verify-rows", type=int, default=1_000_000)
    parser.add_argument("--no-kafka", action="store_true")
    args = parser.parse_args()
    settings = Settings.from_env()
    tune_for_batches(settings.gc_young_threshold)  # as `dossier replay` and `dossier run` do
    work = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    messages = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=7,
        start=datetime.fromisoformat("2025-05-01T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-09-01T00:00:00+07:00"),
        dossiers=args.dossiers,
        procedures=("1.001193", "1.004222", "DD.GCN.LD"),
        duplicate_share=0.01,
        bad_share=0.005,
        reorder_share=0.02,
    ).messages()
    print(f"workload: {len(messages):,} inputs for {args.dossiers:,} dossiers")

    # Baseline and source: the live path (decode + apply), in the engine's batch size.
    live = create_db_engine(f"sqlite:///{work / 'live.db'}")
    upgrade(live)
    processor = make_processor(settings, "bench-live")
    offsets: dict[str, int] = {}
    inputs = []
    for m in messages:
        offsets[m.topic] = offsets.get(m.topic, -1) + 1
        inputs.append(RawInput(m.topic, Position(m.topic, 0, offsets[m.topic]), m.key, m.value))
    started = time.perf_counter()
    for i in range(0, len(inputs), settings.batch_size):
        processor.process(SqlUnitOfWork(live, writes=True), inputs[i : i + settings.batch_size])
    live_s = time.perf_counter() - started
    print(f"baseline live path into SQLite: {len(inputs) / live_s:,.0f} inputs/s ({live_s:.1f} s)")

    for label, workers in (("serial", 1), (f"parallel, {args.workers} workers", args.workers)):
        target = create_db_engine(f"sqlite:///{work / f'from-db-{workers}.db'}")
        started = time.perf_counter()
        report = replay_from_db(settings, live, target, workers=workers)
        wall_s = time.perf_counter() - started
        target.dispose()
        print(
            f"(a) replay --source db into SQLite, {label}: {report.inputs / wall_s:,.0f} inputs/s"
            f" ({report.inputs:,} in {wall_s:.1f} s wall; target 50,000/s)"
        )

    if not args.no_kafka:
        scratch = replace(settings, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
        names = [scratch.topic(t) for t in INBOUND_TOPICS]
        # The parallel replay shards by partition: as many as the project gives its topics.
        local_kafka.ensure_topics(scratch, names, settings.topic_partitions)
        try:
            producer = create_input_producer(scratch.kafka_bootstrap_servers)
            publish(producer, messages, scratch.topic)
            producer.close()
            rebuilt = []
            for label, workers in (("serial", 1), ("parallel", args.workers)):
                target = create_db_engine(f"sqlite:///{work / f'from-kafka-{workers}.db'}")
                started = time.perf_counter()
                report = replay_from_kafka(scratch, target, workers=workers)
                wall_s = time.perf_counter() - started
                rebuilt.append(target)
                print(
                    f"(b) replay --source kafka into SQLite, {label} ({report.workers} workers,"
                    f" {settings.topic_partitions} partitions): {report.inputs / wall_s:,.0f}"
                    f" inputs/s ({report.inputs:,} in {wall_s:.1f} s wall; target 20,000/s)"
                )
            same = compare(rebuilt[1], rebuilt[0])
            print(
                f"    (parallel vs serial: {same.matching:,} dossiers match,"
                f" {same.differing} differ)"
            )
            for target in rebuilt:
                target.dispose()
        finally:
            local_kafka.delete_topics(scratch, names)

    # (c) synthetic history of --verify-rows rows: the live history copied under new codes.
    big = create_db_engine(f"sqlite:///{work / 'verify.db'}")
    upgrade(big)
    with SqlUnitOfWork(live) as uow:
        codes = [
            r[0]
            for r in uow.repo.connection.exec_driver_sql(  # type: ignore[attr-defined]
                "SELECT DISTINCT dossier_code FROM history"
            )
        ]
        template = [row for code in codes for row in uow.repo.history(code)]
    written = 0
    copy = 0
    started = time.perf_counter()
    while written < args.verify_rows:
        rows = [
            replace(r, dossier_code=f"{r.dossier_code}#{copy}")
            for r in template[: args.verify_rows - written]
        ]
        with SqlUnitOfWork(big, writes=True) as uow:
            uow.repo.append_history(rows)
            uow.commit()
        written += len(rows)
        copy += 1
    write_checkpoint(big, settings.engine_source)
    print(f"    (built {written:,} chained rows in {time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    result = verify(big)
    verify_s = time.perf_counter() - started
    print(
        f"(c) audit verify: {result.rows:,} rows in {result.chains:,} chains in {verify_s:.1f} s "
        f"({result.rows / verify_s:,.0f} rows/s; {len(result.findings)} findings; target < 60 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
