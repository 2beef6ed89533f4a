"""What the application layer needs from storage: a unit of work over a batched repository.

A batch reads through `BatchRepository` (its dossiers, the ledger, parked inputs, due notices,
positions, the clock) and writes everything it changed with one `write(ChangeSet)`; the outbox
relay reads and marks through `Outbox`. Two adapters implement both: `engine.store.sql`
(SQLAlchemy; SQLite or PostgreSQL) and `engine.store.memory` (plain objects, for unit tests
and benchmarks of the pure path). Read models that no batch needs (a dossier's history, the
counts monitoring shows) are the adapters' own. Every read is batched: the engine applies inputs
in batches, and a round trip per input would cap throughput at the database's latency.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, TypeVar

from engine.copying import compile_replace
from engine.dossier import Dossier
from engine.history import HistoryRow as HistoryRow  # the port speaks of them too
from engine.history import Position as Position


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    source: str
    event_id: str
    content_hash: str
    dossier_code: str


@dataclass(frozen=True, slots=True)
class ParkedInput:
    source: str
    event_id: str
    dossier_code: str
    position: Position
    key: bytes | None
    value: bytes  # the original bytes, re-decoded on retry
    headers: Sequence[tuple[str, bytes]]
    parked_at: datetime  # engine clock
    expires_at: datetime  # engine clock
    detail: str
    id: int | None = None  # assigned by storage


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    topic: str  # contract topic name, without deployment prefix
    key: bytes | None
    value: bytes  # encoded CloudEvent
    message_id: str  # the CloudEvent id: unique, so a re-emitted output is stored once
    created_at: datetime
    id: int | None = None  # assigned by storage, increasing: the relay's order


@dataclass(frozen=True, slots=True)
class StoredDossier:
    dossier: Dossier
    revision: int  # optimistic concurrency: bumped by every save
    next_notice_at: datetime | None
    # The inbound partition its inputs arrive on (one, the topics being co-partitioned); None
    # when not known (rebuilt from the database, written before the column existed).
    partition: int | None = None

    def saved(self) -> StoredDossier:
        """As a save stores it: the next revision, everything else unchanged."""
        return _copy_stored(self, {"revision": self.revision + 1})


_copy_stored = compile_replace(StoredDossier)


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """Everything one batch writes, handed to storage in one call (`BatchRepository.write`).

    The batch hands over the sequences it built and does not touch them again. Storage writes
    the parts in the order of the fields (dossiers first, the clock last), each part only if it
    is not empty, and all of them in the unit of work's transaction.
    """

    # Dossiers to save: each with the revision it was loaded at (0 for a new dossier). New ones
    # are inserted at revision 1, the others updated where the revision still matches;
    # ConcurrencyError if any row moved on meanwhile.
    dossiers: Sequence[StoredDossier] = ()
    # Applied inputs, appended to the history and chained there (engine.audit) by the store;
    # ConcurrencyError if a (dossier_code, seq) is taken.
    history: Sequence[HistoryRow] = ()
    # The inputs applied, by (source, event_id); ConcurrencyError if one is recorded already.
    ledger: Sequence[LedgerEntry] = ()
    unparked: Collection[int] = ()  # ids of parked inputs to remove (unknown ids are ignored)
    parked: Sequence[ParkedInput] = ()  # inputs to park; storage assigns their ids
    # Outputs to publish; a message whose message_id is already stored is skipped.
    outbox: Sequence[OutboxMessage] = ()
    group: str = ""  # the consumer group the positions and the outcome counts are of
    # Next offset to consume per (topic, partition): upserted.
    positions: Mapping[tuple[str, int], int] = field(default_factory=dict)
    # Added to the count of consumed inputs by (contract topic, outcome). Committed with the
    # positions, so the counts are exact across crashes: applied + duplicate + parked +
    # dead_lettered = inputs consumed. A parked input that is later applied or dead-lettered
    # moves from one outcome to the other (a -1 and a +1).
    outcomes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    clock: datetime | None = None  # the business clock from now on; None: unchanged


class ConcurrencyError(Exception):
    """A dossier changed under us (another engine process): retry the batch."""


@dataclass(frozen=True, slots=True)
class NoticeScan:
    """Which due dossiers a batch looks at for deadline notices (`BatchRepository.notices_due`)."""

    limit: int
    lock: bool = True
    partitions: Collection[int] | None = None


@dataclass(frozen=True, slots=True)
class HandoverScan:
    """Which dossiers a batch hands over by the clock (`BatchRepository.handovers_due`)."""

    # Ended agency code -> its cutover (aware), for the agencies whose cutover the clock passed.
    cutovers: Mapping[str, datetime]
    limit: int
    lock: bool = True
    partitions: Collection[int] | None = None

    def covers(self, dossier: Dossier) -> bool:
        """Whether `dossier` is one the scan looks for (partitions aside): open, held by an
        agency that ended, and opened before its cutover (a backfill is not handed over by
        the clock)."""
        cutover = self.cutovers.get(dossier.agency)
        if cutover is None or dossier.final:
            return False
        return dossier.opened_clock is None or dossier.opened_clock < cutover

    def selects(self, stored: StoredDossier) -> bool:
        """Whether the scan finds `stored`: it covers the dossier, of its partitions."""
        return self.covers(stored.dossier) and _of_partitions(stored, self.partitions)


@dataclass(frozen=True, slots=True)
class MigrationScan:
    """Which dossiers a batch moves to another workflow version by the clock
    (`BatchRepository.migrations_due`)."""

    # (procedure, from version) -> (its plan's cutover, aware; the states the plan maps), for
    # the plans whose cutover the clock passed.
    plans: Mapping[tuple[str, int], tuple[datetime, frozenset[str]]]
    limit: int
    lock: bool = True
    partitions: Collection[int] | None = None

    def covers(self, dossier: Dossier) -> bool:
        """Whether `dossier` is one the scan looks for (partitions aside)."""
        plan = self.plans.get((dossier.procedure, dossier.workflow_version))
        if plan is None or dossier.final:
            return False
        cutover, states = plan
        return dossier.state in states and (
            dossier.opened_clock is None or dossier.opened_clock < cutover
        )

    def selects(self, stored: StoredDossier) -> bool:
        """Whether the scan finds `stored`: it covers the dossier, of its partitions."""
        return self.covers(stored.dossier) and _of_partitions(stored, self.partitions)


def _of_partitions(stored: StoredDossier, partitions: Collection[int] | None) -> bool:
    """A dossier of these inbound partitions, or of none known (anyone's); all for None."""
    return partitions is None or stored.partition is None or stored.partition in partitions


class BatchRepository(Protocol):
    """What a batch reads, and its one write: the port of `engine.application.service`."""

    def load_dossiers(self, codes: Iterable[str]) -> dict[str, StoredDossier]: ...

    def applied_hashes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """content_hash of each (source, id) already applied."""
        ...

    def parked_for(self, dossier_codes: Iterable[str]) -> list[ParkedInput]:
        """Parked inputs of these dossiers, oldest first."""
        ...

    def parked_expired(self, now: datetime, limit: int) -> list[ParkedInput]: ...

    def notices_due(self, now: datetime, scan: NoticeScan) -> list[StoredDossier]:
        """The first `scan.limit` dossiers whose next deadline notice is due at or before `now`
        (by due time, then code); with `scan.lock`, only those no other transaction is
        notifying, held until this one ends (where supported); with `scan.partitions`, only
        dossiers of those inbound partitions or of none known."""
        ...

    def handovers_due(self, scan: HandoverScan) -> list[StoredDossier]:
        """The first `scan.limit` dossiers (by code) that are not final, are held by one of
        `scan.cutovers`' agencies and were opened before its cutover (`Dossier.opened_clock`
        before it, or not known); `scan.lock` and `scan.partitions` as for `notices_due`."""
        ...

    def migrations_due(self, scan: MigrationScan) -> list[StoredDossier]:
        """The first `scan.limit` dossiers (by code) that `scan.covers`; `scan.lock` and
        `scan.partitions` as for `notices_due`."""
        ...

    def partition_clocks(self, partitions: Collection[int] | None) -> dict[int, datetime]:
        """The business clock of each inbound partition (of these, or of every one): the latest
        `last_event_at` of its dossiers, which is the latest time of an input applied from it.
        Partitions with no dossier are left out."""
        ...

    def load_positions(self, group: str) -> dict[tuple[str, int], int]:
        """Next offset to consume per (topic, partition) of the group."""
        ...

    def get_clock(self) -> datetime | None:
        """The engine's business clock: the latest event time applied so far."""
        ...

    def write(self, changes: ChangeSet) -> None:
        """Write a batch's changes (see `ChangeSet`) in this unit of work's transaction."""
        ...


class Outbox(Protocol):
    """What the outbox relay (`producers.relay`) needs of storage."""

    def unsent_outbox(self, limit: int) -> list[OutboxMessage]:
        """Oldest unsent first (by id)."""
        ...

    def mark_sent(self, ids: Sequence[int], sent_at: datetime) -> None: ...

    def outbox_backlog(self) -> int: ...

    def purge_sent(self, topic: str, sent_before: datetime, limit: int) -> int:
        """Delete up to `limit` messages of `topic` sent before `sent_before`; how many."""
        ...


R_co = TypeVar("R_co", covariant=True)


class UnitOfWork(Protocol[R_co]):
    """`with uow:` ... `uow.commit()`; leaving the block without commit rolls back. `repo` is
    the unit of work's repository: a `BatchRepository` for the service, an `Outbox` for the
    relay (the stores' units of work give one repository that is both)."""

    @property
    def repo(self) -> R_co: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...
