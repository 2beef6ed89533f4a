"""Wiring: settings in, a running engine out. Built only when a command asks for it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine as DbEngine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dossier.settings import Settings
from engine.application.pipeline import WriteBehindPipeline
from engine.application.ports import ConcurrencyError
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.events import INBOUND_TOPICS
from engine.procedures import load_catalogue
from engine.store.migrate import upgrade
from engine.store.sql import SqlUnitOfWork, create_db_engine, pinned_versions
from schemas.codec import InboundDecoder

if TYPE_CHECKING:
    from producers.relay import Waker

log = logging.getLogger(__name__)

# A batch that cannot be committed after this many tries (each after a growing pause) ends the
# process before Kafka is acknowledged: the supervisor restarts it and the batch comes again.
COMMIT_ATTEMPTS = 8

BatchListener = Callable[[Sequence[RawInput], BatchResult, float], None]


def is_infrastructure_failure(exc: BaseException) -> bool:
    """A failure of the database or the network, which retrying the same inputs may cure, as
    opposed to one that the inputs cause (a bug an input triggers, a value the store refuses)."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | MemoryError)


@dataclass
class Runtime:
    settings: Settings
    db: DbEngine
    engine: Decider
    processor: BatchProcessor
    batch_listeners: list[BatchListener] = field(default_factory=list)
    # Set after every commit; a relay in another process passes its own (multiprocessing) one.
    outbox_wake: Waker = field(default_factory=threading.Event)
    _window: list[float] = field(default_factory=lambda: [time.monotonic(), 0, 0, 0.0])
    _positions: dict[tuple[str, int], int] | None = None
    # Audit checkpoints (engine.store.audit): the first after the first batch, then at most
    # one per interval; the interval bounds how much history a truncation could hide.
    checkpoint_interval_s: float = 60.0
    _last_checkpoint: float | None = None
    _pipeline: WriteBehindPipeline | None = None

    @classmethod
    def create(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        catalogue = load_catalogue(settings.workflows_dir)
        engine = Decider(catalogue, WorkingCalendar.load())
        db = create_db_engine(settings.database_url)
        if migrate:
            upgrade(db)
        processor = BatchProcessor(
            engine,
            InboundDecoder(settings.max_message_bytes),
            ServiceConfig(
                engine_source=settings.engine_source,
                consumer_group=settings.consumer_group,
                parked_ttl=timedelta(seconds=settings.parked_ttl_seconds),
                clock_mode=settings.clock_mode,
            ),
        )
        return cls(settings, db, engine, processor)

    def missing_versions(self) -> list[tuple[str, int, int]]:
        """(procedure, version, dossiers) for every workflow version that stored dossiers are
        pinned to and the catalogue no longer has: their inputs could not be decided."""
        catalogue = self.engine.catalogue
        return sorted(
            (code, version, count)
            for (code, version), count in pinned_versions(self.db).items()
            if catalogue.get(code, version) is None
        )

    def uow(self, *, writes: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db, writes=writes)

    def writing_uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db, writes=True)

    def contract_topic(self, kafka_topic: str) -> str:
        contract = kafka_topic.removeprefix(self.settings.topic_prefix)
        if contract not in INBOUND_TOPICS:
            raise ValueError(f"not an inbound topic of this deployment: {kafka_topic}")
        return contract

    def process(
        self,
        inputs: Sequence[RawInput],
        attempts: int = 5,
        clock_ceiling: datetime | None = None,
        failures_allowed: int = 0,
    ) -> BatchResult:
        """Apply and commit one batch, retrying when another process moved a dossier on (and,
        `failures_allowed` times, after any other failure: see `_commit`)."""
        started = time.perf_counter()
        result = self._commit(inputs, clock_ceiling, attempts, failures_allowed)
        self._remember_positions(inputs)
        self._committed(inputs, result, time.perf_counter() - started)
        return result

    @property
    def write_behind(self) -> bool:
        mode = self.settings.batch_pipeline
        return mode == "write-behind" or (mode == "auto" and self.db.dialect.name != "sqlite")

    def submit(
        self, inputs: Sequence[RawInput], clock_ceiling: datetime | None = None
    ) -> Future[BatchResult]:
        """Apply a batch now and commit it behind (engine.application.pipeline): returns once
        the batch is staged, while the one before may still be committing; the future resolves
        when this one is committed. Call from one thread."""
        if self._pipeline is None:
            self._pipeline = WriteBehindPipeline(
                self.processor,
                self.uow,
                self.writing_uow,
                lambda batch, ceiling: self._commit(
                    batch, ceiling, failures_allowed=COMMIT_ATTEMPTS - 1
                ),
            )
        started = time.perf_counter()
        future = self._pipeline.submit(inputs, clock_ceiling)
        self._remember_positions(inputs)  # committed, or the process ends before acking

        def committed(done: Future[BatchResult]) -> None:
            if done.exception() is None:
                self._committed(inputs, done.result(), time.perf_counter() - started)

        future.add_done_callback(committed)
        return future

    def _commit(
        self,
        inputs: Sequence[RawInput],
        clock_ceiling: datetime | None,
        attempts: int = 5,
        failures_allowed: int = 0,
    ) -> BatchResult:
        """Process and commit the plain way. Conflicts with another engine process are retried
        `attempts` times; infrastructure failures (the database restarting) `failures_allowed`
        times, with a growing pause. Any other failure is looked for in the inputs
        (`_isolate`), so one input can never fail every batch it is in."""
        conflicts = failures = 0
        while True:
            try:
                return self.processor.process(self.writing_uow(), inputs, clock_ceiling)
            except Exception as exc:
                if isinstance(exc, ConcurrencyError):
                    conflicts += 1
                    if conflicts < attempts:
                        log.warning("batch raced another engine process; retrying (%d)", conflicts)
                        time.sleep(0.05 * conflicts)
                        continue
                    conflicts = 0  # a run of conflicts that outlasted its retries: one failure
                elif inputs and not is_infrastructure_failure(exc):
                    return self._isolate(inputs, clock_ceiling, exc, attempts, failures_allowed)
                failures += 1
                if failures > failures_allowed:
                    raise
                log.exception("batch of %d inputs not committed (try %d)", len(inputs), failures)
                time.sleep(min(0.2 * 2 ** (failures - 1), 5.0))

    def _isolate(
        self,
        inputs: Sequence[RawInput],
        clock_ceiling: datetime | None,
        failure: Exception,
        attempts: int,
        failures_allowed: int,
    ) -> BatchResult:
        """Find the input a failure follows by halving the batch (each half commits on its
        own, in order) and set it aside as `internal-error`; the others go on. Kafka Streams'
        processing-exception handler (KIP-1033) does the same for one record."""
        if len(inputs) > 1:
            log.error(
                "batch of %d inputs failed (%s); halving it to find the input it follows",
                len(inputs),
                type(failure).__name__,
            )
            half = len(inputs) // 2
            first = self._commit(inputs[:half], clock_ceiling, attempts, failures_allowed)
            second = self._commit(inputs[half:], clock_ceiling, attempts, failures_allowed)
            return first.merged(second)
        # One input left. If a batch with no input fails too, the failure is not the input's
        # (a deadline notice, the store): end as an infrastructure failure rather than
        # dead-letter every input that comes along.
        self._commit([], clock_ceiling, attempts, failures_allowed)
        (raw,) = inputs
        log.error(
            "input %s[%s]@%s set aside as internal-error (%s)",
            raw.position.topic,
            raw.position.partition,
            raw.position.offset,
            type(failure).__name__,
        )
        return self.processor.set_aside(self.writing_uow(), raw, failure)

    def _committed(self, inputs: Sequence[RawInput], result: BatchResult, elapsed: float) -> None:
        self.outbox_wake.set()
        self._report(len(inputs), elapsed)
        for listener in self.batch_listeners:
            listener(inputs, result, elapsed)
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        last = self._last_checkpoint
        if last is not None and now - last < self.checkpoint_interval_s:
            return
        self._last_checkpoint = now
        from engine.store.audit import write_checkpoint

        try:
            if write_checkpoint(self.db, self.settings.engine_source) is not None:
                self.outbox_wake.set()
        except Exception:
            # A missed checkpoint delays evidence; it must not stop the engine.
            log.exception("audit checkpoint failed; retrying at the next interval")

    def warm_up(self) -> None:
        """Pay the one-off costs before the first input waits on them: the database pool's
        first connection and the positions cache. Workflows still compile on first use."""
        self.committed_position("", 0)

    def committed_position(self, topic: str, partition: int) -> int:
        """The next offset this database has to consume from a partition (0 if none yet)."""
        if self._positions is None:
            with self.uow() as uow:
                self._positions = uow.repo.load_positions(self.settings.consumer_group)
        return self._positions.get((topic, partition), 0)

    def _remember_positions(self, inputs: Sequence[RawInput]) -> None:
        if self._positions is None:
            return
        for raw in inputs:
            p = raw.position
            if p.partition is not None and p.offset is not None:
                slot = (p.topic, p.partition)
                self._positions[slot] = max(self._positions.get(slot, 0), p.offset + 1)

    def _report(self, inputs: int, elapsed: float, every_s: float = 10.0) -> None:
        """A throughput line every few seconds, so an operator sees the engine working."""
        window = self._window
        window[1] += inputs
        window[2] += 1 if inputs else 0
        window[3] += elapsed
        now = time.monotonic()
        if now - window[0] >= every_s and window[1]:
            span = now - window[0]
            log.info(
                "applied %d inputs in %d batches in the last %.0f s (%.0f/s; %.0f%% of the time "
                "in batch processing)",
                window[1],
                window[2],
                span,
                window[1] / span,
                100 * window[3] / span,
            )
            self._window[:] = [now, 0, 0, 0.0]

    def tick(self) -> BatchResult:
        """Deadline notices and parked-input expiry when no input arrives (wall-clock mode)."""
        return self.process([])

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()  # the batch in flight commits first
        self.db.dispose()
