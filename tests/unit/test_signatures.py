"""Contract 1.1, "Signed inputs": Ed25519 signatures in a `ce-signature` header, checked by the
service right after decoding, and kept with the history for auditors."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.history import Position
from engine.procedures import load_catalogue
from engine.registry import SIGNATURE_HEADER, PublicKey, Registry, load_registry
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec
from tests.fixtures import events as ev

COMMUNE_KEY = Ed25519PrivateKey.from_private_bytes(b"c" * 32)
PORTAL_KEY = Ed25519PrivateKey.from_private_bytes(b"p" * 32)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(b"o" * 32)


def public(key: Ed25519PrivateKey, key_id: str) -> PublicKey:
    return PublicKey(key_id, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def signed_registry() -> Registry:
    """The fixtures' registry, where the commune signs with k1 or k2 and the portal with p1."""
    base = load_registry(ev.registry_files_with_fixtures())
    agencies = [
        replace(a, public_keys=(public(COMMUNE_KEY, "k1"), public(OTHER_KEY, "k2")))
        if a.code == ev.COMMUNE_AGENCY
        else a
        for a in base.agencies()
    ]
    senders = [
        replace(s, public_keys=(public(PORTAL_KEY, "p1"),)) if s.source == ev.PORTAL_SOURCE else s
        for s in base.senders()
    ]
    return Registry(agencies, senders)


REGISTRY = signed_registry()
CODEC = ContractCodec()


def header(key: Ed25519PrivateKey, key_id: str, value: bytes) -> tuple[str, bytes]:
    signature = base64.b64encode(key.sign(value)).decode("ascii")
    return (SIGNATURE_HEADER, f"{key_id}:{signature}".encode("ascii"))


def check(event: dict[str, Any], headers: list[tuple[str, bytes]], value: bytes | None = None):  # type: ignore[no-untyped-def]
    raw = ev.to_bytes(event)
    decoded = CODEC.decode(raw, ev.topic_for(event["type"]), key=event["subject"].encode())
    return REGISTRY.check_signature(decoded, raw if value is None else value, headers)


# --- the rule ---------------------------------------------------------------------------------


def test_a_signed_input_of_a_signing_agency_passes_and_its_signature_is_kept() -> None:
    event = ev.received()
    signed = header(COMMUNE_KEY, "k1", ev.to_bytes(event))
    result = check(event, [("other", b"x"), signed])
    assert result.refused is None and result.signature == signed[1].decode()
    # Any of its keys (a rotation keeps the old one for a while).
    assert check(event, [header(OTHER_KEY, "k2", ev.to_bytes(event))]).refused is None


def test_a_sender_s_keys_sign_its_submissions() -> None:
    event = ev.submitted()
    assert check(event, [header(PORTAL_KEY, "p1", ev.to_bytes(event))]).refused is None
    assert check(event, []).refused.startswith("signature-missing: sender urn:vn:portal")  # type: ignore[union-attr]


def test_an_agency_or_sender_without_keys_needs_no_signature() -> None:
    event = ev.received(
        agency=ev.OTHER_COMMUNE_AGENCY, dossier=f"{ev.OTHER_COMMUNE_AGENCY}-250303-0001"
    )
    result = check(event, [])
    assert result.refused is None and result.signature is None
    # A header nobody asked for is neither checked nor kept.
    assert check(event, [(SIGNATURE_HEADER, b"k1:garbage")]).signature is None


@pytest.mark.parametrize(
    ("headers", "value", "rule"),
    [
        (lambda raw: [], None, "signature-missing"),
        (lambda raw: [header(COMMUNE_KEY, "k1", raw + b" ")], None, "signature-invalid"),
        (lambda raw: [header(COMMUNE_KEY, "k1", raw)], b"{}", "signature-invalid"),
        (lambda raw: [header(OTHER_KEY, "k1", raw)], None, "signature-invalid"),
        (lambda raw: [header(COMMUNE_KEY, "k9", raw)], None, "signature-key-unknown"),
        (lambda raw: [header(PORTAL_KEY, "p1", raw)], None, "signature-key-unknown"),
        (lambda raw: [(SIGNATURE_HEADER, b"no colon")], None, "signature-malformed"),
        (lambda raw: [(SIGNATURE_HEADER, b"k1:not base64!")], None, "signature-malformed"),
        (
            lambda raw: [(SIGNATURE_HEADER, b"k1:" + base64.b64encode(b"short"))],
            None,
            "signature-malformed",
        ),
        (lambda raw: [(SIGNATURE_HEADER, "k1:é".encode())], None, "signature-malformed"),
        (
            lambda raw: [header(COMMUNE_KEY, "k1", raw), header(COMMUNE_KEY, "k1", raw)],
            None,
            "signature-ambiguous",
        ),
    ],
    ids=[
        "missing",
        "other bytes",
        "bytes changed after signing",
        "another key under the key's id",
        "unknown key id",
        "another principal's key id",
        "no key id",
        "not base64",
        "not 64 bytes",
        "not ASCII",
        "two headers",
    ],
)
def test_a_missing_or_bad_signature_is_refused(
    headers: Any, value: bytes | None, rule: str
) -> None:
    event = ev.received()
    result = check(event, headers(ev.to_bytes(event)), value)
    assert result.refused is not None and result.refused.startswith(f"{rule}: "), result
    assert result.signature is None
    assert "Nguyễn" not in result.refused


def test_the_signing_principal_is_the_agency_the_input_names() -> None:
    """A forger who names the signing commune must sign as it: without its key it cannot."""
    event = ev.resolved(source=ev.ATTACKER_SOURCE)
    refused = check(event, [header(OTHER_KEY, "k-attacker", ev.to_bytes(event))]).refused
    assert refused is not None and refused.startswith("signature-key-unknown: ")


# --- in the service layer ------------------------------------------------------------------------


def processor() -> BatchProcessor:
    return BatchProcessor(
        Decider(load_catalogue(), WorkingCalendar.load(), REGISTRY),
        CODEC,
        ServiceConfig("urn:test", "test", timedelta(days=7)),
        verifier=REGISTRY,
    )


def raw_input(event: dict[str, Any], offset: int, *, sign: bool = True) -> RawInput:
    topic = ev.topic_for(event["type"])
    value = ev.to_bytes(event)
    key = COMMUNE_KEY if topic != "dossier.submission" else PORTAL_KEY
    key_id = "k1" if topic != "dossier.submission" else "p1"
    headers = (header(key, key_id, value),) if sign else ()
    return RawInput(topic, Position(topic, 0, offset), event["subject"].encode(), value, headers)


def test_signed_inputs_apply_and_their_history_keeps_the_signed_bytes() -> None:
    store = InMemoryStore()
    steps = [raw_input(e, i) for i, (_, e) in enumerate(ev.residence_lifecycle())]
    # The reception arrives before the submission: parked, then applied with its signature.
    steps[0], steps[1] = steps[1], steps[0]
    result = processor().process(InMemoryUnitOfWork(store), steps)
    assert result.count("applied") == 7 - result.count("parked") and not result.dead_letters
    assert result.unparked == 1
    with InMemoryUnitOfWork(store) as uow:
        rows = uow.repo.history(ev.DOSSIER)
    assert len(rows) == 7
    for row in rows:
        assert row.signature is not None and row.signed_value is not None
        key_id, _, signature = row.signature.partition(":")
        keys = REGISTRY.signer_of(
            CODEC.decode(row.signed_value, row.envelope["topic"], key=ev.DOSSIER.encode())
        )[1]
        key = next(k for k in keys if k.id == key_id)
        assert key.verifies(base64.b64decode(signature), row.signed_value)
        assert orjson.loads(row.signed_value)["id"] == row.event_id


def test_an_unsigned_input_of_a_signing_agency_is_dead_lettered_unauthenticated() -> None:
    store = InMemoryStore()
    steps = [raw_input(ev.submitted(), 0), raw_input(ev.received(), 1, sign=False)]
    result = processor().process(InMemoryUnitOfWork(store), steps)
    assert result.count("applied") == 1 and result.dead_letters == {"unauthenticated": 1}
    with InMemoryUnitOfWork(store) as uow:
        letters = [m for m in uow.repo.unsent_outbox(10) if m.topic == "dossier.dlq"]
    assert len(letters) == 1
    letter = orjson.loads(letters[0].value)
    assert letter["data"]["reason"] == "unauthenticated"
    assert letter["data"]["detail"].startswith("signature-missing: agency 000.00.19.H56 signs")
