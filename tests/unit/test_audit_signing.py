"""Signed audit checkpoints without services: the Ed25519 helpers, key rotation, unsigned and
hostile signatures, the published message format and its folding, anchors, key files."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from dossier.audit_keys import (
    AuditKeyError,
    decode_message,
    keygen,
    public_keys,
    read_anchor,
    signer_of,
    write_anchor,
)
from dossier.commands.config import masked
from dossier.settings import Settings
from engine.application.ports import Position
from engine.audit import (
    CHECKPOINT,
    GENESIS,
    UNREADABLE,
    CheckpointHeader,
    Head,
    PublishedCheckpoints,
    checkpoint_parts,
    checkpoint_root,
    content_fields,
    row_content,
)
from engine.history import HistoryRow
from engine.signing import (
    BAD_SIGNATURE,
    NOT_BASE64,
    UNKNOWN_KEY,
    UNSIGNED,
    PublicKeys,
    Signer,
    SigningKeyError,
    generate_private_key,
    load_private_key,
    private_key_pem,
    public_key_pem,
    raw_public_key,
)

OLD = Signer.of(generate_private_key())
NEW = Signer.of(generate_private_key())


def header(signer: Signer | None = OLD, **changes: object) -> CheckpointHeader:
    heads = [Head("D-1", 3, "a" * 64), Head("D-2", 1, "b" * 64)]
    base = CheckpointHeader(
        id=1,
        created_at="2026-12-06T05:00:00.123456+00:00",
        business_time="2025-07-15T03:00:00+00:00",
        history_id=4,
        rows=4,
        chains=2,
        prev_root=GENESIS,
        root=checkpoint_root(GENESIS, 4, 4, 2, heads),
        key_id=signer.key_id if signer else None,
    )
    base = replace(base, **changes)  # type: ignore[arg-type]
    if signer is None:
        return base
    return replace(base, signature=signer.sign(base.payload()))


# --- sign and verify -------------------------------------------------------------------------


def test_a_signature_verifies_with_its_public_key() -> None:
    h = header()
    keys = PublicKeys([OLD.private_key.public_key()])
    assert keys.check(h.key_id, h.signature, h.payload()) is None
    assert len(OLD.key_id) == 16 and OLD.key_id != NEW.key_id


def test_every_signed_field_counts() -> None:
    keys = PublicKeys([OLD.private_key.public_key()])
    signed = header()
    for change in (
        {"id": 2},
        {"root": "0" * 64},
        {"prev_root": "1" * 64},
        {"rows": 5},
        {"chains": 3},
        {"history_id": 5},
        {"created_at": "2026-12-06T05:00:01+00:00"},
        {"business_time": None},
    ):
        forged = replace(signed, **change)
        assert keys.check(forged.key_id, forged.signature, forged.payload()) == BAD_SIGNATURE


def test_rotation_two_keys_each_checkpoint_with_its_own() -> None:
    first, second = header(OLD), header(NEW, id=2)
    both = PublicKeys([OLD.private_key.public_key(), NEW.private_key.public_key()])
    assert both.check(first.key_id, first.signature, first.payload()) is None
    assert both.check(second.key_id, second.signature, second.payload()) is None
    only_new = PublicKeys([NEW.private_key.public_key()])
    problem = only_new.check(first.key_id, first.signature, first.payload())
    assert problem is not None and problem.startswith(UNKNOWN_KEY)
    # A signature by one key presented under the other's id does not verify.
    swapped = replace(second, key_id=OLD.key_id)
    assert both.check(swapped.key_id, second.signature, swapped.payload()) == BAD_SIGNATURE


@pytest.mark.parametrize(
    ("key_id", "signature", "expected"),
    [
        (None, None, UNSIGNED),
        ("", "", UNSIGNED),
        ("k", None, UNSIGNED),
        ("deadbeefdeadbeef", "AAAA", f"{UNKNOWN_KEY} ('deadbeefdeadbeef')"),
        (None, "not base64 at all!", UNSIGNED),
    ],
)
def test_hostile_signature_fields(key_id: str | None, signature: str | None, expected: str) -> None:
    h = header()
    assert PublicKeys([OLD.private_key.public_key()]).check(key_id, signature, h.payload()) == (
        expected
    )


@pytest.mark.parametrize(
    "signature",
    ["not base64 at all!", "QUJD", base64.b64encode(b"x" * 65).decode(), "é" * 88, "=" * 88],
)
def test_a_signature_that_is_not_base64_of_64_bytes(signature: str) -> None:
    h = header()
    keys = PublicKeys([OLD.private_key.public_key()])
    assert keys.check(OLD.key_id, signature, h.payload()) == NOT_BASE64


def test_keys_load_from_pem_and_from_base64_raw() -> None:
    key = generate_private_key()
    raw = key.private_bytes_raw()
    assert Signer.of(load_private_key(private_key_pem(key))).key_id == Signer.of(key).key_id
    assert Signer.of(load_private_key(base64.b64encode(raw).decode())).key_id == (
        Signer.of(key).key_id
    )
    for bad in ("", "short", base64.b64encode(b"x" * 31).decode(), "-----BEGIN junk-----"):
        with pytest.raises(SigningKeyError):
            load_private_key(bad)


# --- the chain covers a signed input's evidence ------------------------------------------------


def _row(**changes: object) -> HistoryRow:
    row = HistoryRow(
        "D-1",
        1,
        "urn:s",
        "e1",
        "vn.gov.dossier.submitted",
        datetime(2025, 7, 1, tzinfo=UTC),
        1,
        {"a": 1},
        Position("dossier.submission", 0, 7),
        None,
        "submitted",
        1,
        1,
    )
    return replace(row, **changes)  # type: ignore[arg-type]


def test_rows_without_signature_hash_as_before() -> None:
    row = _row()
    before = content_fields(
        "D-1",
        1,
        "urn:s",
        "e1",
        "vn.gov.dossier.submitted",
        datetime(2025, 7, 1, tzinfo=UTC),
        1,
        {"a": 1},
        "dossier.submission",
        0,
        7,
        None,
        "submitted",
        1,
        1,
    )
    assert row_content(row) == before
    assert orjson.loads(before)[-1] == 1  # fifteen fields, as migration 0004 chained them


def test_signature_and_signed_bytes_are_in_the_content() -> None:
    signed = _row(signature="k1:AAAA", signed_value=b"\x00\xffbytes")
    assert orjson.loads(row_content(signed))[-2:] == ["k1:AAAA", "AP9ieXRlcw=="]
    assert row_content(signed) != row_content(replace(signed, signed_value=b"\x00\xffbytez"))
    assert row_content(signed) != row_content(replace(signed, signature="k1:AAAB"))
    assert row_content(_row(signed_value=b"x")) != row_content(_row())


# --- the published messages ------------------------------------------------------------------


def _heads(n: int) -> list[Head]:
    return [Head(f"D-{i:06d}", i % 7 + 1, f"{i:064x}") for i in range(n)]


def test_many_heads_go_in_parts_that_fold_back() -> None:
    heads = _heads(4_500)
    h = header(root=checkpoint_root(GENESIS, 4, 4, 2, heads))
    parts = checkpoint_parts(h, heads)
    assert [(p["part"], p["parts"], len(p["heads"])) for p in parts] == [
        (1, 3, 2000),
        (2, 3, 2000),
        (3, 3, 500),
    ]
    assert max(len(orjson.dumps(p)) for p in parts) < 300_000
    folded = PublishedCheckpoints()
    # Out of order and with a copy re-sent after a crash: the same checkpoint.
    for n, data in enumerate([parts[2], parts[0], parts[0], parts[1]]):
        folded.add(f"offset {n}", orjson.loads(orjson.dumps(data)))
    folded.finish()
    assert folded.findings == []
    assert list(folded.headers) == [(1, h.root)]
    assert len(folded.heads) == 4_500 and folded.heads["D-000010"] == (4, f"{10:064x}", 1)


def test_the_latest_head_per_dossier_wins() -> None:
    first_heads, second_heads = [Head("D-1", 3, "a" * 64)], [Head("D-1", 5, "c" * 64)]
    first = header(root=checkpoint_root(GENESIS, 4, 4, 2, first_heads))
    second = header(
        id=2,
        history_id=6,
        rows=6,
        prev_root=first.root,
        root=checkpoint_root(first.root, 6, 6, 2, second_heads),
    )
    folded = PublishedCheckpoints()
    # Read newest first (another partition, say): the later checkpoint's head still wins.
    for data in checkpoint_parts(second, second_heads) + checkpoint_parts(first, first_heads):
        folded.add("x", data)
    folded.finish()
    assert folded.findings == []
    assert folded.heads == {"D-1": (5, "c" * 64, 2)}


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        {"checkpoint": "1"},
        {"checkpoint": True, "root": "r"},
        {**header().fields(), "part": 2, "parts": 1, "heads": []},
        {**header().fields(), "part": 1, "parts": 1, "heads": "no"},
        {**header().fields(), "part": 1, "parts": 1, "heads": [["D-1", "3", "a"]]},
        {**header().fields(), "part": 1, "parts": 1, "heads": [["D-1", 3]]},
    ],
)
def test_garbage_messages_are_findings(data: object) -> None:
    folded = PublishedCheckpoints()
    folded.add("offset 9", data)
    folded.finish()
    assert [(f.dossier_code, f.kind) for f in folded.findings] == [("offset 9", UNREADABLE)]
    assert folded.headers == {}


@pytest.mark.parametrize(
    "value", [None, b"", b"\xff\xfe\x00", b"[1,2]", b'{"data": 3}', b'{"data": {}', b"nan"]
)
def test_undecodable_bytes_are_findings(value: bytes | None) -> None:
    data, error = decode_message(value)
    folded = PublishedCheckpoints()
    folded.add("offset 1", data, error)
    assert [f.kind for f in folded.findings] == [UNREADABLE]


def test_a_missing_part_and_a_root_that_does_not_recompute() -> None:
    heads = _heads(5)
    h = header(root=checkpoint_root(GENESIS, 4, 4, 2, heads))
    parts = checkpoint_parts(h, heads, per_part=2)
    folded = PublishedCheckpoints()
    folded.add("a", parts[0])
    folded.add("b", parts[2])
    folded.finish()
    assert [f.detail for f in folded.findings] == ["1 of its 3 parts are not on the topic"]
    edited = checkpoint_parts(h, [*heads[:4], Head("D-000004", 9, "f" * 64)], per_part=9)
    folded = PublishedCheckpoints()
    folded.add("c", edited[0])
    assert [f.kind for f in folded.findings] == [CHECKPOINT]
    assert folded.heads == {}


def test_messages_from_before_parts_are_read_without_heads() -> None:
    legacy = {k: v for k, v in header(None).fields().items() if k not in ("key_id", "signature")}
    folded = PublishedCheckpoints()
    folded.add("old", legacy)
    folded.finish()
    assert folded.findings == [] and len(folded.headers) == 1 and folded.heads == {}


# --- files: keys and anchors --------------------------------------------------------------------


def test_keygen_writes_a_private_key_0600_and_its_public_key(tmp_path: Path) -> None:
    out = tmp_path / "audit.key"
    kid = keygen(out)
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Path(f"{out}.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert list(public_keys([Path(f"{out}.pub")])) == [kid]
    settings = Settings(audit_signing_key_file=out)
    signer = signer_of(settings)
    assert signer is not None and signer.key_id == kid
    with pytest.raises(AuditKeyError, match="exists"):
        keygen(out)
    os.chmod(out, 0o644)
    assert keygen(out, force=True) != kid
    assert out.stat().st_mode & 0o777 == 0o600


def test_signing_key_from_the_environment(tmp_path: Path) -> None:
    key = generate_private_key()
    kid = Signer.of(key).key_id
    raw = base64.b64encode(key.private_bytes_raw()).decode()
    pem = private_key_pem(key).decode()
    for text in (raw, pem, pem.replace("\n", "\\n")):
        signer = signer_of(Settings.from_env({"DOSSIER_AUDIT_SIGNING_KEY": text}))
        assert signer is not None and signer.key_id == kid
    assert signer_of(Settings()) is None
    with pytest.raises(AuditKeyError, match="DOSSIER_AUDIT_SIGNING_KEY:"):
        signer_of(Settings(audit_signing_key="nope"))
    with pytest.raises(AuditKeyError, match="DOSSIER_AUDIT_SIGNING_KEY_FILE"):
        signer_of(Settings(audit_signing_key_file=tmp_path / "absent"))
    # The key never shows in `dossier config`.
    assert masked("DOSSIER_AUDIT_SIGNING_KEY", raw) == "********"
    assert masked("DOSSIER_AUDIT_SIGNING_KEY_FILE", "/k") == "/k"


def test_public_keys_from_pem_or_raw_base64(tmp_path: Path) -> None:
    pem, raw = tmp_path / "a.pub", tmp_path / "b.pub"
    pem.write_bytes(public_key_pem(OLD.private_key.public_key()))
    raw.write_text(base64.b64encode(raw_public_key(NEW.private_key.public_key())).decode())
    assert set(public_keys([pem, raw])) == {OLD.key_id, NEW.key_id}
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(AuditKeyError, match="junk"):
        public_keys([junk])


def test_anchor_round_trip_and_hostile_files(tmp_path: Path) -> None:
    path = tmp_path / "anchor.json"
    h = header()
    write_anchor(path, h)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_anchor(path) == h
    assert len(path.read_bytes()) < 1024
    for content in (b"\xff", b"[]", b'{"format": "other"}', b'{"format": "x"'):
        path.write_bytes(content)
        with pytest.raises(AuditKeyError):
            read_anchor(path)
    with pytest.raises(AuditKeyError, match="cannot read"):
        read_anchor(tmp_path / "absent.json")
