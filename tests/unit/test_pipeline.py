"""Write-behind (engine.application.pipeline) has the effects of processing the batches one
after the other, whatever the stream holds, and when a staged write fails."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import pytest

from dossier.tools.simulation import Workload
from engine.application.pipeline import Overlay, StagingRepository, WriteBehindPipeline
from engine.application.ports import ChangeSet, ConcurrencyError, Position, StoredDossier
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Applied
from engine.events import InputRejected
from engine.procedures import load_catalogue
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec
from tests.store_contract import make_dossier

ENGINE = Decider(load_catalogue(), WorkingCalendar.load())
GROUP = "pipeline-test"


def processor() -> BatchProcessor:
    return BatchProcessor(
        ENGINE, ContractCodec(), ServiceConfig("urn:test:engine", GROUP, timedelta(days=7))
    )


def stream(dossiers: int, seed: int) -> list[RawInput]:
    messages = Workload(
        load_catalogue(),
        WorkingCalendar.load(),
        seed=seed,
        start=datetime(2025, 5, 1, tzinfo=UTC),
        end=datetime(2025, 8, 1, tzinfo=UTC),
        dossiers=dossiers,
        procedures=("1.001193", "1.004222", "DD.GCN.LD"),
        duplicate_share=0.03,
        bad_share=0.02,
        reorder_share=0.1,  # many inputs parked in one batch and applied in a later one
    ).messages()
    offsets: dict[str, int] = {}
    inputs = []
    for m in messages:
        offsets[m.topic] = offsets.get(m.topic, -1) + 1
        inputs.append(
            RawInput(m.topic, Position(m.topic, 0, offsets[m.topic]), m.key, m.value, m.headers)
        )
    return inputs


class _Locked:
    """The in-memory store is not thread-safe: each call, and each commit, holds one lock, so
    the writer's commit never lands in the middle of a read (as a database guarantees)."""

    def __init__(self, target: Any, lock: threading.Lock) -> None:
        self._target = target
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return locked


class LockedUnitOfWork:
    def __init__(self, store: InMemoryStore, lock: threading.Lock) -> None:
        self._uow = InMemoryUnitOfWork(store)
        self._lock = lock
        self.repo: Any = None

    def __enter__(self) -> Self:
        with self._lock:
            self._uow.__enter__()
        self.repo = _Locked(self._uow.repo, self._lock)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._uow.__exit__(kind, exc, tb)

    def commit(self) -> None:
        with self._lock:
            self._uow.commit()

    def rollback(self) -> None:
        with self._lock:
            self._uow.rollback()


def contents(store: InMemoryStore) -> dict[str, Any]:
    """Everything a run leaves, without the wall-clock fields and surrogate ids."""
    return {
        "dossiers": {
            c: (s.dossier, s.revision, s.next_notice_at) for c, s in store.dossiers.items()
        },
        "history": {c: [r.chain_hash for r in rows] for c, rows in store.history.items()},
        "ledger": dict(store.ledger),
        "parked": sorted((p.source, p.event_id) for p in store.parked.values()),
        "outbox": [(m.topic, m.message_id, m.value) for m in store.outbox.values()],
        "positions": dict(store.positions),
        "outcomes": {k: v for k, v in store.outcomes.items() if v},
        "clock": store.clock,
    }


def serially(inputs: Sequence[RawInput], batch: int) -> tuple[InMemoryStore, list[BatchResult]]:
    store, results = InMemoryStore(), []
    batch_processor = processor()
    for i in range(0, len(inputs), batch):
        results.append(batch_processor.process(InMemoryUnitOfWork(store), inputs[i : i + batch]))
    return store, results


def behind(
    inputs: Sequence[RawInput],
    batch: int,
    write_uow: Callable[[InMemoryStore, threading.Lock], Any] = LockedUnitOfWork,
) -> tuple[InMemoryStore, list[BatchResult], WriteBehindPipeline]:
    store, lock = InMemoryStore(), threading.Lock()
    batch_processor = processor()

    def serial(batch_inputs: Sequence[RawInput], ceiling: datetime | None) -> BatchResult:
        return batch_processor.process(LockedUnitOfWork(store, lock), batch_inputs, ceiling)

    pipeline = WriteBehindPipeline(
        batch_processor,
        lambda: LockedUnitOfWork(store, lock),
        lambda: write_uow(store, lock),
        serial,
    )
    futures = [pipeline.submit(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    results = [f.result(timeout=60) for f in futures]
    pipeline.close()
    return store, results, pipeline


class SlowCommit(LockedUnitOfWork):
    """A commit that takes a while, as a database's does: the next batch is computed meanwhile."""

    def commit(self) -> None:
        time.sleep(0.02)
        super().commit()


@pytest.mark.parametrize(("seed", "batch"), [(1, 97), (2, 250), (3, 31)])
def test_write_behind_leaves_what_serial_processing_leaves(seed: int, batch: int) -> None:
    inputs = stream(120, seed)
    reference, expected = serially(inputs, batch)
    store, results, pipeline = behind(inputs, batch, SlowCommit)
    batches = len(results)
    assert pipeline.overlapped >= batches // 2  # really computed over a batch in flight
    assert pipeline.recomputed == 0  # and never fell back to the plain path
    assert sum(r.unparked for r in expected) > 0  # parked inputs did cross batches
    assert contents(store) == contents(reference)
    assert [r.outcomes for r in results] == [r.outcomes for r in expected]
    assert [r.settled for r in results] == [r.settled for r in expected]


class FailingOnce(LockedUnitOfWork):
    """The writer's transaction fails once, as a conflict with another engine process would."""

    failures = 0

    def commit(self) -> None:
        if FailingOnce.failures == 0:
            FailingOnce.failures += 1
            raise ConcurrencyError("another engine process moved a dossier on")
        super().commit()


def test_a_failed_staged_write_is_processed_again_and_so_is_the_batch_built_on_it() -> None:
    inputs = stream(80, 4)
    reference, _ = serially(inputs, 60)
    FailingOnce.failures = 0
    store, results, pipeline = behind(inputs, 60, FailingOnce)
    assert FailingOnce.failures == 1
    assert pipeline.recomputed >= 1
    assert results[0].reprocessed  # the first batch's staged write was the one refused
    assert sum(r.reprocessed for r in results) == pipeline.recomputed
    assert contents(store) == contents(reference)


def test_the_overlay_reads_a_staged_dossier_at_its_next_revision() -> None:
    staged = make_dossier(code="D-1")
    overlay = Overlay.of(
        ChangeSet(dossiers=[StoredDossier(staged, 3, None)], group=GROUP, positions={("t", 0): 7})
    )
    store = InMemoryStore()
    with InMemoryUnitOfWork(store) as uow:
        staging = StagingRepository(uow.repo, overlay, settle=lambda: None)
        assert staging.load_dossiers(["D-1"])["D-1"].revision == 4
        assert staging.load_positions(GROUP) == {("t", 0): 7}
        assert staging.load_positions("another group") == {}
        changes = ChangeSet(dossiers=[StoredDossier(staged, 4, None)])
        staging.write(changes)
        assert staging.changes is changes
        assert not store.dossiers  # staged, not written
        with pytest.raises(RuntimeError):  # a batch writes once
            staging.write(ChangeSet())


def _decisions(events: Sequence[Any]) -> list[Any]:
    dossiers: dict[str, Any] = {}
    decisions = []
    for event in events:
        decision = ENGINE.apply(dossiers.get(event.subject), event)
        if isinstance(decision, Applied):
            dossiers[event.subject] = decision.dossier
        decisions.append(decision)
    return decisions


def test_two_threads_applying_on_the_shared_machines_decide_as_one_thread_does() -> None:
    """The writer thread may process a batch again while the next is applied: the compiled
    machines (shared by all dossiers) must not mix up the two threads' inputs."""
    decoder = ContractCodec()
    events = []
    for raw in stream(60, 5):
        try:
            events.append(decoder.decode(raw.value, raw.contract_topic, key=raw.key))
        except InputRejected:
            continue
    expected = _decisions(events)
    results: list[list[Any]] = [[], []]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside `fire` too
    try:
        threads = [
            threading.Thread(target=lambda i=i: results[i].extend(_decisions(events)))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert results[0] == expected
    assert results[1] == expected
