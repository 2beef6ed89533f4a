"""The cost of workflow migration plans on the live path, beside the same path without them.

    python bench/migrations.py [--dossiers 10000] [--batch-size 2000] [--passes 3]

A month of the province across 2025-07-01 (the main job's workload: every procedure, weighted
as the profile says, with the shipped registry's handovers) is decoded, applied and committed
through the service layer into SQLite twice per pass, interleaved: with the shipped catalogue
and its 147 plans, and with the same procedure versions and no plan. Printed, for each: inputs
per second (best pass), the migrations and handovers made, and, once the month is applied, the
cost of an empty batch (what the timer runs every second: the scans for handovers, migrations
and deadline notices), which is what keeping the plans installed costs for good.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dossier.tools.simulation import ProvinceProfile, Workload
from engine.application.ports import Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.procedures import Catalogue, load_catalogue
from engine.registry import load_registry, registry_files
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec

EMPTY_BATCHES = 50


def month(dossiers: int) -> list[RawInput]:
    """The main job's month (16 June - 15 July 2025), in arrival order, one partition a topic."""
    workload = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=20250616,
        start=datetime.fromisoformat("2025-06-16T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-07-15T00:00:00+07:00"),
        dossiers=dossiers,
        profile=ProvinceProfile.load(),
        signing_keys={},
    )
    offsets: Counter[str] = Counter()
    inputs = []
    for message in workload.messages():
        inputs.append(
            RawInput(
                message.topic,
                Position(message.topic, 0, offsets[message.topic]),
                message.key,
                message.value,
            )
        )
        offsets[message.topic] += 1
    return inputs


def run(
    catalogue: Catalogue, inputs: list[RawInput], batch_size: int, folder: Path
) -> tuple[float, Counter[str], float]:
    """Seconds to apply `inputs`, what became of them, and seconds per empty batch after."""
    db = create_db_engine(f"sqlite:///{folder / f'{uuid.uuid4().hex}.db'}")
    upgrade(db)
    registry = load_registry(registry_files())
    processor = BatchProcessor(
        Decider(catalogue, WorkingCalendar.load(), registry),
        ContractCodec(),
        ServiceConfig("urn:bench", "bench", parked_ttl=timedelta(days=7)),
    )
    made: Counter[str] = Counter()
    started = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        result = processor.process(
            SqlUnitOfWork(db, writes=True), inputs[start : start + batch_size]
        )
        made["applied"] += result.count("applied")
        made["dead-lettered"] += result.count("dead_lettered")
        made["migrations"] += sum(result.migrations.values())
        made["handovers"] += sum(result.handovers.values())
    elapsed = time.perf_counter() - started
    while True:  # the rest of the bounded scans, as the timer's empty batches make them
        result = processor.process(SqlUnitOfWork(db, writes=True), [])
        made["migrations"] += sum(result.migrations.values())
        made["handovers"] += sum(result.handovers.values())
        if not result.migrations and not result.handovers:
            break
    started = time.perf_counter()
    for _ in range(EMPTY_BATCHES):
        processor.process(SqlUnitOfWork(db, writes=True), [])
    idle = (time.perf_counter() - started) / EMPTY_BATCHES
    db.dispose()
    return elapsed, made, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dossiers", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with_plans = load_catalogue()
    without = Catalogue(with_plans.all_versions())
    inputs = month(args.dossiers)
    print(f"{len(inputs):,} inputs of {args.dossiers:,} dossiers, 16 June - 15 July 2025")
    elapsed: dict[str, list[float]] = {}
    idle: dict[str, list[float]] = {}
    made: dict[str, Counter[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.passes):  # interleaved: both see the same machine
            for name, catalogue in (("with 147 plans", with_plans), ("without plans", without)):
                seconds, made[name], empty = run(catalogue, inputs, args.batch_size, Path(tmp))
                elapsed.setdefault(name, []).append(seconds)
                idle.setdefault(name, []).append(empty)
    base_elapsed, base_idle = min(elapsed["without plans"]), min(idle["without plans"])
    for name in elapsed:
        seconds, empty, counts = min(elapsed[name]), min(idle[name]), made[name]
        print(
            f"{name:>15}: {len(inputs) / seconds:8,.0f} inputs/s "
            f"({base_elapsed / seconds - 1:+.1%}), empty batch {empty * 1000:6.2f} ms "
            f"({empty / base_idle - 1:+.1%}); applied {counts['applied']:,}, "
            f"dead-lettered {counts['dead-lettered']:,}, migrations {counts['migrations']:,}, "
            f"handovers {counts['handovers']:,}"
        )


if __name__ == "__main__":
    main()
