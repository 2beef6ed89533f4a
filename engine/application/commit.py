"""Committing batches: the loop around `BatchProcessor` that the transport drives.

It retries what the infrastructure failed (a conflict with another engine process, the database
restarting), finds and sets aside the one input a failure follows so that it can never fail every
batch it is in, remembers the consumed positions the database committed, and tells its listeners
(metrics, the outbox relay's wake-up) after every commit. What counts as an infrastructure
failure, how units of work are opened and what runs after a commit are handed in: this module
knows no database, broker or clock of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime

from engine.application.pipeline import WriteBehindPipeline
from engine.application.ports import BatchRepository, ConcurrencyError, UnitOfWork
from engine.application.service import BatchProcessor, BatchResult, RawInput

log = logging.getLogger(__name__)

# A batch that cannot be committed after this many tries (each after a growing pause) ends the
# process before Kafka is acknowledged: the supervisor restarts it and the batch comes again.
COMMIT_ATTEMPTS = 8

BatchListener = Callable[[Sequence[RawInput], BatchResult, float], None]
UnitOfWorkFactory = Callable[[], UnitOfWork[BatchRepository]]


class BatchCommitter:
    def __init__(
        self,
        processor: BatchProcessor,
        read_uow: UnitOfWorkFactory,
        write_uow: UnitOfWorkFactory,
        *,
        write_behind: bool,
        is_transient: Callable[[BaseException], bool],
        consumer_group: str,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.processor = processor
        self.read_uow = read_uow
        self.write_uow = write_uow
        self.write_behind = write_behind
        self.is_transient = is_transient
        self.consumer_group = consumer_group
        self.after_commit = after_commit
        self.listeners: list[BatchListener] = []
        self._window: list[float] = [time.monotonic(), 0, 0, 0.0]
        self._positions: dict[tuple[str, int], int] | None = None
        self._pipeline: WriteBehindPipeline | None = None

    # -----------------------------------------------------------------------------------------
    def process(
        self,
        inputs: Sequence[RawInput],
        attempts: int = 5,
        clock_ceiling: datetime | None = None,
        failures_allowed: int = 0,
    ) -> BatchResult:
        """Apply and commit one batch, retrying when another process moved a dossier on (and,
        `failures_allowed` times, after an infrastructure failure: see `_commit`)."""
        started = time.perf_counter()
        result = self._commit(inputs, clock_ceiling, attempts, failures_allowed)
        self._remember_positions(inputs)
        self._committed(inputs, result, time.perf_counter() - started)
        return result

    def submit(
        self, inputs: Sequence[RawInput], clock_ceiling: datetime | None = None
    ) -> Future[BatchResult]:
        """Apply a batch now and commit it behind (engine.application.pipeline): returns once
        the batch is staged, while the one before may still be committing; the future resolves
        when this one is committed. Call from one thread."""
        if self._pipeline is None:
            self._pipeline = WriteBehindPipeline(
                self.processor,
                self.read_uow,
                self.write_uow,
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

    def own_partitions(self, partitions: frozenset[int]) -> None:
        """The inbound partitions this process consumes, set by the transport on every
        assignment: due deadline notices are looked for among their dossiers only."""
        self.processor.notice_partitions = partitions

    def tick(self) -> BatchResult:
        """A batch with no input: parked-input expiry and deadline notices when none arrives."""
        return self.process([])

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()  # the batch in flight commits first

    # -----------------------------------------------------------------------------------------
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
                return self.processor.process(self.write_uow(), inputs, clock_ceiling)
            except Exception as exc:
                if isinstance(exc, ConcurrencyError):
                    conflicts += 1
                    if conflicts < attempts:
                        log.warning("batch raced another engine process; retrying (%d)", conflicts)
                        time.sleep(0.05 * conflicts)
                        continue
                    conflicts = 0  # a run of conflicts that outlasted its retries: one failure
                elif inputs and not self.is_transient(exc):
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
        return self.processor.set_aside(self.write_uow(), raw, failure)

    def _committed(self, inputs: Sequence[RawInput], result: BatchResult, elapsed: float) -> None:
        self._report(len(inputs), elapsed)
        for listener in self.listeners:
            listener(inputs, result, elapsed)
        if self.after_commit is not None:
            self.after_commit()

    # -----------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Pay the one-off costs before the first input waits on them: the database pool's
        first connection and the positions cache. Workflows still compile on first use."""
        self.committed_position("", 0)

    def committed_position(self, topic: str, partition: int) -> int:
        """The next offset this database has to consume from a partition (0 if none yet)."""
        if self._positions is None:
            with self.read_uow() as uow:
                self._positions = uow.repo.load_positions(self.consumer_group)
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
