"""Inbound and outbound events as the engine sees them: frozen, versioned, transport-free.

`schemas/` turns wire bytes into `InboundEvent`s and `OutboundEvent`s into wire bytes; the
engine never touches Kafka or JSON encoding of the envelope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

# Contract topic names (without the deployment prefix).
SUBMISSION_TOPIC = "dossier.submission"
LEVEL_TOPICS: Mapping[str, str] = {
    "dossier.commune": "commune",
    "dossier.district": "district",
    "dossier.province": "province",
}
INBOUND_TOPICS = (SUBMISSION_TOPIC, *LEVEL_TOPICS)
STATUS_TOPIC = "dossier.status"
FEE_DISCOUNT_TOPIC = "dossier.fee-discount"
DEADLINE_TOPIC = "dossier.deadline"
DLQ_TOPIC = "dossier.dlq"
AUDIT_CHECKPOINT_TOPIC = "dossier.audit-checkpoint"
OUTBOUND_TOPICS = (STATUS_TOPIC, FEE_DISCOUNT_TOPIC, DEADLINE_TOPIC, DLQ_TOPIC)
ALL_TOPICS = (*INBOUND_TOPICS, *OUTBOUND_TOPICS, AUDIT_CHECKPOINT_TOPIC)

TYPE_PREFIX = "vn.gov.dossier."

# The current version of the inbound event shape; older stored inputs are upcast on read.
CURRENT_SCHEMA_VERSION = 1


def contract_topic(kafka_topic: str, prefix: str | None = None) -> str:
    """The contract's name of an inbound Kafka topic: without the deployment's `prefix` when it
    is given (the consumer knows it), else the inbound name the topic ends with (a stored
    position does not say which prefix it was read with). ValueError for any other topic."""
    if prefix is not None:
        name = kafka_topic.removeprefix(prefix)
        if name in INBOUND_TOPICS:
            return name
    else:
        for name in INBOUND_TOPICS:
            if kafka_topic.endswith(name):
                return name
    raise ValueError(f"not an inbound topic of this deployment: {kafka_topic}")


class DeadLetterReason(StrEnum):
    """Why an input was dead-lettered: the contract's `reason` of a `dossier.dlq` message."""

    MALFORMED = "malformed"
    SCHEMA = "schema"
    UNKNOWN_PROCEDURE = "unknown-procedure"
    INVALID_TRANSITION = "invalid-transition"
    CONFLICT = "conflict"
    UNAUTHENTICATED = "unauthenticated"
    PARKED_EXPIRED = "parked-expired"
    # Contract 1.1, "Poison": handling the input failed unexpectedly; it is set aside, not retried.
    INTERNAL_ERROR = "internal-error"


class InputRejected(Exception):
    """An input that cannot be decoded into an event; `detail` never carries personal data."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical_json(value: Any) -> bytes:
    """One spelling per value (sorted keys, compact UTF-8), so equal content hashes equal."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=_fallback)


def _fallback(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """A decoded, schema-valid contract event addressed to one dossier."""

    source: str
    id: str
    type: str
    subject: str
    time: datetime
    data: Mapping[str, Any]
    topic: str
    schema_version: int = CURRENT_SCHEMA_VERSION

    @property
    def short_type(self) -> str:
        """'received' for 'vn.gov.dossier.received'."""
        return self.type.removeprefix(TYPE_PREFIX)

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)

    @property
    def origin_level(self) -> str | None:
        """The level whose topic carried the event; None for the submission topic."""
        return LEVEL_TOPICS.get(self.topic)

    def content_hash(self) -> str:
        """Digest of what makes two events with the same (source, id) the same event.

        Transport details (topic, partition) and unknown envelope attributes are left out:
        a re-send of the same event through another path is still a duplicate.
        """
        body = canonical_json(
            {
                "type": self.type,
                "subject": self.subject,
                "time": self.time.isoformat(),
                "data": self.data,
            }
        )
        return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """An event the engine emits; `id` is derived from the dossier and its sequence."""

    topic: str
    key: str
    id: str
    type: str
    time: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
