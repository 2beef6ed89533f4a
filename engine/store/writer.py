"""The one place the parts of a `ChangeSet` are put in order, for every store."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from engine.application.ports import (
    ChangeSet,
    HistoryRow,
    LedgerEntry,
    OutboxMessage,
    ParkedInput,
    StoredDossier,
)


class ChangeSetWriter(ABC):
    """`write(changes)` as a store's writes of each part, in the change set's order, skipping
    the empty ones. The parts' writes are the store's own business, not the port's."""

    def write(self, changes: ChangeSet) -> None:
        if changes.dossiers:
            self._save_dossiers(changes.dossiers)
        if changes.history:
            self._append_history(changes.history)
        if changes.ledger:
            self._record_applied(changes.ledger)
        if changes.unparked:
            self._unpark(changes.unparked)
        if changes.parked:
            self._park(changes.parked)
        if changes.outbox:
            self._add_outbox(changes.outbox)
        if changes.positions:
            self._save_positions(changes.group, changes.positions)
        if changes.outcomes:
            self._add_outcomes(changes.group, changes.outcomes)
        if changes.clock is not None:
            self._set_clock(changes.clock)

    @abstractmethod
    def _save_dossiers(self, dossiers: Sequence[StoredDossier]) -> None: ...

    @abstractmethod
    def _append_history(self, rows: Sequence[HistoryRow]) -> None: ...

    @abstractmethod
    def _record_applied(self, entries: Sequence[LedgerEntry]) -> None: ...

    @abstractmethod
    def _unpark(self, ids: Collection[int]) -> None: ...

    @abstractmethod
    def _park(self, inputs: Sequence[ParkedInput]) -> None: ...

    @abstractmethod
    def _add_outbox(self, messages: Sequence[OutboxMessage]) -> None: ...

    @abstractmethod
    def _save_positions(self, group: str, positions: Mapping[tuple[str, int], int]) -> None: ...

    @abstractmethod
    def _add_outcomes(self, group: str, changes: Mapping[tuple[str, str], int]) -> None: ...

    @abstractmethod
    def _set_clock(self, now: datetime) -> None: ...
