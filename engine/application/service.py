"""The service layer: a batch of consumed inputs in, one committed transaction out.

For every batch, in one unit of work: decode, tell duplicates from conflicts, apply through
the engine, park what is not applicable yet (and retry what was parked for the dossiers that
changed), dead-letter what can never apply, emit deadline notices, and record the consumed
positions. Either all of it commits or none of it does, so a crash between the database commit
and the Kafka acknowledgement only causes re-delivery, which the ledger turns into duplicates:
at-least-once delivery, exactly-once effects.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from engine.application.codec import WireCodec
from engine.application.ports import (
    BatchRepository,
    ChangeSet,
    HandoverScan,
    HistoryRow,
    LedgerEntry,
    MigrationScan,
    NoticeScan,
    OutboxMessage,
    ParkedInput,
    Position,
    StoredDossier,
    UnitOfWork,
)
from engine.decider import Decider
from engine.dossier import (
    Applied,
    Decision,
    Dossier,
    Duplicate,
    NotYetApplicable,
    Rejected,
    evolve,
)
from engine.events import (
    DEADLINE_TOPIC,
    DLQ_TOPIC,
    DeadLetterReason,
    InboundEvent,
    InputRejected,
    OutboundEvent,
    contract_topic,
)
from engine.history import ENGINE_TOPIC
from engine.procedures import MIGRATED_TYPE, MigrationPlan
from engine.registry import Ending, SignatureCheck

log = logging.getLogger(__name__)

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
    # Contract 1.1, "Handover": dossiers handed to an ended agency's successor, by (former
    # level, new level).
    handovers: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Dossiers moved to another workflow version by a migration plan, by procedure group.
    migrations: Counter[str] = field(default_factory=Counter)
    unparked: int = 0
    redelivered: int = 0  # inputs at or past a position already committed: skipped
    applied_event_times: list[datetime] = field(default_factory=list)
    clock: datetime | None = None
    # Set by engine.application.pipeline when what it staged could not be written and the batch was
    # processed again the plain way (a conflict with another engine process, a database error).
    reprocessed: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)

    def merged(self, later: BatchResult) -> BatchResult:
        """This result and that of the batch committed right after it, as one."""
        return BatchResult(
            outcomes=self.outcomes + later.outcomes,
            settled=_summed(self.settled, later.settled),
            dead_letters=self.dead_letters + later.dead_letters,
            transitions=self.transitions + later.transitions,
            notices=self.notices + later.notices,
            discounts_granted=self.discounts_granted + later.discounts_granted,
            discount_vnd=self.discount_vnd + later.discount_vnd,
            handovers=self.handovers + later.handovers,
            migrations=self.migrations + later.migrations,
            unparked=self.unparked + later.unparked,
            redelivered=self.redelivered + later.redelivered,
            applied_event_times=self.applied_event_times + later.applied_event_times,
            clock=later.clock if later.clock is not None else self.clock,
            reprocessed=self.reprocessed or later.reprocessed,
        )


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    engine_source: str
    consumer_group: str
    parked_ttl: timedelta
    clock_mode: Literal["business", "wall"] = "business"
    notice_scan_limit: int = 5000
    # Dossiers handed over by the business clock per batch, at most (contract 1.1, "Handover"),
    # and as many moved by migration plans; the others follow in the next batches (or just
    # before their next input).
    handover_scan_limit: int = 5000


class ClockPolicy(Protocol):
    def __call__(
        self, previous: datetime | None, latest_applied: datetime | None
    ) -> datetime | None:
        """The batch's clock once its inputs are handled, from the clock it started with and
        the latest time of an input it applied (already bounded by the batch's ceiling)."""
        ...


class DecisionObserver(Protocol):
    """Told of every decision and every deadline notice as the batch makes it (the parallel
    replay notes where each output would stand in a serial batch)."""

    def decided(self, event: InboundEvent, decision: Decision) -> None: ...

    def noticed(self, dossier: Dossier, notices: Sequence[OutboundEvent]) -> None: ...

    def handed_over(
        self, cause: InboundEvent | None, dossier: Dossier, outputs: Sequence[OutboundEvent]
    ) -> None:
        """A step of the engine's own (a handover or a migration) made just before the input
        `cause` applies, or by the clock (None)."""
        ...


class InputVerifier(Protocol):
    """Contract 1.1, "Signed inputs": whether a decoded input carries the signature its agency
    or sender must give (`engine.registry.Registry` is one). The decider sees only the event;
    the signature is over the message's bytes and travels in its headers, so it is checked
    here, right after decoding."""

    def check_signature(
        self, event: InboundEvent, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> SignatureCheck: ...


def forward_clock(previous: datetime | None, latest_applied: datetime | None) -> datetime | None:
    """The business clock: the latest time an applied input carried, never going back; in UTC,
    so equal instants written with other offsets are one clock."""
    if latest_applied is not None and (previous is None or latest_applied > previous):
        return latest_applied.astimezone(UTC)
    return previous


def wall_clock(previous: datetime | None, latest_applied: datetime | None) -> datetime | None:
    """Real time (`DOSSIER_CLOCK_MODE=wall`), never going back."""
    now = datetime.now(UTC)
    return now if previous is None or now > previous else previous


class BatchProcessor:
    def __init__(
        self,
        decider: Decider,
        codec: WireCodec,
        config: ServiceConfig,
        *,
        clock_policy: ClockPolicy | None = None,
        observer: DecisionObserver | None = None,
        verifier: InputVerifier | None = None,
    ) -> None:
        self.decider = decider
        self.verifier = verifier
        self.codec = codec
        self.config = config
        # Business time by default (replayable); the configured wall clock; or a replay's.
        self.clock_policy: ClockPolicy = clock_policy or (
            wall_clock if config.clock_mode == "wall" else forward_clock
        )
        self.observer = observer
        # The inbound partitions this process consumes, set by the transport on every
        # assignment: due deadline notices are looked for among their dossiers only, so that
        # processes sharing a database do not pick the same one. None: every dossier.
        self.notice_partitions: frozenset[int] | None = None
        # A replay from a database's history: handovers and migrations are the history's own
        # entries, made again where they stand, not by the clock (see
        # `_Batch._handle_recorded_step`).
        self.replaying_own_steps = False

    def process(
        self,
        uow: UnitOfWork[BatchRepository],
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

    def set_aside(
        self, uow: UnitOfWork[BatchRepository], raw: RawInput, failure: BaseException
    ) -> BatchResult:
        """Dead-letter one input whose batch failed because of it, as `internal-error`, in a
        batch of its own: its position and outcome are recorded, nothing of it is applied."""
        with uow:
            result = _Batch(self, uow.repo).set_aside(raw, _failure(failure, "processing"))
            uow.commit()
        return result

    def run_on(
        self,
        repo: BatchRepository,
        inputs: Sequence[RawInput],
        clock_ceiling: datetime | None = None,
    ) -> BatchResult:
        """The batch's reads and writes on `repo`, in a transaction the caller owns (or, for
        engine.application.pipeline, a repository that stages the writes for later)."""
        return _Batch(self, repo, clock_ceiling).run(inputs)


class _Batch:
    """The working set of one batch: loaded dossiers, staged rows, counters."""

    def __init__(
        self,
        processor: BatchProcessor,
        repo: BatchRepository,
        clock_ceiling: datetime | None = None,
    ) -> None:
        self.clock_ceiling = clock_ceiling
        self.notice_partitions = processor.notice_partitions
        self.decider = processor.decider
        self.verifier = processor.verifier
        self.codec = processor.codec
        self.clock_policy = processor.clock_policy
        self.observer = processor.observer
        self.config = processor.config
        self.repo = repo
        self.result = BatchResult()
        self.stored: dict[str, StoredDossier] = {}
        self.dirty: dict[str, Dossier] = {}
        self.known_missing: set[str] = set()
        self.applied_keys: dict[tuple[str, str], str] = {}
        self.parked_keys: dict[tuple[str, str], ParkedInput] = {}
        self.parked_by_dossier: dict[str, list[ParkedInput]] = {}
        self.history_seq: dict[str, int] = {}
        self.partitions: dict[str, int] = {}  # dossier code -> partition its inputs came from
        self.history: list[HistoryRow] = []
        self.ledger: list[LedgerEntry] = []
        self.outbox: list[OutboxMessage] = []
        self.to_park: list[ParkedInput] = []
        self.to_unpark: list[int] = []
        self.clock = repo.get_clock()
        # The business clock of each inbound partition (the latest time applied from it), as
        # the batch's inputs move it one by one: what handovers are judged by (see `_decide`).
        self.partition_clocks: dict[int, datetime | None] = {}
        self.replaying_own_steps = processor.replaying_own_steps
        self._wall_now = datetime.now(UTC)

    # -----------------------------------------------------------------------------------------
    def run(self, inputs: Sequence[RawInput]) -> BatchResult:
        inputs = self._not_yet_processed(inputs)
        decoded: list[tuple[RawInput, InboundEvent | None, str | None]] = []
        for raw in inputs:
            try:
                event = self.codec.decode(raw.value, raw.contract_topic, key=raw.key)
            except InputRejected as rejection:
                self._dead_letter(raw, rejection.reason, rejection.detail)
                self._count(raw, "dead_lettered")
                decoded.append((raw, None, None))
                continue
            except Exception as exc:
                self._dead_letter(raw, DeadLetterReason.INTERNAL_ERROR, _failure(exc, "decoding"))
                self._count(raw, "dead_lettered")
                decoded.append((raw, None, None))
                continue
            if raw.contract_topic == ENGINE_TOPIC:
                decoded.append((raw, event, None))  # the engine's own entry: nobody signs it
                continue
            # Contract 1.1, "Signed inputs": before anything looks at what the input says.
            try:
                check = self._check_signature(event, raw.value, raw.headers)
            except Exception as exc:
                self._dead_letter(raw, DeadLetterReason.INTERNAL_ERROR, _failure(exc, "verifying"))
                self._count(raw, "dead_lettered")
                decoded.append((raw, None, None))
                continue
            if check.refused is not None:
                self._dead_letter(raw, DeadLetterReason.UNAUTHENTICATED, check.refused)
                self._count(raw, "dead_lettered")
                decoded.append((raw, None, None))
                continue
            decoded.append((raw, event, check.signature))
        events = [e for _, e, _ in decoded if e is not None]
        self._prefetch(events)
        if self.decider.takes_own_steps:
            # Handovers and migrations are judged by the clocks of the inputs' partitions: read
            # at once.
            wanted = {
                raw.position.partition
                for raw, event, _ in decoded
                if event is not None and raw.position.partition is not None
            }
            if wanted:
                self.partition_clocks.update(dict.fromkeys(wanted))
                self.partition_clocks.update(self.repo.partition_clocks(wanted))
        for raw, maybe_event, signature in decoded:
            if maybe_event is not None:
                self._handle(raw, maybe_event, signature)
        # Contract 1.1, "Time": only inputs that applied move the business clock, so an input
        # that is refused (a year-9999 `time`, an unknown procedure) cannot make every open
        # dossier overdue. Inputs dead-lettered above carry the clock the batch started with.
        self._advance_clock(self.result.applied_event_times)
        self._expire_parked()
        self._own_steps_by_clock()
        self._deadline_notices()
        self._flush(inputs)
        self.result.clock = self.clock
        return self.result

    def set_aside(self, raw: RawInput, detail: str) -> BatchResult:
        inputs = self._not_yet_processed([raw])
        for fresh in inputs:
            self._dead_letter(fresh, DeadLetterReason.INTERNAL_ERROR, detail)
            self._count(fresh, "dead_lettered")
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
            self.parked_keys[(parked.source, parked.event_id)] = parked

    def _dossier(self, code: str) -> Dossier | None:
        if code in self.dirty:
            return self.dirty[code]
        stored = self.stored.get(code)
        return stored.dossier if stored is not None else None

    # -----------------------------------------------------------------------------------------
    def _check_signature(
        self, event: InboundEvent, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> SignatureCheck:
        if self.verifier is None:
            return _UNCHECKED
        return self.verifier.check_signature(event, value, headers)

    def _handle(self, raw: RawInput, event: InboundEvent, signature: str | None = None) -> None:
        if raw.contract_topic == ENGINE_TOPIC:
            if self.replaying_own_steps:
                self._handle_recorded_step(raw, event)
            else:  # pragma: no cover - no transport hands the engine such an input
                self._dead_letter(raw, DeadLetterReason.MALFORMED, "the engine's own entry")
            return
        known_hash = self.applied_keys.get(event.key)
        if known_hash is not None:
            if known_hash == event.content_hash():
                self._count(raw, "duplicate")
            else:
                self._conflict(raw, event, "applied")
            return
        waiting = self.parked_keys.get(event.key)
        if waiting is not None:
            # The parked copy will decide; a copy with other content is a conflict, not a
            # duplicate that would vanish while the parked one later applies.
            if self._parked_hash(waiting) == event.content_hash():
                self._count(raw, "duplicate")
            else:
                self._conflict(raw, event, "parked")
            return
        try:
            decision, steps = self._decide(event, raw.position.partition)
            if self.observer is not None:
                self.observer.decided(event, decision)
            staged = self._stage(raw.position, event, decision, signature, raw.value)
        except Exception as exc:
            # Contract 1.1, "Poison": a failure that follows this input sets it aside, with
            # its bytes, instead of failing the batch (and every retry of it) for all the others.
            self._dead_letter(raw, DeadLetterReason.INTERNAL_ERROR, _failure(exc, "applying"))
            self._count(raw, "dead_lettered")
            return
        if staged is not None:
            for step in steps:
                self._record_step(step)
            self._record_applied(staged)
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

    def _conflict(self, raw: RawInput, event: InboundEvent, where: str) -> None:
        self._dead_letter(
            raw,
            DeadLetterReason.CONFLICT,
            f"({event.source}, {event.id}) was {where} before with other content",
        )
        self._count(raw, "dead_lettered")

    def _parked_hash(self, parked: ParkedInput) -> str | None:
        """The content hash of a parked input, decoded again only when a copy arrives."""
        try:
            return self.codec.decode(
                parked.value, _contract_topic(parked), key=parked.key
            ).content_hash()
        except Exception:
            return None  # no longer decodable: nothing can be the same event as it

    def _stage(
        self,
        position: Position,
        event: InboundEvent,
        decision: Decision,
        signature: str | None = None,
        value: bytes | None = None,
    ) -> _StagedApply | None:
        """Everything an applied input writes, computed before any of it is recorded, so an
        input whose outputs cannot be built leaves the batch's working set untouched."""
        if not isinstance(decision, Applied):
            return None
        outputs = tuple((output, self._outbox_message(output)) for output in decision.outputs)
        return _StagedApply(
            position,
            event,
            decision,
            event.content_hash(),
            self.codec.stored_envelope(event),
            outputs,
            signature,
            value if signature is not None else None,
        )

    def _record_applied(self, staged: _StagedApply) -> None:
        event, decision, position = staged.event, staged.decision, staged.position
        dossier = decision.dossier
        self.dirty[dossier.code] = dossier
        if position.partition is not None:
            self.partitions[dossier.code] = position.partition
        self.applied_keys[event.key] = staged.content_hash
        self._append_history(
            event,
            dossier,
            staged.envelope,
            position,
            decision.previous_state,
            staged.signature,
            staged.signed_value,
        )
        self.ledger.append(LedgerEntry(event.source, event.id, staged.content_hash, dossier.code))
        for output, message in staged.outputs:
            self._emit_encoded(output, message, dossier)
        if decision.previous_state != dossier.state:
            self.result.transitions[(dossier.group, dossier.status_code)] += 1
        self.result.applied_event_times.append(event.time)
        if position.partition is not None and self.decider.takes_own_steps:
            clock = self._partition_clock(position.partition)
            if clock is None or event.time > clock:
                self.partition_clocks[position.partition] = event.time.astimezone(UTC)

    # -----------------------------------------------------------------------------------------
    # Contract 1.1, "Handover": an ended agency's open dossiers pass to its successor, just
    # before an input dated at or after the cutover, and once the clock has passed it.
    #
    # "The clock" here is the business clock of the dossier's partition: the latest time of an
    # input applied from that inbound partition. Kafka orders a dossier's inputs, and the
    # engine's event-time gate merges its topics, within a partition only; how the partitions
    # interleave depends on fetches and start-up, in live as against a replay. A handover judged
    # by its own partition's clock happens at the same point of that partition's inputs however
    # the partitions interleave and wherever batches are cut (tests/unit/test_handover.py).
    def _partition_clock(self, partition: int | None) -> datetime | None:
        if partition is None:
            return self.clock  # an input from no partition (tests, tools): the engine's clock
        if partition not in self.partition_clocks:
            self.partition_clocks.update(self.repo.partition_clocks([partition]))
            self.partition_clocks.setdefault(partition, None)
        return self.partition_clocks[partition]

    def _decide(
        self, event: InboundEvent, partition: int | None
    ) -> tuple[Decision, tuple[_StagedStep, ...]]:
        """The decision on an input, and the engine's own steps (a migration, a handover) to
        record before it when they are due.

        Steps due before the input are decided with it: the input is decided on the dossier as
        they leave it, and they are recorded only if the input applies (an input that is
        refused or parked leaves no trace, and changes nothing: its dossier takes the same
        steps, the same way, by the clock or before its next input)."""
        dossier = self._dossier(event.subject)
        if self.replaying_own_steps or not self.decider.takes_own_steps:
            return self.decider.apply(dossier, event), ()
        clock = self._partition_clock(partition)
        if dossier is None:
            decision = self.decider.apply(None, event)
            if isinstance(decision, Applied) and clock is not None:
                opened = evolve(decision.dossier, opened_clock=clock.astimezone(UTC))
                decision = Applied(opened, decision.outputs, decision.previous_state)
            return decision, ()
        steps = self._steps_due(dossier, event.time, clock)
        if not steps:
            return self.decider.apply(dossier, event), ()
        decision = self.decider.apply(steps[-1].decision.dossier, event)
        if not isinstance(decision, Applied):
            return decision, ()
        if self.observer is not None:
            for step in steps:
                self.observer.handed_over(event, step.decision.dossier, step.decision.outputs)
        return decision, steps

    def _steps_due(
        self, dossier: Dossier, input_time: datetime | None, clock: datetime | None
    ) -> tuple[_StagedStep, ...]:
        """The engine's own steps due on `dossier` now, in order, each on the dossier the one
        before left. A step changes the version (plans never cycle: each moves to a version in
        force after the one it leaves) or the holder (successors never cycle: the registry is
        checked at load), so the chain is short; the bound only guards against a bug."""
        steps: list[_StagedStep] = []
        current = dossier
        for _ in range(_MAX_OWN_STEPS):
            step = self.decider.step_due(current, input_time, clock)
            if step is None:
                break
            staged = self._staged_step(
                current, self.decider.own_entry(step, current, self.config.engine_source)
            )
            steps.append(staged)
            current = staged.decision.dossier
        return tuple(steps)

    def _steps_by_clock(self, code: str, dossier: Dossier) -> tuple[_StagedStep, ...]:
        """The steps the clock of the dossier's partition makes now, if it makes any."""
        if self.replaying_own_steps or not self.decider.takes_own_steps:
            return ()
        return self._steps_due(dossier, None, self._partition_clock(self._partition(code)))

    def _staged_step(self, dossier: Dossier, event: InboundEvent) -> _StagedStep:
        decision = self.decider.take_step(dossier, event)
        outputs = tuple((output, self._outbox_message(output)) for output in decision.outputs)
        # A handover is counted by the level of the agency that ended, which a migration made
        # just before it may already have renamed in the dossier (`district -> province`).
        former = dossier.level if event.type == MIGRATED_TYPE else str(event.data["level"])
        return _StagedStep(event, decision, self.codec.stored_envelope(event), outputs, former)

    def _append_history(
        self,
        event: InboundEvent,
        dossier: Dossier,
        envelope: Mapping[str, Any],
        position: Position,
        state_before: str | None,
        signature: str | None = None,
        signed_value: bytes | None = None,
    ) -> None:
        """The dossier's next history row, after the rows this batch already appended."""
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
                envelope=envelope,
                position=position,
                state_before=state_before,
                state_after=dossier.state,
                status_code=dossier.status_code,
                workflow_version=dossier.workflow_version,
                signature=signature,
                signed_value=signed_value,
            )
        )

    def _record_step(self, staged: _StagedStep) -> None:
        event, dossier = staged.event, staged.decision.dossier
        self.dirty[dossier.code] = dossier
        # Not a Kafka record: the engine's own entry (no ledger entry either: its id is the
        # handover's or the plan's, shared by every dossier it moved).
        self._append_history(
            event,
            dossier,
            staged.envelope,
            Position(ENGINE_TOPIC, None, None),
            staged.decision.previous_state,
        )
        for output, message in staged.outputs:
            self._emit_encoded(output, message, dossier)
        if staged.is_migration:
            self.result.migrations[dossier.group] += 1
        else:
            self.result.handovers[(staged.former_level, dossier.level)] += 1

    def _own_steps_by_clock(self) -> None:
        """Once the clock has passed a plan's or an ended agency's cutover, the dossiers it
        concerns take their step: at most `handover_scan_limit` of each kind per batch, by code
        (with `notice_partitions`, of this process's partitions only), the rest in the next
        batches, or just before their next input. Each step is taken once: the dossier is no
        longer on the version the plan moves, or held by the agency that ended, afterwards."""
        decider = self.decider
        if self.replaying_own_steps or not decider.takes_own_steps:
            return
        registry = decider.registry
        endings = registry.endings() if registry is not None else []
        plans = decider.catalogue.migrations()
        earliest = min([e.cutover for e in endings] + [p.cutover for p in plans], default=None)
        if earliest is None:
            return
        if self.notice_partitions is not None:
            self.partition_clocks.update(
                self.repo.partition_clocks(
                    [p for p in self.notice_partitions if p not in self.partition_clocks]
                )
            )
        else:
            self.partition_clocks.update(
                {
                    p: t
                    for p, t in self.repo.partition_clocks(None).items()
                    if p not in self.partition_clocks
                }
            )
        known = [t for t in (self.clock, *self.partition_clocks.values()) if t is not None]
        latest = max(known, default=None)
        if latest is None or latest < earliest:
            return
        past = {
            p
            for p, t in self.partition_clocks.items()
            if t is not None
            and t >= earliest
            and (self.notice_partitions is None or p in self.notice_partitions)
        }
        candidates = self._handover_candidates(endings, latest, past)
        candidates.update(self._migration_candidates(plans, latest, past))
        for code in sorted(candidates):
            try:
                steps = self._steps_by_clock(code, self._dossier(code) or candidates[code])
            except Exception:
                # As a deadline notice: it must not stop every batch's inputs; the dossier is
                # looked at again in the next batch, or before its next input.
                log.exception(
                    "the engine's own step on dossier %s failed; skipped this batch", code
                )
                continue
            for staged in steps:
                if self.observer is not None:
                    self.observer.handed_over(
                        None, staged.decision.dossier, staged.decision.outputs
                    )
                self._record_step(staged)

    def _handover_candidates(
        self, endings: Sequence[Ending], latest: datetime, past: Collection[int]
    ) -> dict[str, Dossier]:
        ended = {e.agency.code: e.cutover for e in endings if e.cutover <= latest}
        if not ended:
            return {}
        scan = HandoverScan(ended, self.config.handover_scan_limit, partitions=past)
        candidates = {code: d for code, d in self.dirty.items() if scan.covers(d)}
        return self._with_scanned(candidates, self.repo.handovers_due(scan))

    def _migration_candidates(
        self, plans: Sequence[MigrationPlan], latest: datetime, past: Collection[int]
    ) -> dict[str, Dossier]:
        in_effect = {
            (p.procedure, p.from_version): (p.cutover, frozenset(p.states))
            for p in plans
            if p.cutover <= latest
        }
        if not in_effect:
            return {}
        scan = MigrationScan(in_effect, self.config.handover_scan_limit, partitions=past)
        candidates = {code: d for code, d in self.dirty.items() if scan.covers(d)}
        return self._with_scanned(candidates, self.repo.migrations_due(scan))

    def _with_scanned(
        self, candidates: dict[str, Dossier], scanned: Iterable[StoredDossier]
    ) -> dict[str, Dossier]:
        """The batch's own candidates and the stored ones a scan found (the batch's version of
        a dossier it changed wins: the store's is stale)."""
        for stored in scanned:
            code = stored.dossier.code
            if code not in self.dirty:
                self.stored.setdefault(code, stored)
                candidates[code] = stored.dossier
        return candidates

    def _handle_recorded_step(self, raw: RawInput, event: InboundEvent) -> None:
        """A replay from a database: the engine's own history entry of a handover or a
        migration, at its place among its dossier's inputs. The database keeps each dossier's
        order but not the order of the inputs of one partition across dossiers (a batch's rows
        are stored by dossier), so it cannot tell again when the clock passed the cutover: the
        step is made again where it was made, its effects worked out afresh from the registry
        or the plan, and refused if the rule could not have made it there."""
        code = event.subject
        dossier = self._dossier(code)
        if event.type == MIGRATED_TYPE:
            refused = self._recorded_migration_refused(dossier, event)
        else:
            refused = self._recorded_handover_refused(dossier, event)
        if refused is not None:
            kind = "migration" if event.type == MIGRATED_TYPE else "handover"
            decision: Decision = Rejected("invalid-transition", f"{kind}: {refused}")
            if self.observer is not None:
                self.observer.decided(event, decision)
            self._dead_letter(raw, DeadLetterReason.INVALID_TRANSITION, f"{kind}: {refused}")
            return
        assert dossier is not None
        staged = self._staged_step(dossier, event)
        if self.observer is not None:
            self.observer.decided(event, staged.decision)
        self._record_step(staged)
        self._retry_parked(code)

    def _recorded_handover_refused(
        self, dossier: Dossier | None, event: InboundEvent
    ) -> str | None:
        registry = self.decider.registry
        ending = registry.ending_of(str(event.data.get("agency"))) if registry else None
        if dossier is None or ending is None:
            return "no such dossier, or no such ending agency in the registry"
        if dossier.agency != ending.agency.code or dossier.final:
            return f"dossier {dossier.code} is not held open by agency {ending.agency.code}"
        if event.id != ending.handover_id or event.time != ending.cutover:
            return f"the registry's handover of {ending.agency.code} is {ending.handover_id}"
        return None

    def _recorded_migration_refused(
        self, dossier: Dossier | None, event: InboundEvent
    ) -> str | None:
        if dossier is None:
            return "no such dossier"
        plan = self.decider.catalogue.migration_from(dossier.procedure, dossier.workflow_version)
        if plan is None:
            return (
                f"no plan moves {dossier.procedure} version {dossier.workflow_version} "
                "in the catalogue"
            )
        if event.id != plan.entry_id or event.time != plan.cutover:
            return f"the catalogue's plan for dossier {dossier.code} is {plan.entry_id}"
        if dossier.final or not plan.maps(dossier.state):
            return f"dossier {dossier.code} in state {dossier.state} is not one the plan moves"
        return None

    def _emit(self, outputs: Iterable[OutboundEvent], dossier: Dossier) -> None:
        for output in outputs:
            self._emit_encoded(output, self._outbox_message(output), dossier)

    def _outbox_message(self, output: OutboundEvent) -> OutboxMessage:
        return OutboxMessage(
            topic=output.topic,
            key=output.key.encode("utf-8"),
            value=self.codec.encode_outbound(output, self.config.engine_source),
            message_id=output.id,
            created_at=output.time,
        )

    def _emit_encoded(
        self, output: OutboundEvent, message: OutboxMessage, dossier: Dossier
    ) -> None:
        self.outbox.append(message)
        if output.type.endswith("fee-discount-granted"):
            self.result.discounts_granted[dossier.group] += 1
            self.result.discount_vnd[dossier.group] += int(output.data["discount_amount"])
        elif output.topic == DEADLINE_TOPIC:
            self.result.notices[output.type.rsplit(".", 1)[-1]] += 1

    def _retry_parked(self, code: str) -> None:
        """Inputs waiting for this dossier get another chance after each change of it."""
        progress = True
        while progress and self.parked_by_dossier.get(code):
            progress = False
            for parked in list(self.parked_by_dossier[code]):
                try:
                    event = self.codec.decode(parked.value, _contract_topic(parked), key=parked.key)
                except InputRejected:  # the schema got stricter since it was parked
                    continue
                except Exception as exc:
                    self._unpark(parked)
                    self._settle_failed_parked(parked, _failure(exc, "decoding"))
                    progress = True
                    break
                # Checked when it arrived; again now, so that its signature is kept with the
                # history and a key withdrawn meanwhile is not trusted any more.
                try:
                    check = self._check_signature(event, parked.value, parked.headers)
                except Exception as exc:
                    self._unpark(parked)
                    self._settle_failed_parked(parked, _failure(exc, "verifying"))
                    progress = True
                    break
                if check.refused is not None:
                    self._unpark(parked)
                    self._dead_letter_parked(
                        parked, DeadLetterReason.UNAUTHENTICATED, check.refused
                    )
                    self._resettle(parked, "dead_lettered")
                    progress = True
                    break
                try:
                    decision, steps = self._decide(event, parked.position.partition)
                    if self.observer is not None:
                        self.observer.decided(event, decision)
                    staged = self._stage(
                        parked.position, event, decision, check.signature, parked.value
                    )
                except Exception as exc:
                    # The parked input fails, not the one that woke it: set the parked one aside.
                    self._unpark(parked)
                    self._settle_failed_parked(parked, _failure(exc, "applying"))
                    progress = True
                    break
                if isinstance(decision, NotYetApplicable):
                    continue
                self._unpark(parked)
                if staged is not None:
                    for step in steps:
                        self._record_step(step)
                    self._record_applied(staged)
                    self._resettle(parked, "applied")
                elif isinstance(decision, Rejected):
                    self._dead_letter_parked(
                        parked, DeadLetterReason(decision.reason), decision.detail
                    )
                    self._resettle(parked, "dead_lettered")
                # The dossier, or what waits for it, changed: every input parked after this one
                # gets its turn again, from the oldest (a refused wrong payment must not leave
                # the right one waiting behind it).
                progress = True
                break

    def _unpark(self, parked: ParkedInput) -> None:
        self.parked_by_dossier[parked.dossier_code].remove(parked)
        self.parked_keys.pop((parked.source, parked.event_id), None)
        if parked.id is not None:
            self.to_unpark.append(parked.id)
        else:
            self.to_park.remove(parked)
        self.result.unparked += 1

    def _settle_failed_parked(self, parked: ParkedInput, detail: str) -> None:
        self._dead_letter_parked(parked, DeadLetterReason.INTERNAL_ERROR, detail)
        self._resettle(parked, "dead_lettered")

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
        self.parked_keys[event.key] = parked
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
        dlq_key, dlq_value = self.codec.dead_letter(
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
        message_id = self.codec.dead_letter_id(position.topic, partition, offset)
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

    def _advance_clock(self, applied_times: Sequence[datetime]) -> None:
        latest = max(applied_times, default=None)
        if latest is not None and self.clock_ceiling is not None:
            latest = min(latest, self.clock_ceiling)
        self.clock = self.clock_policy(self.clock, latest)

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
        scan = NoticeScan(self.config.notice_scan_limit, partitions=self.notice_partitions)
        for stored in self.repo.notices_due(now, scan):
            self.stored.setdefault(stored.dossier.code, stored)
            candidates.setdefault(stored.dossier.code, stored.dossier)
        for code, dossier in candidates.items():
            try:
                # A notice names the agency holding the dossier: its successor, if due.
                for staged in self._steps_by_clock(code, dossier):
                    if self.observer is not None:
                        self.observer.handed_over(
                            None, staged.decision.dossier, staged.decision.outputs
                        )
                    self._record_step(staged)
                    dossier = staged.decision.dossier
                updated, notices = self.decider.deadline_notices(dossier, now)
                if notices:
                    if self.observer is not None:
                        self.observer.noticed(dossier, notices)
                    self._emit(notices, updated)
            except Exception:
                # A notice that cannot be worked out must not stop the inputs of every batch
                # after it; the dossier is looked at again at the next batch.
                log.exception("deadline notices of dossier %s failed; skipped this batch", code)
                continue
            if notices:
                self.dirty[code] = updated

    def _partition(self, code: str) -> int | None:
        partition = self.partitions.get(code)
        if partition is not None:
            return partition
        stored = self.stored.get(code)
        return stored.partition if stored is not None else None

    def _flush(self, inputs: Sequence[RawInput]) -> None:
        positions: dict[tuple[str, int], int] = {}
        for raw in inputs:
            p = raw.position
            if p.partition is not None and p.offset is not None:
                slot = (p.topic, p.partition)
                positions[slot] = max(positions.get(slot, 0), p.offset + 1)
        self.repo.write(
            ChangeSet(
                dossiers=[
                    StoredDossier(
                        dossier=d,
                        revision=self.stored[code].revision if code in self.stored else 0,
                        next_notice_at=self.decider.next_notice_at(d),
                        partition=self._partition(code),
                    )
                    for code, d in self.dirty.items()
                ],
                history=self.history,
                ledger=self.ledger,
                unparked=self.to_unpark,
                parked=self.to_park,
                outbox=self.outbox,
                group=self.config.consumer_group,
                positions=positions,
                # A copy: the result's counter is the caller's once the batch returns.
                outcomes=dict(self.result.settled),
                clock=self.clock,
            )
        )


@dataclass(frozen=True, slots=True)
class _StagedApply:
    position: Position
    event: InboundEvent
    decision: Applied
    content_hash: str
    envelope: dict[str, object]
    outputs: tuple[tuple[OutboundEvent, OutboxMessage], ...]
    signature: str | None = None
    signed_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class _StagedStep:
    """A step of the engine's own: a handover or a migration (`Decider.own_entry`)."""

    event: InboundEvent
    decision: Applied
    envelope: dict[str, object]
    outputs: tuple[tuple[OutboundEvent, OutboxMessage], ...]
    former_level: str

    @property
    def is_migration(self) -> bool:
        return self.event.type == MIGRATED_TYPE


# More steps of its own in a row on one dossier than any registry and catalogue give.
_MAX_OWN_STEPS = 16


_UNCHECKED = SignatureCheck()


def _summed(
    first: Counter[tuple[str, str]], second: Counter[tuple[str, str]]
) -> Counter[tuple[str, str]]:
    """Counter addition that keeps negative counts (a parked input settled later is -1)."""
    total = Counter(first)
    total.update(second)
    return total


def _failure(exc: BaseException, step: str) -> str:
    """A dead letter's detail for an unexpected failure: the exception's class only, since its
    message may quote the input's personal data."""
    return f"{step} failed: {type(exc).__module__}.{type(exc).__qualname__}"


def _contract_topic(parked: ParkedInput) -> str:
    """Parked inputs keep their Kafka topic; the contract's name is the one it ends with."""
    return contract_topic(parked.position.topic)
