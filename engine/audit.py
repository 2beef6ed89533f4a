"""The tamper-evident history: per-dossier hash chains and checkpoint roots over all chains.

Each history row stores `chain_hash = sha256(prev_hash || canonical row content)`, where
`prev_hash` is the chain_hash of the previous row of the same dossier (GENESIS for seq 1).
Editing a row breaks its own hash; deleting, inserting or renumbering rows breaks the links.
What a chain alone cannot show is a truncated tail, or a whole chain rewritten consistently:
checkpoints record each chain's head (last seq, last chain_hash), and their roots are chained
to one another and published to `dossier.audit-checkpoint`, outside the database's reach.

The hash is not keyed: it proves integrity against the published checkpoints, not
authorship. Whoever can rewrite the database and every copy of the checkpoint topic can forge
history; nobody else can without being found.

Pure functions only; the SQL store and `engine.store.audit` use them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
) -> bytes:
    """The canonical bytes of a row: every column except the surrogate id, the wall-clock
    `recorded_at` (an operator's field, not evidence) and the hashes themselves.

    The event time goes in as UTC: SQLite keeps no offset, so only UTC recomputes exactly.
    """
    return canonical_json(
        [
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
    )


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
