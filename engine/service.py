"""The service layer: a batch of consumed inputs in, one committed transaction out.

For every batch, in one unit of work: decode, tell duplicates from conflicts, apply through
the engine, park what is not applicable yet (and retry what was parked for the dossiers that
changed), dead-letter what can never apply, emit deadline notices, and record the consumed
positions. Either all of it commits or none of it does, so a crash between the database commit
and the Kafka acknowledgement only causes re-delivery, which the ledger turns into duplicates:
at-least-once delivery, exactly-once effects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from engine.dossier import Applied, Dossier, Duplicate, NotYetApplicable, Rejected
from engine.engine import Engine
from engine.events import DLQ_TOPIC, INBOUND_TOPICS, InboundEvent, OutboundEvent
from engine.ports import (
    HistoryRow,
    LedgerEntry,
    OutboxMessage,
    ParkedInput,
    Position,
    Repository,
    StoredDossier,
    UnitOfWork,
)
from schemas.codec import (
    DeadLetterReason,
    InboundDecoder,
    dead_letter,
    dead_letter_id,
    encode_outbound,
)
from schemas.codec import Rejected as DecodeRejected

Outcome = Literal["applied", "duplicate", "parked", "dead_lettered"]


@dataclass(frozen=True, slots=True)
class RawInput:
    """One consumed message, as the transport adapter hands it over."""

    contract_topic: str  # e.g. "dossier.commune", without the deployment prefix
    position: Position  # the real topic name, partition and offset
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class BatchResult:
    # (topic, outcome) of each input as it was consumed: monotonic, for metrics counters.
    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    # Net change of each input's final outcome: a parked input later applied or dead-lettered
    # moves out of "parked". Persisted with the positions, so the totals are exact.
    settled: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason
    transitions: Counter[tuple[str, int]] = field(default_factory=Counter)  # (group, code)
    notices: Counter[str] = field(default_factory=Counter)  # deadline-warning / overdue
    discounts_granted: Counter[str] = field(default_factory=Counter)  # group -> count
    discount_vnd: Counter[str] = field(default_factory=Counter)  # group -> VND
    unparked: int = 0
    redelivered: int = 0  # inputs at or past a position already committed: skipped
    applied_event_times: list[datetime] = field(default_factory=list)
    clock: datetime | None = None
    # Set by engine.pipeline when what it staged could not be written and the batch was
    # processed again the plain way (a conflict with another engine process, a database error).
    reprocessed: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    engine_source: str
    consumer_group: str
    parked_ttl: timedelta
    clock_mode: Literal["business", "wall"] = "business"
    notice_scan_limit: int = 5000


class BatchProcessor:
    def __init__(self, engine: Engine, decoder: InboundDecoder, config: ServiceConfig) -> None:
        self.engine = engine
        self.decoder = decoder
        self.config = config
        # The inbound partitions this process consumes, set by the transport on every
        # assignment: due deadline notices are looked for among their dossiers only, so that
        # processes sharing a database do not pick the same one. None: every dossier.
        self.notice_partitions: frozenset[int] | None = None

    def process(
        self,
        uow: UnitOfWork,
        inputs: Sequence[RawInput],
        clock_ceiling: datetime | None = None,
    ) -> BatchResult:
        """Apply a batch and commit it; on any exception nothing is committed.

        The business clock becomes the latest event time applied, but never more than
        `clock_ceiling`: the transport's watermark, when it knows that some partition has not
        yet been read that far.
        """
        with uow:
            result = self.run_on(uow.repo, inputs, clock_ceiling)
            uow.commit()
        return result

    def run_on(
        self,
        repo: Repository,
        inputs: Sequence[RawInput],
        clock_ceiling: datetime | None = None,
    ) -> BatchResult:
        """The batch's reads and writes on `repo`, in a transaction the caller owns (or, for
        engine.pipeline, a repository that stages the writes for later)."""
        return _Batch(self, repo, clock_ceiling).run(inputs)


class _Batch:
    """The working set of one batch: loaded dossiers, staged rows, counters."""

    def __init__(
        self, processor: BatchProcessor, repo: Repository, clock_ceiling: datetime | None = None
    ) -> None:
        self.clock_ceiling = clock_ceiling
        self.notice_partitions = processor.notice_partitions
        self.engine = processor.engine
        self.decoder = processor.decoder
        self.config = processor.config
        self.repo = repo
        self.result = BatchResult()
        self.stored: dict[str, StoredDossier] = {}
        self.dirty: dict[str, Dossier] = {}
        self.known_missing: set[str] = set()
        self.applied_keys: dict[tuple[str, str], str] = {}
        self.parked_keys: set[tuple[str, str]] = set()
        self.parked_by_dossier: dict[str, list[ParkedInput]] = {}
        self.history_seq: dict[str, int] = {}
        self.partitions: dict[str, int] = {}  # dossier code -> partition its inputs came from
        self.history: list[HistoryRow] = []
        self.ledger: list[LedgerEntry] = []
        self.outbox: list[OutboxMessage] = []
        self.to_park: list[ParkedInput] = []
        self.to_unpark: list[int] = []
        self.clock = repo.get_clock()
        self._wall_now = datetime.now(UTC)

    # -----------------------------------------------------------------------------------------
    def run(self, inputs: Sequence[RawInput]) -> BatchResult:
        inputs = self._not_yet_processed(inputs)
        decoded: list[tuple[RawInput, InboundEvent | None]] = []
        for raw in inputs:
            try:
                event = self.decoder.decode(raw.value, raw.contract_topic)
            except DecodeRejected as rejection:
                self._dead_letter(raw, rejection.reason, rejection.detail)
                self._count(raw, "dead_lettered")
                decoded.append((raw, None))
                continue
            decoded.append((raw, event))
        events = [e for _, e in decoded if e is not None]
        # The clock moves first, so inputs parked in this batch count their wait from now.
        self._advance_clock(events)
        self._prefetch(events)
        for raw, maybe_event in decoded:
            if maybe_event is not None:
                self._handle(raw, maybe_event)
        self._expire_parked()
        self._deadline_notices()
        self._flush(inputs)
        self.result.clock = self.clock
        return self.result

    def _not_yet_processed(self, inputs: Sequence[RawInput]) -> Sequence[RawInput]:
        """Drop inputs whose position this database already committed.

        Positions commit with the state, so they, not the broker's committed offsets, say what
        was processed: a re-delivery after a crash or a rebalance is skipped here, exactly.
        """
        if not any(raw.position.offset is not None for raw in inputs):
            return inputs
        committed = self.repo.load_positions(self.config.consumer_group)
        fresh: list[RawInput] = []
        for raw in inputs:
            p = raw.position
            if (
                p.offset is not None
                and p.partition is not None
                and p.offset < committed.get((p.topic, p.partition), 0)
            ):
                self.result.redelivered += 1
                continue
            fresh.append(raw)
        return fresh

    def _prefetch(self, events: Sequence[InboundEvent]) -> None:
        codes = {e.subject for e in events}
        self.stored.update(self.repo.load_dossiers(codes))
        self.known_missing = codes - set(self.stored)
        self.applied_keys.update(self.repo.applied_hashes(e.key for e in events))
        for parked in self.repo.parked_for(codes):
            self.parked_by_dossier.setdefault(parked.dossier_code, []).append(parked)
            self.parked_keys.add((parked.source, parked.event_id))

    def _dossier(self, code: str) -> Dossier | None:
        if code in self.dirty:
            return self.dirty[code]
        stored = self.stored.get(code)
        return stored.dossier if stored is not None else None

    # -----------------------------------------------------------------------------------------
    def _handle(self, raw: RawInput, event: InboundEvent) -> None:
        known_hash = self.applied_keys.get(event.key)
        if known_hash is not None:
            if known_hash == event.content_hash():
                self._count(raw, "duplicate")
            else:
                self._dead_letter(
                    raw,
                    DeadLetterReason.CONFLICT,
                    f"({event.source}, {event.id}) was applied before with other content",
                )
                self._count(raw, "dead_lettered")
            return
        if event.key in self.parked_keys:
            self._count(raw, "duplicate")  # already waiting; the parked copy will decide
            return
        decision = self.engine.apply(self._dossier(event.subject), event)
        if isinstance(decision, Applied):
            self._record_applied(raw.position, event, decision)
            self._count(raw, "applied")
            self._retry_parked(event.subject)
        elif isinstance(decision, NotYetApplicable):
            self._park(raw, event, decision.detail)
            self._count(raw, "parked")
        elif isinstance(decision, Rejected):
            self._dead_letter(raw, DeadLetterReason(decision.reason), decision.detail)
            self._count(raw, "dead_lettered")
        elif isinstance(decision, Duplicate):  # pragma: no cover - the engine never returns it
            self._count(raw, "duplicate")

    def _record_applied(self, position: Position, event: InboundEvent, decision: Applied) -> None:
        dossier = decision.dossier
        self.dirty[dossier.code] = dossier
        if position.partition is not None:
            self.partitions[dossier.code] = position.partition
        content_hash = event.content_hash()
        self.applied_keys[event.key] = content_hash
        seq = self.history_seq.get(dossier.code, dossier.inputs_applied - 1) + 1
        self.history_seq[dossier.code] = seq
        self.history.append(
            HistoryRow(
                dossier_code=dossier.code,
                seq=seq,
                source=event.source,
                event_id=event.id,
                type=event.type,
                event_time=event.time,
                schema_version=event.schema_version,
                envelope=_envelope(event),
                position=position,
                state_before=decision.previous_state,
                state_after=dossier.state,
                status_code=dossier.status_code,
                workflow_version=dossier.workflow_version,
            )
        )
        self.ledger.append(LedgerEntry(event.source, event.id, content_hash, dossier.code))
        self._emit(decision.outputs, dossier)
        if decision.previous_state != dossier.state:
            self.result.transitions[(dossier.group, dossier.status_code)] += 1
        self.result.applied_event_times.append(event.time)

    def _emit(self, outputs: Iterable[OutboundEvent], dossier: Dossier) -> None:
        for output in outputs:
            self.outbox.append(
                OutboxMessage(
                    topic=output.topic,
                    key=output.key.encode("utf-8"),
                    value=encode_outbound(output, self.config.engine_source),
                    message_id=output.id,
                    created_at=output.time,
                )
            )
            if output.type.endswith("fee-discount-granted"):
                self.result.discounts_granted[dossier.group] += 1
                self.result.discount_vnd[dossier.group] += int(output.data["discount_amount"])
            elif output.topic == "dossier.deadline":
                self.result.notices[output.type.rsplit(".", 1)[-1]] += 1

    def _retry_parked(self, code: str) -> None:
        """Inputs waiting for this dossier get another chance after each change of it."""
        progress = True
        while progress and self.parked_by_dossier.get(code):
            progress = False
            for parked in list(self.parked_by_dossier[code]):
                try:
                    event = self.decoder.decode(parked.value, _contract_topic(parked))
                except DecodeRejected:  # the schema got stricter since it was parked
                    continue
                decision = self.engine.apply(self._dossier(code), event)
                if isinstance(decision, NotYetApplicable):
                    continue
                self.parked_by_dossier[code].remove(parked)
                self.parked_keys.discard((parked.source, parked.event_id))
                if parked.id is not None:
                    self.to_unpark.append(parked.id)
                else:
                    self.to_park.remove(parked)
                self.result.unparked += 1
                if isinstance(decision, Applied):
                    self._record_applied(parked.position, event, decision)
                    self._resettle(parked, "applied")
                    progress = True
                elif isinstance(decision, Rejected):
                    self._dead_letter_parked(
                        parked, DeadLetterReason(decision.reason), decision.detail
                    )
                    self._resettle(parked, "dead_lettered")
                break  # the dossier changed: start again from the oldest parked input

    def _park(self, raw: RawInput, event: InboundEvent, detail: str) -> None:
        assert raw.value is not None
        parked = ParkedInput(
            source=event.source,
            event_id=event.id,
            dossier_code=event.subject,
            position=raw.position,
            key=raw.key,
            value=raw.value,
            headers=tuple(raw.headers),
            parked_at=self._wall_now,
            expires_at=self._wall_now + self.config.parked_ttl,
            detail=detail,
        )
        self.to_park.append(parked)
        self.parked_keys.add(event.key)
        self.parked_by_dossier.setdefault(event.subject, []).append(parked)

    # -----------------------------------------------------------------------------------------
    def _dead_letter(self, raw: RawInput, reason: DeadLetterReason, detail: str) -> None:
        self._dead_letter_message(
            reason, detail, raw.position, raw.key, raw.value, raw.headers, raw.contract_topic
        )

    def _dead_letter_parked(
        self, parked: ParkedInput, reason: DeadLetterReason, detail: str
    ) -> None:
        self._dead_letter_message(
            reason,
            detail,
            parked.position,
            parked.key,
            parked.value,
            parked.headers,
            _contract_topic(parked),
        )

    def _dead_letter_message(
        self,
        reason: DeadLetterReason,
        detail: str,
        position: Position,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        contract_topic: str,
    ) -> None:
        now = self._now()
        partition = position.partition if position.partition is not None else -1
        offset = position.offset if position.offset is not None else -1
        dlq_key, dlq_value = dead_letter(
            reason,
            detail,
            topic=position.topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            headers=headers,
            time=now,
            source=self.config.engine_source,
        )
        message_id = dead_letter_id(position.topic, partition, offset)
        self.outbox.append(OutboxMessage(DLQ_TOPIC, dlq_key, dlq_value, message_id, now))
        self.result.dead_letters[reason.value] += 1

    def _count(self, raw: RawInput, outcome: Outcome) -> None:
        self.result.outcomes[(raw.contract_topic, outcome)] += 1
        self.result.settled[(raw.contract_topic, outcome)] += 1

    def _resettle(self, parked: ParkedInput, outcome: Outcome) -> None:
        topic = _contract_topic(parked)
        self.result.settled[(topic, "parked")] -= 1
        self.result.settled[(topic, outcome)] += 1

    # -----------------------------------------------------------------------------------------
    def _now(self) -> datetime:
        if self.config.clock_mode == "wall":
            return datetime.now(UTC)
        return self.clock or datetime(1970, 1, 1, tzinfo=UTC)

    def _advance_clock(self, events: Sequence[InboundEvent]) -> None:
        latest = max((e.time for e in events), default=None)
        if latest is not None and self.clock_ceiling is not None:
            latest = min(latest, self.clock_ceiling)
        if self.config.clock_mode == "wall":
            latest = datetime.now(UTC)
        if latest is not None and (self.clock is None or latest > self.clock):
            self.clock = latest

    def _expire_parked(self) -> None:
        # A parked input waits in real time, whatever the clock mode: its predecessor is late
        # in the world, not in the business calendar. A backlog or a replay, read far faster
        # than it happened, must not expire what is merely waiting for another topic's turn.
        for parked in self.repo.parked_expired(self._wall_now, limit=1000):
            if parked.id in self.to_unpark:
                continue
            self.to_unpark.append(parked.id)  # type: ignore[arg-type]
            self._dead_letter_parked(
                parked,
                DeadLetterReason.PARKED_EXPIRED,
                f"parked since {parked.parked_at}: {parked.detail}",
            )
            self._resettle(parked, "dead_lettered")

    def _deadline_notices(self) -> None:
        if self.clock is None:
            return
        now = self._now()
        candidates: dict[str, Dossier] = dict(self.dirty)
        for stored in self.repo.notices_due(
            now, self.config.notice_scan_limit, partitions=self.notice_partitions
        ):
            self.stored.setdefault(stored.dossier.code, stored)
            candidates.setdefault(stored.dossier.code, stored.dossier)
        for code, dossier in candidates.items():
            updated, notices = self.engine.deadline_notices(dossier, now)
            if notices:
                self.dirty[code] = updated
                self._emit(notices, updated)

    def _partition(self, code: str) -> int | None:
        partition = self.partitions.get(code)
        if partition is not None:
            return partition
        stored = self.stored.get(code)
        return stored.partition if stored is not None else None

    def _flush(self, inputs: Sequence[RawInput]) -> None:
        repo = self.repo
        if self.dirty:
            repo.save_dossiers(
                [
                    StoredDossier(
                        dossier=d,
                        revision=self.stored[code].revision if code in self.stored else 0,
                        next_notice_at=self.engine.next_notice_at(d),
                        partition=self._partition(code),
                    )
                    for code, d in self.dirty.items()
                ]
            )
        if self.history:
            repo.append_history(self.history)
        if self.ledger:
            repo.record_applied(self.ledger)
        if self.to_unpark:
            repo.unpark(self.to_unpark)
        if self.to_park:
            repo.park(self.to_park)
        if self.outbox:
            repo.add_outbox(self.outbox)
        positions: dict[tuple[str, int], int] = {}
        for raw in inputs:
            p = raw.position
            if p.partition is not None and p.offset is not None:
                slot = (p.topic, p.partition)
                positions[slot] = max(positions.get(slot, 0), p.offset + 1)
        if positions:
            repo.save_positions(self.config.consumer_group, positions)
        if self.result.settled:
            repo.add_outcomes(self.config.consumer_group, self.result.settled)
        if self.clock is not None:
            repo.set_clock(self.clock)


def _contract_topic(parked: ParkedInput) -> str:
    """Parked inputs keep their real topic; strip a deployment prefix back to the contract name."""
    topic = parked.position.topic
    return next((name for name in INBOUND_TOPICS if topic.endswith(name)), topic)


def _envelope(event: InboundEvent) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": event.time.isoformat(),
        "datacontenttype": "application/json",
        "data": dict(event.data),
        "topic": event.topic,
    }
