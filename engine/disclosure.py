"""The record of disclosures: each time someone had personal data shown in clear.

A disclosure says who, when, why and which dossier. The records form one hash chain in id
order, like a dossier's history (`engine.audit`): `chain_hash = sha256(prev_hash || content)`,
the content including the id, so an edited record breaks its own hash, a removed one leaves a
gap in the ids, and a renumbered or copied one hashes to another id than its own.

What the chain alone cannot show is its newest records removed: the head must be held
elsewhere too (the CLI logs each new record's id and hash, outside the database).

Pure functions only; `engine.store.disclosures` stores and reads the records.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.audit import CHANGED, DELETED, INSERTED, REORDERED, UNLINKED, Finding, link
from engine.events import canonical_json

# Its own phrase: a disclosure chain can never be passed off as (part of) a dossier's history.
DISCLOSURE_GENESIS = hashlib.sha256(b"dossier-engine disclosures chain v1").hexdigest()

# Long enough for "request 2025/123 of the provincial inspectorate, art. 17 Decree 13/2023";
# a record is read by people, and a reason longer than this is not one.
MAX_REASON = 500
MAX_ACTOR = 200
# Cc: C0/C1 controls (newlines, terminal escapes); Cf: format characters (bidi overrides,
# zero-width), which make a displayed line say something else than it holds; Zl/Zp: line and
# paragraph separators; Cs: lone surrogates.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


@dataclass(frozen=True, slots=True)
class Disclosure:
    id: int
    disclosed_at: datetime
    actor: str
    reason: str
    dossier_code: str
    prev_hash: str
    chain_hash: str


def text_problem(what: str, value: str, limit: int) -> str | None:
    """Why `value` cannot be recorded as `what` (None: it can). The message never quotes the
    value: it may be megabytes long, or hold what should not reach a log."""
    if not value.strip():
        return f"{what} is empty"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long; at most {limit}"
    for position, char in enumerate(value):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"{what} holds a control character (U+{ord(char):04X} at {position})"
    return None


def reason_problem(reason: str) -> str | None:
    return text_problem("the reason", reason, MAX_REASON)


def actor_problem(actor: str) -> str | None:
    return text_problem("the actor", actor, MAX_ACTOR)


def content(id_: int, disclosed_at: datetime, actor: str, reason: str, dossier_code: str) -> bytes:
    """The canonical bytes of a disclosure: every column but the hashes. The time goes in as
    UTC: SQLite keeps no offset, so only UTC recomputes exactly."""
    return canonical_json(
        [id_, disclosed_at.astimezone(UTC).isoformat(), actor, reason, dossier_code]
    )


def _content(d: Disclosure, id_: int | None = None) -> bytes:
    return content(d.id if id_ is None else id_, d.disclosed_at, d.actor, d.reason, d.dossier_code)


def next_link(
    prev_hash: str, id_: int, disclosed_at: datetime, actor: str, reason: str, dossier_code: str
) -> str:
    return link(prev_hash, content(id_, disclosed_at, actor, reason, dossier_code))


def where(d: Disclosure) -> str:
    return f"disclosure {d.id}"


def verify_disclosures(rows: Sequence[Disclosure]) -> list[Finding]:
    """Findings for the whole chain, `rows` in id order; each names the record (`disclosure
    <id>` in the finding's dossier_code field) and its dossier.

    Each row gets at most one finding, the most specific: a link break right after a row
    already found changed is a consequence, not news.
    """
    findings: list[Finding] = []
    expected_id = 1
    expected_prev = DISCLOSURE_GENESIS
    previous_suspect = False
    by_hash: dict[str, list[Disclosure]] = {}
    for d in rows:
        by_hash.setdefault(d.chain_hash, []).append(d)
    for d in rows:
        suspect = True
        about = f"dossier {d.dossier_code}"
        if not _is_hash(d.chain_hash) or not _is_hash(d.prev_hash):
            findings.append(Finding(where(d), None, INSERTED, f"{about}: carries no chain hash"))
        elif not _intact(d):
            written_as = _written_as(d, by_hash)
            if written_as is None:
                findings.append(
                    Finding(where(d), None, CHANGED, f"{about}: content does not match its hash")
                )
            elif _is_copy(by_hash, written_as, d):
                findings.append(
                    Finding(where(d), None, INSERTED, f"{about}: a copy of disclosure {written_as}")
                )
            else:
                findings.append(
                    Finding(
                        where(d), None, REORDERED, f"{about}: written as disclosure {written_as}"
                    )
                )
        elif d.id > expected_id:
            gap = str(expected_id) if d.id == expected_id + 1 else f"{expected_id}-{d.id - 1}"
            findings.append(
                Finding(where(d), None, DELETED, f"{about}: disclosure {gap} missing before it")
            )
        elif d.prev_hash != expected_prev and not previous_suspect:
            findings.append(
                Finding(
                    where(d),
                    None,
                    UNLINKED,
                    f"{about}: does not chain to disclosure {d.id - 1}",
                )
            )
        else:
            suspect = False
        previous_suspect = suspect
        expected_id = d.id + 1
        expected_prev = d.chain_hash
    return findings


def _is_hash(value: str | None) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


# How far from its place a renumbered record is looked for when its predecessor is gone.
_WINDOW = 64


def _written_as(d: Disclosure, by_hash: Mapping[str, list[Disclosure]]) -> int | None:
    """The id this record's content hashes to, if not its own (renumbered or copied).

    The id it was written under follows its predecessor's, found by hash; when that one is
    gone too (deleted, then the gap closed by renumbering), ids near its own are tried. Never
    every id: a table of tampered rows must not make verification quadratic.
    """
    candidates: list[int] = []
    origin = _original_id(d, by_hash)
    if origin is not None:
        candidates.append(origin)
    candidates.extend(range(max(1, d.id - _WINDOW), d.id + _WINDOW + 1))
    for candidate in candidates:
        if candidate != d.id and link(d.prev_hash, _content(d, candidate)) == d.chain_hash:
            return candidate
    return None


def _original_id(d: Disclosure, by_hash: Mapping[str, list[Disclosure]]) -> int | None:
    """1 + the id its predecessor was written under, walking back the stored links to an
    intact record (whose own id is the one it was written under) or to the genesis."""
    current = d
    for steps in range(_WINDOW):
        if current.prev_hash == DISCLOSURE_GENESIS:
            return 1 + steps
        previous = next(iter(by_hash.get(current.prev_hash, [])), None)
        if previous is None:
            return None
        if _intact(previous):
            return previous.id + 1 + steps
        current = previous
    return None


def _intact(d: Disclosure) -> bool:
    return link(d.prev_hash, _content(d)) == d.chain_hash


def _is_copy(by_hash: Mapping[str, list[Disclosure]], id_: int, d: Disclosure) -> bool:
    """True when another record holds this same hash intact under `id_`: `d` is its copy."""
    return any(
        other is not d and other.id == id_ and _intact(other)
        for other in by_hash.get(d.chain_hash, [])
    )
