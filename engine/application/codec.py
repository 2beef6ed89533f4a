"""The wire codec as the application sees it: a port, implemented by `schemas.codec`.

The service decodes inputs, encodes outputs and writes dead letters through it, and never
imports the contract's schemas itself: the composition root hands a `ContractCodec` in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from engine.events import DeadLetterReason, InboundEvent, OutboundEvent


class WireCodec(Protocol):
    def decode(self, value: bytes | None, topic: str, *, key: bytes | None) -> InboundEvent:
        """The input's event, or `engine.events.InputRejected` with the contract's reason."""
        ...

    def encode_outbound(self, event: OutboundEvent, source: str) -> bytes: ...

    def dead_letter(
        self,
        reason: DeadLetterReason,
        detail: str,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        time: datetime,
        source: str,
    ) -> tuple[bytes | None, bytes]:
        """(key, value) of the `dossier.dlq` message carrying the input byte for byte."""
        ...

    def dead_letter_id(self, topic: str, partition: int, offset: int) -> str: ...

    def stored_envelope(self, event: InboundEvent) -> dict[str, Any]:
        """The form an applied input is kept in, in its dossier's history."""
        ...
