"""The in-memory adapter of `engine.application.ports`: plain dicts, same semantics as the SQL one.

For unit tests and for benchmarks of the pure path, so staging has to stay proportional to
what a batch touches: a unit of work writes into overlays (changed keys, deleted keys) over the
committed dicts, reads see overlay-then-committed, commit merges the overlays in, and rollback
drops them. Copying whole collections per batch would make a long benchmark quadratic.

Concurrency is optimistic at the level of the whole store: a unit of work that commits after
another one committed since it began raises ConcurrencyError, like a database would for the
rows they both touched (never a lost update, sometimes a spurious retry).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from engine.application.ports import (
    ConcurrencyError,
    HandoverScan,
    HistoryRow,
    LedgerEntry,
    MigrationScan,
    NoticeScan,
    OutboxMessage,
    ParkedInput,
    StoredDossier,
)
from engine.audit import GENESIS, link, row_content
from engine.copying import compile_replace
from engine.store.writer import ChangeSetWriter

_copy_parked = compile_replace(ParkedInput)
_copy_message = compile_replace(OutboxMessage)
_copy_row = compile_replace(HistoryRow)

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class InMemoryStore:
    """The committed state: what a database would hold. Share one between units of work."""

    dossiers: dict[str, StoredDossier] = field(default_factory=dict)
    ledger: dict[tuple[str, str], LedgerEntry] = field(default_factory=dict)
    history: dict[str, tuple[HistoryRow, ...]] = field(default_factory=dict)
    parked: dict[int, ParkedInput] = field(default_factory=dict)  # id order
    outbox: dict[int, OutboxMessage] = field(default_factory=dict)  # id order, sent or not
    outbox_ids: dict[str, int] = field(default_factory=dict)  # message_id -> id
    unsent: dict[int, None] = field(default_factory=dict)  # ordered set of unsent ids
    sent_at: dict[int, datetime] = field(default_factory=dict)
    positions: dict[tuple[str, str, int], int] = field(default_factory=dict)
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    clock: datetime | None = None
    last_id: int = 0  # parked inputs and outbox messages draw ids from one counter
    generation: int = 0  # bumped by every commit


class _Overlay(Generic[K, V]):
    """Uncommitted changes over a committed dict; iteration keeps the dict's key order."""

    __slots__ = ("base", "changes", "deleted")

    def __init__(self, base: dict[K, V]) -> None:
        self.base = base
        self.changes: dict[K, V] = {}
        self.deleted: set[K] = set()

    def get(self, key: K) -> V | None:
        if key in self.changes:
            return self.changes[key]
        if key in self.deleted:
            return None
        return self.base.get(key)

    def __contains__(self, key: K) -> bool:
        return key in self.changes or (key not in self.deleted and key in self.base)

    def __setitem__(self, key: K, value: V) -> None:
        self.changes[key] = value
        self.deleted.discard(key)

    def discard(self, key: K) -> None:
        self.changes.pop(key, None)
        if key in self.base:
            self.deleted.add(key)

    def __len__(self) -> int:
        new = sum(1 for k in self.changes if k not in self.base)
        return len(self.base) - len(self.deleted) + new

    def items(self) -> Iterator[tuple[K, V]]:
        for key, value in self.base.items():
            if key in self.deleted:
                continue
            yield key, self.changes.get(key, value)
        for key, value in self.changes.items():
            if key not in self.base:
                yield key, value

    def merge(self) -> None:
        for key in self.deleted:
            self.base.pop(key, None)
        self.base.update(self.changes)


class InMemoryRepository(ChangeSetWriter):
    """`engine.application.ports.BatchRepository` and `Outbox`, staging writes until
    `_merge()`; with the read models the SQL repository has (a dossier's history, counts)."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.generation = store.generation
        self.conflicted = False  # set when a ConcurrencyError was raised in this unit of work
        self._dossiers = _Overlay(store.dossiers)
        self._ledger = _Overlay(store.ledger)
        self._history = _Overlay(store.history)
        self._parked = _Overlay(store.parked)
        self._outbox = _Overlay(store.outbox)
        self._outbox_ids = _Overlay(store.outbox_ids)
        self._unsent = _Overlay(store.unsent)
        self._sent_at = _Overlay(store.sent_at)
        self._positions = _Overlay(store.positions)
        self._outcomes = _Overlay(store.outcomes)
        self._clock = store.clock
        self._last_id = store.last_id

    def _conflict(self, message: str) -> ConcurrencyError:
        self.conflicted = True
        return ConcurrencyError(message)

    # --- dossiers ----------------------------------------------------------------------------
    def load_dossiers(self, codes: Iterable[str]) -> dict[str, StoredDossier]:
        found: dict[str, StoredDossier] = {}
        for code in codes:
            stored = self._dossiers.get(code)
            if stored is not None:
                found[code] = stored
        return found

    def _save_dossiers(self, dossiers: Sequence[StoredDossier]) -> None:
        # Checked before anything is staged, although (as with SQL) a unit of work that saw a
        # ConcurrencyError may not be committed anyway.
        seen: set[str] = set()
        for d in dossiers:
            code = d.dossier.code
            current = self._dossiers.get(code)
            current_revision = 0 if current is None else current.revision
            if code in seen or current_revision != d.revision:
                raise self._conflict(f"dossier {code} changed since it was loaded")
            seen.add(code)
            _aware(d.next_notice_at)
        for d in dossiers:
            self._dossiers[d.dossier.code] = d.saved()

    def notices_due(self, now: datetime, scan: NoticeScan) -> list[StoredDossier]:
        _aware(now)
        due = [
            d
            for _, d in self._dossiers.items()
            if d.next_notice_at is not None
            and d.next_notice_at <= now
            and (scan.partitions is None or d.partition is None or d.partition in scan.partitions)
        ]
        due.sort(key=lambda d: (d.next_notice_at, d.dossier.code))
        return due[: scan.limit]

    def partition_clocks(self, partitions: Collection[int] | None) -> dict[int, datetime]:
        clocks: dict[int, datetime] = {}
        for _, stored in self._dossiers.items():
            p = stored.partition
            if p is None or (partitions is not None and p not in partitions):
                continue
            at = stored.dossier.last_event_at
            if p not in clocks or at > clocks[p]:
                clocks[p] = at
        return clocks

    def handovers_due(self, scan: HandoverScan) -> list[StoredDossier]:
        due = [stored for _, stored in self._dossiers.items() if scan.selects(stored)]
        due.sort(key=lambda stored: stored.dossier.code)
        return due[: scan.limit]

    def migrations_due(self, scan: MigrationScan) -> list[StoredDossier]:
        due = [stored for _, stored in self._dossiers.items() if scan.selects(stored)]
        due.sort(key=lambda stored: stored.dossier.code)
        return due[: scan.limit]

    # --- input ledger ------------------------------------------------------------------------
    def applied_hashes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], str] = {}
        for key in keys:
            entry = self._ledger.get(key)
            if entry is not None:
                found[key] = entry.content_hash
        return found

    def _record_applied(self, entries: Sequence[LedgerEntry]) -> None:
        """Raises ConcurrencyError if an entry's (source, event_id) is already recorded."""
        keys = [(e.source, e.event_id) for e in entries]
        if len(set(keys)) != len(keys) or any(k in self._ledger for k in keys):
            raise self._conflict("an input was recorded as applied by someone else")
        for key, entry in zip(keys, entries, strict=True):
            self._ledger[key] = entry

    # --- history -----------------------------------------------------------------------------
    def _append_history(self, rows: Sequence[HistoryRow]) -> None:
        """Raises ConcurrencyError if a (dossier_code, seq) is already taken."""
        fresh: dict[str, list[HistoryRow]] = {}
        for row in rows:
            _aware(row.event_time)
            fresh.setdefault(row.dossier_code, []).append(row)
        for code, code_rows in fresh.items():
            seqs = [r.seq for r in code_rows] + [r.seq for r in self._history.get(code) or ()]
            if len(set(seqs)) != len(seqs):
                raise self._conflict(f"history of {code} was appended to by someone else")
        for code, code_rows in fresh.items():
            existing = self._history.get(code) or ()
            prev = existing[-1].chain_hash if existing else None
            code_rows.sort(key=lambda r: r.seq)
            self._history[code] = (*existing, *_chained(code_rows, prev or GENESIS))

    def history(self, dossier_code: str) -> list[HistoryRow]:
        return list(self._history.get(dossier_code) or ())

    # --- parked inputs -----------------------------------------------------------------------
    def _park(self, inputs: Sequence[ParkedInput]) -> None:
        for p in inputs:
            _aware(p.parked_at)
            _aware(p.expires_at)
            self._last_id += 1
            # Headers come back as a tuple of pairs, as from the SQL store.
            headers = tuple((name, bytes(value)) for name, value in p.headers)
            self._parked[self._last_id] = _copy_parked(p, {"id": self._last_id, "headers": headers})

    def parked_for(self, dossier_codes: Iterable[str]) -> list[ParkedInput]:
        codes = set(dossier_codes)
        return [p for _, p in self._parked.items() if p.dossier_code in codes]

    def parked_expired(self, now: datetime, limit: int) -> list[ParkedInput]:
        _aware(now)
        expired = [p for _, p in self._parked.items() if p.expires_at <= now]
        expired.sort(key=lambda p: (p.expires_at, p.id or 0))
        return expired[:limit]

    def _unpark(self, ids: Iterable[int]) -> None:
        for parked_id in ids:
            self._parked.discard(parked_id)

    def parked_count(self) -> int:
        return len(self._parked)

    # --- outbox ------------------------------------------------------------------------------
    def _add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        for m in messages:
            _aware(m.created_at)
            if m.message_id in self._outbox_ids:
                continue
            self._last_id += 1
            self._outbox[self._last_id] = _copy_message(m, {"id": self._last_id})
            self._outbox_ids[m.message_id] = self._last_id
            self._unsent[self._last_id] = None

    def unsent_outbox(self, limit: int) -> list[OutboxMessage]:
        found: list[OutboxMessage] = []
        if limit <= 0:
            return found
        for outbox_id, _ in self._unsent.items():
            message = self._outbox.get(outbox_id)
            if message is not None:
                found.append(message)
                if len(found) >= limit:
                    break
        return found

    def mark_sent(self, ids: Sequence[int], sent_at: datetime) -> None:
        _aware(sent_at)
        for message_id in ids:
            if message_id in self._unsent:
                self._unsent.discard(message_id)
                self._sent_at[message_id] = sent_at

    def outbox_backlog(self) -> int:
        return len(self._unsent)

    def purge_sent(self, topic: str, sent_before: datetime, limit: int) -> int:
        _aware(sent_before)
        purged = 0
        for outbox_id, sent_at in list(self._sent_at.items()):
            message = self._outbox.get(outbox_id)
            if purged >= limit or message is None or message.topic != topic:
                continue
            if sent_at < sent_before:
                self._outbox.discard(outbox_id)
                self._outbox_ids.discard(message.message_id)
                self._sent_at.discard(outbox_id)
                purged += 1
        return purged

    # --- consumer positions ------------------------------------------------------------------
    def _save_positions(self, group: str, positions: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), offset in positions.items():
            self._positions[(group, topic, partition)] = offset

    def load_positions(self, group: str) -> dict[tuple[str, int], int]:
        return {
            (topic, partition): offset
            for (g, topic, partition), offset in self._positions.items()
            if g == group
        }

    def _add_outcomes(self, group: str, changes: Mapping[tuple[str, str], int]) -> None:
        for (topic, outcome), delta in changes.items():
            if delta:
                key = (group, topic, outcome)
                self._outcomes[key] = (self._outcomes.get(key) or 0) + delta

    def outcome_counts(self, group: str) -> dict[tuple[str, str], int]:
        return {
            (topic, outcome): count
            for (g, topic, outcome), count in self._outcomes.items()
            if g == group
        }

    # --- business clock ----------------------------------------------------------------------
    def get_clock(self) -> datetime | None:
        return self._clock

    def _set_clock(self, now: datetime) -> None:
        _aware(now)
        self._clock = now

    # -----------------------------------------------------------------------------------------
    def _overlays(self) -> tuple[_Overlay[Any, Any], ...]:
        return (
            self._dossiers,
            self._ledger,
            self._history,
            self._parked,
            self._outbox,
            self._outbox_ids,
            self._unsent,
            self._sent_at,
            self._positions,
            self._outcomes,
        )

    def _dirty(self) -> bool:
        return (
            self._clock != self.store.clock
            or self._last_id != self.store.last_id
            or any(o.changes or o.deleted for o in self._overlays())
        )

    def _merge(self) -> None:
        store = self.store
        for overlay in self._overlays():
            overlay.merge()
        store.clock = self._clock
        store.last_id = self._last_id
        store.generation += 1


class InMemoryUnitOfWork:
    """`with uow:` stages; `commit()` publishes the staged changes to the store; leaving the
    block without committing discards them. Reusable: each `with` starts afresh."""

    repo: InMemoryRepository

    def __init__(self, store: InMemoryStore | None = None) -> None:
        self.store = InMemoryStore() if store is None else store
        self._repo: InMemoryRepository | None = None

    def __enter__(self) -> Self:
        if self._repo is not None:
            raise RuntimeError("unit of work already entered")
        self._begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._repo = None  # whatever is staged is dropped

    def commit(self) -> None:
        repo = self._active()
        if repo.conflicted:
            raise ConcurrencyError("a conflict was raised in this unit of work: roll back")
        if repo._dirty():
            if self.store.generation != repo.generation:
                raise ConcurrencyError("the store changed since this unit of work began")
            repo._merge()
        self._begin()

    def rollback(self) -> None:
        self._active()
        self._begin()

    def _begin(self) -> None:
        self.repo = self._repo = InMemoryRepository(self.store)

    def _active(self) -> InMemoryRepository:
        if self._repo is None:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._repo


def _aware(value: datetime | None) -> None:
    """Refuse naive datetimes, as the SQL store does: deadlines need an instant."""
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"naive datetime {value!r}: storage needs timezone-aware datetimes")


def _chained(rows: list[HistoryRow], prev: str) -> list[HistoryRow]:
    """The rows hashed in seq order, each over its predecessor (engine.audit); hashes a
    caller may have set are recomputed: the store, not the caller, vouches for them."""
    chained: list[HistoryRow] = []
    for row in rows:
        current = link(prev, row_content(row))
        chained.append(_copy_row(row, {"prev_hash": prev, "chain_hash": current}))
        prev = current
    return chained
