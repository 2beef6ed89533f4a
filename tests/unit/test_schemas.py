"""The contract's schemas and the wire codec (schemas/)."""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import InboundEvent, OutboundEvent
from schemas import codec
from schemas.codec import (
    DEAD_LETTERED_TYPE,
    INBOUND_TOPICS_BY_TYPE,
    OUTBOUND_TOPIC_BY_TYPE,
    ContractCodec,
    DeadLetterReason,
    InputRejected,
    OutboundSchemaError,
    dead_letter,
    encode_outbound,
    load_schema,
    validate_outbound,
)
from tests.fixtures import events as ev

SCHEMA_DIR = Path(codec.__file__).parent
SCHEMA_FILES = sorted(
    p.relative_to(SCHEMA_DIR).as_posix() for p in SCHEMA_DIR.rglob("*.schema.json")
)
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
ENGINE = "urn:vn:dossier-engine:test"
ICT = timezone(timedelta(hours=7))
MALFORMED = DeadLetterReason.MALFORMED
SCHEMA = DeadLetterReason.SCHEMA
KEY = ev.DOSSIER.encode()  # the Kafka key of every fixture event: its subject


@pytest.fixture(scope="module")
def decoder() -> ContractCodec:
    return ContractCodec()


def reject(
    decoder: ContractCodec, value: bytes | None, topic: str, key: bytes | None = KEY
) -> InputRejected:
    with pytest.raises(InputRejected) as caught:
        decoder.decode(value, topic, key=key)
    return caught.value


def jsonschema_ok(schema: dict[str, Any], instance: Any) -> bool:
    return bool(jsonschema.Draft7Validator(schema).is_valid(instance))


@functools.cache
def _fast(schema_json: str) -> Any:
    return fastjsonschema.compile(json.loads(schema_json), use_default=False, use_formats=False)


def fast_ok(schema: dict[str, Any], instance: Any) -> bool:
    try:
        _fast(json.dumps(schema, sort_keys=True))(instance)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


# --------------------------------------------------------------------------- the files


def test_schema_files_present() -> None:
    inbound = {
        f.removeprefix("inbound/").removesuffix(".schema.json")
        for f in SCHEMA_FILES
        if f.startswith("inbound/")
    }
    outbound = {
        f.removeprefix("outbound/").removesuffix(".schema.json")
        for f in SCHEMA_FILES
        if f.startswith("outbound/")
    }
    assert "cloudevent.schema.json" in SCHEMA_FILES
    assert inbound == {t.removeprefix("vn.gov.dossier.") for t in INBOUND_TOPICS_BY_TYPE}
    assert len(inbound) == 14
    assert outbound == {t.removeprefix("vn.gov.dossier.") for t in OUTBOUND_TOPIC_BY_TYPE}
    assert outbound == {
        "status-changed",
        "fee-discount-granted",
        "fee-discount-revoked",
        "deadline-warning",
        "overdue",
        "dead-lettered",
    }
    assert set(ev.BUILDERS) == inbound


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_file_is_a_valid_draft_07_schema(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == DRAFT_07
    jsonschema.Draft7Validator.check_schema(schema)
    fastjsonschema.compile(schema, use_default=False, use_formats=False)


def _patterned(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if isinstance(node.get("pattern"), str) else []
        return found + [p for v in node.values() for p in _patterned(v)]
    if isinstance(node, list):
        return [p for v in node for p in _patterned(v)]
    return []


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_patterns_are_anchored_and_titled(name: str) -> None:
    for node in _patterned(load_schema(name)):
        pattern = node["pattern"]
        re.compile(pattern)
        # Python's `$` also matches before a final "\n"; every pattern ends in `$(?!\n)`.
        assert pattern.startswith("^") and pattern.endswith("$(?!\\n)"), pattern
        # The codec names the title, not the regex, in a dead letter's detail.
        assert node.get("title"), pattern


INBOUND_SCHEMA_FILES = [name for name in SCHEMA_FILES if not name.startswith("outbound/")]


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_shared_definitions_are_identical_in_every_file_of_a_direction(direction: str) -> None:
    # Inbound definitions carry the limits on what senders may write (contract 1.1, "Strings");
    # the outbound ones describe the engine's own output and need not repeat them.
    files = [n for n in SCHEMA_FILES if n.startswith("outbound/") == (direction == "outbound")]
    seen: dict[str, Any] = {}
    for name in files:
        for key, definition in load_schema(name).get("definitions", {}).items():
            assert seen.setdefault(key, definition) == definition, (name, key)


def _unbounded(node: Any, path: str = "") -> Iterator[str]:
    """Paths of string nodes without maxLength and array nodes without maxItems."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _unbounded(item, f"{path}/{index}")
        return
    if not isinstance(node, dict):
        return
    types = node.get("type", [])
    types = types if isinstance(types, list) else [types]
    fixed = "enum" in node or "const" in node
    if "string" in types and not fixed and "maxLength" not in node:
        yield f"{path or '/'}: string without maxLength"
    if "array" in types and "maxItems" not in node:
        yield f"{path or '/'}: array without maxItems"
    for name, child in node.items():
        yield from _unbounded(child, f"{path}/{name}")


@pytest.mark.parametrize("name", INBOUND_SCHEMA_FILES)
def test_every_inbound_string_and_array_is_bounded(name: str) -> None:
    """Contract 1.1, "Strings": every string field has a maximum length in the schema files.
    (Unknown fields are bounded by the message size; see schemas/README.md.)"""
    assert list(_unbounded(load_schema(name))) == []


def _amounts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "integer" and str(node.get("description", "")).startswith("VND"):
            yield node
        for child in node.values():
            yield from _amounts(child)
    elif isinstance(node, list):
        for child in node:
            yield from _amounts(child)


def test_inbound_amounts_are_between_zero_and_a_trillion() -> None:
    amounts = [a for name in INBOUND_SCHEMA_FILES for a in _amounts(load_schema(name))]
    assert len(amounts) == 3  # submitted and payment-requested fees, payment-completed
    assert all((a["minimum"], a["maximum"]) == (0, 10**12) for a in amounts)


def test_the_bound_check_sees_what_it_must() -> None:
    schema = {
        "properties": {
            "a": {"type": "string"},
            "b": {"type": ["string", "object"]},
            "c": {"type": "array", "items": {"type": "string", "maxLength": 1}},
            "d": {"type": "string", "enum": ["x"]},
        }
    }
    assert list(_unbounded(schema)) == [
        "/properties/a: string without maxLength",
        "/properties/b: string without maxLength",
        "/properties/c: array without maxItems",
    ]


def test_types_json_topic_rule() -> None:
    submission = {"submitted", "supplement-provided", "payment-completed", "withdrawal-requested"}
    for type_, topics in INBOUND_TOPICS_BY_TYPE.items():
        short = type_.removeprefix("vn.gov.dossier.")
        if short in submission:
            assert topics == ("dossier.submission",)
        else:
            assert topics == ("dossier.commune", "dossier.district", "dossier.province")


# --------------------------------------------------------------------------- valid input


@pytest.mark.parametrize("short", sorted(ev.BUILDERS))
def test_every_inbound_type_decodes(decoder: ContractCodec, short: str) -> None:
    event = ev.BUILDERS[short]()
    for topic in INBOUND_TOPICS_BY_TYPE["vn.gov.dossier." + short]:
        decoded = decoder.decode(ev.to_bytes(event), topic, key=KEY)
        assert isinstance(decoded, InboundEvent)
        assert decoded.type == event["type"]
        assert decoded.short_type == short
        assert decoded.source == event["source"]
        assert decoded.id == event["id"]
        assert decoded.subject == ev.DOSSIER
        assert decoded.time == datetime(2025, 3, 3, 9, 0, tzinfo=ICT)
        assert decoded.time.utcoffset() == timedelta(hours=7)
        assert decoded.data == event["data"]
        assert type(decoded.data) is dict
        assert decoded.topic == topic
        assert decoded.schema_version == 1


def test_fixture_builders_take_overrides(decoder: ContractCodec) -> None:
    event = ev.submitted(
        dossier="G22.36-250303-0042",
        procedure="DD.GCN.LD",
        channel=1,
        full_online=False,
        applicant={"kind": "enterprise", "id_number": "0101234567-001", "name": "Công ty A"},
        fees=[("LP-GCN", 100_000)],
        time=datetime(2025, 7, 2, 8, 30, tzinfo=ICT),
        id="evt-1",
        data_extra={"portal_ref": "X1"},
        traceparent="00-abc-def-01",
    )
    decoded = decoder.decode(ev.to_bytes(event), "dossier.submission", key=b"G22.36-250303-0042")
    assert decoded.id == "evt-1"
    assert decoded.data["agency"] == "G22.36"
    assert decoded.data["fees"] == [{"code": "LP-GCN", "amount": 100_000}]
    assert decoded.data["portal_ref"] == "X1"
    assert decoded.time == datetime(2025, 7, 2, 8, 30, tzinfo=ICT)


def test_unknown_attributes_ignored_and_unknown_data_fields_kept(decoder: ContractCodec) -> None:
    event = ev.received(officer="cb01", data_extra={"future_field": {"x": [1, 2]}})
    event["futureattr"] = "whatever"
    event["dataschema"] = "urn:example:s"
    decoded = decoder.decode(ev.to_bytes(event), "dossier.commune", key=KEY)
    assert decoded.data == {
        "agency": ev.COMMUNE_AGENCY,
        "officer": "cb01",
        "future_field": {"x": [1, 2]},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-03T02:00:00Z", datetime(2025, 3, 3, 2, tzinfo=UTC)),
        ("2025-03-03t02:00:00z", datetime(2025, 3, 3, 2, tzinfo=UTC)),
        ("2025-03-03T09:00:00.5+07:00", datetime(2025, 3, 3, 9, 0, 0, 500_000, tzinfo=ICT)),
        ("2025-03-03T02:00:00-00:00", datetime(2025, 3, 3, 2, tzinfo=UTC)),
    ],
)
def test_time_forms(decoder: ContractCodec, text: str, expected: datetime) -> None:
    decoded = decoder.decode(ev.to_bytes(ev.received(time=text)), "dossier.commune", key=KEY)
    assert decoded.time == expected
    assert decoded.time.tzinfo is not None


def test_integral_float_amount_becomes_int(decoder: ContractCodec) -> None:
    raw = ev.to_bytes(ev.payment_completed(amount=50_000)).replace(b"50000", b"5.0e4")
    decoded = decoder.decode(raw, "dossier.submission", key=KEY)
    assert decoded.data["amount"] == 50_000
    assert type(decoded.data["amount"]) is int


def test_schemaversion_extension(decoder: ContractCodec) -> None:
    assert (
        decoder.decode(
            ev.to_bytes(ev.received(schemaversion=1)), "dossier.commune", key=KEY
        ).schema_version
        == 1
    )
    assert (
        reject(decoder, ev.to_bytes(ev.received(schemaversion=2)), "dossier.commune").reason
        is SCHEMA
    )
    assert (
        reject(decoder, ev.to_bytes(ev.received(schemaversion="1")), "dossier.commune").reason
        is SCHEMA
    )


@pytest.mark.parametrize(
    "applicant",
    [
        {"kind": "citizen", "id_number": "001090012345", "name": "A"},
        {"kind": "enterprise", "id_number": "0101234567", "name": "B"},
        {"kind": "enterprise", "id_number": "0101234567-001", "name": "B"},
        {"kind": "enterprise", "id_number": "0101234567001", "name": "B"},
        {"kind": "agency", "id_number": "000.00.19.H56", "name": "UBND xã"},
        {"kind": "organisation", "id_number": "QĐ-123/2020", "name": "Hội"},
    ],
)
def test_applicant_id_forms(decoder: ContractCodec, applicant: dict[str, str]) -> None:
    decoder.decode(ev.to_bytes(ev.submitted(applicant=applicant)), "dossier.submission", key=KEY)


def test_unknown_topic_is_a_caller_bug(decoder: ContractCodec) -> None:
    with pytest.raises(ValueError):
        decoder.decode(ev.to_bytes(ev.received()), "thai-nguyen.dossier.commune", key=KEY)
    with pytest.raises(ValueError):
        decoder.decode(ev.to_bytes(ev.received()), "dossier.status", key=KEY)


# --------------------------------------------------------------------------- rejected input


def _with(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of `event` with the dotted `path` set to `value` (or removed when value is DELETE)."""
    copy: dict[str, Any] = json.loads(json.dumps(event))
    *parents, last = path.split(".")
    node: Any = copy
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return copy


DELETE = object()
RECEIVED = ev.received()
SUBMITTED = ev.submitted()

BAD_INPUTS: list[tuple[str, bytes | None, str, DeadLetterReason, str]] = [
    ("none", None, "dossier.commune", MALFORMED, "empty value"),
    ("empty", b"", "dossier.commune", MALFORMED, "empty value"),
    ("non-utf8", b'{"a":"\xff\xfe"}', "dossier.commune", MALFORMED, "not UTF-8"),
    ("utf16", json.dumps(RECEIVED).encode("utf-16"), "dossier.commune", MALFORMED, "not UTF-8"),
    ("not json", b"{not json", "dossier.commune", MALFORMED, "not JSON"),
    ("bom", b"\xef\xbb\xbf" + ev.to_bytes(RECEIVED), "dossier.commune", MALFORMED, "not JSON"),
    ("nan", b'{"a":NaN}', "dossier.commune", MALFORMED, "not JSON"),
    ("huge number", b'{"a":1e400}', "dossier.commune", MALFORMED, "not JSON"),
    ("long int", b'{"a":' + b"9" * 5000 + b"}", "dossier.commune", MALFORMED, "not JSON"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "dossier.commune", MALFORMED, "not JSON"),
    (
        "lone surrogate",
        ev.to_bytes(ev.received(officer="x")).replace(b'"x"', b'"\\ud800"'),
        "dossier.commune",
        MALFORMED,
        "surrogate",
    ),
    ("array", b"[1,2]", "dossier.commune", MALFORMED, "not a JSON object"),
    ("string", b'"hello"', "dossier.commune", MALFORMED, "not a JSON object"),
    (
        "missing specversion",
        ev.to_bytes(_with(RECEIVED, "specversion", DELETE)),
        "dossier.commune",
        MALFORMED,
        "not a CloudEvent: missing specversion",
    ),
    (
        "missing id",
        ev.to_bytes(_with(RECEIVED, "id", DELETE)),
        "dossier.commune",
        MALFORMED,
        "not a CloudEvent: missing id",
    ),
    ("bare data", ev.to_bytes(RECEIVED["data"]), "dossier.commune", MALFORMED, "not a CloudEvent"),
    (
        "specversion 0.3",
        ev.to_bytes(_with(RECEIVED, "specversion", "0.3")),
        "dossier.commune",
        SCHEMA,
        "specversion",
    ),
    ("empty id", ev.to_bytes(_with(RECEIVED, "id", "")), "dossier.commune", SCHEMA, "id"),
    (
        "missing subject",
        ev.to_bytes(_with(RECEIVED, "subject", DELETE)),
        "dossier.commune",
        SCHEMA,
        "event: missing subject",
    ),
    (
        "missing data",
        ev.to_bytes(_with(RECEIVED, "data", DELETE)),
        "dossier.commune",
        SCHEMA,
        "event: missing data",
    ),
    (
        "data not object",
        ev.to_bytes(_with(RECEIVED, "data", [1])),
        "dossier.commune",
        SCHEMA,
        "data",
    ),
    (
        "bad subject",
        ev.to_bytes(_with(RECEIVED, "subject", "000.00.19.h56-221027-0001")),
        "dossier.commune",
        SCHEMA,
        "subject",
    ),
    (
        "subject newline",
        ev.to_bytes(_with(RECEIVED, "subject", ev.DOSSIER + "\n")),
        "dossier.commune",
        SCHEMA,
        "subject",
    ),
    (
        "subject month 13",
        ev.to_bytes(_with(RECEIVED, "subject", "000.00.19.H56-221327-0001")),
        "dossier.commune",
        SCHEMA,
        "subject",
    ),
    (
        "subject agency 36",
        ev.to_bytes(_with(RECEIVED, "subject", "A" * 36 + "-221027-0001")),
        "dossier.commune",
        SCHEMA,
        "subject",
    ),
    (
        "source with space",
        ev.to_bytes(_with(RECEIVED, "source", "urn:vn agency")),
        "dossier.commune",
        SCHEMA,
        "source",
    ),
    (
        "source empty",
        ev.to_bytes(_with(RECEIVED, "source", "")),
        "dossier.commune",
        SCHEMA,
        "source",
    ),
    (
        "time without offset",
        ev.to_bytes(_with(RECEIVED, "time", "2025-03-03T09:00:00")),
        "dossier.commune",
        SCHEMA,
        "time",
    ),
    (
        "time date only",
        ev.to_bytes(_with(RECEIVED, "time", "2025-03-03")),
        "dossier.commune",
        SCHEMA,
        "time",
    ),
    (
        "time Feb 30",
        ev.to_bytes(_with(RECEIVED, "time", "2025-02-30T09:00:00+07:00")),
        "dossier.commune",
        SCHEMA,
        "time: not a valid date-time",
    ),
    (
        "time leap second",
        ev.to_bytes(_with(RECEIVED, "time", "2016-12-31T23:59:60Z")),
        "dossier.commune",
        SCHEMA,
        "time",
    ),
    (
        "time offset no colon",
        ev.to_bytes(_with(RECEIVED, "time", "2025-03-03T09:00:00+0700")),
        "dossier.commune",
        SCHEMA,
        "time",
    ),
    (
        "datacontenttype",
        ev.to_bytes(_with(RECEIVED, "datacontenttype", "text/plain")),
        "dossier.commune",
        SCHEMA,
        "datacontenttype",
    ),
    (
        "unknown type",
        ev.to_bytes(_with(RECEIVED, "type", "vn.gov.dossier.approved")),
        "dossier.commune",
        SCHEMA,
        "unknown type",
    ),
    (
        "outbound type inbound",
        ev.to_bytes(_with(RECEIVED, "type", "vn.gov.dossier.status-changed")),
        "dossier.commune",
        SCHEMA,
        "unknown type",
    ),
    (
        "level type on submission",
        ev.to_bytes(RECEIVED),
        "dossier.submission",
        SCHEMA,
        "not accepted on topic dossier.submission",
    ),
    (
        "submission type on level",
        ev.to_bytes(SUBMITTED),
        "dossier.province",
        SCHEMA,
        "not accepted on topic dossier.province",
    ),
    (
        "channel 5",
        ev.to_bytes(_with(SUBMITTED, "data.channel", 5)),
        "dossier.submission",
        SCHEMA,
        "data.channel",
    ),
    (
        "channel string",
        ev.to_bytes(_with(SUBMITTED, "data.channel", "2")),
        "dossier.submission",
        SCHEMA,
        "data.channel",
    ),
    (
        "channel bool",
        ev.to_bytes(_with(SUBMITTED, "data.channel", True)),
        "dossier.submission",
        SCHEMA,
        "data.channel",
    ),
    (
        "missing procedure",
        ev.to_bytes(_with(SUBMITTED, "data.procedure", DELETE)),
        "dossier.submission",
        SCHEMA,
        "data: missing procedure",
    ),
    (
        "full_online int",
        ev.to_bytes(_with(SUBMITTED, "data.full_online", 1)),
        "dossier.submission",
        SCHEMA,
        "data.full_online",
    ),
    (
        "applicant kind",
        ev.to_bytes(_with(SUBMITTED, "data.applicant.kind", "person")),
        "dossier.submission",
        SCHEMA,
        "data.applicant.kind",
    ),
    (
        "citizen id 11 digits",
        ev.to_bytes(_with(SUBMITTED, "data.applicant.id_number", "00109001234")),
        "dossier.submission",
        SCHEMA,
        "data.applicant.id_number",
    ),
    (
        "citizen id as number",
        ev.to_bytes(_with(SUBMITTED, "data.applicant.id_number", 1090012345)),
        "dossier.submission",
        SCHEMA,
        "data.applicant.id_number",
    ),
    (
        "negative fee",
        ev.to_bytes(ev.submitted(fees=[("LP-CT", -1)])),
        "dossier.submission",
        SCHEMA,
        "data.fees[0].amount",
    ),
    (
        "fractional fee",
        ev.to_bytes(ev.payment_requested(fees=[{"code": "LP-CT", "amount": 1.5}])),
        "dossier.commune",
        SCHEMA,
        "data.fees[0].amount",
    ),
    ("no fees", ev.to_bytes(ev.payment_requested(fees=[])), "dossier.commune", SCHEMA, "data.fees"),
    (
        "agency lower case",
        ev.to_bytes(ev.received(agency="000.00.19.h56")),
        "dossier.commune",
        SCHEMA,
        "data.agency",
    ),
    (
        "agency 36 chars",
        ev.to_bytes(ev.received(agency="1" * 36)),
        "dossier.commune",
        SCHEMA,
        "data.agency",
    ),
    (
        "agency empty group",
        ev.to_bytes(ev.received(agency="000..19")),
        "dossier.commune",
        SCHEMA,
        "data.agency",
    ),
    (
        "to_level",
        ev.to_bytes(ev.transferred(to_level="ward")),
        "dossier.commune",
        SCHEMA,
        "data.to_level",
    ),
    ("outcome", ev.to_bytes(ev.resolved(outcome="ok")), "dossier.district", SCHEMA, "data.outcome"),
    (
        "new_due no offset",
        ev.to_bytes(ev.rescheduled(new_due="2025-03-10T17:00:00")),
        "dossier.commune",
        SCHEMA,
        "data.new_due",
    ),
    (
        "new_due Feb 30",
        ev.to_bytes(ev.rescheduled(new_due="2025-02-30T17:00:00+07:00")),
        "dossier.commune",
        SCHEMA,
        "data.new_due: not a valid date-time",
    ),
    (
        "payment amount negative",
        ev.to_bytes(ev.payment_completed(amount=-5)),
        "dossier.submission",
        SCHEMA,
        "data.amount",
    ),
    (
        "payment online missing",
        ev.to_bytes(_with(ev.payment_completed(), "data.online", DELETE)),
        "dossier.submission",
        SCHEMA,
        "data: missing online",
    ),
    ("empty reason", ev.to_bytes(ev.stopped(reason="")), "dossier.commune", SCHEMA, "data.reason"),
]


@pytest.mark.parametrize(
    ("value", "topic", "reason", "detail"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_reason(
    decoder: ContractCodec, value: bytes | None, topic: str, reason: DeadLetterReason, detail: str
) -> None:
    rejected = reject(decoder, value, topic)
    assert rejected.reason is reason, rejected.detail
    assert detail in rejected.detail
    assert len(rejected.detail) <= codec.MAX_DETAIL_CHARS


def test_oversized(decoder: ContractCodec) -> None:
    small = ContractCodec(max_message_bytes=100)
    raw = ev.to_bytes(RECEIVED)
    rejected = reject(small, raw, "dossier.commune")
    assert rejected.reason is MALFORMED
    assert rejected.detail == f"oversized: {len(raw)} bytes > 100"
    exact = ContractCodec(max_message_bytes=len(raw))
    exact.decode(raw, "dossier.commune", key=KEY)
    huge = b'{"x":"' + b"a" * (1024 * 1024) + b'"}'
    assert reject(decoder, huge, "dossier.commune").detail.startswith("oversized: ")


def test_detail_never_carries_personal_data(decoder: ContractCodec) -> None:
    secret_id, secret_name = "98765432101", "Trần Thị Bí Mật"
    event = ev.submitted(applicant={"kind": "citizen", "id_number": secret_id, "name": secret_name})
    detail = reject(decoder, ev.to_bytes(event), "dossier.submission").detail
    assert secret_id not in detail
    event = ev.submitted(applicant={"kind": "citizen", "id_number": "001090012345", "name": 42})
    detail = reject(decoder, ev.to_bytes(event), "dossier.submission").detail
    assert "data.applicant.name" in detail and "42" not in detail
    event = ev.received(agency="Nguyễn Văn Riêng")
    assert "Riêng" not in reject(decoder, ev.to_bytes(event), "dossier.commune").detail


def test_rejected_carries_reason_and_detail() -> None:
    exc = InputRejected(SCHEMA, "data.channel: x")
    assert exc.reason is SCHEMA and exc.detail == "data.channel: x"
    assert str(exc) == "schema: data.channel: x"
    assert [r.value for r in DeadLetterReason] == [
        "malformed",
        "schema",
        "unknown-procedure",
        "invalid-transition",
        "conflict",
        "unauthenticated",
        "parked-expired",
        "internal-error",
    ]


# --------------------------------------------------------------------------- outbound


CAUSED_BY = {"source": ev.PORTAL_SOURCE, "id": "evt-1", "type": "vn.gov.dossier.received"}
OUTBOUND_DATA: dict[str, dict[str, Any]] = {
    "status-changed": {
        "procedure": "1.004222",
        "workflow_version": 1,
        "state": "received",
        "status_code": 2,
        "status_label": "Đã tiếp nhận",
        "level": "commune",
        "agency": ev.COMMUNE_AGENCY,
        "received_at": datetime(2025, 3, 3, 9, tzinfo=ICT),
        "due_at": datetime(2025, 3, 12, 9, tzinfo=ICT),
        "overdue": False,
        "sequence": 2,
        "caused_by": CAUSED_BY,
    },
    "fee-discount-granted": {
        "procedure": "1.004222",
        "fee_code": "LP-CT",
        "base_amount": 20_000,
        "discount_amount": 10_000,
        "payable_amount": 10_000,
        "rule": "online-50",
        "legal_basis": "Thông tư 75/2022/TT-BTC",
        "channel": 2,
        "caused_by": CAUSED_BY,
    },
    "deadline-warning": {
        "procedure": "1.004222",
        "level": "commune",
        "agency": ev.COMMUNE_AGENCY,
        "due_at": "2025-03-12T09:00:00+07:00",
        "working_hours_left": 4,
    },
    "overdue": {
        "procedure": "1.004222",
        "level": "commune",
        "agency": ev.COMMUNE_AGENCY,
        "due_at": "2025-03-12T09:00:00+07:00",
        "working_hours_late": 1.5,
    },
}
OUTBOUND_DATA["fee-discount-revoked"] = OUTBOUND_DATA["fee-discount-granted"]


@pytest.mark.parametrize("short", sorted(OUTBOUND_DATA))
def test_encode_outbound_validates(short: str) -> None:
    type_ = "vn.gov.dossier." + short
    out = OutboundEvent(
        topic=OUTBOUND_TOPIC_BY_TYPE[type_],
        key=ev.DOSSIER,
        id=f"{ev.DOSSIER}:2",
        type=type_,
        time=datetime(2025, 3, 3, 9, 0, tzinfo=ICT),
        data=OUTBOUND_DATA[short],
    )
    raw = encode_outbound(out, ENGINE)
    decoded = validate_outbound(raw)
    compact = json.dumps(decoded, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert raw == compact
    assert decoded["specversion"] == "1.0"
    assert decoded["source"] == ENGINE
    assert decoded["subject"] == ev.DOSSIER
    assert decoded["time"] == "2025-03-03T09:00:00+07:00"
    assert decoded["datacontenttype"] == "application/json"
    assert jsonschema_ok(load_schema(f"outbound/{short}.schema.json"), decoded)
    if short == "status-changed":
        assert decoded["data"]["due_at"] == "2025-03-12T09:00:00+07:00"
        assert "Đã tiếp nhận" in raw.decode("utf-8")


def test_encode_outbound_rejects_naive_time() -> None:
    out = OutboundEvent(
        topic="dossier.status", key=ev.DOSSIER, id="x", type="t", time=datetime(2025, 3, 3)
    )
    with pytest.raises(ValueError):
        encode_outbound(out, ENGINE)


def test_validate_outbound_catches_engine_bugs() -> None:
    data = dict(OUTBOUND_DATA["status-changed"], status_code=11)
    out = OutboundEvent(
        topic="dossier.status",
        key=ev.DOSSIER,
        id="x",
        type="vn.gov.dossier.status-changed",
        time=datetime(2025, 3, 3, tzinfo=UTC),
        data=data,
    )
    with pytest.raises(OutboundSchemaError, match=r"data\.status_code"):
        validate_outbound(encode_outbound(out, ENGINE))


# --------------------------------------------------------------------------- dead letters


def _dead(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    reason: DeadLetterReason = SCHEMA,
    detail: str = "data.channel: must be one of [1, 2, 3]",
) -> tuple[bytes | None, bytes]:
    return dead_letter(
        reason,
        detail,
        topic="thai-nguyen.dossier.submission",
        partition=3,
        offset=41,
        key=key,
        value=value,
        headers=headers,
        time=datetime(2025, 3, 3, 9, tzinfo=ICT),
        source=ENGINE,
    )


@given(
    key=st.none() | st.binary(max_size=64),
    value=st.none() | st.binary(max_size=2048),
    headers=st.lists(
        st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=64)), max_size=4
    ),
)
def test_dead_letter_round_trips_original_bytes(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    out_key, out_value = _dead(key, value, headers)
    assert out_key == key
    event = validate_outbound(out_value)
    original = event["data"]["original"]
    decode = base64.b64decode
    assert (None if original["value_base64"] is None else decode(original["value_base64"])) == value
    assert (None if original["key_base64"] is None else decode(original["key_base64"])) == key
    assert [
        (h["key"], None if h["value_base64"] is None else decode(h["value_base64"]))
        for h in original["headers"]
    ] == headers
    assert (original["topic"], original["partition"], original["offset"]) == (
        "thai-nguyen.dossier.submission",
        3,
        41,
    )


def test_dead_letter_envelope() -> None:
    raw = ev.to_bytes(ev.submitted())
    key, value = _dead(ev.DOSSIER.encode(), raw, [("traceparent", b"00-1")])
    event = validate_outbound(value)
    assert key == ev.DOSSIER.encode()
    assert event["type"] == DEAD_LETTERED_TYPE
    assert event["id"] == "dlq:thai-nguyen.dossier.submission:3:41"
    assert event["subject"] == ev.DOSSIER
    assert event["source"] == ENGINE
    assert event["time"] == "2025-03-03T09:00:00+07:00"
    assert event["data"]["reason"] == "schema"
    assert event["data"]["original"]["key"] == ev.DOSSIER
    assert base64.b64decode(event["data"]["original"]["value_base64"]) == raw
    # A re-send after a crash is byte-identical, so downstream can drop the copy by id.
    assert _dead(ev.DOSSIER.encode(), raw, [("traceparent", b"00-1")]) == (key, value)
    assert jsonschema_ok(load_schema("outbound/dead-lettered.schema.json"), event)


@pytest.mark.parametrize(
    "key", [None, b"", b"not-a-dossier", b"\xff\xfe", (ev.DOSSIER + "\n").encode()]
)
def test_dead_letter_subject_only_for_dossier_keys(key: bytes | None) -> None:
    _, value = _dead(key, b"x", [])
    event = validate_outbound(value)
    assert "subject" not in event
    if key is not None and key != b"\xff\xfe":
        assert event["data"]["original"]["key"] == key.decode()
    else:
        assert event["data"]["original"]["key"] is None


def test_dead_letter_detail_is_bounded() -> None:
    _, value = dead_letter(
        DeadLetterReason.CONFLICT,
        "x" * 10_000,
        topic="dossier.commune",
        partition=0,
        offset=0,
        key=None,
        value=None,
        headers=[],
        time=datetime(2025, 1, 1, tzinfo=UTC),
        source=ENGINE,
    )
    assert len(validate_outbound(value)["data"]["detail"]) <= codec.MAX_DETAIL_CHARS


def test_decoder_rejections_dead_letter_cleanly(decoder: ContractCodec) -> None:
    for _, value, topic, _, _ in BAD_INPUTS:
        try:
            decoder.decode(value, topic, key=KEY)
        except InputRejected as exc:
            _, out = _dead(b"k", value, [], exc.reason, exc.detail)
            data = validate_outbound(out)["data"]
            assert (data["reason"], data["detail"]) == (exc.reason.value, exc.detail)


# ------------------------------------------------------------- fastjsonschema == jsonschema


def _agreement_examples() -> list[tuple[str, Any]]:
    examples: list[tuple[str, Any]] = []
    for short, build in ev.BUILDERS.items():
        event = build()
        examples.append(("cloudevent.schema.json", event))
        examples.append((f"inbound/{short}.schema.json", event["data"]))
    examples += [
        ("cloudevent.schema.json", _with(RECEIVED, *change))
        for change in [
            ("specversion", "0.3"),
            ("subject", ev.DOSSIER + "\n"),
            ("subject", "x"),
            ("time", "2025-03-03T09:00:00"),
            ("time", "2025-03-03T09:00:00+07:00\n"),
            ("source", "1a:b"),
            ("source", "a/b:c"),
            ("source", "%zz"),
            ("source", "urn:vn:agency:000.00.19.H56"),
            ("source", "/relative/path"),
            ("schemaversion", 1.0),
            ("schemaversion", True),
            ("schemaversion", 0),
            ("data", None),
            ("id", 5),
        ]
    ]
    data = SUBMITTED["data"]
    examples += [
        ("inbound/submitted.schema.json", _with({"data": data}, *change)["data"])
        for change in [
            ("data.channel", 2.0),
            ("data.channel", True),
            ("data.channel", 0),
            ("data.applicant.kind", "enterprise"),
            ("data.applicant.id_number", "001090012345\n"),
            ("data.fees", [{"code": "A", "amount": 2**53}]),
            ("data.fees", [{"code": "A", "amount": 2**53 - 1}]),
            ("data.fees", []),
            ("data.applicant", DELETE),
            ("data.agency", "A" * 35),
            ("data.agency", "A" * 36),
            ("data.agency", ".A"),
        ]
    ]
    examples.append(
        (
            "inbound/rescheduled.schema.json",
            {"agency": "A", "reason": "r", "new_due": "2025-03-03T09:00:00z"},
        )
    )
    return examples


@pytest.mark.parametrize(("name", "instance"), _agreement_examples())
def test_fastjsonschema_and_jsonschema_agree(name: str, instance: Any) -> None:
    schema = load_schema(name)
    assert fast_ok(schema, instance) == jsonschema_ok(schema, instance)


@pytest.mark.parametrize("definition", ["dossierCode", "agencyCode", "dateTime", "uriReference"])
@given(text=st.text(alphabet="0123456789AZaz.-:+/#?%TtZz \n", max_size=40))
def test_pattern_agreement_on_random_strings(definition: str, text: str) -> None:
    envelope = load_schema("cloudevent.schema.json")
    inbound = load_schema("inbound/received.schema.json")
    defs = {**envelope["definitions"], **inbound["definitions"]}
    schema = {"$schema": DRAFT_07, **defs[definition]}
    assert fast_ok(schema, text) == jsonschema_ok(schema, text)
