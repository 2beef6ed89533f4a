"""What the service layer needs from storage: a unit of work over batched repositories.

Two adapters implement it: `engine.store.sql` (SQLAlchemy; SQLite or PostgreSQL) and
`engine.store.memory` (plain objects, for unit tests and benchmarks of the pure path).
Every method is batched: the engine applies inputs in batches, and a round trip per input
would cap throughput at the database's latency.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from engine.copying import compile_replace
from engine.dossier import Dossier


@dataclass(frozen=True, slots=True)
class Position:
    """Where an input was consumed from; `None` partition/offset for inputs not from Kafka."""

    topic: str
    partition: int | None
    offset: int | None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One applied input, appended forever: the audit trail and the replay source."""

    dossier_code: str
    seq: int  # 1, 2, 3... per dossier
    source: str
    event_id: str
    type: str
    event_time: datetime
    schema_version: int
    envelope: Mapping[str, Any]  # the whole CloudEvent as received (JSON object)
    position: Position
    state_before: str | None
    state_after: str
    status_code: int
    workflow_version: int
    # The tamper-evident chain (engine.audit), computed by the store when the row is appended;
    # not part of equality, because a row is the same input whether or not it is chained yet.
    prev_hash: str | None = field(default=None, compare=False)
    chain_hash: str | None = field(default=None, compare=False)


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


class ConcurrencyError(Exception):
    """A dossier changed under us (another engine process): retry the batch."""


class Repository(Protocol):
    def load_dossiers(self, codes: Iterable[str]) -> dict[str, StoredDossier]: ...

    def save_dossiers(self, dossiers: Sequence[StoredDossier]) -> None:
        """Insert new ones (revision 0 -> 1) and update others where revision still matches.

        `StoredDossier.revision` is the revision that was loaded (0 for a new dossier);
        raises ConcurrencyError if any row moved on meanwhile.
        """
        ...

    def applied_hashes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """content_hash of each (source, id) already applied."""
        ...

    def record_applied(self, entries: Sequence[LedgerEntry]) -> None: ...

    def append_history(self, rows: Sequence[HistoryRow]) -> None: ...

    def history(self, dossier_code: str) -> list[HistoryRow]: ...

    def park(self, inputs: Sequence[ParkedInput]) -> None: ...

    def parked_for(self, dossier_codes: Iterable[str]) -> list[ParkedInput]:
        """Parked inputs of these dossiers, oldest first."""
        ...

    def parked_expired(self, now: datetime, limit: int) -> list[ParkedInput]: ...

    def unpark(self, ids: Iterable[int]) -> None: ...

    def parked_count(self) -> int: ...

    def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Messages whose message_id is already stored are skipped, not duplicated."""
        ...

    def unsent_outbox(self, limit: int) -> list[OutboxMessage]:
        """Oldest unsent first (by id)."""
        ...

    def mark_sent(self, ids: Sequence[int], sent_at: datetime) -> None: ...

    def outbox_backlog(self) -> int: ...

    def save_positions(self, group: str, positions: Mapping[tuple[str, int], int]) -> None:
        """Next offset to consume per (topic, partition); upsert."""
        ...

    def load_positions(self, group: str) -> dict[tuple[str, int], int]: ...

    def add_outcomes(self, group: str, changes: Mapping[tuple[str, str], int]) -> None:
        """Add to the count of consumed inputs by (contract topic, outcome).

        Committed with the positions, so the counts are exact across crashes: applied +
        duplicate + parked + dead_lettered = inputs consumed. A parked input that is later
        applied or dead-lettered moves from one outcome to the other (a -1 and a +1).
        """
        ...

    def outcome_counts(self, group: str) -> dict[tuple[str, str], int]: ...

    def notices_due(
        self,
        now: datetime,
        limit: int,
        *,
        lock: bool = True,
        partitions: Collection[int] | None = None,
    ) -> list[StoredDossier]:
        """Dossiers whose next deadline notice is due at or before `now`; with `lock`, only
        those no other transaction is notifying, held until this one ends (where supported).
        With `partitions`, only dossiers of those inbound partitions or of none known."""
        ...

    def get_clock(self) -> datetime | None:
        """The engine's business clock: the latest event time applied so far."""
        ...

    def set_clock(self, now: datetime) -> None: ...


class UnitOfWork(Protocol):
    """`with uow:` ... `uow.commit()`; leaving the block without commit rolls back."""

    repo: Repository

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...
