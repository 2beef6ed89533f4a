"""The disclosures chain (engine.disclosure): every way of tampering with the records is found,
and named by disclosure id and dossier; what may be recorded as a reason or an actor."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.audit import CHANGED, DELETED, GENESIS, INSERTED, REORDERED, UNLINKED, Finding
from engine.disclosure import (
    DISCLOSURE_GENESIS,
    MAX_REASON,
    Disclosure,
    actor_problem,
    next_link,
    reason_problem,
    verify_disclosures,
)

T0 = datetime(2025, 7, 1, 8, 0, tzinfo=UTC)


def chain(n: int) -> list[Disclosure]:
    rows: list[Disclosure] = []
    prev = DISCLOSURE_GENESIS
    for i in range(1, n + 1):
        at = T0 + timedelta(minutes=i)
        actor, reason, code = f"officer{i}", f"inspection request {i}", f"D-{i % 3}"
        current = next_link(prev, i, at, actor, reason, code)
        rows.append(Disclosure(i, at, actor, reason, code, prev, current))
        prev = current
    return rows


def kinds(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.dossier_code, f.kind) for f in findings]


def test_an_untouched_chain_has_no_findings() -> None:
    assert verify_disclosures(chain(6)) == []
    assert verify_disclosures([]) == []


def test_the_genesis_is_its_own() -> None:
    assert DISCLOSURE_GENESIS != GENESIS
    assert chain(1)[0].prev_hash == DISCLOSURE_GENESIS


def test_the_time_hashes_as_the_same_instant_in_any_offset() -> None:
    row = chain(1)[0]
    local = row.disclosed_at.astimezone(datetime.now().astimezone().tzinfo)
    assert verify_disclosures([replace(row, disclosed_at=local)]) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("reason", "routine check"),
        ("actor", "somebody else"),
        ("dossier_code", "D-other"),
        ("disclosed_at", T0 + timedelta(days=1)),
    ],
)
def test_a_changed_record_is_found_and_named(field: str, value: Any) -> None:
    rows = chain(5)
    rows[2] = replace(rows[2], **{field: value})
    (finding,) = verify_disclosures(rows)
    assert finding.dossier_code == "disclosure 3" and finding.kind == CHANGED
    assert f"dossier {rows[2].dossier_code}" in finding.detail
    assert str(finding).startswith("disclosure 3: changed: dossier ")


def test_a_changed_record_with_recomputed_hash_breaks_the_next_link() -> None:
    rows = chain(5)
    edited = replace(rows[2], reason="nothing to see")
    rows[2] = replace(
        edited,
        chain_hash=next_link(
            edited.prev_hash,
            edited.id,
            edited.disclosed_at,
            edited.actor,
            edited.reason,
            edited.dossier_code,
        ),
    )
    assert kinds(verify_disclosures(rows)) == [("disclosure 4", UNLINKED)]


@pytest.mark.parametrize("index", [0, 2, 4])
def test_a_deleted_record_is_found(index: int) -> None:
    rows = chain(6)
    gone = rows.pop(index)
    (finding,) = verify_disclosures(rows)
    assert finding.kind == DELETED
    assert finding.dossier_code == f"disclosure {gone.id + 1}"
    assert f"disclosure {gone.id} missing" in finding.detail


def test_deleted_records_in_a_row_are_one_gap() -> None:
    rows = chain(6)
    del rows[1:4]
    (finding,) = verify_disclosures(rows)
    assert (finding.dossier_code, finding.kind) == ("disclosure 5", DELETED)
    assert "disclosure 2-4 missing" in finding.detail


def test_a_deletion_hidden_by_renumbering_is_found() -> None:
    rows = chain(5)
    del rows[1]
    rows = [replace(r, id=i) for i, r in enumerate(rows, start=1)]
    findings = verify_disclosures(rows)
    assert kinds(findings) == [
        ("disclosure 2", REORDERED),
        ("disclosure 3", REORDERED),
        ("disclosure 4", REORDERED),
    ]
    assert "written as disclosure 3" in findings[0].detail


def test_reordered_records_are_found() -> None:
    rows = chain(5)
    a, b = rows[1], rows[3]
    rows[1], rows[3] = replace(b, id=2), replace(a, id=4)
    findings = verify_disclosures(rows)
    assert kinds(findings) == [("disclosure 2", REORDERED), ("disclosure 4", REORDERED)]
    assert "written as disclosure 4" in findings[0].detail
    assert "written as disclosure 2" in findings[1].detail


def test_an_inserted_copy_is_found() -> None:
    rows = chain(4)
    rows.append(replace(rows[1], id=5))
    (finding,) = verify_disclosures(rows)
    assert (finding.dossier_code, finding.kind) == ("disclosure 5", INSERTED)
    assert "a copy of disclosure 2" in finding.detail


def test_an_inserted_record_without_a_real_hash_is_found() -> None:
    rows = chain(3)
    rows.append(Disclosure(4, T0, "x", "y", "D-9", "", "not a hash"))
    (finding,) = verify_disclosures(rows)
    assert (finding.dossier_code, finding.kind) == ("disclosure 4", INSERTED)
    assert "dossier D-9" in finding.detail


def test_an_inserted_record_with_made_up_hashes_is_found() -> None:
    rows = chain(3)
    fake = "ab" * 32
    rows.insert(1, Disclosure(2, T0, "x", "y", "D-9", fake, fake))
    rows[2:] = [replace(r, id=r.id + 1) for r in rows[2:]]
    findings = verify_disclosures(rows)
    assert findings[0] == Finding(
        "disclosure 2", None, CHANGED, "dossier D-9: content does not match its hash"
    )
    assert [f.kind for f in findings[1:]] == [REORDERED, REORDERED]


def test_many_tampered_records_verify_in_linear_time() -> None:
    rows = [replace(r, reason="x") for r in chain(3000)]
    findings = verify_disclosures(rows)
    assert len(findings) == 3000 and {f.kind for f in findings} == {CHANGED}


@pytest.mark.parametrize(
    "reason, problem",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("line one\nline two", "control character (U+000A at 8)"),
        ("bell\a", "control character"),
        ("esc \x1b[31m red", "control character (U+001B"),
        ("c1 \x9b", "control character (U+009B"),
        ("bidi \u202e", "control character (U+202E"),
        ("separator \u2028", "control character (U+2028"),
        ("x" * (MAX_REASON + 1), f"at most {MAX_REASON}"),
        ("x" * 10_000_000, "10000000 characters long"),
    ],
)
def test_a_reason_that_cannot_be_recorded_is_refused(reason: str, problem: str) -> None:
    said = reason_problem(reason)
    assert said is not None and problem in said
    assert len(said) < 100  # the value is never quoted back


def test_a_reason_in_vietnamese_is_recorded() -> None:
    assert reason_problem("Thanh tra tỉnh yêu cầu, công văn số 12/TTr") is None
    assert reason_problem("x" * MAX_REASON) is None
    assert actor_problem("Nguyễn Văn An (os user dossier)") is None
    assert actor_problem("a\tb") is not None
