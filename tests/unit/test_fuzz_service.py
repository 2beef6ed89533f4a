"""Fuzz properties of the service layer (issue 15): valid events, mutated the way a hostile or
broken producer would (bytes flipped, member names duplicated, strings replaced by lone
surrogates, huge strings or control characters, numbers and times at the edges, wrong keys and
topics), in batches of any size, through `BatchProcessor` over the in-memory store.

Whatever comes in: `process` never raises, every input ends as exactly one outcome, the business
clock is the time of the latest applied input and no deadline notice is dated after it, every
dead letter carries the input's bytes, and every output satisfies its outbound schema.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from consumers.ordering import EventTimeGate, Held, event_time
from engine.application.ports import Position
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.events import INBOUND_TOPICS
from engine.procedures import load_catalogue
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec, DeadLetterReason, validate_outbound
from tests.fixtures import events as ev

WALL = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # contract 1.1, Time: nothing before is applied
GROUP = "fuzz"
RESIDENCE = f"{ev.COMMUNE_AGENCY}-250303-0001"
BIRTH = f"{ev.COMMUNE_AGENCY}-250303-0002"
OTHER = f"{ev.COMMUNE_AGENCY}-250304-0003"
MIB = 1024 * 1024
REASONS = {reason.value for reason in DeadLetterReason}

# One decoder and processor for every example: compiling the schemas is the slow part, and
# neither keeps state between batches (the store does).
PROCESSOR = BatchProcessor(
    Decider(load_catalogue(), WorkingCalendar.load()),
    ContractCodec(clock=lambda: WALL),
    ServiceConfig("urn:test:fuzz", GROUP, timedelta(days=7)),
)


def _base_events() -> list[tuple[str, dict[str, Any]]]:
    """Valid (topic, event) pairs: a whole residence registration with its fee, the start of a
    birth registration, and a land certificate's first steps."""
    birth = [
        (
            "dossier.submission",
            ev.submitted(procedure="1.001193", dossier=BIRTH, time="2025-03-03T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=BIRTH, time="2025-03-03T08:30:00+07:00")),
        (
            "dossier.commune",
            ev.rescheduled(
                dossier=BIRTH,
                new_due="2025-03-20T17:00:00+07:00",
                time="2025-03-03T09:30:00+07:00",
            ),
        ),
    ]
    land = [
        (
            "dossier.submission",
            ev.submitted(procedure="DD.GCN.LD", dossier=OTHER, time="2025-03-04T08:00:00+07:00"),
        ),
        ("dossier.commune", ev.received(dossier=OTHER, time="2025-03-04T08:30:00+07:00")),
        ("dossier.commune", ev.processing_started(dossier=OTHER, time="2025-03-04T09:00:00+07:00")),
        (
            "dossier.commune",
            ev.transferred(dossier=OTHER, time="2025-03-04T10:00:00+07:00"),
        ),
    ]
    return ev.residence_lifecycle(RESIDENCE) + birth + land


BASE = _base_events()

# --------------------------------------------------------------------------- mutations

Json = Any
JsonPath = tuple[str | int, ...]

LONE_SURROGATES = ["\udc00", "\udfff", "\ud800", "\udbff", "x\udc00y", "\udc00\ud800"]
CONTROL = ["\x00", "\x01", "\x1b[31m", "\x7f", "\u0085", "\u2028", "\u202e", "\ufeff", "\r\n"]
EDGE_NUMBERS = [
    "0",
    "-1",
    "1",
    "9007199254740991",
    "9007199254740992",
    "18446744073709551616",
    "-9223372036854775809",
    "1e308",
    "1e309",
    "-1e309",
    "-0.0",
    "0.5",
    "20000.0",
    "1E4",
    "1e-400",
    "1" + "0" * 5000,
    "true",
    "false",
    "null",
    '"10000"',
    "[]",
    "{}",
]
EDGE_TIMES = [
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59+23:59",
    "9999-12-28T00:00:00Z",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "1999-12-31T23:59:59Z",
    "2000-01-01T00:00:00Z",
    "2000-01-01T00:00:00+14:00",
    "2025-02-29T09:00:00+07:00",
    "2025-03-03T09:00:00.0000000000000000000000000001+07:00",
    "2025-03-03T09:00:00." + "9" * 100_000 + "+07:00",
    "2025-03-03t09:00:00z",
    "2025-03-03T09:00:60+07:00",
    (WALL + timedelta(hours=23)).isoformat(),
    (WALL + timedelta(days=1, seconds=1)).isoformat(),
    (WALL + timedelta(days=366)).isoformat(),
]


def _leaves(value: Json, path: JsonPath = ()) -> list[JsonPath]:
    """Paths of every value in a JSON document, containers included (root excluded)."""
    found: list[JsonPath] = [path] if path else []
    if isinstance(value, dict):
        for name, child in value.items():
            found += _leaves(child, (*path, name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _leaves(child, (*path, index))
    return found


def _objects(value: Json, path: JsonPath = ()) -> list[JsonPath]:
    found: list[JsonPath] = [path] if isinstance(value, dict) and value else []
    if isinstance(value, dict):
        for name, child in value.items():
            found += _objects(child, (*path, name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _objects(child, (*path, index))
    return found


def _set(document: Json, path: JsonPath, new: Json) -> None:
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = new


def _get(document: Json, path: JsonPath) -> Json:
    for step in path:
        document = document[step]
    return document


PLACEHOLDER = "@@fuzz-placeholder@@"


def _dump(event: Json, ascii_only: bool) -> bytes:
    # ensure_ascii writes any lone surrogate as a \udXXX escape: what a hostile producer sends.
    text = json.dumps(event, ensure_ascii=ascii_only, separators=(",", ":"))
    return text.encode("ascii" if ascii_only else "utf-8")


def _splice(event: Json, fragment: str, ascii_only: bool) -> bytes:
    """Bytes of `event` whose one PLACEHOLDER string is replaced by raw JSON text."""
    value = _dump(event, ascii_only)
    token = json.dumps(PLACEHOLDER).encode()
    assert value.count(token) == 1
    return value.replace(token, fragment.encode("utf-8"))


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    what: str  # for failure reports


Mutation = Callable[[st.DrawFn, str, dict[str, Any]], Message]


def _keyed(topic: str, event: Json, value: bytes, what: str) -> Message:
    subject = event.get("subject") if isinstance(event, dict) else None
    key = subject.encode("utf-8", "surrogatepass") if isinstance(subject, str) else None
    return Message(topic, key, value, what)


def valid(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    return _keyed(topic, event, _dump(event, draw(st.booleans())), "valid")


def flip_bytes(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    value = bytearray(_dump(event, draw(st.booleans())))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(value) - 1))
        value[at] = draw(st.integers(0, 255))
    return _keyed(topic, event, bytes(value), "bytes flipped")


def truncate(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    value = _dump(event, False)
    return _keyed(topic, event, value[: draw(st.integers(0, len(value) - 1))], "truncated")


def duplicate_key(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    path = draw(st.sampled_from(_objects(event)))
    target = _get(event, path) if path else event
    name = draw(st.sampled_from(sorted(target)))
    second = draw(
        st.sampled_from([OTHER, "0.000000", 1, 0, None, "000.00.99.H56", target[name], []])
    )
    target[PLACEHOLDER] = second
    return _keyed(topic, event, _splice(event, json.dumps(name), False), f"duplicate {path}/{name}")


def replace_string(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    strings = [p for p in _leaves(event) if isinstance(_get(event, p), str)]
    path = draw(st.sampled_from(strings))
    kind = draw(st.sampled_from(["surrogate", "huge", "control", "empty", "emoji"]))
    old: str = _get(event, path)
    if kind == "surrogate":
        new = old[:1] + draw(st.sampled_from(LONE_SURROGATES)) + old[1:]
    elif kind == "huge":
        size = draw(st.sampled_from([1_000, 65_537, 300_000, MIB - 1_000, MIB + 1]))
        new = draw(st.sampled_from(["a", "ễ", "0", "A"])) * size
    elif kind == "control":
        new = old + draw(st.sampled_from(CONTROL))
    elif kind == "emoji":
        new = old + "\U0001f600"
    else:
        new = ""
    _set(event, path, new)
    return _keyed(topic, event, _dump(event, kind == "surrogate" or draw(st.booleans())), kind)


def replace_value(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    path = draw(st.sampled_from(_leaves(event)))
    fragment = draw(st.sampled_from(EDGE_NUMBERS))
    _set(event, path, PLACEHOLDER)
    return _keyed(topic, event, _splice(event, fragment, False), f"{path} = {fragment[:30]}")


def edge_time(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    if draw(st.booleans()):
        moment = draw(
            st.datetimes(
                min_value=datetime(1, 1, 2),
                max_value=datetime(9999, 12, 30),
                timezones=st.sampled_from(
                    [UTC, *(timezone(timedelta(minutes=m)) for m in (-1439, -420, 420, 1439))]
                ),
            )
        )
        text = moment.isoformat()
    else:
        text = draw(st.sampled_from(EDGE_TIMES))
    field = "time"
    if "new_due" in event["data"] and draw(st.booleans()):
        event["data"]["new_due"] = text
        field = "new_due"
    else:
        event["time"] = text
    return _keyed(topic, event, _dump(event, False), f"{field} {text[:40]}")


def wrong_key(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    key = draw(
        st.sampled_from([None, b"", OTHER.encode(), b"\xff", str(event["subject"]).encode() + b" "])
    )
    return Message(topic, key, _dump(event, False), f"key {key!r}")


def wrong_topic(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    other = draw(st.sampled_from([t for t in INBOUND_TOPICS if t != topic]))
    return _keyed(other, event, _dump(event, False), f"on {other}")


def replayed_id(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    """Another base event's (source, id) on this content: a conflict or a forgery."""
    _, donor = draw(st.sampled_from(BASE))
    event["id"], event["source"] = donor["id"], donor["source"]
    return _keyed(topic, event, _dump(event, False), f"id of {donor['id']}")


def garbage(draw: st.DrawFn, topic: str, event: dict[str, Any]) -> Message:
    value = draw(st.one_of(st.none(), st.binary(max_size=200)))
    return Message(topic, draw(st.one_of(st.none(), st.binary(max_size=50))), value, "garbage")


MUTATIONS: list[Mutation] = [
    valid,
    valid,
    valid,
    flip_bytes,
    truncate,
    duplicate_key,
    replace_string,
    replace_string,
    replace_value,
    replace_value,
    edge_time,
    edge_time,
    wrong_key,
    wrong_topic,
    replayed_id,
    garbage,
]


HOSTILE = f"{ev.COMMUNE_AGENCY}-250305-0999"


@st.composite
def messages(
    draw: st.DrawFn, readdressed: bool = False, mutations: Sequence[Mutation] = MUTATIONS
) -> Message:
    """A base event, mutated. `readdressed`: moved first to another dossier with another id,
    so that only what the mutation does to it could touch the base dossiers."""
    topic, event = draw(st.sampled_from(BASE))
    event = json.loads(json.dumps(event))
    if readdressed:
        event["subject"] = HOSTILE
        event["id"] = f"hostile:{event['id']}"
    mutation = draw(st.sampled_from(mutations))
    return mutation(draw, topic, event)


@st.composite
def batches(draw: st.DrawFn) -> list[list[Message]]:
    """Some mutated messages amid the valid ones, cut into batches (empty ones are the
    engine's timer)."""
    stream = draw(st.lists(messages(), min_size=1, max_size=14))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


# --------------------------------------------------------------------------- the properties


class Run:
    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.offsets: dict[tuple[str, int], int] = {}
        self.inputs: list[tuple[RawInput, Message]] = []

    def raw(self, message: Message, partition: int = 0) -> RawInput:
        slot = (message.topic, partition)
        offset = self.offsets.get(slot, 0)
        self.offsets[slot] = offset + 1
        raw = RawInput(
            message.topic, Position(message.topic, partition, offset), message.key, message.value
        )
        self.inputs.append((raw, message))
        return raw

    def process(self, batch: Sequence[Message]) -> BatchResult:
        return self.process_raws([self.raw(m) for m in batch])

    def process_raws(
        self, raws: Sequence[RawInput], ceiling: datetime | None = None
    ) -> BatchResult:
        try:
            result = PROCESSOR.process(InMemoryUnitOfWork(self.store), raws, ceiling)
        except Exception as exc:
            whats = [m.what for raw, m in self.inputs if raw in raws]
            raise AssertionError(
                f"process raised {type(exc).__name__}: {exc} on {whats} (ceiling {ceiling})"
            ) from exc
        assert sum(result.outcomes.values()) == len(raws), (result.outcomes, len(raws))
        self.check_clock(result, exact=ceiling is None)
        return result

    def latest_applied(self) -> datetime | None:
        times = [row.event_time for rows in self.store.history.values() for row in rows]
        return max(times, default=None)

    def check_clock(self, result: BatchResult, exact: bool = True) -> None:
        """The clock is the latest applied time; under a transport's ceiling (the watermark of
        inputs held back), it may lag behind it, but it is never a time no input could apply."""
        latest = self.latest_applied()
        if exact:
            assert result.clock == latest, f"clock {result.clock}, latest applied input {latest}"
        elif result.clock is not None:
            assert latest is not None and result.clock <= latest, (result.clock, latest)
            assert result.clock >= EARLIEST, f"clock {result.clock} set by a refused time"
        for message in self.outbox():
            if message.topic == "dossier.deadline":
                assert latest is not None and message.created_at <= latest
                assert datetime.fromisoformat(json.loads(message.value)["time"]) <= latest

    def outbox(self) -> list[Any]:
        with InMemoryUnitOfWork(self.store) as uow:
            return uow.repo.unsent_outbox(1_000_000)

    def check_fates(self) -> None:
        """Each input is applied, parked, dead-lettered or a duplicate: one of them, once."""
        applied = [row.position for rows in self.store.history.values() for row in rows]
        parked = [p.position for p in self.store.parked.values()]
        letters = {m.message_id: m for m in self.outbox() if m.topic == "dossier.dlq"}
        assert len(applied) == len(set(applied)), "an input applied twice"
        for raw, message in self.inputs:
            p = raw.position
            letter = letters.get(f"dlq:{p.topic}:{p.partition}:{p.offset}")
            fates = [p in applied, p in parked, letter is not None]
            assert sum(fates) <= 1, f"{message.what}: applied/parked/dead-lettered {fates}"
            if currently_in_test_context():  # for --hypothesis-show-statistics
                fate = "applied" if p in applied else "parked" if p in parked else "duplicate"
                event(fate if letter is None else f"dead-lettered {_reason(letter)}")
            if letter is not None:
                data = json.loads(letter.value)["data"]
                assert data["reason"] in REASONS
                assert data["reason"] != "internal-error", (
                    f"a hostile input reached the engine and broke it: {message.what}: "
                    f"{data['detail']}"
                )
                original = data["original"]["value_base64"]
                assert (None if original is None else base64.b64decode(original)) == raw.value
        with InMemoryUnitOfWork(self.store) as uow:
            settled = uow.repo.outcome_counts(GROUP)
        assert sum(settled.values()) == len(self.inputs), settled
        assert all(n >= 0 for n in settled.values()), settled

    def check_outputs(self) -> None:
        for message in self.outbox():
            validate_outbound(message.value)


def _reason(letter: Any) -> str:
    return str(json.loads(letter.value)["data"]["reason"])


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(batches())
def test_any_mutated_stream_is_accounted_for_and_never_raises(
    plan: list[list[Message]],
) -> None:
    run = Run()
    for batch in plan:
        run.process(batch)
    run.process([])  # the timer's empty batch
    run.check_fates()
    run.check_outputs()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(messages(mutations=[valid, valid, edge_time, edge_time]), st.integers(0, 1)),
        min_size=1,
        max_size=12,
    ),
    st.dictionaries(
        st.tuples(st.sampled_from(INBOUND_TOPICS), st.integers(0, 1)),
        st.sampled_from([None, 3]),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(1, 4), min_size=1, max_size=6),
)
def test_through_the_ordering_gate_with_its_watermark_as_the_clock_ceiling(
    arrivals: list[tuple[Message, int]],
    lagging: dict[tuple[str, int], int | None],
    waves: list[int],
) -> None:
    """As the consumer runs it: inputs on two partitions go through the event-time gate
    (consumers.ordering), which reads their `time` before any validation, holds some back for
    topics that lag, and bounds each released batch's clock by the watermark of what it holds.
    Hostile times held back must not break the batches released meanwhile."""
    run = Run()
    gate = EventTimeGate(INBOUND_TOPICS, max_idle_s=1.0, max_lagging_wait_s=2.0)

    def lag(topic: str, partition: int, next_offset: int | None) -> int | None:
        return lagging.get((topic, partition), 0)

    now, pending = 0.0, list(arrivals)
    for wave in waves:
        arrived, pending = pending[:wave], pending[wave:]
        for message, partition in arrived:
            raw = run.raw(message, partition)
            gate.add([Held(raw, event_time(raw.value))])
        now += 0.5
        released = [h.raw for h in gate.release(lag, now)]
        ceiling = gate.watermark(lag)
        if currently_in_test_context():
            event(f"ceiling {'none' if ceiling is None else ceiling.year}")
        run.process_raws(released, ceiling)
    for message, partition in pending:
        raw = run.raw(message, partition)
        gate.add([Held(raw, event_time(raw.value))])
    while len(gate):  # the lagging topics never deliver: everything goes after its wait
        now += 2.5
        run.process_raws([h.raw for h in gate.release(lag, now)], gate.watermark(lag))
    run.process_raws([], gate.watermark(lag))  # the timer
    run.check_fates()


def _valid_message(index: int) -> Message:
    topic, event = BASE[index]
    return Message(topic, str(event["subject"]).encode(), ev.to_bytes(event), "valid")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(messages(readdressed=True), min_size=1, max_size=8),
    st.permutations(list(range(len(BASE)))),
    st.integers(1, len(BASE) + 8),
)
def test_hostile_inputs_do_not_stop_the_valid_ones(
    hostile: list[Message], order: list[int], batch_size: int
) -> None:
    """The valid lifecycles, in any arrival order and batching, amid mutated inputs of another
    dossier: the valid dossiers end exactly as they do in the same order and batches without
    the hostile inputs."""
    hostile = [m for m in hostile if not m.what.startswith("id of")]  # forgeries of valid ids
    valid = [_valid_message(index) for index in order]
    stream: list[Message] = []
    for i, message in enumerate(valid):
        stream.append(message)
        stream.extend(hostile[i :: len(order)])
    run, clean = Run(), Run()
    for start in range(0, len(stream), batch_size):
        batch = stream[start : start + batch_size]
        run.process(batch)
        clean.process([m for m in batch if m in valid])  # the same order and batches
    run.process([])
    run.check_fates()

    def states(r: Run) -> dict[str, tuple[str, int, int]]:
        return {
            code: (stored.dossier.state, stored.dossier.inputs_applied, stored.dossier.sequence)
            for code, stored in r.store.dossiers.items()
            if code != HOSTILE
        }

    assert states(run) == states(clean), [m.what for m in hostile]


def test_the_base_stream_applies_whole() -> None:
    """The strategies start from valid inputs: unmutated, every one of them applies."""
    run = Run()
    run.process([_valid_message(i) for i in range(len(BASE))])
    run.check_fates()
    with InMemoryUnitOfWork(run.store) as uow:
        counts = uow.repo.outcome_counts(GROUP)
    assert counts.get(("dossier.submission", "applied"), 0) + counts.get(
        ("dossier.commune", "applied"), 0
    ) == len(BASE)
