"""Decider throughput, each figure beside a naive baseline measured in the same run.

    python bench/engine_apply.py [--dossiers 20000] [--postgres URL | --no-postgres]

(a) pure `Decider.apply` in memory on one core, against a `transitions.Machine` built per
    dossier, plus the cost of `Machine.add_model` as models accumulate (why the engine shares
    one compiled machine per procedure version);
(b) decode + apply + batched commit through the service layer into SQLite and PostgreSQL,
    against one transaction per event, each the best of 3 runs into a fresh database; first
    the same path into the in-memory store under Python's default collector settings and
    under the engine's (dossier/gc_tuning.py). Personal data is sealed on the way in, as the
    engine does (engine.store.privacy); the same path storing it in clear, as before sealing,
    is measured beside it, passes interleaved.
"""

from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scratch  # bench/scratch.py, beside this script
from transitions import Machine

from dossier.gc_tuning import tune_for_batches
from dossier.settings import Settings
from dossier.tools.simulation import SimulatedMessage, Workload
from engine.application.pipeline import WriteBehindPipeline
from engine.application.ports import ConcurrencyError, Position
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied, Dossier
from engine.events import InboundEvent
from engine.procedures import ProcedureVersion, load_catalogue
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from engine.store.migrate import upgrade
from engine.store.privacy import PersonalDataVault, PrivacySecret
from engine.store.sql import SqlUnitOfWork, create_db_engine
from schemas.codec import ContractCodec
from schemas.personal_data import personal_paths

REFERENCE_PROCEDURES = ("1.001193", "1.004222", "DD.GCN.LD")
PASSES = 3


def workload(dossiers: int) -> list[SimulatedMessage]:
    catalogue, calendar = load_catalogue(), WorkingCalendar.load()
    return Workload(
        catalogue,
        calendar,
        seed=20251127,
        start=datetime.fromisoformat("2025-03-03T00:00:00+07:00"),
        end=datetime.fromisoformat("2025-05-30T00:00:00+07:00"),
        dossiers=dossiers,
        procedures=REFERENCE_PROCEDURES,
    ).messages()


def decoded(messages: list[SimulatedMessage]) -> list[InboundEvent]:
    decoder = ContractCodec()
    return [decoder.decode(m.value, m.topic, key=m.key) for m in messages]


def pure_apply(engine: Decider, events: list[InboundEvent]) -> tuple[float, int]:
    dossiers: dict[str, Dossier] = {}
    applied = 0
    started = time.perf_counter()
    for event in events:
        decision = engine.apply(dossiers.get(event.subject), event)
        if isinstance(decision, Applied):
            dossiers[event.subject] = decision.dossier
            applied += 1
    return time.perf_counter() - started, applied


class NaiveDossier:
    """The textbook shape: a model with its own Machine."""

    state: str


def naive_machine_per_dossier(engine: Decider, events: list[InboundEvent]) -> tuple[float, int]:
    """A transitions Machine built for every dossier; conditions on level and agency only."""
    models: dict[str, tuple[NaiveDossier, Machine]] = {}
    versions: dict[str, ProcedureVersion] = {}
    applied = 0
    started = time.perf_counter()
    for event in events:
        if event.short_type == "submitted":
            version = engine.catalogue.in_force(str(event.data["procedure"]), event.time)
            assert version is not None
            model = NaiveDossier()
            machine = Machine(
                model=model,
                states=list(version.states),
                initial=version.initial,
                auto_transitions=False,
                send_event=True,
            )
            for t in version.transitions:
                machine.add_transition(
                    t.event,
                    list(t.sources),
                    t.dest,
                    conditions=[_naive_condition(t.level, dict(t.when))],
                )
            models[event.subject] = (model, machine)
            versions[event.subject] = version
            applied += 1
            continue
        model, machine = models[event.subject]
        try:
            if machine.events[event.short_type].trigger(model, event):
                applied += 1
        except Exception:
            pass
    return time.perf_counter() - started, applied


def _naive_condition(level: str | None, when: dict[str, str]) -> Callable[[Any], bool]:
    def condition(event_data: Any) -> bool:
        event: InboundEvent = event_data.args[0]
        return event.origin_level == level and all(
            str(event.data.get(k)) == v for k, v in when.items()
        )

    return condition


def add_model_scaling(version: ProcedureVersion, counts: list[int]) -> list[tuple[int, float]]:
    figures = []
    for count in counts:
        machine = Machine(
            model=None, states=list(version.states), initial=version.initial, auto_transitions=False
        )
        for t in version.transitions:
            machine.add_transition(t.event, list(t.sources), t.dest)
        started = time.perf_counter()
        for _ in range(count):
            machine.add_model(NaiveDossier())
        figures.append((count, time.perf_counter() - started))
    return figures


def raw_inputs(messages: list[SimulatedMessage]) -> list[RawInput]:
    offsets: dict[str, int] = {}
    result = []
    for m in messages:
        offset = offsets.get(m.topic, 0)
        offsets[m.topic] = offset + 1
        result.append(RawInput(m.topic, Position(m.topic, 0, offset), m.key, m.value))
    return result


def bench_vault() -> PersonalDataVault:
    """A vault under a secret made for this run, as `dossier run` seals with its own."""
    import os

    return PersonalDataVault(PrivacySecret.from_bytes(os.urandom(32)), personal_paths)


def through_service(
    url: str,
    inputs: list[RawInput],
    batch_size: int,
    write_behind: bool = False,
    vault: PersonalDataVault | None = None,
) -> float:
    db = create_db_engine(url)
    upgrade(db)
    engine = Decider(load_catalogue(), WorkingCalendar.load())
    processor = BatchProcessor(
        engine,
        ContractCodec(),
        ServiceConfig("urn:bench", f"bench-{uuid.uuid4().hex[:8]}", parked_ttl=_week()),
    )
    started = time.perf_counter()
    _apply_all(db, processor, inputs, batch_size, write_behind, vault)
    elapsed = time.perf_counter() - started
    db.dispose()
    return elapsed


def _apply_all(
    db: Any,
    processor: BatchProcessor,
    inputs: list[RawInput],
    batch_size: int,
    behind: bool,
    vault: PersonalDataVault | None = None,
) -> None:
    """Every batch committed, as `dossier.composition.Runtime` commits them: plainly, retrying a
    conflict with another engine process, or through the write-behind pipeline."""

    def plain(batch: Sequence[RawInput], ceiling: datetime | None = None) -> BatchResult:
        for attempt in range(1, 6):
            try:
                return processor.process(
                    SqlUnitOfWork(db, writes=True, vault=vault), batch, ceiling
                )
            except ConcurrencyError:  # a dossier another process notified meanwhile
                if attempt == 5:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
    if not behind:
        for batch in batches:
            plain(batch)
        return
    pipeline = WriteBehindPipeline(
        processor,
        lambda: SqlUnitOfWork(db, vault=vault),
        lambda: SqlUnitOfWork(db, writes=True, vault=vault),
        plain,
    )
    try:
        for future in [pipeline.submit(batch) for batch in batches]:
            future.result()
    finally:
        pipeline.close()


def in_memory_service(inputs: list[RawInput], batch_size: int) -> float:
    """Seconds to decode, apply and commit `inputs` through the service layer into the
    in-memory store: the engine's own per-input work, with no database to wait for."""
    processor = BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load()),
        ContractCodec(),
        ServiceConfig("urn:bench", "bench", parked_ttl=_week()),
    )
    store = InMemoryStore()
    started = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        processor.process(InMemoryUnitOfWork(store), inputs[start : start + batch_size])
    return time.perf_counter() - started


def collector_comparison(
    inputs: list[RawInput], batch_size: int, young_threshold: int, rounds: int = 3
) -> tuple[float, float]:
    """Best inputs/s of the in-memory service path under Python's default collector settings
    and under `tune_for_batches`, interleaved so that both see the same machine."""
    default_threshold = (700, 10, 10)
    best_default = best_tuned = 0.0
    for _ in range(rounds):
        gc.unfreeze()
        gc.set_threshold(*default_threshold)
        best_default = max(best_default, len(inputs) / in_memory_service(inputs, batch_size))
        tune_for_batches(young_threshold)
        best_tuned = max(best_tuned, len(inputs) / in_memory_service(inputs, batch_size))
    return best_default, best_tuned


def through_service_sharded(
    url: str, inputs: list[RawInput], batch_size: int, processes: int
) -> float:
    """Wall time of `processes` engine processes sharing the inputs as a consumer group shares
    partitions: by a hash of the dossier key, each share in its own order and offsets."""
    shares: list[list[RawInput]] = [[] for _ in range(processes)]
    offsets: dict[tuple[str, int], int] = {}
    for raw in inputs:
        share = zlib.crc32(raw.key or b"") % processes
        slot = (raw.contract_topic, share)
        offsets[slot] = offsets.get(slot, -1) + 1
        position = Position(raw.position.topic, share, offsets[slot])
        shares[share].append(replace(raw, position=position))
    db = create_db_engine(url)
    upgrade(db)  # once, before the processes race to do it
    db.dispose()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    group = f"bench-{uuid.uuid4().hex[:8]}"
    workers = [
        context.Process(target=_serve_share, args=(url, share, batch_size, group, barrier))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=120)  # every process has loaded the catalogue and connected
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError("an engine process of the sharded run failed")
    return elapsed


def _serve_share(
    url: str, inputs: list[RawInput], batch_size: int, group: str, barrier: Any
) -> None:
    db = create_db_engine(url)
    processor = BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load()),
        ContractCodec(),
        ServiceConfig("urn:bench", group, parked_ttl=_week()),
    )
    # As `dossier run` does on assignment: this process's partitions' deadline notices.
    processor.notice_partitions = frozenset(
        raw.position.partition for raw in inputs if raw.position.partition is not None
    )
    with db.connect():
        pass
    tune_for_batches(Settings.from_env().gc_young_threshold)
    barrier.wait()
    _apply_all(db, processor, inputs, batch_size, behind=True, vault=bench_vault())
    db.dispose()


def _week() -> Any:
    from datetime import timedelta

    return timedelta(days=7)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dossiers", type=int, default=20000)
    parser.add_argument("--naive-dossiers", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--postgres", default=None, help="SQLAlchemy URL (default: settings)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="also run (b) on PostgreSQL in this many engine processes sharing the dossiers",
    )
    args = parser.parse_args()
    # As `dossier run` and `dossier replay` configure the collector (dossier/gc_tuning.py).
    settings = Settings.from_env()
    tune_for_batches(settings.gc_young_threshold)

    catalogue = load_catalogue()
    engine = Decider(catalogue, WorkingCalendar.load())
    messages = workload(args.dossiers)
    events = decoded(messages)
    print(f"workload: {args.dossiers} dossiers, {len(events)} events (3 reference procedures)")

    # Best of `PASSES`, as timeit does: on a shared virtual machine the slow passes measure
    # the neighbours, the fastest one the code.
    print(f"\n(a) pure apply, in memory, one core (best of {PASSES} passes)")
    elapsed, applied = min(pure_apply(engine, events) for _ in range(PASSES))
    print(
        f"  shared compiled machine : {len(events) / elapsed:>10,.0f} events/s ({applied} applied)"
    )
    naive_events = decoded(workload(args.naive_dossiers))
    elapsed_naive, _ = min(naive_machine_per_dossier(engine, naive_events) for _ in range(PASSES))
    elapsed_same, _ = min(pure_apply(engine, naive_events) for _ in range(PASSES))
    print(
        f"  machine per dossier     : {len(naive_events) / elapsed_naive:>10,.0f} events/s "
        f"({args.naive_dossiers} dossiers; shared machine on the same: "
        f"{len(naive_events) / elapsed_same:,.0f}/s, x{elapsed_naive / elapsed_same:.1f})"
    )
    version = catalogue.versions("DD.GCN.LD")[-1]
    print("  Machine.add_model, cumulative models -> seconds:")
    for count, seconds in add_model_scaling(version, [1000, 2000, 4000, 8000]):
        print(f"    {count:>6} models: {seconds:8.3f} s ({seconds / count * 1e6:,.0f} us/model)")

    print(f"\n(b) decode + apply + commit through the service layer (batch {args.batch_size})")
    inputs = raw_inputs(messages)
    if settings.gc_young_threshold > 0:
        default, tuned = collector_comparison(inputs, args.batch_size, settings.gc_young_threshold)
        print(
            f"  {'in memory, default collector':<44}: {default:>10,.0f} events/s"
            f" (best of {PASSES})\n"
            f"  {'in memory, DOSSIER_GC_YOUNG_THRESHOLD=' + str(settings.gc_young_threshold):<44}:"
            f" {tuned:>10,.0f} events/s (best of {PASSES}, x{tuned / default:.2f})"
        )
    naive_inputs = inputs[: min(len(inputs), 3000)]
    with tempfile.TemporaryDirectory() as tmp:
        base = args.postgres or Settings.from_env().postgres_url
        files = iter(range(1_000_000))
        targets: list[tuple[str, Callable[[], str]]] = [
            ("SQLite", lambda: f"sqlite:///{tmp}/bench-{next(files)}.db"),
            ("SQLite naive", lambda: f"sqlite:///{tmp}/naive-{next(files)}.db"),
        ]
        if not args.no_postgres:
            fresh_schema = functools.partial(scratch.schema_url, base)
            targets += [
                ("PostgreSQL", fresh_schema),
                ("PostgreSQL write-behind", fresh_schema),
                ("PostgreSQL naive", fresh_schema),
            ]
        # Every figure, baselines included, is the best of PASSES runs, each into a fresh
        # database, like (a). Each batched target is measured sealing personal data (as the
        # engine runs) and storing it in clear (before sealing), passes interleaved so both
        # see the same machine.
        for name, fresh in targets:
            naive = name.endswith("naive")
            batch = 1 if naive else args.batch_size
            sample = naive_inputs if naive else inputs
            behind = "behind" in name
            sealed: list[float] = []
            clear: list[float] = []
            for _ in range(PASSES):
                sealed.append(through_service(fresh(), sample, batch, behind, bench_vault()))
                if not naive:
                    clear.append(through_service(fresh(), sample, batch, behind))
            label = f"{name} ({'1 event per transaction' if naive else f'batches of {batch}'})"
            rate = len(sample) / min(sealed)
            print(f"  {label:<44}: {rate:>10,.0f} events/s ({len(sample)} events)")
            if clear:
                plain_rate = len(sample) / min(clear)
                print(
                    f"  {'  same, personal data in clear (no sealing)':<44}: {plain_rate:>10,.0f}"
                    f" events/s (sealing costs {100 * (plain_rate / rate - 1):+.1f}%)"
                )
        if not args.no_postgres and args.processes > 1:
            elapsed = min(
                through_service_sharded(
                    scratch.schema_url(base), inputs, args.batch_size, args.processes
                )
                for _ in range(PASSES)
            )
            label = f"PostgreSQL write-behind, {args.processes} engine processes"
            print(f"  {label:<44}: {len(inputs) / elapsed:>10,.0f} events/s ({len(inputs)} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
