"""Replay from a database's history on every core: the history sharded by dossier code, each
shard folded in its own process over the in-memory store, the shards merged into the target.
The folding, the lock step and the merge are shared with the replay from Kafka
(`dossier.replay.kafka`), whose shards are partitions and whose serial order is the merge of
the topics; below, an input's *rank* is its place in the serial order: its history id here.

Dossiers are independent (the engine reads and writes one dossier per input; (source, id) keys
are unique across dossiers in a history, and every outbound id names its dossier), so a shard
of dossiers folds to the same rows it would have in a serial replay, with two exceptions that
are global and are therefore coordinated by the parent, batch by batch, in lock step:

- **The business clock.** The serial replay cuts the history into batches of `batch_size` rows
  in id order, and each batch's clock is the latest time of an input applied so far (only
  applied inputs move it). Every worker cuts its shard at the same history ids; once it has
  handled its share of a batch it reports the latest time applied in it, the parent works out
  the clock the serial replay would have had (the latest of them, or the previous clock when
  the batch applied nothing later; in UTC, as the serial batch keeps it), and each worker's
  batch, which started as the serial one does from the previous clock (inputs dead-lettered
  while handling carry that time), moves to the parent's clock (`_CoordinatedClock`, the
  processor's clock policy), which the share's own inputs may not reach. So deadline notices
  carry the same `time` and hours, dead letters the same `time`. A worker whose share of a
  batch is empty still runs the batch (with no inputs), because the serial batch emits notices
  for every dossier that is due.
- **The notice scan limit.** Each batch the serial replay emits notices for at most
  `notice_scan_limit` untouched dossiers that are due, the first by (next_notice_at, code); the
  rest wait for a later batch (and a later clock). Each worker reports its first
  `notice_scan_limit` such keys, the parent finds where the global limit falls, and each worker
  answers `notices_due` with its keys up to that cut.

Inputs are applied through the same `BatchProcessor` configuration as `make_processor` builds,
with each batch input handed over as the worker decoded it before the batch (`_ShardDecoder`:
the stored envelopes here, so none fails), and consumer positions kept only where the serial
replay keeps them (from Kafka; not here: see `replay_from_db`). The processor's decision
observer (`OrderTracker`) notes, for every outbound message, where the serial batch would have
emitted it: while dead-lettering the inputs that fail to decode (all of them first), after the
input that caused it (by rank), or in the batch's notice pass (dossiers changed in the batch,
in the order they first changed, then the others by (next_notice_at, code)). Which input is
being handled is told by the identity of the event the engine is given, not by its (source,
id), which a stream may repeat. With those keys the merge gives the outbox the serial replay's
id order (the relay's publishing order); history rows get its id order too, (batch, dossier
code, seq), which is how the SQL store appends each batch's history; consumer positions
the order in which the serial batches first wrote them.

Each worker writes its store into a scratch SQLite file (`engine.store.bulk`: the store's
tables and column types but none of its indexes, values encoded exactly as SQLAlchemy would),
with the ordering keys in extra `replay_*` columns. The parent ATTACHes the scratch files to a
SQLite target and copies every table with one `INSERT ... SELECT ... ORDER BY` each, in one
transaction; into PostgreSQL it copies the same ordered rows through `SqlRepository`'s batch
insert. History keeps the hash chains the workers computed, which are the ones the SQL store
computes, so the rebuilt database verifies.

What differs from a serial replay is only what differs between two serial replays: wall-clock
values (`history.recorded_at`, `parked_at` and `expires_at` of inputs still parked, and which
parked inputs expire, which is real time by design). Parked inputs keep the serial order but
not its ids, which count every input ever parked, and a replay from a live database reads one
snapshot per process (rows are read up to the last history id counted at the start).
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL

from dossier.gc_tuning import tune_for_batches
from dossier.replay.serial import (
    FOLDED,
    MERGED,
    REPLAY_GROUP,
    Progress,
    ReplayReport,
    SealedEvidence,
    StoredInputs,
    make_processor,
    prepare_target,
    replay_from_db_serially,
    stored_input,
)
from dossier.settings import Settings
from engine.application.ports import ChangeSet, NoticeScan, Position, StoredDossier
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.dossier import Applied, Decision, Dossier, NotYetApplicable, Rejected
from engine.events import InboundEvent, InputRejected, OutboundEvent
from engine.history import ENGINE_TOPIC
from engine.store import bulk, queries
from engine.store.bulk import attach_limit, sqlite_time
from engine.store.memory import InMemoryRepository, InMemoryStore, InMemoryUnitOfWork
from engine.store.queries import register_shard_function
from engine.store.sql import create_db_engine
from engine.store.tables import dossier_columns, history_columns, parked_columns
from schemas.codec import dead_letter_id

# Where, within its batch, the serial replay emits an outbound message.
PHASE_DECODE = 0  # dead-lettering the inputs that fail to decode, before any is handled
PHASE_INPUT = 1  # while applying the input that caused it
PHASE_EXPIRY = 2  # expiring parked inputs (real time)
PHASE_HANDOVER = 3  # handovers by the clock (contract 1.1), by dossier code
PHASE_CHANGED = 4  # notices of dossiers changed in the batch, in the order they changed
PHASE_DUE = 5  # notices of the other due dossiers, by (next_notice_at, code)
# After every input's rank: dossiers first changed by a handover by the clock, which the serial
# batch handles after its inputs, in code order.
_AFTER_INPUTS = 1 << 62

# (batch, phase, history id of the causing input, next_notice_at, code, seq within the worker)
OutboxOrder = tuple[int, int, int, str, str, int]
NoticeKey = tuple[datetime, str]  # (next_notice_at, dossier code): the serial scan's order
Decoded = InboundEvent | InputRejected  # an input's event, or why it failed to decode
# (rank: the input's place in the serial order, unique and from 1; the input; its decoding)
Prepared = tuple[int, RawInput, Decoded]


class ReplayWorkerError(RuntimeError):
    """A worker failed or died; nothing was written to the target."""


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    settings: Settings
    source_url: str
    shard: int
    shards: int
    bounds: tuple[int, ...]  # the last history id of each serial batch
    group: str
    notice_scan_limit: int | None
    scratch: str  # the worker's SQLite file


@dataclass(frozen=True)
class BatchReport:
    """What a worker tells the parent once it has handled its share of a batch."""

    latest: tuple[datetime, int] | None  # the share's latest applied event time, rank 0
    due: list[NoticeKey]  # the share's first keys by (next_notice_at, code), any time


@dataclass(frozen=True)
class ShardResult:
    inputs: int
    outcomes: dict[str, int]


@dataclass
class AppliedAt:
    batch: int
    rank: int  # rank of the input whose handling applied it
    seq: int


class OrderTracker:
    """Notes where, in the serial replay's order, each row of a shard was written."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.batch = -1
        self.seq = 0
        # This batch's inputs not handled yet, by the identity of the event the decoder hands
        # the engine: their (source, id) keys need not be unique in a stream (duplicates, a
        # retry of a parked copy), the objects are.
        self.handling: dict[int, tuple[int, Position]] = {}
        # Parked inputs still waiting: (source, id, dossier code) -> (rank, position).
        self.parked_at: dict[tuple[str, str, str], tuple[int, Position]] = {}
        self.current = 0  # rank of the input being handled
        self.first_changed: dict[str, int] = {}  # dossier code -> rank of its first change
        self.handed_over_by_clock: set[str] = set()  # first changed by a handover, this batch
        # (dossier code, handover id) -> batch: the engine's own history entries, whose
        # (source, id) every dossier of the agency shares.
        self.handover_batch: dict[tuple[str, str], int] = {}
        self.emitted: dict[str, OutboxOrder] = {}  # message id -> order, this batch
        self.applied: dict[tuple[str, str], AppliedAt] = {}
        self.outbox_order: dict[int, OutboxOrder] = {}  # store outbox id -> order
        self.parked_order: dict[int, tuple[int, int]] = {}  # store parked id -> (batch, rank)
        self.outcome_batch: dict[tuple[str, str], int] = {}  # first batch that counted it
        self.position_batch: dict[tuple[str, int], int] = {}  # (topic, partition) -> first batch
        self._inputs: Sequence[Prepared] = ()
        self._last_id = 0

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def begin(self, batch: int, inputs: Sequence[Prepared]) -> None:
        self.batch = batch
        self.handling = {
            id(decoded): (rank, raw.position)
            for rank, raw, decoded in inputs
            if isinstance(decoded, InboundEvent)
        }
        self.first_changed = {}
        self.handed_over_by_clock = set()
        self.emitted = {}
        self._inputs = inputs
        self._last_id = self.store.last_id

    def decided(self, event: InboundEvent, decision: Decision) -> None:
        waiting = (event.source, event.id, event.subject)
        handled = self.handling.pop(id(event), None)
        position: Position | None
        if handled is not None:
            # The engine's first call with a batch input's own event is its handling; any
            # other call is a retry of a parked input, made while handling the current one.
            self.current, position = handled
        else:
            parked = self.parked_at.get(waiting)
            position = parked[1] if parked is not None else None
        if isinstance(decision, Applied):
            code = decision.dossier.code
            if event.topic == ENGINE_TOPIC:  # a replay from a database: a handover entry
                self.handover_batch[(code, event.id)] = self.batch
            self.first_changed.setdefault(code, self.current)
            self.applied[event.key] = AppliedAt(self.batch, self.current, self._next_seq())
            for output in decision.outputs:
                self._emit(output.id, (PHASE_INPUT, self.current, "", ""))
        elif isinstance(decision, Rejected):
            if position is not None:
                self._emit(_dead_letter_id(position), (PHASE_INPUT, self.current, "", ""))
        elif isinstance(decision, NotYetApplicable) and handled is not None:
            self.parked_at[waiting] = (self.current, handled[1])

    def handed_over(
        self, cause: InboundEvent | None, dossier: Dossier, outputs: Sequence[OutboundEvent]
    ) -> None:
        code = dossier.code
        for output in outputs:  # the status change it emits is caused by the handover's id
            self.handover_batch[(code, output.data["caused_by"]["id"])] = self.batch
        if cause is not None:
            # Just before the input it precedes (or the parked one the current input woke).
            handled = self.handling.get(id(cause))
            rank = handled[0] if handled is not None else self.current
            self.first_changed.setdefault(code, rank)
            for output in outputs:
                self._emit(output.id, (PHASE_INPUT, rank, "", ""))
            return
        if code not in self.first_changed:
            self.handed_over_by_clock.add(code)
        for output in outputs:
            self._emit(output.id, (PHASE_HANDOVER, 0, "", code))

    def noticed(self, dossier: Dossier, notices: Sequence[OutboundEvent]) -> None:
        code = dossier.code
        rank = self.first_changed.get(code)
        if rank is not None:
            where: tuple[int, int, str, str] = (PHASE_CHANGED, rank, "", "")
        elif code in self.handed_over_by_clock:
            where = (PHASE_CHANGED, _AFTER_INPUTS, "", code)
        else:
            stored = self.store.dossiers.get(code)  # still as at the batch's start
            due = sqlite_time(stored.next_notice_at if stored is not None else None)
            where = (PHASE_DUE, 0, due or "", code)
        for notice in notices:
            self._emit(notice.id, where)

    def _emit(self, message_id: str, where: tuple[int, int, str, str]) -> None:
        if message_id not in self.emitted:
            self.emitted[message_id] = (self.batch, *where, self._next_seq())

    def end(self, settled: Mapping[tuple[str, str], int]) -> None:
        """Order what the batch stored, including messages no engine call explains."""
        for outcome, delta in settled.items():
            if delta:
                self.outcome_batch.setdefault(outcome, self.batch)
        # Dead letters written without an engine call: an input that failed to decode (all of
        # them before any input is handled), or a conflict found on handling.
        dead_letters: dict[str, tuple[int, int]] = {}
        for rank, raw, decoded in self._inputs:
            phase = PHASE_DECODE if isinstance(decoded, InputRejected) else PHASE_INPUT
            dead_letters[_dead_letter_id(raw.position)] = (phase, rank)
            p = raw.position
            if p.partition is not None and p.offset is not None:
                self.position_batch.setdefault((p.topic, p.partition), self.batch)
        store = self.store
        for ident in range(self._last_id + 1, store.last_id + 1):
            message = store.outbox.get(ident)
            if message is not None:
                order = self.emitted.get(message.message_id)
                if order is None:
                    found = dead_letters.get(message.message_id)
                    order = (
                        (self.batch, *found, "", "", self._next_seq())
                        if found is not None
                        else (self.batch, PHASE_EXPIRY, 0, "", "", self._next_seq())
                    )
                self.outbox_order[ident] = order
            parked = store.parked.get(ident)
            if parked is not None:
                key = (parked.source, parked.event_id, parked.dossier_code)
                at = self.parked_at.get(key)
                self.parked_order[ident] = (self.batch, at[0] if at is not None else 0)
        waiting = {(p.source, p.event_id, p.dossier_code) for p in store.parked.values()}
        self.parked_at = {k: v for k, v in self.parked_at.items() if k in waiting}
        self.handling = {}
        self._inputs = ()


def _dead_letter_id(position: Position) -> str:
    partition = position.partition if position.partition is not None else -1
    offset = position.offset if position.offset is not None else -1
    return dead_letter_id(position.topic, partition, offset)


class _ShardRepository(InMemoryRepository):
    """The due dossiers the parent's cut allows; positions only where the serial replay keeps
    them (from Kafka, not from a database: see `replay_from_db`)."""

    def __init__(self, store: InMemoryStore, due: Sequence[NoticeKey], positions: bool) -> None:
        super().__init__(store)
        self.due = due
        self.positions = positions

    def load_positions(self, group: str) -> dict[tuple[str, int], int]:
        return super().load_positions(group) if self.positions else {}

    def write(self, changes: ChangeSet) -> None:
        super().write(changes if self.positions else replace(changes, positions={}))

    def notices_due(self, now: datetime, scan: NoticeScan) -> list[StoredDossier]:
        # Called before the batch writes anything, so the store is as when `due` was taken.
        # Nothing else writes a worker's store, so there is no row to lock or skip, and a
        # replay notifies every dossier (`partitions` is None).
        found = [self.store.dossiers[code] for at, code in self.due if at <= now]
        return found[: scan.limit]


class _ShardUnitOfWork(InMemoryUnitOfWork):
    def __init__(self, store: InMemoryStore, due: Sequence[NoticeKey], positions: bool) -> None:
        self.due = due
        self.positions = positions
        super().__init__(store)

    def _begin(self) -> None:
        self.repo = self._repo = _ShardRepository(self.store, self.due, self.positions)


class _CoordinatedClock:
    """A serial batch's clock on a shard of its inputs (the processor's clock policy): once the
    shard's inputs are handled, the clock moves to where the serial batch moves it (the latest
    time applied in any shard), which the shard's own inputs may not reach; `exchange` asks
    the parent for it."""

    def __init__(self) -> None:
        self.exchange: Callable[[datetime | None], datetime | None] = lambda latest: latest

    def __call__(
        self, previous: datetime | None, latest_applied: datetime | None
    ) -> datetime | None:
        now = self.exchange(latest_applied)
        # As the serial batch sets it: in UTC.
        return now.astimezone(UTC) if now is not None else None


class _ShardDecoder(StoredInputs):
    """Hands the engine each batch input as the worker decoded it before the batch (an event
    object of its own, or the rejection to raise again); anything else (a parked input's
    bytes) is decoded as `StoredInputs` does."""

    def __init__(self, max_message_bytes: int, reuse_by_value: bool) -> None:
        super().__init__(max_message_bytes)
        self.reuse_by_value = reuse_by_value
        self._queue: deque[tuple[bytes | None, Decoded]] = deque()

    def prepare(self, inputs: Sequence[Prepared]) -> None:
        # The batch decodes its inputs first, in their order: a queue, not a lookup by value,
        # gives each of two identical inputs its own event.
        self._queue = deque((raw.value, decoded) for _, raw, decoded in inputs)
        if self.reuse_by_value:
            self.ready = {
                raw.value: decoded
                for _, raw, decoded in inputs
                if raw.value is not None and isinstance(decoded, InboundEvent)
            }

    def decode(self, value: bytes | None, topic: str, *, key: bytes | None) -> InboundEvent:
        if self._queue and self._queue[0][0] is value:
            decoded = self._queue.popleft()[1]
            if isinstance(decoded, InputRejected):
                raise decoded
            return decoded
        return super().decode(value, topic, key=key)


@dataclass
class Fold:
    """A worker's store and the processor folding its shard into it, batch by batch."""

    store: InMemoryStore
    tracker: OrderTracker
    processor: BatchProcessor
    clock: _CoordinatedClock
    decoder: _ShardDecoder
    limit: int  # the notice scan limit
    positions: bool  # whether consumer positions are kept
    report: ReplayReport

    @classmethod
    def create(
        cls,
        settings: Settings,
        group: str,
        notice_scan_limit: int | None,
        *,
        source: str,
        positions: bool,
        reuse_by_value: bool,
    ) -> Fold:
        store = InMemoryStore()
        tracker = OrderTracker(store)
        base = make_processor(settings, group, notice_scan_limit=notice_scan_limit)
        decoder = _ShardDecoder(settings.max_message_bytes, reuse_by_value)
        clock = _CoordinatedClock()
        processor = BatchProcessor(
            base.decider,
            decoder,
            base.config,
            clock_policy=clock,
            observer=tracker,
            # From a database, a signed input sealed with its person's data keeps the
            # signature it was applied with, as the serial replay's does.
            verifier=SealedEvidence(base.verifier) if source == "db" else base.verifier,
        )
        # From a database, the history's handovers are made again where they stand, as in the
        # serial replay (`replay_from_db_serially`).
        processor.replaying_own_steps = source == "db"
        limit = base.config.notice_scan_limit
        return cls(
            store, tracker, processor, clock, decoder, limit, positions, ReplayReport(source)
        )


def fold_batches(fold: Fold, pipe: Pipe, batches: Iterable[Sequence[Prepared]]) -> None:
    """Fold the shard's share of every serial batch (an empty share too: the serial batch
    emits notices for every dossier due), in lock step with the parent (`coordinate`)."""
    store, tracker, processor = fold.store, fold.tracker, fold.processor
    for index, batch in enumerate(batches):
        due = _due_keys(store, fold.limit)
        if store.clock is not None:
            # The serial batch reads the previous clock back from the SQL store: in UTC.
            store.clock = store.clock.astimezone(UTC)

        def exchange(latest: datetime | None, due: list[NoticeKey] = due) -> datetime | None:
            # Called once the share is handled: only applied inputs move the clock.
            pipe.send(("batch", BatchReport(None if latest is None else (latest, 0), due)))
            now: datetime | None
            cutoff: NoticeKey | None
            now, cutoff = pipe.recv()
            if cutoff is not None:
                due[:] = [key for key in due if key <= cutoff]  # the repository's own list
            return now

        fold.clock.exchange = exchange
        fold.decoder.prepare(batch)
        tracker.begin(index, batch)
        uow = _ShardUnitOfWork(store, due, fold.positions)
        result = processor.process(uow, [raw for _, raw, _ in batch])
        if result.redelivered:  # pragma: no cover - each partition is read in offset order
            # An input dropped before decoding would put the decoder's queue out of step.
            raise RuntimeError(f"{result.redelivered} inputs of batch {index} taken as redelivered")
        tracker.end(result.settled)
        fold.report.add(result)
        fold.report.inputs += len(batch)
    fold.decoder.ready = {}


def _due_keys(store: InMemoryStore, limit: int) -> list[NoticeKey]:
    return heapq.nsmallest(
        limit,
        (
            (stored.next_notice_at, code)
            for code, stored in store.dossiers.items()
            if stored.next_notice_at is not None
        ),
    )


def _shard_rows(connection: Connection, job: ShardJob) -> Iterator[Prepared]:
    rows = queries.applied_inputs(connection, last_id=job.bounds[-1], shard=(job.shard, job.shards))
    for hid, _, topic, partition, offset, version, envelope, signature, signed in rows:
        raw, stored_event = stored_input(
            topic, partition, offset, version, envelope, signature, signed
        )
        yield hid, raw, stored_event


def _cut(rows: Iterator[Prepared], bounds: Sequence[int]) -> Iterator[list[Prepared]]:
    """The rows of each serial batch (by the last history id of each)."""
    pending = next(rows, None)
    for bound in bounds:
        batch: list[Prepared] = []
        while pending is not None and pending[0] <= bound:
            batch.append(pending)
            pending = next(rows, None)
        yield batch


def run_shard(job: ShardJob, pipe: Pipe) -> None:
    """A worker process's entry point (see `run_worker`)."""
    run_worker(_fold_shard, job, pipe)


def run_worker(fold: Callable[[Any, Pipe], Any], job: Any, pipe: Pipe) -> None:
    """Run a worker's fold in lock step with the parent and report what it did; any failure is
    reported rather than left to a timeout."""
    try:
        tune_for_batches(job.settings.gc_young_threshold)
        pipe.send(("done", fold(job, pipe)))
    except BaseException:
        with suppress(Exception):
            pipe.send(("failed", traceback.format_exc()))
    finally:
        pipe.close()


def _fold_shard(job: ShardJob, pipe: Pipe) -> ShardResult:
    source = create_db_engine(job.source_url)
    if source.dialect.name == "sqlite":
        sa_event.listen(source, "connect", register_shard_function)
    # Positions are not tracked, as in `replay_from_db`; a stored input that was parked live is
    # decoded again from its stored bytes when retried in the same batch, as there.
    fold = Fold.create(
        job.settings,
        job.group,
        job.notice_scan_limit,
        source="db",
        positions=False,
        reuse_by_value=True,
    )
    try:
        with source.connect() as connection:
            fold_batches(fold, pipe, _cut(_shard_rows(connection, job), job.bounds))
    finally:
        source.dispose()
    write_shard(Path(job.scratch), fold.store, fold.tracker)
    return ShardResult(fold.report.inputs, fold.report.outcomes)


# ---------------------------------------------------------------------------------------------
# Scratch files
# ---------------------------------------------------------------------------------------------


def write_shard(path: Path, store: InMemoryStore, tracker: OrderTracker) -> None:
    """The store's rows, as the SQL store would hold them, into a fresh scratch file, each
    with where it goes in the serial replay's order (`engine.store.bulk`)."""
    recorded_at = datetime.now(UTC)
    bulk.write_scratch(
        path,
        {
            "dossiers": _dossier_rows(store, tracker),
            "history": _history_rows(store, tracker, recorded_at),
            "input_ledger": _ledger_rows(store, tracker),
            "parked_inputs": _parked_rows(store, tracker),
            "outbox": _outbox_rows(store, tracker),
            "input_outcomes": (
                {
                    "group_id": g,
                    "topic": t,
                    "outcome": o,
                    "count": n,
                    "replay_batch": tracker.outcome_batch[(t, o)],
                }
                for (g, t, o), n in store.outcomes.items()
            ),
            "consumer_positions": (
                {
                    "group_id": g,
                    "topic": t,
                    "partition": p,
                    "next_offset": offset,
                    "replay_batch": tracker.position_batch[(t, p)],
                }
                for (g, t, p), offset in store.positions.items()
            ),
            "engine_clock": (
                [{"id": 1, "business_time": store.clock}] if store.clock is not None else []
            ),
        },
    )


def _dossier_rows(store: InMemoryStore, tracker: OrderTracker) -> Iterator[dict[str, Any]]:
    for code, stored in store.dossiers.items():
        # Inserted when submitted: in the serial replay's order of first changes.
        first = store.history[code][0]
        at = tracker.applied[(first.source, first.event_id)]
        yield {
            "code": code,
            **dossier_columns(stored),
            "revision": stored.revision,
            "replay_batch": at.batch,
            "replay_rank": at.rank,
        }


def _history_rows(
    store: InMemoryStore, tracker: OrderTracker, recorded_at: datetime
) -> Iterator[dict[str, Any]]:
    for rows in store.history.values():
        for r in rows:
            yield {
                **history_columns(r, recorded_at, r.prev_hash, r.chain_hash),
                "replay_batch": (
                    tracker.handover_batch[(r.dossier_code, r.event_id)]
                    if r.position.topic == ENGINE_TOPIC
                    else tracker.applied[(r.source, r.event_id)].batch
                ),
            }


def _ledger_rows(store: InMemoryStore, tracker: OrderTracker) -> Iterator[dict[str, Any]]:
    for key, entry in store.ledger.items():
        at = tracker.applied[key]
        yield {
            "source": entry.source,
            "event_id": entry.event_id,
            "content_hash": entry.content_hash,
            "dossier_code": entry.dossier_code,
            "replay_batch": at.batch,
            "replay_rank": at.rank,
            "replay_seq": at.seq,
        }


def _parked_rows(store: InMemoryStore, tracker: OrderTracker) -> Iterator[dict[str, Any]]:
    for ident, p in store.parked.items():
        batch, rank = tracker.parked_order[ident]
        yield {
            **parked_columns(p),
            "replay_batch": batch,
            "replay_rank": rank,
        }


def _outbox_rows(store: InMemoryStore, tracker: OrderTracker) -> Iterator[dict[str, Any]]:
    for ident, m in store.outbox.items():
        batch, phase, rank, due, code, seq = tracker.outbox_order[ident]
        yield {
            "message_id": m.message_id,
            "topic": m.topic,
            "key": m.key,
            "value": m.value,
            "created_at": m.created_at,
            "sent_at": store.sent_at.get(ident),
            "replay_batch": batch,
            "replay_phase": phase,
            "replay_rank": rank,
            "replay_due": due,
            "replay_code": code,
            "replay_seq": seq,
        }


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------


def batch_bounds(source: Engine, batch_size: int) -> list[int]:
    """The last history id of each batch a serial replay reads (`stored_inputs`)."""
    with source.connect() as connection:
        return queries.batch_bounds(connection, batch_size)


def serial_clock(
    previous: datetime | None, latest: Iterable[tuple[datetime, int] | None]
) -> datetime | None:
    """The clock a serial batch runs on, from each share's latest (time, history id).

    `max()` over the batch's events keeps the first of equal times, as written (with its
    offset); a clock that does not move is the one the SQL store read back, in UTC.
    """
    first: tuple[datetime, int] | None = None
    for candidate in latest:
        if candidate is None:
            continue
        if (
            first is None
            or candidate[0] > first[0]
            or (candidate[0] == first[0] and candidate[1] < first[1])
        ):
            first = candidate
    if first is not None and (previous is None or first[0] > previous):
        return first[0]
    return previous


def notice_cutoff(
    shares: Iterable[Sequence[NoticeKey]], now: datetime | None, limit: int
) -> NoticeKey | None:
    """The last key the serial scan (`notices_due(now, limit)`) reaches, or None when it
    reaches every due dossier. Each share lists its own first keys in order."""
    if now is None:
        return None
    due = [key for share in shares for key in share if key[0] <= now]
    if len(due) <= limit:
        return None
    return heapq.nsmallest(limit, due)[-1]


def replay_from_db_parallel(
    settings: Settings,
    source: Engine,
    target: Engine,
    *,
    workers: int | None = None,
    batch_size: int = 20_000,
    group: str = REPLAY_GROUP,
    notice_scan_limit: int | None = None,
    scratch_dir: Path | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """`replay_from_db_serially` in `workers` processes (default: one per core); same result."""

    wanted = workers or os.cpu_count() or 1
    shards = min(wanted, attach_limit())
    source_url = _shareable_url(source)
    if shards <= 1 or source_url is None:
        return replay_from_db_serially(
            settings,
            source,
            target,
            batch_size=batch_size,
            group=group,
            notice_scan_limit=notice_scan_limit,
            progress=progress,
        )
    prepare_target(target, source)
    started = time.perf_counter()
    bounds = batch_bounds(source, batch_size)
    report = ReplayReport("db", batches=len(bounds), workers=shards)
    if not bounds:
        report.seconds = time.perf_counter() - started
        return report
    limit = scan_limit(notice_scan_limit)
    with tempfile.TemporaryDirectory(prefix="dossier-replay-", dir=scratch_dir) as scratch:
        paths = [Path(scratch) / f"shard-{k}.db" for k in range(shards)]
        jobs = [
            ShardJob(
                settings, source_url, k, shards, tuple(bounds), group, notice_scan_limit, str(path)
            )
            for k, path in enumerate(paths)
        ]
        with start_workers(run_shard, jobs) as (pipes, processes):
            results, clock = coordinate(pipes, processes, len(bounds), limit, progress)
        add_results(report, results)
        merge_shards(target, paths, clock, progress)
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def start_workers(
    entry: Callable[[Any, Pipe], None], jobs: Sequence[Any]
) -> Iterator[tuple[list[Pipe], list[BaseProcess]]]:
    """One process per job, each with a pipe to the parent; on leaving, the workers have
    exited (joined, or terminated when the parent gave up on them)."""
    # Spawned, not forked: no SQLAlchemy pool, socket or thread's lock crosses into a worker.
    # Forking saved each worker half a second of imports, which `bench/replay.py` could not
    # tell from the machine's drift (2 workers: 12,466-13,362/s forked, 12,900-13,266 spawned).
    context = multiprocessing.get_context("spawn")
    pipes: list[Pipe] = []
    processes: list[BaseProcess] = []
    try:
        for k, job in enumerate(jobs):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=entry, args=(job, child_end), name=f"replay-shard-{k}", daemon=True
            )
            process.start()
            child_end.close()
            pipes.append(parent_end)
            processes.append(process)
        yield pipes, processes
        for worker in processes:
            worker.join()
    finally:
        for worker in processes:
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for pipe in pipes:
            pipe.close()


def add_results(report: ReplayReport, results: Iterable[ShardResult]) -> None:
    for result in results:
        report.inputs += result.inputs
        for outcome, n in result.outcomes.items():
            report.outcomes[outcome] = report.outcomes.get(outcome, 0) + n


def scan_limit(notice_scan_limit: int | None) -> int:
    if notice_scan_limit is not None:
        return notice_scan_limit
    return ServiceConfig("", "", timedelta(0)).notice_scan_limit


def coordinate(
    pipes: Sequence[Pipe],
    processes: Sequence[BaseProcess],
    batches: int,
    limit: int,
    progress: Progress | None = None,
) -> tuple[list[ShardResult], datetime | None]:
    """Run the workers batch by batch: gather their shares' latest events and due dossiers,
    answer each batch's clock and notice cut; then collect what each folded."""
    clock: datetime | None = None  # as the SQL store would return it between batches
    for index in range(batches):
        # Each worker reports before a batch once it has folded the one before.
        if index and progress is not None:
            progress(FOLDED, index, batches)
        reports: list[BatchReport] = [
            receive(pipe, process, "batch") for pipe, process in zip(pipes, processes, strict=True)
        ]
        now = serial_clock(clock, (r.latest for r in reports))
        cutoff = notice_cutoff((r.due for r in reports), now, limit)
        for pipe in pipes:
            pipe.send((now, cutoff))
        clock = now.astimezone(UTC) if now is not None else None
    results: list[ShardResult] = [
        receive(pipe, process, "done") for pipe, process in zip(pipes, processes, strict=True)
    ]
    if batches and progress is not None:
        progress(FOLDED, batches, batches)
    return results, clock


def receive(pipe: Pipe, process: BaseProcess, kind: str) -> Any:
    while not pipe.poll(1.0):
        if not process.is_alive():
            raise ReplayWorkerError(f"{process.name} exited ({process.exitcode}) unexpectedly")
    try:
        message = pipe.recv()
    except EOFError as exc:
        raise ReplayWorkerError(f"{process.name} closed its pipe unexpectedly") from exc
    if message[0] == "failed":
        raise ReplayWorkerError(f"{process.name} failed:\n{message[1]}")
    if message[0] != kind:  # pragma: no cover - a protocol bug
        raise ReplayWorkerError(f"{process.name} sent {message[0]!r}, expected {kind!r}")
    return message[1]


def _shareable_url(source: Engine) -> str | None:
    """A URL another process can open the source with; None for a private in-memory one."""
    url: URL = source.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None
    return url.render_as_string(hide_password=False)


def merge_shards(
    target: Engine,
    paths: Sequence[Path],
    clock: datetime | None,
    progress: Progress | None = None,
) -> None:
    """Copy the scratch files into the (empty) target in the serial replay's order, in one
    transaction (`engine.store.bulk.merge_scratch`)."""

    def merged(done: int, tables: int) -> None:
        if progress is not None:
            progress(MERGED, done, tables)

    bulk.merge_scratch(target, paths, clock, merged)


__all__ = [
    "Fold",
    "ReplayWorkerError",
    "ShardJob",
    "add_results",
    "attach_limit",
    "batch_bounds",
    "fold_batches",
    "merge_shards",
    "notice_cutoff",
    "replay_from_db_parallel",
    "run_worker",
    "serial_clock",
    "start_workers",
]
