"""Replay and audit throughput, each beside a baseline measured in the same run.

    python bench/replay.py [--dossiers 20000] [--workers N] [--verify-rows 1000000] [--no-kafka]
                            [--keep]

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

(floor) the least work any replay from the database does per input, timed stage by stage in
    one process: read the stored input, upcast and decode it, apply it, build its history row
    (chained), ledger entry and outbound messages, and write them with the dossiers into a
    fresh store of the project's schema, in one transaction. Nothing else: no batches, no
    parking or deduplication (every stored input was applied), no deadline notices, no
    ordering bookkeeping, no start-up or merge. A correct replay writes at least this, so
    `cores / floor` is a ceiling on replay throughput on this machine, to read (a) against.
    What the floor writes is checked, so that it is a replay and not a strawman: `audit
    verify` finds nothing in it, and every dossier compares equal to the live database's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlite3
from contextlib import closing
from datetime import UTC

import orjson
from sqlalchemy import Engine

from dossier import kafka_clients
from dossier.composition import build_vault
from dossier.gc_tuning import tune_for_batches
from dossier.replay.jobs import replay_from_db, replay_from_kafka
from dossier.replay.serial import compare, make_processor
from dossier.settings import Settings
from dossier.tools.simulation import Workload
from dossier.tools.workload import create_input_producer, publish
from engine.application.ports import ChangeSet, HistoryRow, Position, StoredDossier
from engine.application.service import RawInput
from engine.audit import GENESIS, link, row_content
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied, Dossier
from engine.events import INBOUND_TOPICS, InboundEvent
from engine.procedures import load_catalogue
from engine.store.audit import verify, write_checkpoint
from engine.store.bulk import columns, encode_rows, insert_statement, sqlite_time
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from engine.store.tables import dossier_columns, json_dumps
from schemas.codec import encode_outbound, stored_envelope
from schemas.upcasting import upcast


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dossiers", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verify-rows", type=int, default=1_000_000)
    parser.add_argument("--no-kafka", action="store_true")
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases (1-2.5 GB) and print where"
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    tune_for_batches(settings.gc_young_threshold)  # as `dossier replay` and `dossier run` do
    work = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        return run(args, settings, work)
    finally:
        if args.keep:
            print(f"databases kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, settings: Settings, work: Path) -> int:
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
        inputs.append(
            RawInput(m.topic, Position(m.topic, 0, offsets[m.topic]), m.key, m.value, m.headers)
        )
    # Personal data sealed as the engine seals it: the history replayed below is the engine's.
    vault = build_vault(settings, create=True)
    started = time.perf_counter()
    for i in range(0, len(inputs), settings.batch_size):
        batch = inputs[i : i + settings.batch_size]
        processor.process(SqlUnitOfWork(live, writes=True, vault=vault), batch)
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

    replay_floor(live, work / "floor.db", settings.engine_source)

    if not args.no_kafka:
        scratch = replace(settings, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
        names = [scratch.topic(t) for t in INBOUND_TOPICS]
        # The parallel replay shards by partition: as many as the project gives its topics.
        kafka_clients.ensure_topics(scratch, names, settings.topic_partitions)
        try:
            producer = create_input_producer(scratch)
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
            kafka_clients.delete_topics(scratch, names)

    # (c) synthetic history of --verify-rows rows: the live history copied under new codes.
    big = create_db_engine(f"sqlite:///{work / 'verify.db'}")
    upgrade(big)
    with SqlUnitOfWork(live) as uow:
        codes = [
            r[0]
            for r in uow.repo.connection.exec_driver_sql(
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
            uow.repo.write(ChangeSet(history=rows))
            uow.commit()
        written += len(rows)
        copy += 1
    write_checkpoint(big, settings.engine_source, encode_outbound)
    print(f"    (built {written:,} chained rows in {time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    result = verify(big)
    verify_s = time.perf_counter() - started
    print(
        f"(c) audit verify: {result.rows:,} rows in {result.chains:,} chains in {verify_s:.1f} s "
        f"({result.rows / verify_s:,.0f} rows/s; {len(result.findings)} findings; target < 60 s)"
    )
    return 0


def replay_floor(source: Engine, path: Path, engine_source: str, batch: int = 5000) -> None:
    """Time the floor's stages over `source`'s history (see the module's docstring)."""
    engine = Decider(load_catalogue(), WorkingCalendar.load())
    target = create_db_engine(f"sqlite:///{path}")
    upgrade(target)
    target.dispose()
    stage = dict.fromkeys(("read", "decode", "apply", "rows", "write"), 0.0)
    dossiers: dict[str, Dossier] = {}
    heads: dict[str, str] = {}
    diverged = inputs = 0
    recorded_at = sqlite_time(datetime.now(UTC))
    history_sql = insert_statement("history", _HISTORY_COLUMNS)
    ledger_sql = insert_statement(
        "input_ledger", ("source", "event_id", "content_hash", "dossier_code")
    )
    outbox_sql = insert_statement("outbox", ("message_id", "topic", "key", "value", "created_at"))
    query = 'SELECT topic, "partition", "offset", schema_version, envelope FROM history ORDER BY id'
    started = time.perf_counter()
    with (
        closing(sqlite3.connect(str(source.url.database))) as read_db,
        closing(sqlite3.connect(path, isolation_level=None)) as db,
    ):
        db.execute("BEGIN")
        cursor = read_db.execute(query)
        while True:
            t0 = time.perf_counter()
            rows = cursor.fetchmany(batch)
            if not rows:
                break
            t1 = time.perf_counter()
            events = []
            for topic, partition, offset, version, envelope in rows:
                current = upcast(orjson.loads(envelope), version)
                contract = str(current.pop("topic", None) or topic)
                event = InboundEvent(
                    current["source"],
                    current["id"],
                    current["type"],
                    current["subject"],
                    datetime.fromisoformat(current["time"]),
                    current["data"],
                    contract,
                )
                events.append((Position(topic, partition, offset), event))
            t2 = time.perf_counter()
            decisions = []
            for _, event in events:
                decision = engine.apply(dossiers.get(event.subject), event)
                if isinstance(decision, Applied):
                    dossiers[event.subject] = decision.dossier
                    decisions.append(decision)
                else:
                    diverged += 1
                    decisions.append(None)
            t3 = time.perf_counter()
            history_rows, ledger_rows, outbox_rows = [], [], []
            for (position, event), decision in zip(events, decisions, strict=True):
                if decision is None:
                    continue
                dossier = decision.dossier
                row = HistoryRow(
                    dossier.code,
                    dossier.inputs_applied,
                    event.source,
                    event.id,
                    event.type,
                    event.time,
                    event.schema_version,
                    stored_envelope(event),
                    position,
                    decision.previous_state,
                    dossier.state,
                    dossier.status_code,
                    dossier.workflow_version,
                )
                prev = heads.get(dossier.code, GENESIS)
                heads[dossier.code] = current_hash = link(prev, row_content(row))
                history_rows.append(
                    (
                        row.dossier_code,
                        row.seq,
                        row.source,
                        row.event_id,
                        row.type,
                        sqlite_time(row.event_time),
                        row.schema_version,
                        json_dumps(row.envelope),
                        position.topic,
                        position.partition,
                        position.offset,
                        row.state_before,
                        row.state_after,
                        row.status_code,
                        row.workflow_version,
                        recorded_at,
                        current_hash,
                        prev,
                        None,  # signature: the floor replays stored envelopes, unsigned
                        None,  # signed_value
                    )
                )
                ledger_rows.append((event.source, event.id, event.content_hash(), dossier.code))
                for output in decision.outputs:
                    outbox_rows.append(
                        (
                            output.id,
                            output.topic,
                            output.key.encode(),
                            encode_outbound(output, engine_source),
                            sqlite_time(output.time),
                        )
                    )
            t4 = time.perf_counter()
            db.executemany(history_sql, history_rows)
            db.executemany(ledger_sql, ledger_rows)
            db.executemany(outbox_sql, outbox_rows)
            t5 = time.perf_counter()
            inputs += len(rows)
            for name, seconds in zip(
                stage, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
            ):
                stage[name] += seconds
        t0 = time.perf_counter()
        names = columns("dossiers")
        stored = (
            {
                "code": code,
                **dossier_columns(StoredDossier(d, 1, engine.next_notice_at(d), None)),
                "revision": 1,
            }
            for code, d in dossiers.items()
        )
        db.executemany(insert_statement("dossiers", names), encode_rows("dossiers", names, stored))
        db.execute("COMMIT")
        stage["write"] += time.perf_counter() - t0
    wall = time.perf_counter() - started
    # Not a strawman: what the floor wrote must be a replay that verifies and matches live.
    floor_db = create_db_engine(f"sqlite:///{path}")
    findings = len(verify(floor_db).findings)
    same = compare(floor_db, source)
    floor_db.dispose()
    per_input = {name: seconds / inputs * 1e6 for name, seconds in stage.items()}
    total = sum(per_input.values())
    cores = os.cpu_count() or 1
    print(
        f"(floor) the least work per input, one process: {total:.1f} µs ("
        + ", ".join(f"{name} {us:.1f}" for name, us in per_input.items())
        + f"); {inputs / wall:,.0f} inputs/s; ceiling on {cores} cores, perfectly parallel:"
        f" {cores * 1e6 / total:,.0f} inputs/s ({diverged} inputs not applied)"
    )
    print(
        f"    (the floor's database: audit verify {findings} findings; {same.matching:,} dossiers"
        f" equal to live, {same.differing} differ; it has no deadline notices or positions)"
    )


# The history table's columns but its surrogate id, in the table's order.
_HISTORY_COLUMNS = tuple(columns("history", ids=False))


if __name__ == "__main__":
    sys.exit(main())
