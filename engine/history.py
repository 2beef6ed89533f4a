"""One applied input as its dossier's history keeps it: the evidence the audit chain covers
and replays read back. Domain data: the store persists it, the service builds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The topic the engine's own history entries (contract 1.1 handovers) name in their position:
# not an inbound topic, so that a replay from a database never feeds them back as inputs (the
# replay makes the same handovers again, by the same rule, and compares them).
ENGINE_TOPIC = "engine"


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
    # Contract 1.1, "Signed inputs": for an input of an agency or sender with keys, the
    # `ce-signature` header it was verified with ("<key id>:<base64>") and the exact bytes it
    # signs (the envelope above is the decoded event, not those bytes), so an auditor can check
    # it again years later; None for an unsigned input. Evidence beside the row, not part of
    # equality: a replay from stored envelopes applies the same input without them.
    signature: str | None = field(default=None, compare=False)
    signed_value: bytes | None = field(default=None, compare=False)
