"""Write-behind: batch n+1 is computed while batch n is written and committed.

A batch spends a good part of its time waiting for the database (its writes, the commit). In
that time the interpreter is free, so the next batch can be decoded, applied and staged. Its
reads must see the batch still being written as if it were committed: they go to the database
and then through an *overlay* of what that batch will have written (its dossiers with their
next revision, ledger keys, positions, clock, parked inputs it removed). Its change set is
staged, not written, and the writer thread writes it in a transaction of its own once the batch
before has committed. At most one batch is being written while one is computed.

Anything unusual falls back to the plain path, which is always correct:
- a batch that touches a dossier whose inputs the in-flight batch parked (those rows have no
  ids yet) waits for that batch to commit, then reads everything afresh;
- if writing a batch fails (a conflict with another engine process, the database), it is
  processed again from its inputs, serially, with retries; the batch computed on top of it is
  then computed again too, since its overlay was wrong.

The units of work are the same as `BatchProcessor.process` uses, so the effects are those of
processing the batches one after the other; `tests/unit/test_pipeline.py` checks exactly that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime

from engine.application.ports import (
    BatchRepository,
    ChangeSet,
    HandoverScan,
    MigrationScan,
    NoticeScan,
    ParkedInput,
    StoredDossier,
    UnitOfWork,
)
from engine.application.service import BatchProcessor, BatchResult, RawInput

log = logging.getLogger(__name__)

Serial = Callable[[Sequence[RawInput], "datetime | None"], BatchResult]


@dataclass
class Overlay:
    """What a staged batch will have written once it commits, as its successor reads it."""

    dossiers: dict[str, StoredDossier] = field(default_factory=dict)
    ledger: dict[tuple[str, str], str] = field(default_factory=dict)
    positions: dict[tuple[str, str, int], int] = field(default_factory=dict)
    clock: datetime | None = None
    unparked: set[int] = field(default_factory=set)
    parked_codes: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, changes: ChangeSet | None) -> Overlay:
        overlay = cls()
        if changes is None:
            return overlay
        overlay.dossiers = {stored.dossier.code: stored.saved() for stored in changes.dossiers}
        overlay.ledger = {(e.source, e.event_id): e.content_hash for e in changes.ledger}
        overlay.positions = {
            (changes.group, topic, partition): offset
            for (topic, partition), offset in changes.positions.items()
        }
        overlay.clock = changes.clock
        overlay.unparked = set(changes.unparked)
        overlay.parked_codes = {p.dossier_code for p in changes.parked}
        return overlay


class StagingRepository:
    """Reads: the database, then the in-flight batch's overlay. The write: staged."""

    def __init__(
        self,
        reads: BatchRepository,
        overlay: Overlay | None,
        settle: Callable[[], None],
    ) -> None:
        self._reads = reads
        self._overlay = overlay or Overlay()
        self._settle = settle
        self.changes: ChangeSet | None = None

    # --- reads ---------------------------------------------------------------------------
    def load_dossiers(self, codes: Iterable[str]) -> dict[str, StoredDossier]:
        codes = set(codes)
        found = self._reads.load_dossiers(codes)
        for code in codes & self._overlay.dossiers.keys():
            found[code] = self._overlay.dossiers[code]
        return found

    def applied_hashes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        keys = list(keys)
        found = self._reads.applied_hashes(keys)
        ledger = self._overlay.ledger
        for key in keys:
            if key in ledger:
                found[key] = ledger[key]
        return found

    def parked_for(self, dossier_codes: Iterable[str]) -> list[ParkedInput]:
        codes = set(dossier_codes)
        if codes & self._overlay.parked_codes:
            # Inputs parked by the batch in flight have no ids yet: wait until they do.
            self._settle()
            self._overlay = Overlay()
        return [p for p in self._reads.parked_for(codes) if p.id not in self._overlay.unparked]

    def parked_expired(self, now: datetime, limit: int) -> list[ParkedInput]:
        unparked = self._overlay.unparked
        return [p for p in self._reads.parked_expired(now, limit) if p.id not in unparked]

    def notices_due(self, now: datetime, scan: NoticeScan) -> list[StoredDossier]:
        # Never locked here: the rows would stay locked while the writer waits for them.
        # A dossier another process notifies meanwhile fails the revision check at write time
        # (rare once each process scans only its own partitions' dossiers).
        due: dict[str, StoredDossier] = {}
        for stored in self._reads.notices_due(now, replace(scan, lock=False)):
            if stored.dossier.code not in self._overlay.dossiers:
                due[stored.dossier.code] = stored
        # The batch in flight's dossiers as it leaves them, those the database does not have
        # yet included (a dossier it created, due by now): as a serial batch would see them.
        for code, staged in self._overlay.dossiers.items():
            if (
                staged.next_notice_at is not None
                and staged.next_notice_at <= now
                and (
                    scan.partitions is None
                    or staged.partition is None
                    or staged.partition in scan.partitions
                )
            ):
                due[code] = staged
        ordered = sorted(due.values(), key=lambda d: (d.next_notice_at, d.dossier.code))
        return ordered[: scan.limit]

    def partition_clocks(self, partitions: Collection[int] | None) -> dict[int, datetime]:
        clocks = self._reads.partition_clocks(partitions)
        for _, staged in self._overlay.dossiers.items():
            p = staged.partition
            if p is None or (partitions is not None and p not in partitions):
                continue
            at = staged.dossier.last_event_at
            if p not in clocks or at > clocks[p]:
                clocks[p] = at
        return clocks

    def handovers_due(self, scan: HandoverScan) -> list[StoredDossier]:
        return self._with_overlay(scan, self._reads.handovers_due(replace(scan, lock=False)))

    def migrations_due(self, scan: MigrationScan) -> list[StoredDossier]:
        return self._with_overlay(scan, self._reads.migrations_due(replace(scan, lock=False)))

    def _with_overlay(
        self, scan: HandoverScan | MigrationScan, stored: list[StoredDossier]
    ) -> list[StoredDossier]:
        """As notices_due: what the store found (never locked), with the batch in flight's
        dossiers as it leaves them in its place."""
        due = {s.dossier.code: s for s in stored if s.dossier.code not in self._overlay.dossiers}
        for code, staged in self._overlay.dossiers.items():
            if scan.selects(staged):
                due[code] = staged
        return sorted(due.values(), key=lambda d: d.dossier.code)[: scan.limit]

    def load_positions(self, group: str) -> dict[tuple[str, int], int]:
        positions = self._reads.load_positions(group)
        for (g, topic, partition), offset in self._overlay.positions.items():
            if g == group:
                slot = (topic, partition)
                positions[slot] = max(positions.get(slot, 0), offset)
        return positions

    def get_clock(self) -> datetime | None:
        stored = self._reads.get_clock()
        staged = self._overlay.clock
        if staged is None:
            return stored
        return staged if stored is None or staged > stored else stored

    # --- the write: staged --------------------------------------------------------------
    def write(self, changes: ChangeSet) -> None:
        if self.changes is not None:
            raise RuntimeError("a batch writes once: its change set is already staged")
        self.changes = changes


@dataclass
class _Stage:
    inputs: Sequence[RawInput]
    clock_ceiling: datetime | None
    future: Future[BatchResult]
    changes: ChangeSet | None = None
    overlay: Overlay | None = None
    result: BatchResult | None = None
    recompute: bool = False  # write it the plain way: what was staged cannot be trusted


class WriteBehindPipeline:
    """`submit` computes a batch in the caller's thread and returns once its writes are handed
    to the writer thread; the future resolves when they are committed. One caller thread."""

    def __init__(
        self,
        processor: BatchProcessor,
        read_uow: Callable[[], UnitOfWork[BatchRepository]],
        write_uow: Callable[[], UnitOfWork[BatchRepository]],
        serial: Serial,
    ) -> None:
        self._processor = processor
        self._read_uow = read_uow
        self._write_uow = write_uow
        self._serial = serial
        self._cond = threading.Condition()
        self._in_flight: _Stage | None = None
        self._generation = 0  # bumped whenever a written batch differs from what was staged
        self._closed = False
        # For tests and logs: batches computed over one in flight, and processed again.
        self.overlapped = 0
        self.recomputed = 0
        self._writer = threading.Thread(target=self._write_loop, name="dossier-writer")
        self._writer.start()

    def submit(
        self, inputs: Sequence[RawInput], clock_ceiling: datetime | None = None
    ) -> Future[BatchResult]:
        stage = _Stage(inputs, clock_ceiling, Future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            base = self._in_flight
            if base is not None and base.recompute:
                self._cond.wait_for(lambda: self._in_flight is not base)
                base = None
            generation = self._generation
            if base is not None:
                self.overlapped += 1
        try:
            with self._read_uow() as reads:

                def settle() -> None:
                    with self._cond:
                        self._cond.wait_for(lambda: self._in_flight is not base)
                    reads.rollback()  # a fresh snapshot, with the settled batch in it

                staging = StagingRepository(
                    reads.repo, base.overlay if base is not None else None, settle
                )
                stage.result = self._processor.run_on(staging, inputs, clock_ceiling)
            stage.changes = staging.changes
            stage.overlay = Overlay.of(staging.changes)
        except Exception:
            log.exception("staging a batch failed; it will be processed the plain way")
            stage.recompute = True
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight is None)
            if self._generation != generation:
                stage.recompute = True
            self._in_flight = stage
            self._cond.notify_all()
        return stage.future

    def close(self, timeout_s: float = 60.0) -> None:
        """Let the batch in flight commit, then stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(timeout_s)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._in_flight is not None or self._closed)
                stage = self._in_flight
                if stage is None:
                    return
            try:
                stage.future.set_result(self._write(stage))
            except BaseException as exc:  # the caller decides; the pipeline goes on
                stage.future.set_exception(exc)
            with self._cond:
                self._in_flight = None
                self._cond.notify_all()

    def _write(self, stage: _Stage) -> BatchResult:
        if not stage.recompute:
            try:
                with self._write_uow() as uow:
                    if stage.changes is not None:
                        uow.repo.write(stage.changes)
                    uow.commit()
                assert stage.result is not None
                return stage.result
            except Exception as exc:
                log.warning(
                    "a staged batch of %d inputs could not be written (%s); processing it again",
                    len(stage.inputs),
                    type(exc).__name__,
                )
        with self._cond:
            self._generation += 1
            stage.recompute = True
            self.recomputed += 1
        result = self._serial(stage.inputs, stage.clock_ceiling)
        result.reprocessed = True
        return result
