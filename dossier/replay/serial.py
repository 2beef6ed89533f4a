"""Replaying history into a fresh database, and proving the rebuilt one matches the live one.

Two sources:

- **Kafka** (`replay_from_kafka`): the four inbound topics from the start (or from a time,
  by offsets-for-times), merged the way the live engine's event-time gate merges them: each
  partition in offset order, partitions interleaved by the event time of their next record,
  ties broken by topic, partition, offset. Every message goes through the same
  `BatchProcessor`, duplicates and bad inputs included, so the rebuilt database holds the same
  outcomes. Positions follow each partition's offsets, as live. With `workers` > 1 the
  partitions are split over that many processes, each reading its own with its own consumer
  (`dossier.replay.kafka`: the topics are co-partitioned by dossier code), which write the same
  rows as the serial replay.
- **Database** (`replay_from_db`): the applied inputs stored in a database's history, in the
  order the live engine applied them (history id), upcast to the current schema version, and
  the engine's own entries (contract 1.1 handovers) made again where they stand: the database
  keeps each dossier's order, not the order of a partition's inputs across dossiers, which is
  what the clock passing a cutover is judged by (a replay from Kafka makes them by the rule). The
  stored envelope is already validated, so it is handed to the engine without decoding again;
  consumer positions are not tracked, because an input once parked is stored after inputs
  with later offsets, and position tracking would skip it as a redelivery. With `workers` > 1
  the dossiers are sharded over that many processes (`dossier.replay.parallel`), which write
  the same rows as the serial replay.

Outputs go to the rebuilt database's outbox only; nothing is published unless the caller runs
a relay to scratch topics (`publish_outbox`). The business clock is the latest event time,
and parked inputs expire in real time, so a fast replay expires nothing that live did not.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TextIO

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Connection, Engine

from consumers.ordering import event_time
from dossier import kafka_clients
from dossier.composition import build_decider, build_processor
from dossier.settings import Settings
from engine.application.ports import ChangeSet, Position
from engine.application.service import BatchProcessor, BatchResult, InputVerifier, RawInput
from engine.events import INBOUND_TOPICS, InboundEvent
from engine.registry import SIGNATURE_HEADER, SignatureCheck
from engine.store import queries
from engine.store.migrate import upgrade
from engine.store.privacy import sealed_bytes_key_id
from engine.store.sql import SqlRepository, SqlUnitOfWork
from engine.store.tables import dossier_persons, personal_data_keys
from schemas.codec import ContractCodec
from schemas.codec import stored_input as stored_contract_input

REPLAY_GROUP = "dossier-replay"

# Told (step, done, in all) as a replay goes, so a long one can show how far it is: after each
# batch (FOLDED), then, in a parallel replay, after each table copied into the target (MERGED).
# `dossier replay` prints it every few seconds.
Progress = Callable[[str, int, int], None]
FOLDED = "batches folded"
MERGED = "tables merged"


class ProgressLine:
    """Prints how far a replay is to `stream` at most every `every` seconds, and at each new
    step once it has printed anything: a replay of years of history runs for minutes, and a
    silent command looks like a hung one. A replay done within `every` seconds prints nothing."""

    def __init__(
        self,
        stream: TextIO,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.every = every
        self.clock = clock
        self.started = self.printed = clock()
        self.step: str | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        now = self.clock()
        new_step = step != self.step
        self.step = step
        if now - self.printed < self.every and not (new_step and self.printed > self.started):
            return
        self.printed = now
        line = f"dossier replay: {done} of {total} {step}, {now - self.started:.0f} s"
        if step == FOLDED and 0 < done < total:
            # Batches are of one size; tables are not, so only batches make an estimate. Folding
            # is the first step: the time so far, start-up included, errs on the long side.
            left = (now - self.started) * (total - done) / done
            line += f", about {left:.0f} s more to fold"
        print(line, file=self.stream, flush=True)


EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass
class ReplayReport:
    source: str
    inputs: int = 0
    batches: int = 0
    seconds: float = 0.0
    workers: int = 1
    outcomes: dict[str, int] = field(default_factory=dict)
    # Why a parallel replay ran serially instead (a contract the sharding relies on not held).
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def add(self, result: BatchResult) -> None:
        self.batches += 1
        for (_, outcome), n in result.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n


def make_processor(
    settings: Settings, group: str = REPLAY_GROUP, *, notice_scan_limit: int | None = None
) -> BatchProcessor:
    """The processor every replay path uses. `notice_scan_limit` (None: the service's
    default) is there so tests can make the limit bite on a small history."""
    # The live engine's decider and checks, registry and signatures included: a replay that
    # skipped a rule would apply what live refused, and verify against nothing.
    return build_processor(
        settings,
        build_decider(settings),
        group,
        clock_mode="business",  # a replay's clock is its inputs' time, whatever live used
        notice_scan_limit=notice_scan_limit,
    )


def prepare_target(target: Engine, source: Engine | None = None) -> None:
    """Migrate the target and refuse one that already holds dossiers: a replay into a used
    database would mix two histories and verify against neither.

    A replay stores personal data as its source holds it, in every path alike (the parallel
    replays fold in memory and merge rows): from a database, sealed as live sealed it, with
    the source's wrapped keys and whose key each dossier's are, so the target opens and erases
    as the source does; from Kafka, as the inbound topics hold it, in clear."""
    upgrade(target)
    with target.connect() as connection:
        count = queries.dossier_count(connection)
    if count:
        raise ValueError(f"the target database already holds {count} dossiers: use a fresh one")
    if source is None:
        return
    with source.connect() as reading, target.begin() as writing:
        for table in (personal_data_keys, dossier_persons):
            rows = [dict(row._mapping) for row in reading.execute(table.select())]
            if rows:
                writing.execute(table.insert(), rows)


class SealedEvidence:
    """The signature rule for inputs replayed from a database's history. A signed input whose
    signed bytes were sealed with its person's data (engine.store.privacy) was verified when
    it was applied, and the hash chain covers those sealed bytes: its signature is kept as it
    was, not checked again (after an erasure it could not be). Any other input is checked as
    live checked it."""

    def __init__(self, checked: InputVerifier | None) -> None:
        self.checked = checked

    def check_signature(
        self, event: InboundEvent, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> SignatureCheck:
        if value is not None and sealed_bytes_key_id(value) is not None:
            found = [v for name, v in headers if name == SIGNATURE_HEADER]
            kept = found[0].decode("ascii", "replace") if len(found) == 1 else None
            return SignatureCheck(signature=kept)
        if self.checked is None:
            return SignatureCheck()
        return self.checked.check_signature(event, value, headers)


# ---------------------------------------------------------------------------------------------
# From Kafka
# ---------------------------------------------------------------------------------------------


# (real topic, partition) -> [start, end) offsets: what a replay reads of that partition.
PartitionOffsets = dict[tuple[str, int], tuple[int, int]]


def _consumer(settings: Settings, client_id: str = "dossier-replay") -> KafkaConsumer:
    return kafka_clients.consumer(
        settings,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        max_poll_records=50_000,
        client_id=client_id,
    )


def inbound_offsets(settings: Settings, since: datetime | None = None) -> PartitionOffsets:
    """What a replay reads of each inbound partition: from the start (or the first record at
    or after `since`, by record timestamp) to the end as of now. Taken once, so that a replay
    reads one snapshot however many consumers read it."""
    consumer = _consumer(settings)
    try:
        partitions = [
            TopicPartition(settings.topic(topic), p)
            for topic in INBOUND_TOPICS
            for p in sorted(consumer.partitions_for_topic(settings.topic(topic)) or ())
        ]
        if not partitions:
            return {}
        ends: Mapping[TopicPartition, int] = consumer.end_offsets(partitions)
        starts: dict[TopicPartition, int] = dict(consumer.beginning_offsets(partitions))
        if since is not None:
            found = consumer.offsets_for_times(
                {tp: int(since.timestamp() * 1000) for tp in partitions}
            )
            for tp in partitions:
                offset = found.get(tp)
                starts[tp] = offset.offset if offset is not None else ends[tp]
        return {(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in partitions}
    finally:
        consumer.close()


def read_partitions(
    settings: Settings,
    offsets: PartitionOffsets,
    poll_ms: int = 500,
    client_id: str = "dossier-replay",
) -> dict[tuple[str, int], list[Any]]:
    """The records of the given partitions between their offsets, per (topic, partition)."""
    records: dict[tuple[str, int], list[Any]] = {slot: [] for slot in offsets}
    if not offsets:
        return records
    consumer = _consumer(settings, client_id)
    try:
        partitions = [TopicPartition(topic, p) for topic, p in offsets]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, offsets[(tp.topic, tp.partition)][0])
        pending = {
            tp for tp in partitions if offsets[(tp.topic, tp.partition)][0] < _end(offsets, tp)
        }
        while pending:
            for tp, batch in consumer.poll(timeout_ms=poll_ms).items():
                end = _end(offsets, tp)
                records[(tp.topic, tp.partition)].extend(r for r in batch if r.offset < end)
            pending = {tp for tp in pending if consumer.position(tp) < _end(offsets, tp)}
        return records
    finally:
        consumer.close()


def _end(offsets: PartitionOffsets, tp: TopicPartition) -> int:
    return offsets[(tp.topic, tp.partition)][1]


def read_inbound(
    settings: Settings, since: datetime | None = None, poll_ms: int = 500
) -> dict[tuple[str, int], list[Any]]:
    """Every record of the inbound topics up to their current end, per (topic, partition)."""
    return read_partitions(settings, inbound_offsets(settings, since), poll_ms)


def merged(
    records: Mapping[tuple[str, int], Sequence[Any]], contract_topic: Mapping[str, str]
) -> Iterator[RawInput]:
    """One deterministic order over all partitions: each partition's offset order, and among
    partition heads the earliest event time (then topic, partition, offset). A record without
    a readable time goes as soon as it is at its head; the engine dead-letters it."""
    heap: list[tuple[datetime, str, int, int, int]] = []
    cursors: dict[tuple[str, int], int] = {}

    def push(slot: tuple[str, int]) -> None:
        index = cursors.get(slot, 0)
        items = records[slot]
        if index < len(items):
            record = items[index]
            at = event_time(record.value) or EARLIEST
            heapq.heappush(heap, (at.astimezone(UTC), slot[0], slot[1], record.offset, index))

    for slot in sorted(records):
        push(slot)
    while heap:
        _, topic, partition, _, index = heapq.heappop(heap)
        record = records[(topic, partition)][index]
        cursors[(topic, partition)] = index + 1
        push((topic, partition))
        yield RawInput(
            contract_topic=contract_topic[topic],
            position=Position(topic, partition, record.offset),
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
        )


def replay_from_kafka_serially(
    settings: Settings,
    target: Engine,
    *,
    since: datetime | None = None,
    batch_size: int = 5000,
    group: str = REPLAY_GROUP,
    notice_scan_limit: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild `target` from the inbound topics in this process."""
    prepare_target(target)
    started = time.perf_counter()
    report = replay_kafka_serial(
        settings,
        target,
        inbound_offsets(settings, since),
        batch_size=batch_size,
        group=group,
        notice_scan_limit=notice_scan_limit,
        progress=progress,
    )
    report.seconds = time.perf_counter() - started
    return report


def replay_kafka_serial(
    settings: Settings,
    target: Engine,
    offsets: PartitionOffsets,
    *,
    batch_size: int = 5000,
    group: str = REPLAY_GROUP,
    notice_scan_limit: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """The serial replay of the given partition offsets into a prepared target."""
    report = ReplayReport("kafka")
    started = time.perf_counter()
    records = read_partitions(settings, offsets)
    batches = -(-sum(len(items) for items in records.values()) // batch_size)
    contract = {settings.topic(t): t for t in INBOUND_TOPICS}
    processor = make_processor(settings, group, notice_scan_limit=notice_scan_limit)

    def fold(batch: list[RawInput]) -> None:
        report.add(processor.process(SqlUnitOfWork(target, writes=True), batch))
        report.inputs += len(batch)
        if progress is not None:
            progress(FOLDED, report.batches, batches)

    batch: list[RawInput] = []
    for raw in merged(records, contract):
        batch.append(raw)
        if len(batch) >= batch_size:
            fold(batch)
            batch = []
    if batch:
        fold(batch)
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------------
# From a database's history
# ---------------------------------------------------------------------------------------------


class StoredInputs(ContractCodec):
    """Hands the engine inputs already decoded from stored, upcast envelopes; anything it was
    not given (a parked input's bytes, say) is decoded the ordinary way."""

    def __init__(self, max_message_bytes: int) -> None:
        super().__init__(max_message_bytes)
        self.ready: dict[bytes, InboundEvent] = {}

    def decode(self, value: bytes | None, topic: str, *, key: bytes | None) -> InboundEvent:
        if value is not None:
            event = self.ready.get(value)
            if event is not None:
                return event
        return super().decode(value, topic, key=key)


class _PositionlessRepository(SqlRepository):
    def load_positions(self, group: str) -> dict[tuple[str, int], int]:
        return {}

    def write(self, changes: ChangeSet) -> None:
        super().write(replace(changes, positions={}))


class _ReplayUnitOfWork(SqlUnitOfWork):
    def __enter__(self) -> _ReplayUnitOfWork:
        super().__enter__()
        connection, _ = self._active()
        self.repo = self._repo = _PositionlessRepository(connection, self.vault)
        return self


def stored_inputs(
    source: Connection, batch_size: int
) -> Iterator[list[tuple[RawInput, InboundEvent]]]:
    """Applied inputs of `source` in the order they were applied, upcast, in batches."""
    batch: list[tuple[RawInput, InboundEvent]] = []
    rows = queries.applied_inputs(source, yield_per=batch_size)
    for _, _, topic, partition, offset, version, envelope, signature, signed in rows:
        batch.append(stored_input(topic, partition, offset, version, envelope, signature, signed))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def stored_input(
    topic: str,
    partition: int | None,
    offset: int | None,
    version: int,
    envelope: Any,
    signature: str | None = None,
    signed_value: bytes | None = None,
) -> tuple[RawInput, InboundEvent]:
    """One history row as the input it was, upcast, and the event already decoded from it.
    A signed input is handed over as it was signed (its bytes and its `ce-signature`), so the
    replay checks its signature as the live engine did."""
    event, value = stored_contract_input(envelope, version, topic)
    headers: tuple[tuple[str, bytes], ...] = ()
    if signature is not None and signed_value is not None:
        value, headers = signed_value, ((SIGNATURE_HEADER, signature.encode("ascii")),)
    raw = RawInput(
        event.topic, Position(topic, partition, offset), event.subject.encode(), value, headers
    )
    return raw, event


def replay_from_db_serially(
    settings: Settings,
    source: Engine,
    target: Engine,
    *,
    batch_size: int = 20_000,
    group: str = REPLAY_GROUP,
    notice_scan_limit: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild `target` from `source`'s history in this process."""
    prepare_target(target, source)
    report = ReplayReport("db")
    started = time.perf_counter()
    processor = make_processor(settings, group, notice_scan_limit=notice_scan_limit)
    processor.verifier = SealedEvidence(processor.verifier)
    # Contract 1.1, "Handover": the history's handovers are made again where they stand (the
    # database does not keep the order a partition's inputs came in across dossiers, which is
    # what the clock passing a cutover is judged by); a replay from Kafka makes them by the rule.
    processor.replaying_own_steps = True
    decoder = StoredInputs(settings.max_message_bytes)
    processor.codec = decoder
    with source.connect() as connection:
        stored = 0
        if progress is not None:  # a count is a scan of the whole history on some databases
            stored = queries.history_count(connection)
        for batch in stored_inputs(connection, batch_size):
            decoder.ready = {raw.value: event for raw, event in batch if raw.value is not None}
            result = processor.process(
                _ReplayUnitOfWork(target, writes=True), [r for r, _ in batch]
            )
            report.add(result)
            report.inputs += len(batch)
            if progress is not None:
                # A live source may have grown since it was counted.
                batches = max(-(-stored // batch_size), report.batches)
                progress(FOLDED, report.batches, batches)
    decoder.ready = {}
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------------
# Verification: rebuilt against live
# ---------------------------------------------------------------------------------------------

# The dossier fields an audit relies on; deadline-notice bookkeeping (warned_due, overdue_due)
# follows the clock, which live may have run on wall time, so it is left out.
COMPARED_FIELDS = (
    "procedure",
    "workflow_version",
    "state",
    "status_code",
    "level",
    "agency",
    "received_at",
    "due_at",
    "finished_at",
    "rescheduled",
    "fees",
    "discounts",
    "paid",
    "outcome",
    "final",
    "sequence",
    "inputs_applied",
)


@dataclass
class Comparison:
    live: int = 0
    rebuilt: int = 0
    matching: int = 0
    differences: list[str] = field(default_factory=list)  # all of them, "code: field: a != b"
    differing: int = 0

    @property
    def ok(self) -> bool:
        return self.differing == 0 and self.live == self.rebuilt


def compare(rebuilt: Engine, live: Engine, limit: int = 20) -> Comparison:
    with rebuilt.connect() as r, live.connect() as l_:
        rebuilt_dossiers = queries.dossier_snapshots(r)
        live_dossiers = queries.dossier_snapshots(l_)
        rebuilt_steps, live_steps = queries.status_sequences(r), queries.status_sequences(l_)
    result = Comparison(live=len(live_dossiers), rebuilt=len(rebuilt_dossiers))
    for code in sorted(set(live_dossiers) | set(rebuilt_dossiers)):
        mine, theirs = rebuilt_dossiers.get(code), live_dossiers.get(code)
        found: list[str] = []
        if mine is None or theirs is None:
            found.append(f"{code}: only in the {'live' if mine is None else 'rebuilt'} database")
        else:
            for name in COMPARED_FIELDS:
                if mine.get(name) != theirs.get(name):
                    found.append(
                        f"{code}: {name}: rebuilt {mine.get(name)!r} != live {theirs.get(name)!r}"
                    )
            steps, live_steps_of = rebuilt_steps.get(code, []), live_steps.get(code, [])
            if steps != live_steps_of:
                found.append(
                    f"{code}: status sequence: rebuilt {_steps(steps)}"
                    f" != live {_steps(live_steps_of)}"
                )
        if found:
            result.differing += 1
            if len(result.differences) < limit:
                result.differences.extend(found)
        else:
            result.matching += 1
    return result


def _steps(steps: Iterable[tuple[str, int]]) -> str:
    return " > ".join(f"{state}({code})" for state, code in steps)
