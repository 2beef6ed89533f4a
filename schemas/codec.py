"""Wire codec for the interop contract: Kafka message bytes <-> engine events.

The JSON Schema files next to this module are the contract's machine-readable form and the
single source of truth: this module compiles them once with fastjsonschema (generated Python,
far faster than interpreting them with `jsonschema`) and adds only what JSON Schema cannot say
(UTF-8 and size limits, duplicate keys, the Kafka key, which type may arrive on which topic,
calendar-valid dates, time bounds).
Decisions the contract leaves open are written down in schemas/README.md.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Final

import fastjsonschema
import orjson

from engine.events import (
    CURRENT_SCHEMA_VERSION,
    INBOUND_TOPICS,
    TYPE_PREFIX,
    DeadLetterReason,
    InboundEvent,
    InputRejected,
    OutboundEvent,
    contract_topic,
)
from schemas.upcasting import upcast

__all__ = [
    "DEAD_LETTERED_TYPE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INBOUND_TOPICS_BY_TYPE",
    "INBOUND_TYPES",
    "OUTBOUND_TOPIC_BY_TYPE",
    "ContractCodec",
    "DeadLetterReason",
    "InputRejected",
    "OutboundSchemaError",
    "dead_letter",
    "encode_outbound",
    "is_dossier_code",
    "load_schema",
    "plausible_time",
    "stored_envelope",
    "stored_input",
    "validate_outbound",
]

DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
DEAD_LETTERED_TYPE: Final = TYPE_PREFIX + "dead-lettered"
# Dead letters outlive the engine's logs; a bounded detail keeps one bad input from bloating them.
MAX_DETAIL_CHARS: Final = 1000
# Without these the value is not a CloudEvent at all (CloudEvents 1.0, "REQUIRED Attributes").
_CLOUDEVENT_CORE: Final = ("specversion", "id", "source", "type")
# Contract 1.1, "Time": nothing the engine handles happened before 2000 or more than a day ahead
# of its wall clock (a day absorbs clock skew and time-zone mistakes, not a week of them).
EARLIEST_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME_AHEAD: Final = timedelta(days=1)
# Times inside `data` (an appointment) may lie ahead of the wall clock, but a bound is needed all
# the same: year 9999 overflows datetime arithmetic and walks the working-day calendar for ever.
DATA_TIME_END: Final = datetime(2100, 1, 1, tzinfo=UTC)

Validator = Callable[[Any], Any]


class OutboundSchemaError(ValueError):
    """An engine output that does not satisfy its outbound schema (an engine bug)."""


# --------------------------------------------------------------------------- schema files


def load_schema(relative_path: str) -> dict[str, Any]:
    """A schema file of this package, e.g. 'inbound/received.schema.json'."""
    text = resources.files(__package__ or "schemas").joinpath(relative_path).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _compile(schema: Mapping[str, Any]) -> Validator:
    # Formats are annotations only: every format we rely on is also spelled as a `pattern`, so
    # fastjsonschema, `jsonschema` and other organisations' validators all enforce the same thing.
    validator: Validator = fastjsonschema.compile(
        dict(schema), use_default=False, use_formats=False
    )
    return validator


_TYPES: Final[Mapping[str, Any]] = load_schema("types.json")
_TOPIC_CLASSES: Final[Mapping[str, tuple[str, ...]]] = {
    name: tuple(topics) for name, topics in _TYPES["topic_classes"].items()
}
INBOUND_TOPICS_BY_TYPE: Final[Mapping[str, tuple[str, ...]]] = {
    TYPE_PREFIX + short: _TOPIC_CLASSES[topic_class]
    for short, topic_class in _TYPES["inbound"].items()
}
INBOUND_TYPES: Final = tuple(INBOUND_TOPICS_BY_TYPE)
OUTBOUND_TOPIC_BY_TYPE: Final[Mapping[str, str]] = {
    TYPE_PREFIX + short: topic for short, topic in _TYPES["outbound"].items()
}

_ENVELOPE_SCHEMA: Final = load_schema("cloudevent.schema.json")
_DOSSIER_CODE_RE: Final = re.compile(_ENVELOPE_SCHEMA["definitions"]["dossierCode"]["pattern"])
_DOSSIER_CODE_TITLE: Final = _ENVELOPE_SCHEMA["definitions"]["dossierCode"]["title"]


def is_dossier_code(text: str) -> bool:
    # re.search, not fullmatch: JSON Schema patterns are unanchored searches; the pattern anchors.
    return _DOSSIER_CODE_RE.search(text) is not None


def _impossible_days() -> frozenset[str]:
    """Every YYMMDD the dossier-code pattern lets through (month 01-12, day 01-31) that is not
    a calendar date, reading YY as 20YY: codes date from the reception, never before 2000."""
    impossible: set[str] = set()
    for year in range(2000, 2100):
        for month in range(1, 13):
            for day in range(29, 32):
                try:
                    date(year, month, day)
                except ValueError:
                    impossible.add(f"{year % 100:02d}{month:02d}{day:02d}")
    return frozenset(impossible)


# 675 strings: a set lookup of the code's date part costs less than building a date.
_IMPOSSIBLE_DAYS: Final = _impossible_days()


def _is_calendar_dossier_code(code: str) -> bool:
    """For a code that matches the pattern, which ends in -YYMMDD-NNNN."""
    return code[-11:-5] not in _IMPOSSIBLE_DAYS


_Path = tuple[str, ...]  # property names; "*" stands for every item of an array


def _resolve(root: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        ref: str = node["$ref"]
        node = root["definitions"][ref.rsplit("/", 1)[1]]
    return node


def _paths_where(
    root: Mapping[str, Any], predicate: Callable[[Mapping[str, Any]], bool]
) -> list[_Path]:
    """Paths under `properties`/`items` whose schema satisfies `predicate`."""
    found: list[_Path] = []

    def walk(node: Mapping[str, Any], prefix: _Path) -> None:
        node = _resolve(root, node)
        if predicate(node):
            found.append(prefix)
        for name, child in node.get("properties", {}).items():
            walk(child, (*prefix, name))
        items = node.get("items")
        if isinstance(items, Mapping):
            walk(items, (*prefix, "*"))

    walk(root, ())
    return found


def _values_at(container: Any, path: _Path) -> Iterator[tuple[Any, Any]]:
    """(parent, key) pairs for every value present at `path`."""
    if not path:
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(container, list):
            for index, item in enumerate(container):
                if rest:
                    yield from _values_at(item, rest)
                else:
                    yield container, index
    elif isinstance(container, dict) and head in container:
        if rest:
            yield from _values_at(container[head], rest)
        else:
            yield container, head


def _path_name(path: _Path) -> str:
    return "data" + "".join("[]" if part == "*" else "." + part for part in path)


# --------------------------------------------------------------------------- time


def _parse_time(text: str) -> datetime:
    """RFC 3339 (already pattern-checked, so an offset is present) to an aware datetime."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        # RFC 3339 allows lower-case 't'/'z', which Python 3.11 rejects; the upper-cased
        # retry also re-raises for calendar-impossible dates such as 02-30.
        return datetime.fromisoformat(text.upper())


def _in_utc(moment: datetime, text: str) -> datetime | None:
    """`moment` (parsed from `text`) in UTC, or None when that is before 2000-01-01 or beyond
    datetime's range (9999-12-31T23:59:59-23:59 is in year 10000 in UTC)."""
    if "2000-01-02" <= text < "9999":
        # The usual case, decided on the text: offsets are under a day, so the instant is after
        # 2000-01-01 and converts safely; later comparisons are then between UTC datetimes,
        # several times cheaper than between datetimes of different offsets.
        return moment.astimezone(UTC)
    if moment < EARLIEST_TIME:  # comparing aware datetimes cannot overflow; converting can
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def plausible_time(moment: datetime, now: datetime) -> datetime | None:
    """`moment` in UTC if the contract's Time rule admits it as an input's `time` when the wall
    clock says `now` (from 2000-01-01 to a day after `now`), else None."""
    if moment.tzinfo is None or moment < EARLIEST_TIME:
        return None
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        return None
    return utc if utc <= now + MAX_TIME_AHEAD else None


def _format_time(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("a naive datetime has no RFC 3339 form: business times need an offset")
    if offset.microseconds or offset.seconds % 60:
        raise ValueError(f"UTC offset {offset} is not whole minutes, RFC 3339 cannot spell it")
    return value.isoformat()


# --------------------------------------------------------------------------- JSON


class _NotJSON(ValueError):
    """Raised from the decoder hooks for input Python's json module would otherwise accept."""


def _json_number(text: str) -> float | int:
    """JSON has one number type: 20000.0 is the integer 20000, so the engine gets an int.

    Called only for literals with a fraction or exponent, so integer-only events pay nothing.
    """
    number = float(text)
    if not math.isfinite(number):
        # 1e400 would become inf and later serialise as the non-JSON token `Infinity`.
        raise _NotJSON("number out of range")
    return int(number) if number.is_integer() else number


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing duplicate member names (RFC 8259 leaves them undefined, and
    last-wins would let a second `subject` move the input to another dossier)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # No name in the message: a member name can be anything a sender chose to write.
        raise _NotJSON("duplicate member name in an object")
    return obj


# One decoder instance: json.loads with hooks would build a new decoder on every call.
_JSON_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object, parse_float=_json_number, parse_constant=_reject_constant
)


# Any UTF-16 surrogate escape, high (d800-dbff) or low (dc00-dfff): only these can put a lone
# surrogate into a decoded str, since the bytes were already checked to be valid UTF-8.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _format_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_JSON_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
)


def _encode(value: Any) -> bytes:
    """Compact UTF-8 JSON of an outbound event. orjson writes one output per input on the hot
    path several times faster than `json`, spelling these values the same way. (It would write
    a non-finite float as null; the engine's outputs have none: amounts are integers and hours
    come from whole seconds.)"""
    return orjson.dumps(value, default=_json_default)


def _has_lone_surrogate(value: Any) -> bool:
    try:
        _JSON_ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_detail(exc: fastjsonschema.JsonSchemaValueException, *, envelope: bool) -> str:
    """'<path>: <what is wrong>' built from the schema only, never from the offending value."""
    name = exc.name or "data"
    if envelope:
        # fastjsonschema calls the validated value "data"; for the envelope that is the event.
        path = name[5:] if name.startswith("data.") else ("event" if name == "data" else name)
    else:
        path = name  # the validated value is the CloudEvent `data` attribute: name fits as is
    if exc.rule == "required" and isinstance(exc.value, dict):
        required = exc.rule_definition if isinstance(exc.rule_definition, list) else []
        missing = [field for field in required if field not in exc.value]
        return _clip(f"{path}: missing {', '.join(missing)}", MAX_DETAIL_CHARS)
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    if exc.rule == "pattern" and "title" in definition:
        # The regex itself is unreadable in a dead letter; every patterned schema has a title.
        return _clip(f"{path}: not a valid {definition['title']}", MAX_DETAIL_CHARS)
    message = exc.message
    tail = message[len(name) :] if message.startswith(name) else " " + message
    return _clip(f"{path}:{tail}", MAX_DETAIL_CHARS)


# --------------------------------------------------------------------------- inbound


class _InboundType:
    __slots__ = ("datetime_paths", "dossier_code_paths", "topics", "validate")

    def __init__(self, schema: Mapping[str, Any], topics: tuple[str, ...]) -> None:
        self.validate = _compile(schema)
        self.topics = topics
        # A pattern cannot know that 2025-02-30 does not exist, nor bound a year.
        self.datetime_paths = _paths_where(schema, lambda node: node.get("format") == "date-time")
        # None in contract 1.1's data; a dossier code added to data later is checked like subject.
        self.dossier_code_paths = _paths_where(
            schema, lambda node: node.get("title") == _DOSSIER_CODE_TITLE
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _key_problem(key: bytes | None) -> str:
    """Why a key that differs from the subject is wrong, without quoting either of them."""
    if key is None:
        return "Kafka key is missing (it must be the event's subject)"
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return "Kafka key is not UTF-8 (it must be the event's subject)"
    return "Kafka key is not the event's subject"


# --------------------------------------------------------------------------- outbound


def _envelope(
    *, id: str, source: str, type: str, subject: str | None, time: datetime, data: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {"specversion": "1.0", "id": id, "source": source, "type": type}
    if subject:
        event["subject"] = subject
    event["time"] = _format_time(time)
    event["datacontenttype"] = "application/json"
    event["data"] = data
    return event


def encode_outbound(event: OutboundEvent, source: str) -> bytes:
    """Structured-mode CloudEvent: compact UTF-8 JSON; `subject` is the event's key.

    Aware datetimes in `data` are written as RFC 3339 strings, so the engine may pass them as is.
    """
    envelope = _envelope(
        id=event.id,
        source=source,
        type=event.type,
        subject=event.key,
        time=event.time,
        data=event.data,
    )
    return _encode(envelope)


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """The dead letter's CloudEvent id: one input, one id, however often it is dead-lettered."""
    return f"dlq:{topic}:{partition}:{offset}"


def dead_letter(
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
    """(key, value) of the message for `dossier.dlq`; the input is carried byte for byte.

    `topic` is the Kafka topic as consumed (with any deployment prefix): it is what a re-send
    needs. The id depends only on (topic, partition, offset), so dead-lettering the same input
    again after a crash yields the same id and downstream can drop the copy.
    """
    try:
        key_text = None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        key_text = None
    subject = key_text if key_text is not None and is_dossier_code(key_text) else None
    data = {
        "reason": DeadLetterReason(reason).value,
        "detail": _clip(detail, MAX_DETAIL_CHARS),
        "original": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key_text,
            "key_base64": _b64(key),
            "value_base64": _b64(value),
            "headers": [{"key": name, "value_base64": _b64(raw)} for name, raw in headers],
        },
    }
    envelope = _envelope(
        id=dead_letter_id(topic, partition, offset),
        source=source,
        type=DEAD_LETTERED_TYPE,
        subject=subject,
        time=time,
        data=data,
    )
    return key, _encode(envelope)


# --------------------------------------------------------------------------- stored inputs


def stored_envelope(event: InboundEvent) -> dict[str, Any]:
    """An applied input as its dossier's history keeps it: the CloudEvent, and the contract
    topic it came on (the Kafka topic's prefix is a deployment's, not the input's)."""
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": event.time.isoformat(),
        "datacontenttype": "application/json",
        "data": dict(event.data),
        "topic": event.topic,
    }


def stored_input(
    envelope: Mapping[str, Any], schema_version: int, kafka_topic: str
) -> tuple[InboundEvent, bytes]:
    """A history row's input as the event it is now (upcast to the current schema version)
    and as bytes a replay can hand the engine again."""
    current = upcast(dict(envelope), schema_version)
    topic = str(current.pop("topic", None) or contract_topic(kafka_topic))
    event = InboundEvent(
        source=current["source"],
        id=current["id"],
        type=current["type"],
        subject=current["subject"],
        time=datetime.fromisoformat(current["time"]),
        data=current["data"],
        topic=topic,
    )
    return event, orjson.dumps(current)


@cache
def _outbound_validator(type_: str) -> Validator:
    return _compile(load_schema(f"outbound/{type_.removeprefix(TYPE_PREFIX)}.schema.json"))


def validate_outbound(value: bytes) -> dict[str, Any]:
    """Check an encoded output against its outbound schema (for tests and debugging)."""
    event = json.loads(value)
    type_ = event.get("type") if isinstance(event, dict) else None
    if type_ not in OUTBOUND_TOPIC_BY_TYPE:
        raise OutboundSchemaError(f"not a contract outbound type: {type_!r}")
    try:
        _outbound_validator(type_)(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise OutboundSchemaError(_schema_detail(exc, envelope=True)) from None
    checked: dict[str, Any] = event
    return checked


# --------------------------------------------------------------------------- the codec


class ContractCodec:
    """Turns one inbound Kafka message into an `InboundEvent` or raises `InputRejected`.

    `clock` is the wall clock that bounds an input's `time` (contract 1.1, "Time"); it must
    return an aware datetime. Business time still comes from `time` alone.
    """

    def __init__(
        self,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        if clock().utcoffset() is None:
            # Comparing a naive clock with an aware `time` would raise in every decode.
            raise ValueError("clock must return an aware datetime")
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self._envelope = _compile(_ENVELOPE_SCHEMA)
        self._types: dict[str, _InboundType] = {
            type_: _InboundType(
                load_schema(f"inbound/{type_.removeprefix(TYPE_PREFIX)}.schema.json"), topics
            )
            for type_, topics in INBOUND_TOPICS_BY_TYPE.items()
        }

    # The rest of the codec port (engine.application.codec.WireCodec): this module's functions.
    encode_outbound = staticmethod(encode_outbound)
    dead_letter = staticmethod(dead_letter)
    dead_letter_id = staticmethod(dead_letter_id)
    stored_envelope = staticmethod(stored_envelope)

    def decode(self, value: bytes | None, topic: str, *, key: bytes | None) -> InboundEvent:
        """`topic` is the contract topic name without the deployment prefix; `key` the
        message's Kafka key, which must be the event's `subject`."""
        if topic not in INBOUND_TOPICS:
            # A wiring bug in the caller, not a property of the message: fail loudly.
            raise ValueError(f"{topic!r} is not an inbound contract topic {INBOUND_TOPICS}")
        malformed = DeadLetterReason.MALFORMED
        schema = DeadLetterReason.SCHEMA

        if not value:
            raise InputRejected(malformed, "empty value")
        size = len(value)
        if size > self.max_message_bytes:
            raise InputRejected(malformed, f"oversized: {size} bytes > {self.max_message_bytes}")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputRejected(
                malformed, f"not UTF-8: invalid byte at offset {exc.start}"
            ) from None
        try:
            event = _JSON_DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise InputRejected(malformed, f"not JSON: {exc}") from None
        except _NotJSON as exc:
            raise InputRejected(malformed, f"not JSON: {exc}") from None
        except ValueError:
            # The only other ValueError of the C scanner: an integer beyond the digit limit.
            raise InputRejected(malformed, "not JSON: integer too long") from None
        except RecursionError:
            raise InputRejected(malformed, "not JSON: nested too deeply") from None
        if type(event) is not dict:
            raise InputRejected(malformed, "not a JSON object")
        # A \uD800- or \uDC00-style escape can smuggle a lone surrogate past UTF-8 validation;
        # it would crash every later UTF-8 encoding (hashing, storage), so look whenever one may
        # exist. A correctly paired escape (an emoji) takes the slow path and passes.
        if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(event):
            raise InputRejected(malformed, "not JSON: lone UTF-16 surrogate in a string")

        try:
            self._envelope(event)
        except fastjsonschema.JsonSchemaValueException as exc:
            missing = [name for name in _CLOUDEVENT_CORE if name not in event]
            if missing:
                raise InputRejected(
                    malformed, f"not a CloudEvent: missing {', '.join(missing)}"
                ) from None
            raise InputRejected(schema, _schema_detail(exc, envelope=True)) from None

        subject: str = event["subject"]
        # The key decides the partition, so the dossier's order; a subject that differs would
        # apply the input to one dossier in the order of another. The pattern made it ASCII.
        if key != subject.encode("ascii"):
            raise InputRejected(malformed, _key_problem(key))
        if not _is_calendar_dossier_code(subject):
            raise InputRejected(schema, "subject: dossier code date is not a calendar date")

        version = int(event.get("schemaversion", CURRENT_SCHEMA_VERSION))
        if version > CURRENT_SCHEMA_VERSION:
            raise InputRejected(
                schema, f"schemaversion: {version} is newer than {CURRENT_SCHEMA_VERSION}"
            )
        time_text: str = event["time"]
        try:
            time = _parse_time(time_text)
        except ValueError:
            raise InputRejected(schema, "time: not a valid date-time") from None
        # Once inside the bounds, every conversion and the engine's arithmetic are safe.
        utc = _in_utc(time, time_text)
        if utc is None or utc > self.clock() + MAX_TIME_AHEAD:
            raise InputRejected(schema, "time: outside [2000-01-01, now + 1 day]")

        type_: str = event["type"]
        known = self._types.get(type_)
        if known is None:
            raise InputRejected(schema, f"unknown type {json.dumps(_clip(type_))}")
        if topic not in known.topics:
            raise InputRejected(
                schema,
                f"type {type_} not accepted on topic {topic} (only on {', '.join(known.topics)})",
            )

        data: dict[str, Any] = event["data"]
        try:
            known.validate(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise InputRejected(schema, _schema_detail(exc, envelope=False)) from None
        for path in known.datetime_paths:
            for parent, name in _values_at(data, path):
                moment_text = parent[name]
                try:
                    moment = _parse_time(moment_text)
                except ValueError:
                    raise InputRejected(
                        schema, f"{_path_name(path)}: not a valid date-time"
                    ) from None
                utc = _in_utc(moment, moment_text)
                if utc is None or utc >= DATA_TIME_END:
                    raise InputRejected(
                        schema, f"{_path_name(path)}: outside [2000-01-01, 2100-01-01)"
                    )
        for path in known.dossier_code_paths:
            for parent, name in _values_at(data, path):
                if not _is_calendar_dossier_code(parent[name]):
                    raise InputRejected(
                        schema, f"{_path_name(path)}: dossier code date is not a calendar date"
                    )

        return InboundEvent(
            source=event["source"],
            id=event["id"],
            type=type_,
            subject=subject,
            time=time,
            data=data,
            topic=topic,
            schema_version=version,
        )
