"""Hostile inputs: the decoder refuses them with the contract's reason and never crashes.

Contract 1.1, "Rules": Time, Strings and Poison. Every refusal's `detail` is checked not to
echo the offending value (dead letters are read by operators; the value may be personal data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import InboundEvent
from schemas.codec import ContractCodec, DeadLetterReason, InputRejected
from tests.fixtures import events as ev

MALFORMED = DeadLetterReason.MALFORMED
SCHEMA = DeadLetterReason.SCHEMA
KEY = ev.DOSSIER.encode()
OTHER_DOSSIER = "000.00.19.H56-221027-0002"
# A fixed wall clock: the time bounds must not depend on when the tests run.
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _now() -> datetime:
    return NOW


DECODER = ContractCodec(clock=_now)


def decode(value: bytes | None, topic: str, key: bytes | None = KEY) -> InboundEvent:
    return DECODER.decode(value, topic, key=key)


def reject(value: bytes | None, topic: str, key: bytes | None = KEY) -> InputRejected:
    with pytest.raises(InputRejected) as caught:
        decode(value, topic, key)
    return caught.value


def assert_refused(
    rejected: InputRejected, reason: DeadLetterReason, *offending: str, says: str = ""
) -> None:
    assert rejected.reason is reason, rejected.detail
    assert says in rejected.detail
    for value in offending:
        assert value not in rejected.detail, rejected.detail


def with_placeholder(event: dict[str, Any], placeholder: str, raw_json: str) -> bytes:
    """The event's bytes with the JSON string "<placeholder>" replaced by raw JSON text, for
    what json.dumps will not write (lone surrogate escapes, duplicate keys)."""
    raw = ev.to_bytes(event)
    quoted = json.dumps(placeholder).encode()
    assert raw.count(quoted) == 1
    return raw.replace(quoted, raw_json.encode())


# --------------------------------------------------------------------------- Strings: surrogates

SURROGATE_ESCAPES = ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\uDC00", "\\udc00\\ud800"]
PLACE = "PLACEHOLDER-42"


def _surrogate_carriers() -> dict[str, tuple[dict[str, Any], str]]:
    """Where a surrogate can hide: (event with PLACE somewhere, topic)."""
    envelope_id = ev.received(id=PLACE)
    unknown_attribute = ev.received(comment=PLACE)
    officer = ev.received(officer=PLACE)
    applicant = ev.submitted(applicant={**ev.CITIZEN, "name": PLACE})
    unknown_field = ev.received(data_extra={"note": {"deep": [PLACE]}})
    member_name = ev.received(data_extra={PLACE: 1})
    return {
        "envelope id": (envelope_id, "dossier.commune"),
        "unknown envelope attribute": (unknown_attribute, "dossier.commune"),
        "data.officer": (officer, "dossier.commune"),
        "nested data.applicant.name": (applicant, "dossier.submission"),
        "unknown data field": (unknown_field, "dossier.commune"),
        "member name": (member_name, "dossier.commune"),
    }


SURROGATE_CARRIERS = _surrogate_carriers()


@pytest.mark.parametrize("escape", SURROGATE_ESCAPES)
@pytest.mark.parametrize("where", sorted(SURROGATE_CARRIERS))
def test_lone_surrogate_escape_is_malformed(where: str, escape: str) -> None:
    event, topic = SURROGATE_CARRIERS[where]
    raw = with_placeholder(event, PLACE, f'"a{escape}b"')
    rejected = reject(raw, topic)
    assert_refused(rejected, MALFORMED, escape, escape.encode().decode("unicode_escape"))
    assert "surrogate" in rejected.detail


def test_paired_surrogate_escape_is_a_character() -> None:
    raw = with_placeholder(ev.received(officer=PLACE), PLACE, '"\\ud83d\\ude00"')
    assert decode(raw, "dossier.commune").data["officer"] == "\U0001f600"


def test_escaped_backslash_before_u_is_not_a_surrogate() -> None:
    raw = with_placeholder(ev.received(officer=PLACE), PLACE, '"\\\\udc00"')
    assert decode(raw, "dossier.commune").data["officer"] == "\\udc00"


# --------------------------------------------------------------------------- Strings: duplicates


def test_duplicate_subject_is_malformed_whichever_comes_last() -> None:
    raw = ev.to_bytes(ev.received())
    first = b'{"subject":"' + OTHER_DOSSIER.encode() + b'",' + raw[1:]
    # Last-wins would read the original subject here, and the other dossier's below.
    last = raw[:-1] + b',"subject":"' + OTHER_DOSSIER.encode() + b'"}'
    for value, key in ((first, KEY), (last, OTHER_DOSSIER.encode())):
        rejected = reject(value, "dossier.commune", key)
        assert_refused(rejected, MALFORMED, OTHER_DOSSIER, ev.DOSSIER, says="duplicate")


def test_duplicate_data_member_is_malformed() -> None:
    # {"agency":"000.00.19.H56","x":1,"agency":"000.00.12.H56"}: the last would win.
    raw = with_placeholder(
        ev.received(data_extra={"x": PLACE}), PLACE, '1,"agency":"000.00.12.H56"'
    )
    rejected = reject(raw, "dossier.commune")
    assert_refused(rejected, MALFORMED, "000.00.12.H56", says="duplicate")


def test_duplicate_nested_member_is_malformed() -> None:
    event = ev.submitted(applicant={**ev.CITIZEN, "name": PLACE})
    raw = with_placeholder(event, PLACE, '"A","name":"Nguyễn Thị Bí Mật"')
    assert_refused(reject(raw, "dossier.submission"), MALFORMED, "Bí Mật", says="duplicate")


def test_duplicate_member_in_unknown_field_is_malformed() -> None:
    raw = with_placeholder(ev.received(data_extra={"note": PLACE}), PLACE, '{"a":1,"a":2}')
    assert_refused(reject(raw, "dossier.commune"), MALFORMED, says="duplicate")


def test_duplicate_member_inside_array_item_is_malformed() -> None:
    event = ev.payment_requested(fees=[{"code": "LP-GCN", "amount": 100_000, "x": PLACE}])
    raw = with_placeholder(event, PLACE, '1,"amount":1')
    assert_refused(reject(raw, "dossier.commune"), MALFORMED, says="duplicate")


# --------------------------------------------------------------------------- Strings: Kafka key


@pytest.mark.parametrize(
    "key",
    [
        None,
        b"",
        b"\xff\xfe",
        OTHER_DOSSIER.encode(),
        KEY + b"\n",
        KEY.lower(),
        ev.DOSSIER.encode("utf-16"),
    ],
    ids=["none", "empty", "not-utf8", "other-dossier", "trailing-newline", "lower", "utf16"],
)
def test_key_that_is_not_the_subject_is_malformed(key: bytes | None) -> None:
    rejected = reject(ev.to_bytes(ev.received()), "dossier.commune", key)
    offending = [ev.DOSSIER, OTHER_DOSSIER, ev.DOSSIER.lower()]
    assert_refused(rejected, MALFORMED, *offending, says="Kafka key")


def test_key_equal_to_subject_decodes() -> None:
    assert decode(ev.to_bytes(ev.received()), "dossier.commune", KEY).subject == ev.DOSSIER


# --------------------------------------------------------------------------- dossier code dates


@pytest.mark.parametrize("code", ["000.00.19.H56-250230-0001", "G22-230229-0001", "A-250431-9999"])
def test_impossible_calendar_date_in_dossier_code_is_schema(code: str) -> None:
    rejected = reject(ev.to_bytes(ev.received(dossier=code)), "dossier.commune", code.encode())
    assert_refused(rejected, SCHEMA, code, says="subject: dossier code date is not a calendar date")


@pytest.mark.parametrize("code", ["000.00.19.H56-240229-0001", "A-000229-0001", "A-991231-0001"])
def test_leap_days_and_year_ends_in_dossier_codes_decode(code: str) -> None:
    assert decode(ev.to_bytes(ev.received(dossier=code)), "dossier.commune", code.encode())


# --------------------------------------------------------------------------- Time


@pytest.mark.parametrize(
    "time",
    [
        "1999-12-31T23:59:59Z",
        "1999-12-31T00:00:00+07:00",
        "2000-01-01T06:59:59+07:00",  # 1999-12-31T23:59:59Z
        "0001-01-01T00:00:00+23:59",  # before year 1 in UTC: converting it underflows
        (NOW + timedelta(days=2)).isoformat(),
        (NOW + timedelta(days=1, seconds=1)).isoformat(),
        "9999-12-31T23:59:59-23:59",  # after year 9999 in UTC: converting it overflows
        "9999-12-28T00:00:00Z",
    ],
)
def test_envelope_time_outside_bounds_is_schema(time: str) -> None:
    rejected = reject(ev.to_bytes(ev.received(time=time)), "dossier.commune")
    assert_refused(rejected, SCHEMA, time, says="time: outside [2000-01-01, now + 1 day]")


@pytest.mark.parametrize(
    "time",
    [
        "2000-01-01T00:00:00Z",
        "2000-01-01T07:00:00+07:00",
        "1999-12-31T20:00:00-05:00",  # 2000-01-01T01:00:00Z
        (NOW + timedelta(days=1)).isoformat(),
        # The same instant, read in Vietnam: 19:00 local, beyond now + 1 day only on its face.
        (NOW + timedelta(days=1)).astimezone(timezone(timedelta(hours=7))).isoformat(),
    ],
)
def test_envelope_time_at_the_bounds_decodes(time: str) -> None:
    decoded = decode(ev.to_bytes(ev.received(time=time)), "dossier.commune")
    assert decoded.time == datetime.fromisoformat(time)


def test_the_wall_clock_is_injectable() -> None:
    event = ev.received(time="2031-05-01T09:00:00+07:00")
    later = ContractCodec(clock=lambda: datetime(2031, 5, 1, tzinfo=UTC))
    assert later.decode(ev.to_bytes(event), "dossier.commune", key=KEY).time.year == 2031
    assert reject(ev.to_bytes(event), "dossier.commune").reason is SCHEMA


@pytest.mark.parametrize(
    "new_due",
    [
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",
        "9999-01-01T00:00:00+07:00",
        "2100-01-01T00:00:00Z",
        "2099-12-31T23:00:00-05:00",  # 2100-01-01T04:00:00Z
        "9998-12-31T23:59:59-23:59",
        "1999-12-31T23:59:59Z",
        "0001-01-01T00:00:00+23:59",
    ],
)
def test_data_date_time_outside_bounds_is_schema(new_due: str) -> None:
    rejected = reject(ev.to_bytes(ev.rescheduled(new_due=new_due)), "dossier.commune")
    assert_refused(rejected, SCHEMA, new_due, says="data.new_due: outside [2000-01-01, 2100-01-01)")


@pytest.mark.parametrize(
    "new_due",
    [
        "2000-01-01T00:00:00Z",
        "1999-12-31T20:00:00-05:00",  # 2000-01-01T01:00:00Z
        "2099-12-31T23:59:59Z",
        "2100-01-01T06:59:59+07:00",  # 2099-12-31T23:59:59Z
    ],
)
def test_data_date_time_at_the_bounds_decodes(new_due: str) -> None:
    decoded = decode(ev.to_bytes(ev.rescheduled(new_due=new_due)), "dossier.commune")
    assert decoded.data["new_due"] == new_due


# --------------------------------------------------------------------------- size limits


def _long(length: int) -> str:
    # Vietnamese letters: maxLength counts characters, not UTF-8 bytes.
    return ("Nguyễn" * (length // 6 + 1))[:length]


# (case id, event, topic, path named in the detail, the offending value)
OVERSIZED: list[tuple[str, dict[str, Any], str, str, Any]] = [
    ("envelope id", ev.received(id="i" * 257), "dossier.commune", "id", "i" * 257),
    (
        "envelope source",
        ev.received(source="urn:x:" + "s" * 600),
        "dossier.commune",
        "source",
        "s" * 600,
    ),
    (
        "envelope type",
        {**ev.received(), "type": "vn.gov.dossier." + "t" * 200},
        "dossier.commune",
        "type",
        "t" * 200,
    ),
    (
        "submitted applicant.name",
        ev.submitted(applicant={**ev.CITIZEN, "name": _long(513)}),
        "dossier.submission",
        "data.applicant.name",
        _long(513),
    ),
    (
        "submitted applicant.id_number",
        ev.submitted(applicant={"kind": "organisation", "id_number": "9" * 65, "name": "Hội"}),
        "dossier.submission",
        "data.applicant.id_number",
        "9" * 65,
    ),
    (
        "submitted procedure",
        ev.submitted(procedure="P" * 65),
        "dossier.submission",
        "data.procedure",
        "P" * 65,
    ),
    (
        "submitted fee code",
        ev.submitted(fees=[("F" * 65, 1)]),
        "dossier.submission",
        "data.fees[0].code",
        "F" * 65,
    ),
    (
        "submitted fees count",
        ev.submitted(fees=[("LP-CT", 1)] * 33),
        "dossier.submission",
        "data.fees",
        "LP-CT",
    ),
    (
        "submitted fee amount",
        ev.submitted(fees=[("LP-CT", 10**12 + 1)]),
        "dossier.submission",
        "data.fees[0].amount",
        str(10**12 + 1),
    ),
    (
        "received officer",
        ev.received(officer=_long(257)),
        "dossier.commune",
        "data.officer",
        _long(257),
    ),
    (
        "reception-refused reason",
        ev.reception_refused(reason=_long(4097)),
        "dossier.commune",
        "data.reason",
        _long(4097),
    ),
    (
        "processing-started agency",
        ev.processing_started(agency="1" * 36),
        "dossier.commune",
        "data.agency",
        "1" * 36,
    ),
    (
        "transferred to_agency",
        ev.transferred(to_agency="2" * 36),
        "dossier.commune",
        "data.to_agency",
        "2" * 36,
    ),
    (
        "supplement-requested reason",
        ev.supplement_requested(reason=_long(4097)),
        "dossier.commune",
        "data.reason",
        _long(4097),
    ),
    (
        "supplement-provided document",
        ev.supplement_provided(documents=["d" * 2049]),
        "dossier.submission",
        "data.documents[0]",
        "d" * 2049,
    ),
    (
        "supplement-provided documents count",
        ev.supplement_provided(documents=["doc-1"] * 101),
        "dossier.submission",
        "data.documents",
        "doc-1",
    ),
    (
        "payment-requested fee code",
        ev.payment_requested(fees=[("F" * 65, 1)]),
        "dossier.commune",
        "data.fees[0].code",
        "F" * 65,
    ),
    (
        "payment-requested fee amount",
        ev.payment_requested(fees=[("LP-GCN", 10**12 + 1)]),
        "dossier.commune",
        "data.fees[0].amount",
        str(10**12 + 1),
    ),
    (
        "payment-completed amount",
        ev.payment_completed(amount=10**12 + 1),
        "dossier.submission",
        "data.amount",
        str(10**12 + 1),
    ),
    (
        "withdrawal-requested reason",
        ev.withdrawal_requested(reason=_long(4097)),
        "dossier.submission",
        "data.reason",
        _long(4097),
    ),
    (
        "stopped reason",
        ev.stopped(reason=_long(4097)),
        "dossier.commune",
        "data.reason",
        _long(4097),
    ),
    (
        "rescheduled reason",
        ev.rescheduled(reason=_long(4097)),
        "dossier.commune",
        "data.reason",
        _long(4097),
    ),
    (
        "rescheduled new_due",
        ev.rescheduled(new_due="2025-03-10T17:00:00." + "0" * 60 + "+07:00"),
        "dossier.commune",
        "data.new_due",
        "0" * 60,
    ),
    (
        "resolved reason",
        ev.resolved(outcome="rejected", reason=_long(4097)),
        "dossier.commune",
        "data.reason",
        _long(4097),
    ),
    (
        "result-returned agency",
        ev.result_returned(agency="3" * 36),
        "dossier.commune",
        "data.agency",
        "3" * 36,
    ),
]


@pytest.mark.parametrize(
    ("event", "topic", "path", "value"),
    [case[1:] for case in OVERSIZED],
    ids=[case[0] for case in OVERSIZED],
)
def test_over_the_limit_is_schema(event: dict[str, Any], topic: str, path: str, value: Any) -> None:
    rejected = reject(ev.to_bytes(event), topic)
    assert_refused(rejected, SCHEMA, str(value)[:20], says=path)


def test_every_inbound_type_has_an_over_the_limit_case() -> None:
    covered = {str(case[1]["type"]).removeprefix(ev.TYPE_PREFIX) for case in OVERSIZED}
    assert covered >= set(ev.BUILDERS)


@pytest.mark.parametrize(
    ("event", "topic"),
    [
        (ev.submitted(applicant={**ev.CITIZEN, "name": _long(512)}), "dossier.submission"),
        (ev.submitted(fees=[("F" * 64, 10**12)] * 32), "dossier.submission"),
        (ev.received(officer=_long(256), id="i" * 256), "dossier.commune"),
        (ev.stopped(reason=_long(4096)), "dossier.commune"),
        (ev.supplement_provided(documents=["d" * 2048] * 100), "dossier.submission"),
        (ev.payment_completed(amount=10**12), "dossier.submission"),
    ],
)
def test_at_the_limit_decodes(event: dict[str, Any], topic: str) -> None:
    decode(ev.to_bytes(event), topic)


# --------------------------------------------------------------------------- property


def _strings_of(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield name
            yield from _strings_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_of(item)


def _locations(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every value below the root (dict keys and list indexes)."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for name, item in items:
        yield (*path, name)
        yield from _locations(item, (*path, name))


def _replace(event: Any, path: tuple[Any, ...], new: Any) -> Any:
    copy = json.loads(json.dumps(event))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return copy


def _dump_with_duplicate(value: Any, target: tuple[Any, ...], extra: Any) -> str:
    """JSON of `value` with the object at `target` given a second copy of its first member
    (holding `extra`), which json.dumps cannot write."""

    def dump(node: Any, path: tuple[Any, ...]) -> str:
        if isinstance(node, dict):
            parts = [f"{json.dumps(k)}:{dump(v, (*path, k))}" for k, v in node.items()]
            if path == target and node:
                parts.append(f"{json.dumps(next(iter(node)))}:{json.dumps(extra)}")
            return "{" + ",".join(parts) + "}"
        if isinstance(node, list):
            return "[" + ",".join(dump(v, (*path, i)) for i, v in enumerate(node)) + "]"
        return json.dumps(node)

    return dump(value, ())


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


HOSTILE_STRINGS: st.SearchStrategy[str] = (
    st.sampled_from(["\ud800", "\udbff", "\udc00", "a\udfff", "\udc00\ud800"])
    | st.sampled_from(
        [
            "\x00",
            "\x1f\x7f\u2028\u2029",
            "\ufeff",
            "\U0010ffff",
            "",
            " ",
            "9999-12-31T23:59:59-23:59",
            "000.00.19.H56-250230-0001",
        ]
    )
    | st.text(max_size=40)
    | st.integers(1, 300_000).map(lambda n: "x" * n)
)
EDGE_NUMBERS: st.SearchStrategy[Any] = (
    st.sampled_from(
        [0, -1, 1, 2**31, 2**53 - 1, 2**53, 2**63, -(2**63), 10**12, 10**12 + 1, 10**4000]
    )
    | st.sampled_from([0.5, -0.0, 1e308, -1e308, 5e-324, math.pi, 1e22])
    | st.sampled_from([True, False, None, [], {}])
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, str, bytes | None]:
    short = draw(st.sampled_from(sorted(ev.BUILDERS)))
    event = ev.BUILDERS[short]()
    topic = ev.topic_for(short)
    key = draw(st.sampled_from([KEY, KEY, KEY, None, b"\xff", OTHER_DOSSIER.encode()]))
    places = list(_locations(event))
    kind = draw(st.sampled_from(["flip", "string", "number", "duplicate", "raw", "extra"]))
    ascii_only = draw(st.booleans())
    if kind == "flip":
        raw = bytearray(ev.to_bytes(event))
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw), topic, key
    if kind == "duplicate":
        objects = [()] + [p for p in places if isinstance(_at(event, p), dict)]
        target = draw(st.sampled_from(objects))
        extra = draw(HOSTILE_STRINGS | EDGE_NUMBERS)
        return _dump_with_duplicate(event, target, extra).encode("utf-8"), topic, key
    if kind == "extra":
        # Unknown members are kept, so whatever they hold reaches the engine if not refused.
        objects = [()] + [p for p in places if isinstance(_at(event, p), dict)]
        target = draw(st.sampled_from(objects))
        _at(event, target)["x_unknown"] = draw(HOSTILE_STRINGS | EDGE_NUMBERS)
        text = json.dumps(event, ensure_ascii=ascii_only)
        return text.encode("utf-8", "surrogatepass"), topic, key
    if kind == "raw":
        # Number literals Python's json.dumps would never write.
        literal = draw(st.sampled_from(["1e400", "-1e400", "1E-400", "-0", "1.0e12", "NaN"]))
        path = draw(st.sampled_from(places))
        text = json.dumps(_replace(event, path, "RAW-PLACE")).replace('"RAW-PLACE"', literal)
        return text.encode("utf-8"), topic, key
    new: Any
    if kind == "string":
        path = draw(st.sampled_from([p for p in places if isinstance(_at(event, p), str)]))
        new = draw(HOSTILE_STRINGS)
    else:
        path = draw(st.sampled_from(places))
        new = draw(EDGE_NUMBERS)
    changed = _replace(event, path, new)
    # ensure_ascii writes lone surrogates as escapes; without it, "surrogatepass" writes
    # them as (invalid) UTF-8 bytes: both must be refused.
    text = json.dumps(changed, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass"), topic, key


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_events_decode_or_are_rejected_never_crash(
    case: tuple[bytes, str, bytes | None],
) -> None:
    value, topic, key = case
    try:
        event = decode(value, topic, key)
    except InputRejected as rejected:
        assert rejected.reason in (MALFORMED, SCHEMA)
        return
    for text in (event.source, event.id, event.type, event.subject, event.topic):
        text.encode("utf-8")
    for text in _strings_of(event.data):
        text.encode("utf-8")
    json.dumps(event.data, ensure_ascii=False).encode("utf-8")
    assert event.time.astimezone(UTC) <= NOW + timedelta(days=1)
    assert key == event.subject.encode()
