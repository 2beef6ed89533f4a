"""The tamper-evident history: per-dossier hash chains and checkpoint roots over all chains.

Each history row stores `chain_hash = sha256(prev_hash || canonical row content)`, where
`prev_hash` is the chain_hash of the previous row of the same dossier (GENESIS for seq 1).
Editing a row breaks its own hash; deleting, inserting or renumbering rows breaks the links.
What a chain alone cannot show is a truncated tail, or a whole chain rewritten consistently:
checkpoints record each chain's head (last seq, last chain_hash), and their roots are chained
to one another and published to `dossier.audit-checkpoint`, outside the database's reach.

The hash is not keyed: whoever can write the database can recompute a chain, its checkpoint
heads and the roots. What they cannot recompute is the engine's Ed25519 signature of each
checkpoint (`checkpoint_payload`, engine.signing; the key never enters the database), nor the
copies published to the topic (`checkpoint_parts`, with every head) or kept by an auditor (an
anchor). Held against those, a rewritten checkpoint is found, and against the topic's heads,
the dossier whose chain was rewritten is named.

Pure functions only; the SQL store and `engine.store.audit` use them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.events import canonical_json
from engine.history import HistoryRow

# sha256 of a fixed phrase rather than zeros: a reader of a dump sees where chains start.
GENESIS = hashlib.sha256(b"dossier-engine history chain v1").hexdigest()


def content_fields(
    dossier_code: str,
    seq: int,
    source: str,
    event_id: str,
    type_: str,
    event_time: datetime,
    schema_version: int,
    envelope: Mapping[str, Any],
    topic: str,
    partition: int | None,
    offset: int | None,
    state_before: str | None,
    state_after: str,
    status_code: int,
    workflow_version: int,
    signature: str | None = None,
    signed_value: bytes | None = None,
) -> bytes:
    """The canonical bytes of a row: every column except the surrogate id, the wall-clock
    `recorded_at` (an operator's field, not evidence) and the hashes themselves.

    The event time goes in as UTC: SQLite keeps no offset, so only UTC recomputes exactly.
    A signed input's `signature` and `signed_value` (contract 1.1) are evidence too, hashed as
    the columns hold them (the bytes in base64, whatever they are: the store may keep them
    sealed); they are appended only when either is set, so a row without them hashes as it
    did before they existed.
    """
    fields: list[Any] = [
        dossier_code,
        seq,
        source,
        event_id,
        type_,
        event_time.astimezone(UTC).isoformat(),
        schema_version,
        envelope,
        topic,
        partition,
        offset,
        state_before,
        state_after,
        status_code,
        workflow_version,
    ]
    if signature is not None or signed_value is not None:
        fields.append(signature)
        fields.append(None if signed_value is None else base64.b64encode(signed_value).decode())
    return canonical_json(fields)


def row_content(row: HistoryRow, seq: int | None = None) -> bytes:
    """`seq` overrides the row's own: verification asks "was this row written elsewhere?"."""
    p = row.position
    return content_fields(
        row.dossier_code,
        row.seq if seq is None else seq,
        row.source,
        row.event_id,
        row.type,
        row.event_time,
        row.schema_version,
        row.envelope,
        p.topic,
        p.partition,
        p.offset,
        row.state_before,
        row.state_after,
        row.status_code,
        row.workflow_version,
        row.signature,
        row.signed_value,
    )


def link(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + content).hexdigest()


def chain(rows: Sequence[HistoryRow], prev_hash: str) -> list[tuple[str, str]]:
    """(prev_hash, chain_hash) of consecutive rows of one dossier, starting after `prev_hash`."""
    links: list[tuple[str, str]] = []
    for row in rows:
        current = link(prev_hash, row_content(row))
        links.append((prev_hash, current))
        prev_hash = current
    return links


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    dossier_code: str
    seq: int
    chain_hash: str


def checkpoint_root(
    prev_root: str, history_id: int, rows: int, chains: int, heads: Iterable[Head]
) -> str:
    """Root of a checkpoint: chained over the previous root and the heads that moved since.

    Chaining roots, instead of hashing every head again, keeps a periodic checkpoint
    proportional to what changed; the latest root still commits to every head ever recorded,
    because each earlier root is inside it.
    """
    body = canonical_json(
        [
            history_id,
            rows,
            chains,
            [[h.dossier_code, h.seq, h.chain_hash] for h in sorted(heads, key=_head_key)],
        ]
    )
    return link(prev_root, body)


def _head_key(head: Head) -> str:
    return head.dossier_code


# What a checkpoint's signature covers, beside its heads (committed to by its root).
CHECKPOINT_PAYLOAD_VERSION = "dossier-engine audit checkpoint v1"


@dataclass(frozen=True, slots=True)
class CheckpointHeader:
    """A checkpoint without its heads: what is signed, published in every part and anchored."""

    id: int
    created_at: str  # RFC 3339 in UTC, exactly as signed
    business_time: str | None
    history_id: int
    rows: int
    chains: int
    prev_root: str
    root: str
    key_id: str | None = None
    signature: str | None = None

    def payload(self) -> bytes:
        """The bytes the signature is over: every field but the signature itself."""
        return canonical_json(
            {
                "v": CHECKPOINT_PAYLOAD_VERSION,
                "id": self.id,
                "created_at": self.created_at,
                "business_time": self.business_time,
                "history_id": self.history_id,
                "rows": self.rows,
                "chains": self.chains,
                "prev_root": self.prev_root,
                "root": self.root,
                "key_id": self.key_id,
            }
        )

    def fields(self) -> dict[str, Any]:
        return {
            "checkpoint": self.id,
            "created_at": self.created_at,
            "business_time": self.business_time,
            "history_id": self.history_id,
            "rows": self.rows,
            "chains": self.chains,
            "prev_root": self.prev_root,
            "root": self.root,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def parse(cls, data: Any) -> CheckpointHeader:
        """From `fields()` as read back from a topic or a file; ValueError says what is wrong
        (the input may be anything)."""
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        return cls(
            id=_int(data, "checkpoint"),
            created_at=_str(data, "created_at"),
            business_time=_str(data, "business_time", optional=True),
            history_id=_int(data, "history_id"),
            rows=_int(data, "rows"),
            chains=_int(data, "chains"),
            prev_root=_str(data, "prev_root"),
            root=_str(data, "root"),
            key_id=_str(data, "key_id", optional=True),
            signature=_str(data, "signature", optional=True),
        )


def instant(value: datetime | None) -> str | None:
    """How a checkpoint's times are signed: RFC 3339 in UTC (SQLite keeps no offset)."""
    return None if value is None else value.astimezone(UTC).isoformat()


# A checkpoint's heads are published in parts of at most this many, so each message stays far
# under Kafka's default 1 MiB limit (a head is about 110 bytes of JSON: 2,000 make ~220 KiB).
HEADS_PER_PART = 2_000


def checkpoint_parts(
    header: CheckpointHeader, heads: Sequence[Head], per_part: int = HEADS_PER_PART
) -> list[dict[str, Any]]:
    """The `data` of the messages that publish a checkpoint: each carries the whole header
    (so a part is checkable alone) and a slice of the heads, sorted by dossier code."""
    ordered = sorted(heads, key=_head_key)
    slices = [ordered[i : i + per_part] for i in range(0, len(ordered), per_part)] or [[]]
    return [
        {
            **header.fields(),
            "part": n,
            "parts": len(slices),
            "heads": [[h.dossier_code, h.seq, h.chain_hash] for h in chunk],
        }
        for n, chunk in enumerate(slices, start=1)
    ]


@dataclass(frozen=True, slots=True)
class CheckpointPart:
    header: CheckpointHeader
    part: int
    parts: int
    heads: tuple[Head, ...]
    legacy: bool = False  # published before checkpoints carried their heads


def parse_part(data: Any) -> CheckpointPart:
    """One message of `checkpoint_parts` as read back; ValueError on anything else. Messages
    published before checkpoints had parts (no `part`, no heads) read as a single part with
    no heads, so their roots are compared but not their heads."""
    header = CheckpointHeader.parse(data)
    if "part" not in data:
        return CheckpointPart(header, 1, 1, (), legacy=True)
    part, parts = _int(data, "part"), _int(data, "parts")
    if not 1 <= part <= parts or parts > 1_000_000:
        raise ValueError(f"part {part} of {parts}")
    raw = data.get("heads")
    if not isinstance(raw, list):
        raise ValueError("heads: not a list")
    heads: list[Head] = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or type(item[1]) is not int
            or not isinstance(item[2], str)
        ):
            raise ValueError("heads: an item is not [dossier code, seq, chain hash]")
        heads.append(Head(item[0], item[1], item[2]))
    return CheckpointPart(header, part, parts, tuple(heads))


def _int(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise ValueError(f"{name}: not an integer")
    return value


def _str(data: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}: not a string")
    return value


# ---------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------

# What verification can say about a row or a chain.
CHANGED = "changed"  # the row's content no longer matches its chain_hash
REORDERED = "reordered"  # the row is intact but was written under another seq
INSERTED = "inserted"  # a row that was never chained here (no hash, or a copy of another)
DELETED = "deleted"  # seqs missing from the middle or start of a chain
UNLINKED = "unlinked"  # the row does not chain to its predecessor (replaced around it)
TRUNCATED = "truncated"  # the chain ends before the head a checkpoint recorded
DIVERGED = "diverged"  # the row at a checkpoint head has another hash than recorded
MISSING = "missing"  # a chain a checkpoint recorded is gone entirely
CHECKPOINT = "checkpoint"  # a checkpoint's root does not match its recorded heads
# Signed checkpoints: what the signatures, the published copies and an anchor can say.
UNSIGNED = "unsigned"  # a checkpoint without a signature, where keys were given
SIGNATURE = "signature"  # a signature that does not verify, or by an unknown key
REWRITTEN = "rewritten"  # a checkpoint that differs from its published or anchored copy
UNPUBLISHED = "unpublished"  # a checkpoint the topic never received (yet was marked sent)
DROPPED = "dropped"  # a published or anchored checkpoint the database no longer holds
UNREADABLE = "unreadable"  # a topic message or an anchor that is not a checkpoint


@dataclass(frozen=True, slots=True)
class Finding:
    dossier_code: str
    seq: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        where = self.dossier_code if self.seq is None else f"{self.dossier_code} seq {self.seq}"
        return f"{where}: {self.kind}: {self.detail}"


def verify_chain(
    rows: Sequence[HistoryRow], stored: Sequence[tuple[str | None, str | None]]
) -> list[Finding]:
    """Findings for one dossier's rows (ordered by seq) with their stored (prev, chain) hashes.

    Each row gets at most one finding, the most specific: a link break right after a row
    already found changed or missing is a consequence, not news.
    """
    findings: list[Finding] = []
    expected_seq = 1
    expected_prev = GENESIS
    previous_suspect = False
    seqs = [r.seq for r in rows]
    for row, (prev_hash, chain_hash) in zip(rows, stored, strict=True):
        code, seq = row.dossier_code, row.seq
        suspect = True
        if chain_hash is None or prev_hash is None:
            findings.append(Finding(code, seq, INSERTED, "row carries no chain hash"))
        elif link(prev_hash, row_content(row)) != chain_hash:
            written_as = _written_as(row, prev_hash, chain_hash, seqs)
            if written_as is None:
                findings.append(Finding(code, seq, CHANGED, "content does not match its hash"))
            elif _is_copy(rows, stored, written_as, chain_hash):
                findings.append(
                    Finding(code, seq, INSERTED, f"a copy of the row at seq {written_as}")
                )
            else:
                findings.append(
                    Finding(code, seq, REORDERED, f"row was written as seq {written_as}")
                )
        elif seq > expected_seq:
            gap = str(expected_seq) if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            findings.append(Finding(code, seq, DELETED, f"seq {gap} missing before this row"))
        elif prev_hash != expected_prev and not previous_suspect:
            findings.append(
                Finding(code, seq, UNLINKED, f"does not chain to the row at seq {seq - 1}")
            )
        else:
            suspect = False
        previous_suspect = suspect
        expected_seq = seq + 1
        expected_prev = chain_hash or ""
    return findings


def _written_as(
    row: HistoryRow, prev_hash: str, chain_hash: str, seqs: Sequence[int]
) -> int | None:
    """The seq this row's content hashes to, if not its own (renumbered or copied)."""
    for candidate in seqs:
        if candidate != row.seq and link(prev_hash, row_content(row, candidate)) == chain_hash:
            return candidate
    return None


def _is_copy(
    rows: Sequence[HistoryRow],
    stored: Sequence[tuple[str | None, str | None]],
    seq: int,
    chain_hash: str,
) -> bool:
    """True when the row at `seq` holds this same hash intact: the suspect is its duplicate."""
    for row, (prev_hash, stored_hash) in zip(rows, stored, strict=True):
        if row.seq == seq and stored_hash == chain_hash and prev_hash is not None:
            return link(prev_hash, row_content(row)) == chain_hash
    return False


@dataclass
class PublishedCheckpoints:
    """What the checkpoint topic holds, folded as it is read: every checkpoint's header, and
    the latest head per dossier. Memory grows with checkpoints and dossiers, never with the
    number of heads ever published; a checkpoint's parts are held only until all arrived.

    `add` takes a message's `data` (or why it could not be read) and never raises: the topic
    is evidence to report on, not input to trust.
    """

    # Heads of checkpoints after this id are not folded: the caller's chains were read before
    # those checkpoints were written (engine.store.audit.verify). None folds all.
    up_to: int | None = None
    headers: dict[tuple[int, str], CheckpointHeader] = field(default_factory=dict)
    heads: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    messages: int = 0
    _pending: dict[tuple[int, str], dict[int, CheckpointPart]] = field(default_factory=dict)

    def add(self, where: str, data: Any, error: str | None = None) -> None:
        self.messages += 1
        if error is not None:
            self.findings.append(Finding(where, None, UNREADABLE, error))
            return
        try:
            part = parse_part(data)
        except ValueError as exc:
            self.findings.append(Finding(where, None, UNREADABLE, f"not a checkpoint: {exc}"))
            return
        key = (part.header.id, part.header.root)
        if key in self.headers:
            return  # a copy re-sent by the relay after a crash (at-least-once)
        parts = self._pending.setdefault(key, {})
        parts.setdefault(part.part, part)
        if len(parts) == part.parts:
            del self._pending[key]
            self._complete(where, [parts[n] for n in sorted(parts)])

    def _complete(self, where: str, parts: list[CheckpointPart]) -> None:
        header = parts[0].header
        if any(p.header != header or p.parts != len(parts) for p in parts):
            self.findings.append(
                Finding(f"published checkpoint {header.id}", None, UNREADABLE, "parts disagree")
            )
            return
        heads = [h for p in parts for h in p.heads]
        legacy = parts[0].legacy
        self.headers[(header.id, header.root)] = header
        root = checkpoint_root(
            header.prev_root, header.history_id, header.rows, header.chains, heads
        )
        if root != header.root and not legacy:
            self.findings.append(
                Finding(
                    f"published checkpoint {header.id}",
                    None,
                    CHECKPOINT,
                    f"root does not recompute from its published heads ({where})",
                )
            )
            return
        if self.up_to is not None and header.id > self.up_to:
            return
        for head in heads:
            known = self.heads.get(head.dossier_code)
            if known is None or (header.id, head.seq) >= (known[2], known[0]):
                self.heads[head.dossier_code] = (head.seq, head.chain_hash, header.id)

    def finish(self) -> None:
        """After the last message: checkpoints still missing parts are findings."""
        for (checkpoint_id, _), parts in sorted(self._pending.items()):
            total = next(iter(parts.values())).parts
            self.findings.append(
                Finding(
                    f"published checkpoint {checkpoint_id}",
                    None,
                    UNREADABLE,
                    f"{total - len(parts)} of its {total} parts are not on the topic",
                )
            )
        self._pending.clear()
