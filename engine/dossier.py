"""The dossier aggregate and its typed decisions.

A `Dossier` is an immutable snapshot; applying an input yields a new snapshot plus the
outbound events that the change causes. Snapshots serialise to plain JSON for storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from engine.copying import compile_replace
from engine.events import InboundEvent, OutboundEvent


@dataclass(frozen=True, slots=True)
class Dossier:
    code: str
    procedure: str
    workflow_version: int
    group: str  # the procedure's group (template), a bounded label for metrics and indicators
    state: str
    status_code: int
    level: str
    agency: str
    receiving_agency: str
    channel: int
    full_online: bool
    vneid_authenticated: bool
    digitised: bool
    applicant_kind: str
    submitted_at: datetime
    last_event_at: datetime
    received_at: datetime | None = None
    due_at: datetime | None = None
    paused_at: datetime | None = None  # start of the running supplementation pause
    paused_seconds: int = 0  # working seconds spent waiting for the applicant, all pauses
    rescheduled: bool = False
    payment_requested: bool = False
    paid: bool = False
    paid_online: bool | None = None
    fees: Mapping[str, int] = field(default_factory=dict)  # assessed base amounts by fee code
    discounts: Mapping[str, int] = field(default_factory=dict)  # granted, not revoked
    sequence: int = 0  # last status-changed sequence emitted
    final: bool = False
    finished_at: datetime | None = None  # first time the agency's work ended (codes 3, 8, 9, 10)
    outcome: str | None = None
    warned_due: datetime | None = None  # the due date a deadline-warning was sent for
    overdue_due: datetime | None = None  # the due date an overdue notice was sent for
    inputs_applied: int = 0  # history entries: applied inputs and the engine's own (handovers)
    # Contract 1.1, "Handover": a workflow level -> the level of the agency that acts for it
    # since its agency's window ended (a v1 `district` step is the province's from 1 July 2025).
    acting_levels: Mapping[str, str] = field(default_factory=dict)
    # The engine's business clock (UTC) when the submission applied: a dossier opened once the
    # clock had passed its agency's cutover is a backfill, handed over only before its first
    # input dated at or after the cutover (not by the clock).
    opened_clock: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping; datetimes as RFC 3339 strings."""
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        for name in _DATETIME_FIELDS:
            value = out[name]
            if value is not None:
                out[name] = value.isoformat()
        out["fees"] = dict(self.fees)
        out["discounts"] = dict(self.discounts)
        out["acting_levels"] = dict(self.acting_levels)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Dossier:
        values = dict(raw)
        for name in _DATETIME_FIELDS:
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


_FIELD_NAMES = tuple(f.name for f in fields(Dossier))
_DATETIME_FIELDS = tuple(f.name for f in fields(Dossier) if "datetime" in str(f.type))


_evolve = compile_replace(Dossier)


def evolve(dossier: Dossier, **changes: Any) -> Dossier:
    """A copy of `dossier` with `changes` applied (a fast dataclasses.replace)."""
    return _evolve(dossier, changes)


# ---------------------------------------------------------------------------------------------
# Decisions: what became of one input
# ---------------------------------------------------------------------------------------------

RejectionReason = Literal[
    "schema",
    "unknown-procedure",
    "invalid-transition",
    "conflict",
    "unauthenticated",
    "parked-expired",
]


@dataclass(frozen=True, slots=True)
class Applied:
    dossier: Dossier
    outputs: tuple[OutboundEvent, ...]
    previous_state: str | None
    outcome: Literal["applied"] = "applied"


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Same (source, id) and same content as an input already applied: no new output."""

    outcome: Literal["duplicate"] = "duplicate"


@dataclass(frozen=True, slots=True)
class NotYetApplicable:
    """Valid for this dossier later (or for a dossier not seen yet): park and retry."""

    detail: str
    outcome: Literal["parked"] = "parked"


@dataclass(frozen=True, slots=True)
class Rejected:
    """Cannot be applied, ever: dead-letter it with this reason."""

    reason: RejectionReason
    detail: str
    outcome: Literal["dead_lettered"] = "dead_lettered"


Decision = Applied | Duplicate | NotYetApplicable | Rejected


def acting_level(dossier: Dossier, workflow_level: str) -> str:
    """The level whose topic carries the inputs of a step at `workflow_level` of the dossier's
    workflow: itself, or its successor's level once a handover moved it (contract 1.1)."""
    return dossier.acting_levels.get(workflow_level, workflow_level)


def caused_by(event: InboundEvent) -> dict[str, str]:
    return {"source": event.source, "id": event.id, "type": event.type}
