"""Issue 15's hostile-input regression corpus, through the service layer (in-memory store).

One named test per hostile input of the issue, each pinning contract 1.1's "Rules" (Money, Time,
Strings, Poison): the input ends as exactly one outcome with the promised dead-letter reason,
`process` never raises, the business clock moves only to the times of applied inputs, and the
next legitimate dossier on the same topic still applies.
"""

from __future__ import annotations

import base64
import enum
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.ordering import EventTimeGate, Held, event_time
from engine.application.ports import Position
from engine.application.service import BatchProcessor, BatchResult, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.dossier import Decision, Dossier
from engine.events import InboundEvent
from engine.procedures import load_catalogue
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from schemas.codec import INBOUND_TOPICS_BY_TYPE, ContractCodec, load_schema
from tests.fixtures import events as ev

CATALOGUE = load_catalogue()
CALENDAR = WorkingCalendar.load()
ENGINE = Decider(CATALOGUE, CALENDAR)
GROUP = "hostile-corpus"
ENGINE_SOURCE = "urn:test:hostile-corpus"
AGENCY = ev.COMMUNE_AGENCY
CODE = f"{AGENCY}-250303-0001"
OTHER_CODE = f"{AGENCY}-250303-0002"
SUBMISSION = "dossier.submission"
COMMUNE = "dossier.commune"
# The decoder's wall clock: fixed, so "more than 1 day after the wall clock" is deterministic.
WALL = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024


def decoder() -> ContractCodec:
    return ContractCodec(clock=lambda: WALL)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class _Key(enum.Enum):
    SUBJECT = "the event's subject"


class Feed:
    """Hands out inputs with increasing offsets per topic, as a partition would. The Kafka key
    is the event's subject unless one is given (None included)."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def __call__(
        self, topic: str, event: Mapping[str, Any] | bytes, key: bytes | _Key | None = _Key.SUBJECT
    ) -> RawInput:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        value = event if isinstance(event, bytes) else ev.to_bytes(event)
        if key is _Key.SUBJECT:
            assert not isinstance(event, bytes), "raw bytes need an explicit key"
            key = str(event["subject"]).encode()
        return RawInput(topic, Position(topic, 0, offset), key, value)


def spliced(event: Mapping[str, Any], placeholder: str, fragment: str) -> bytes:
    """The event's bytes with the JSON string `placeholder` replaced by raw JSON text: how to
    write escapes (lone surrogates) and duplicate member names that no encoder would write."""
    text = ev.to_bytes(event)
    token = json.dumps(placeholder).encode()
    assert text.count(token) == 1, placeholder
    return text.replace(token, fragment.encode("utf-8"))


class Bench:
    """A store, a feed and a processor; every run is checked against the invariants of the
    contract: each input has exactly one outcome, nothing raises, the business clock is the
    latest time of an applied input, and no deadline notice is dated after it."""

    def __init__(self, engine: Decider = ENGINE, ttl: timedelta = timedelta(days=7)) -> None:
        self.store = InMemoryStore()
        self.feed = Feed()
        self.processor = BatchProcessor(engine, decoder(), ServiceConfig(ENGINE_SOURCE, GROUP, ttl))
        self._serial = 100

    # --- running ---------------------------------------------------------------------------
    def run(self, *inputs: RawInput) -> BatchResult:
        try:
            result = self.processor.process(InMemoryUnitOfWork(self.store), list(inputs))
        except Exception as exc:  # the contract: no input may stop the engine
            pytest.fail(f"process raised {type(exc).__name__}: {exc}", pytrace=True)
        assert sum(result.outcomes.values()) == len(inputs), result.outcomes
        self.check_clock(result)
        return result

    def check_clock(self, result: BatchResult) -> None:
        latest = self.latest_applied()
        with InMemoryUnitOfWork(self.store) as uow:
            clock = uow.repo.get_clock()
        assert clock == latest, f"clock {clock} but the latest applied input is at {latest}"
        assert result.clock == latest
        for message in self.outbox("dossier.deadline"):
            assert latest is not None
            assert message.created_at <= latest
            notice_time = datetime.fromisoformat(json.loads(message.value)["time"])
            assert notice_time <= latest, "a deadline notice dated after every applied input"

    # --- what the store holds --------------------------------------------------------------
    def latest_applied(self) -> datetime | None:
        times = [row.event_time for rows in self.store.history.values() for row in rows]
        return max(times, default=None)

    def outbox(self, topic: str) -> list[Any]:
        with InMemoryUnitOfWork(self.store) as uow:
            return [m for m in uow.repo.unsent_outbox(1_000_000) if m.topic == topic]

    def letters(self) -> list[dict[str, Any]]:
        return [json.loads(m.value)["data"] for m in self.outbox("dossier.dlq")]

    def letter(self, raw: RawInput) -> dict[str, Any] | None:
        p = raw.position
        wanted = f"dlq:{p.topic}:{p.partition}:{p.offset}"
        found = [m for m in self.outbox("dossier.dlq") if m.message_id == wanted]
        assert len(found) <= 1
        return json.loads(found[0].value)["data"] if found else None

    def applied(self, raw: RawInput) -> bool:
        return any(
            row.position == raw.position for rows in self.store.history.values() for row in rows
        )

    def parked(self, raw: RawInput) -> bool:
        return any(p.position == raw.position for p in self.store.parked.values())

    def fate(self, raw: RawInput) -> str:
        """'applied', 'parked', 'dead_lettered:<reason>' or 'duplicate' (none of the others):
        what became of one input, from the store alone, checking it is only one of them."""
        letter = self.letter(raw)
        fates = [
            name
            for name, present in (
                ("applied", self.applied(raw)),
                ("parked", self.parked(raw)),
                (f"dead_lettered:{letter['reason'] if letter else ''}", letter is not None),
            )
            if present
        ]
        assert len(fates) <= 1, f"one input, several outcomes: {fates}"
        return fates[0] if fates else "duplicate"

    def assert_dead_lettered(self, raw: RawInput, reason: str) -> dict[str, Any]:
        letter = self.letter(raw)
        assert letter is not None, f"not dead-lettered; {self.fate(raw)}"
        assert letter["reason"] == reason, letter["detail"]
        assert base64.b64decode(letter["original"]["value_base64"]) == raw.value
        assert not self.applied(raw) and not self.parked(raw)
        return letter

    def statuses(self, code: str) -> list[int]:
        return [
            json.loads(m.value)["data"]["status_code"]
            for m in self.outbox("dossier.status")
            if json.loads(m.value)["subject"] == code
        ]

    def notices(self, code: str) -> list[str]:
        """Types of the deadline notices sent about one dossier."""
        return [
            json.loads(m.value)["type"].rsplit(".", 1)[-1]
            for m in self.outbox("dossier.deadline")
            if json.loads(m.value)["subject"] == code
        ]

    def parked_count(self) -> int:
        return len(self.store.parked)

    # --- the legitimate traffic after a hostile input --------------------------------------
    def next_code(self) -> str:
        self._serial += 1
        return f"{AGENCY}-250310-{self._serial:04d}"

    def assert_next_dossier_applies(self, topic: str) -> None:
        """A new, legitimate dossier with an input on `topic` still applies."""
        code = self.next_code()
        inputs = [
            self.feed(
                SUBMISSION,
                ev.submitted(procedure="1.001193", dossier=code, time="2025-03-10T08:00:00+07:00"),
            )
        ]
        if topic != SUBMISSION:
            inputs.append(
                self.feed(topic, ev.received(dossier=code, time="2025-03-10T09:00:00+07:00"))
            )
        result = self.run(*inputs)
        assert result.count("applied") == len(inputs), result.outcomes
        assert self.statuses(code) == [1, 2][: len(inputs)]


def residence_until_payment_requested(bench: Bench, code: str = CODE) -> None:
    """1.004222 submitted online on 2025-03-03 (50% off LP-CT): 10,000 VND payable."""
    steps = ev.residence_lifecycle(code)[:4]
    result = bench.run(*(bench.feed(topic, event) for topic, event in steps))
    assert result.count("applied") == 4
    assert bench.statuses(code) == [1, 2, 4, 6]


def valid_submitted(code: str = CODE, **overrides: Any) -> dict[str, Any]:
    """A birth registration (1.001193) of `code` submitted on 2025-03-03."""
    return ev.submitted(
        **{"procedure": "1.001193", "dossier": code, "time": "2025-03-03T08:00:00+07:00"}
        | overrides
    )


# =========================================================================== Strings: surrogates

LONE_SURROGATES = [
    pytest.param("Nguy\\udc00n", id="lone-low"),
    pytest.param("\\udfff", id="lone-low-last"),
    pytest.param("Nguy\\ud800n", id="lone-high"),
    pytest.param("\\uDBFF", id="lone-high-upper-case-hex"),
    pytest.param("\\udc00\\ud800", id="low-then-high"),
    pytest.param("x\\ud83d", id="high-at-end"),
]


@pytest.mark.parametrize("escape", LONE_SURROGATES)
def test_lone_surrogate_in_applicant_name_of_submitted_is_malformed(escape: str) -> None:
    bench = Bench()
    event = valid_submitted(applicant={**ev.CITIZEN, "name": "@@NAME@@"})
    raw = bench.feed(SUBMISSION, spliced(event, "@@NAME@@", f'"{escape}"'), key=CODE.encode())
    result = bench.run(raw)
    assert result.count("dead_lettered") == 1
    bench.assert_dead_lettered(raw, "malformed")
    assert bench.latest_applied() is None
    bench.assert_next_dossier_applies(SUBMISSION)


def test_a_surrogate_pair_is_no_lone_surrogate() -> None:
    """The fix must not refuse legitimate astral characters written as escapes."""
    bench = Bench()
    event = valid_submitted(applicant={**ev.CITIZEN, "name": "@@NAME@@"})
    raw = bench.feed(
        SUBMISSION, spliced(event, "@@NAME@@", '"An \\ud83d\\ude00"'), key=CODE.encode()
    )
    assert bench.run(raw).count("applied") == 1


@pytest.mark.parametrize(
    "where",
    ["envelope-extension", "member-name", "nested-extra-field", "event-id"],
)
def test_lone_surrogate_anywhere_is_malformed(where: str) -> None:
    bench = Bench()
    if where == "envelope-extension":
        event = valid_submitted(note="@@X@@")
        fragment = '"\\udc00"'
    elif where == "member-name":
        event = valid_submitted(data_extra={"@@X@@": 1})
        fragment = '"\\udc00"'
    elif where == "nested-extra-field":
        event = valid_submitted(data_extra={"attachments": [{"title": ["ok", "@@X@@"]}]})
        fragment = '"ti\\udc01tle"'
    else:
        event = valid_submitted(id="@@X@@")
        fragment = '"id-\\udfff"'
    raw = bench.feed(SUBMISSION, spliced(event, "@@X@@", fragment), key=CODE.encode())
    bench.run(raw)
    bench.assert_dead_lettered(raw, "malformed")
    bench.assert_next_dossier_applies(SUBMISSION)


@pytest.mark.parametrize("same_batch", [False, True], ids=["later-batch", "same-batch"])
def test_surrogate_in_extra_field_of_level_input_for_unknown_dossier_then_submitted_applies(
    same_batch: bool,
) -> None:
    """A level-topic input with a lone surrogate for a dossier not submitted yet must not be
    parked (its retry would fail every later batch of that dossier): malformed at once, and
    the legitimate submission then applies."""
    bench = Bench()
    early = ev.received(
        dossier=CODE, time="2025-03-03T09:00:00+07:00", data_extra={"note": "@@X@@"}
    )
    poisoned = bench.feed(COMMUNE, spliced(early, "@@X@@", '"\\udc00"'), key=CODE.encode())
    submitted = bench.feed(SUBMISSION, valid_submitted())
    if same_batch:
        result = bench.run(poisoned, submitted)
        assert result.count("applied") == 1 and result.count("dead_lettered") == 1
    else:
        assert bench.run(poisoned).count("dead_lettered") == 1
        assert bench.parked_count() == 0
        assert bench.run(submitted).count("applied") == 1
    bench.assert_dead_lettered(poisoned, "malformed")
    assert bench.fate(submitted) == "applied"
    assert bench.parked_count() == 0
    # The dossier goes on with a legitimate reception.
    received = bench.feed(COMMUNE, ev.received(dossier=CODE, time="2025-03-03T09:30:00+07:00"))
    assert bench.run(received).count("applied") == 1
    assert bench.statuses(CODE) == [1, 2]
    bench.assert_next_dossier_applies(COMMUNE)


# =========================================================================== Time


def test_time_9999_12_31_23_59_59_minus_23_59_is_schema() -> None:
    """Its UTC instant is in year 10000: nothing may even convert it, let alone keep it."""
    bench = Bench()
    raw = bench.feed(SUBMISSION, valid_submitted(time="9999-12-31T23:59:59-23:59"))
    assert bench.run(raw).count("dead_lettered") == 1
    bench.assert_dead_lettered(raw, "schema")
    assert bench.latest_applied() is None
    bench.assert_next_dossier_applies(SUBMISSION)


def test_received_at_9999_12_28_is_schema() -> None:
    """A reception dated in year 9999 of a dossier that exists: its appointment would be
    counted past year 9999, and the clock would jump there."""
    bench = Bench()
    submitted = bench.feed(SUBMISSION, valid_submitted())
    assert bench.run(submitted).count("applied") == 1
    far = bench.feed(COMMUNE, ev.received(dossier=CODE, time="9999-12-28T00:00:00Z"))
    assert bench.run(far).count("dead_lettered") == 1
    bench.assert_dead_lettered(far, "schema")
    assert bench.latest_applied() == datetime.fromisoformat("2025-03-03T08:00:00+07:00")
    received = bench.feed(COMMUNE, ev.received(dossier=CODE, time="2025-03-03T09:00:00+07:00"))
    assert bench.run(received).count("applied") == 1
    assert bench.statuses(CODE) == [1, 2]
    bench.assert_next_dossier_applies(COMMUNE)


@pytest.mark.parametrize(
    "time",
    [
        "9999-12-28T00:00:00Z",
        "9999-12-31T23:59:59+23:59",
        "0001-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "1999-12-31T00:00:00Z",
        rfc3339(WALL + timedelta(days=1, minutes=5)),
        rfc3339(WALL + timedelta(days=400)),
    ],
)
def test_time_out_of_range_is_schema(time: str) -> None:
    bench = Bench()
    raw = bench.feed(SUBMISSION, valid_submitted(time=time))
    bench.run(raw)
    bench.assert_dead_lettered(raw, "schema")
    assert bench.latest_applied() is None
    bench.assert_next_dossier_applies(SUBMISSION)


def test_time_within_a_day_of_the_wall_clock_applies() -> None:
    """The other side of the limit: a clock a few hours fast is not an attack."""
    bench = Bench()
    raw = bench.feed(SUBMISSION, valid_submitted(time=rfc3339(WALL + timedelta(hours=20))))
    assert bench.run(raw).count("applied") == 1
    assert bench.latest_applied() == WALL + timedelta(hours=20)


@pytest.mark.parametrize(
    ("time", "refused"),
    [
        ("1999-12-31T23:59:59Z", True),
        ("2000-01-01T06:59:59+07:00", True),  # 1999-12-31T23:59:59Z
        ("2000-01-01T00:00:00Z", False),
        (rfc3339(WALL + timedelta(days=1)), False),
        (rfc3339(WALL + timedelta(days=1, seconds=1)), True),
    ],
)
def test_the_time_bounds_are_exact(time: str, refused: bool) -> None:
    """Before 2000-01-01 (an instant: UTC) or more than one day after the wall clock is
    `schema`; the bounds themselves are not (2000 may still be refused for other reasons: no
    procedure version was in force)."""
    bench = Bench()
    raw = bench.feed(SUBMISSION, valid_submitted(time=time))
    bench.run(raw)
    if refused:
        bench.assert_dead_lettered(raw, "schema")
    else:
        assert bench.fate(raw) not in ("dead_lettered:schema", "dead_lettered:malformed")


@pytest.mark.parametrize(
    "new_due",
    ["9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59+23:59", "0001-01-01T00:00:00+23:59"],
)
def test_an_appointment_at_the_end_of_time_is_refused(new_due: str) -> None:
    """`rescheduled.new_due` is a time in `data`: one the calendar cannot count from (or the
    clock cannot reach) is refused, and the dossier can still be rescheduled properly."""
    bench = Bench()
    steps = ev.residence_lifecycle(CODE)[:3]
    assert bench.run(*(bench.feed(t, e) for t, e in steps)).count("applied") == 3
    raw = bench.feed(
        COMMUNE, ev.rescheduled(dossier=CODE, new_due=new_due, time="2025-03-04T09:00:00+07:00")
    )
    bench.run(raw)
    assert bench.fate(raw) in ("dead_lettered:schema", "dead_lettered:invalid-transition")
    proper = bench.feed(
        COMMUNE,
        ev.rescheduled(
            dossier=CODE,
            new_due="2025-03-20T17:00:00+07:00",
            time="2025-03-04T10:00:00+07:00",
            id="reschedule-2",
        ),
    )
    assert bench.run(proper).count("applied") == 1
    assert bench.run().notices == {}
    bench.assert_next_dossier_applies(COMMUNE)


def _far(hours: int = 12) -> str:
    """Later than any legitimate input of these tests, but allowed (within a day of WALL)."""
    return rfc3339(WALL + timedelta(hours=hours))


FAR_BUT_REFUSED = ["unknown-procedure", "invalid-transition", "unauthenticated", "parked"]


@pytest.mark.parametrize("kind", FAR_BUT_REFUSED)
def test_clock_not_pushed_by_an_input_that_does_not_apply(kind: str) -> None:
    """A far (allowed) time on an input that is not applied must not move the business clock:
    otherwise every open dossier is declared overdue by one forged input."""
    bench = Bench()
    steps = ev.residence_lifecycle(CODE)[:3]  # received 2025-03-03, due 2025-03-12
    assert bench.run(*(bench.feed(t, e) for t, e in steps)).count("applied") == 3
    before = bench.latest_applied()
    stranger = f"{AGENCY}-261206-0001"
    if kind == "unknown-procedure":
        raw = bench.feed(
            SUBMISSION, ev.submitted(procedure="0.000000", dossier=stranger, time=_far())
        )
        expected = "dead_lettered:unknown-procedure"
    elif kind == "invalid-transition":  # a second submission of a dossier that exists
        raw = bench.feed(SUBMISSION, ev.submitted(procedure="1.004222", dossier=CODE, time=_far()))
        expected = "dead_lettered:invalid-transition"
    elif kind == "unauthenticated":  # an agency that does not hold the dossier receives it
        other = bench.feed(SUBMISSION, valid_submitted(OTHER_CODE))
        assert bench.run(other).count("applied") == 1
        before = bench.latest_applied()
        raw = bench.feed(
            COMMUNE, ev.received(dossier=OTHER_CODE, agency="000.00.99.H56", time=_far())
        )
        expected = "dead_lettered:unauthenticated"
    else:  # waits for a dossier that was never submitted
        raw = bench.feed(COMMUNE, ev.received(dossier=stranger, time=_far()))
        expected = "parked"
    result = bench.run(raw)
    assert bench.fate(raw) == expected
    assert result.clock == before
    assert bench.outbox("dossier.deadline") == [], "overdue notices from a refused input's time"
    assert result.notices == {}
    # The next legitimate dossier applies, and still nothing is overdue.
    bench.assert_next_dossier_applies(SUBMISSION)
    assert bench.notices(CODE) == []


def test_clock_pushed_by_dead_lettered_unknown_procedure_no_overdue_afterwards() -> None:
    """The issue's case: a `submitted` of an unknown procedure at a far but allowed time,
    in the same batch as legitimate inputs; afterwards no overdue notices."""
    bench = Bench()
    steps = ev.residence_lifecycle(CODE)[:3]
    forged = ev.submitted(procedure="9.999999", dossier=f"{AGENCY}-261206-0002", time=_far(23))
    inputs = [bench.feed(t, e) for t, e in steps] + [bench.feed(SUBMISSION, forged)]
    result = bench.run(*inputs)
    assert result.count("applied") == 3 and result.count("dead_lettered") == 1
    bench.assert_dead_lettered(inputs[-1], "unknown-procedure")
    assert result.clock == datetime.fromisoformat("2025-03-03T10:00:00+07:00")
    assert bench.run().notices == {}  # the engine's timer: an empty batch
    assert bench.outbox("dossier.deadline") == []
    bench.assert_next_dossier_applies(COMMUNE)  # due within a day: it may get its warning
    assert bench.notices(CODE) == []


@pytest.mark.parametrize(
    "time",
    [
        "0001-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
    ],
)
def test_a_hostile_time_held_by_the_ordering_gate_does_not_break_other_batches(time: str) -> None:
    """The consumer's event-time gate reads `time` before the decoder has refused it, and a
    held input's time bounds the clock of the batches released meanwhile (their ceiling). A
    hostile time held on one partition must neither fail the batch of another partition (which
    the runtime would then set aside, a legitimate input as internal-error) nor become the
    business clock. Here on a fresh engine, whose clock is not set yet."""
    bench = Bench()
    topics = ("dossier.submission", "dossier.commune", "dossier.district", "dossier.province")
    gate = EventTimeGate(topics, max_idle_s=1.0)

    def held(raw: RawInput, partition: int) -> Held:
        raw = RawInput(
            raw.contract_topic,
            Position(raw.position.topic, partition, raw.position.offset),
            raw.key,
            raw.value,
        )
        return Held(raw, event_time(raw.value))

    def lag(topic: str, partition: int, next_offset: int | None) -> int | None:
        # Partition 0's district topic has not been fetched yet: its inputs wait for it.
        return None if (partition, topic) == (0, "dossier.district") else 0

    # Partition 0 releases a reception that waits for its submission (the clock stays unset),
    # then holds a hostile reception.
    early = ev.received(dossier=f"{AGENCY}-250303-0009", time="2025-03-03T08:00:00+07:00")
    gate.add([held(bench.feed(COMMUNE, early), 0)])
    assert gate.release(lag, now=0.0) == []  # waits for the district topic
    [released] = gate.release(lag, now=2.0)  # ... for at most max_idle_s
    assert bench.run(released.raw).count("parked") == 1
    hostile = held(
        bench.feed(COMMUNE, ev.to_bytes(ev.received(dossier=CODE, time=time)), key=CODE.encode()),
        0,
    )
    assert hostile.time is None  # the gate takes no implausible time: it goes first, unheld
    gate.add([hostile])
    # Partition 1 releases a legitimate dossier meanwhile, bounded by the watermark.
    submitted = valid_submitted(OTHER_CODE, time="2025-03-03T08:30:00+07:00")
    other = held(bench.feed(SUBMISSION, submitted), 1)
    gate.add([other])
    batch = [h.raw for h in gate.release(lag, now=2.1)]
    assert batch == [hostile.raw, other.raw]
    ceiling = gate.watermark(lag)
    try:
        result = bench.processor.process(InMemoryUnitOfWork(bench.store), batch, ceiling)
    except Exception as exc:
        pytest.fail(f"a hostile held time ({time}) failed another partition's batch: {exc!r}")
    assert result.count("applied") == 1
    assert bench.fate(other.raw) == "applied"
    bench.assert_dead_lettered(hostile.raw, "schema")
    if result.clock is not None:
        assert datetime(2000, 1, 1, tzinfo=UTC) <= result.clock
        assert result.clock <= datetime.fromisoformat("2025-03-03T08:30:00+07:00")


# =========================================================================== Arrival order


@pytest.mark.parametrize("same_batch", [False, True], ids=["later-batch", "same-batch"])
def test_conflicting_copy_of_a_parked_input_is_a_conflict(same_batch: bool) -> None:
    """While an input waits, a copy with its (source, id) but other content is a conflict,
    not a duplicate; an identical copy is a duplicate; the parked original applies later."""
    bench = Bench()
    original = ev.received(dossier=CODE, officer="Trần Thị Bình", time="2025-03-03T09:00:00+07:00")
    forged = dict(original, data={**original["data"], "officer": "Kẻ Giả Mạo"})
    first = bench.feed(COMMUNE, original)
    conflicting = bench.feed(COMMUNE, forged)
    if same_batch:
        result = bench.run(first, conflicting)
        assert result.count("parked") == 1 and result.count("dead_lettered") == 1
    else:
        assert bench.run(first).count("parked") == 1
        result = bench.run(conflicting)
        assert result.count("dead_lettered") == 1 and result.count("duplicate") == 0
    bench.assert_dead_lettered(conflicting, "conflict")
    assert bench.fate(first) == "parked"
    copy = bench.feed(COMMUNE, original)
    assert bench.run(copy).count("duplicate") == 1
    assert bench.fate(copy) == "duplicate"
    # The submission arrives: the parked original (not the forged copy) applies.
    result = bench.run(bench.feed(SUBMISSION, valid_submitted()))
    assert result.count("applied") == 1 and result.unparked == 1
    assert bench.fate(first) == "applied"
    [row] = [r for r in bench.store.history[CODE] if r.type.endswith(".received")]
    assert row.envelope["data"]["officer"] == "Trần Thị Bình"
    assert bench.statuses(CODE) == [1, 2]
    assert bench.parked_count() == 0
    bench.assert_next_dossier_applies(COMMUNE)


def test_parked_input_expires_with_no_traffic() -> None:
    """The engine's timer runs empty batches: they alone must expire a parked input."""
    bench = Bench(ttl=timedelta(0))
    orphan = bench.feed(COMMUNE, ev.received(dossier=CODE, time="2025-03-03T09:00:00+07:00"))
    assert bench.run(orphan).count("parked") == 1
    expired = bench.run()
    assert expired.dead_letters == {"parked-expired": 1}
    letter = bench.assert_dead_lettered(orphan, "parked-expired")
    assert letter["original"]["key"] == CODE
    assert bench.parked_count() == 0
    assert bench.latest_applied() is None
    bench.assert_next_dossier_applies(COMMUNE)


# =========================================================================== Money

FIXED_FEE_OVERRIDES = [
    pytest.param(9_007_199_254_740_991, id="2^53-1"),
    pytest.param(1, id="1-VND"),
    pytest.param(0, id="free"),
    pytest.param(40_000, id="double"),
]


@pytest.mark.parametrize("amount", FIXED_FEE_OVERRIDES)
def test_forged_fixed_fee_in_submitted_is_schema(amount: int) -> None:
    """LP-CT of 1.004222 is fixed at 20,000 VND: a submission may not set it (with 2^53-1 as
    base the online discount granted would be 4.5 quadrillion VND)."""
    bench = Bench()
    forged = ev.submitted(
        procedure="1.004222",
        dossier=CODE,
        channel=2,
        fees=[("LP-CT", amount)],
        time="2025-03-03T08:00:00+07:00",
    )
    raw = bench.feed(SUBMISSION, forged)
    assert bench.run(raw).count("dead_lettered") == 1
    bench.assert_dead_lettered(raw, "schema")
    assert bench.outbox("dossier.fee-discount") == []
    assert CODE not in bench.store.dossiers
    # The same dossier, honestly submitted, gets the catalogue's fee and discount.
    honest = ev.submitted(
        procedure="1.004222", dossier=CODE, channel=2, time="2025-03-03T08:05:00+07:00"
    )
    assert bench.run(bench.feed(SUBMISSION, honest)).count("applied") == 1
    [grant] = [json.loads(m.value)["data"] for m in bench.outbox("dossier.fee-discount")]
    assert (grant["base_amount"], grant["discount_amount"], grant["payable_amount"]) == (
        20_000,
        10_000,
        10_000,
    )
    bench.assert_next_dossier_applies(SUBMISSION)


def _mentions_amount(detail: str, amount: int) -> bool:
    """`amount` written in `detail` as a whole number, with or without thousands separators."""
    spellings = {str(amount), f"{amount:,}", f"{amount:,}".replace(",", ".")}
    spellings |= {f"{amount:,}".replace(",", sep) for sep in (" ", "\u00a0", "\u202f")}
    return any(re.search(rf"(?<![\d.,]){re.escape(s)}(?![\d]|[.,]\d)", detail) for s in spellings)


@pytest.mark.parametrize("amount", [1, 9_999, 20_000, 0])
def test_payment_of_the_wrong_amount_is_an_invalid_transition(amount: int) -> None:
    """10,000 VND is payable after the 50% online discount: any other amount is refused with
    both amounts in the detail, and the dossier keeps waiting for the right payment."""
    bench = Bench()
    residence_until_payment_requested(bench)
    wrong = bench.feed(
        SUBMISSION,
        ev.payment_completed(dossier=CODE, amount=amount, time="2025-03-04T10:00:00+07:00"),
    )
    assert bench.run(wrong).count("dead_lettered") == 1
    letter = bench.assert_dead_lettered(wrong, "invalid-transition")
    assert _mentions_amount(letter["detail"], 10_000), letter["detail"]
    assert _mentions_amount(letter["detail"], amount), letter["detail"]
    assert bench.statuses(CODE) == [1, 2, 4, 6]
    right = bench.feed(
        SUBMISSION,
        ev.payment_completed(
            dossier=CODE, amount=10_000, id="payment-2", time="2025-03-04T11:00:00+07:00"
        ),
    )
    assert bench.run(right).count("applied") == 1
    assert bench.statuses(CODE) == [1, 2, 4, 6, 4]
    bench.assert_next_dossier_applies(SUBMISSION)


def test_payment_of_1_vnd_when_10000_due() -> None:
    """The issue's case by name."""
    bench = Bench()
    residence_until_payment_requested(bench)
    raw = bench.feed(
        SUBMISSION, ev.payment_completed(dossier=CODE, amount=1, time="2025-03-04T10:00:00+07:00")
    )
    bench.run(raw)
    letter = bench.assert_dead_lettered(raw, "invalid-transition")
    assert _mentions_amount(letter["detail"], 10_000) and _mentions_amount(letter["detail"], 1)
    bench.assert_next_dossier_applies(SUBMISSION)


def test_payment_of_the_amount_payable_applies() -> None:
    bench = Bench()
    residence_until_payment_requested(bench)
    raw = bench.feed(
        SUBMISSION,
        ev.payment_completed(dossier=CODE, amount=10_000, time="2025-03-04T10:00:00+07:00"),
    )
    assert bench.run(raw).count("applied") == 1
    assert bench.statuses(CODE) == [1, 2, 4, 6, 4]


# =========================================================================== Strings: JSON


def _with_duplicate(where: str) -> tuple[str, bytes]:
    """(topic, bytes) of a valid event of CODE with one member name written twice."""
    if where == "subject":  # the first says CODE (the Kafka key), the last another dossier
        event = valid_submitted()
        event["@@DUP@@"] = OTHER_CODE
        return SUBMISSION, spliced(event, "@@DUP@@", '"subject"')
    if where == "subject-same-value":
        event = valid_submitted()
        event["@@DUP@@"] = CODE
        return SUBMISSION, spliced(event, "@@DUP@@", '"subject"')
    if where == "id":
        event = valid_submitted()
        event["@@DUP@@"] = "another-id"
        return SUBMISSION, spliced(event, "@@DUP@@", '"id"')
    if where == "data.agency":
        event = ev.received(dossier=CODE, time="2025-03-03T09:00:00+07:00")
        event["data"]["@@DUP@@"] = "000.00.99.H56"
        return COMMUNE, spliced(event, "@@DUP@@", '"agency"')
    if where == "data.applicant.name":
        applicant = {**ev.CITIZEN, "@@DUP@@": "Người Khác"}
        return SUBMISSION, spliced(valid_submitted(applicant=applicant), "@@DUP@@", '"name"')
    assert where == "data.amount"
    event = ev.payment_completed(dossier=CODE, amount=10_000, time="2025-03-04T10:00:00+07:00")
    event["data"]["@@DUP@@"] = 1
    return SUBMISSION, spliced(event, "@@DUP@@", '"amount"')


@pytest.mark.parametrize(
    "where",
    ["subject", "subject-same-value", "id", "data.agency", "data.applicant.name", "data.amount"],
)
def test_duplicate_json_key_is_malformed(where: str) -> None:
    bench = Bench()
    topic, value = _with_duplicate(where)
    raw = bench.feed(topic, value, key=CODE.encode())
    assert bench.run(raw).count("dead_lettered") == 1
    bench.assert_dead_lettered(raw, "malformed")
    assert bench.latest_applied() is None
    bench.assert_next_dossier_applies(topic)


def test_duplicate_subject_key() -> None:
    """The issue's case by name: `subject` twice, the first matching the Kafka key, the last
    naming another dossier (which the last-wins parse would have created)."""
    bench = Bench()
    topic, value = _with_duplicate("subject")
    raw = bench.feed(topic, value, key=CODE.encode())
    bench.run(raw)
    bench.assert_dead_lettered(raw, "malformed")
    assert CODE not in bench.store.dossiers and OTHER_CODE not in bench.store.dossiers
    bench.assert_next_dossier_applies(SUBMISSION)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(OTHER_CODE.encode(), id="another-dossier"),
        pytest.param(None, id="no-key"),
        pytest.param(b"", id="empty"),
        pytest.param(CODE.encode() + b"\n", id="trailing-newline"),
        pytest.param(CODE.lower().encode(), id="lower-case"),
        pytest.param(b"\xff\xfe", id="not-utf-8"),
    ],
)
def test_kafka_key_not_the_subject_is_malformed(key: bytes | None) -> None:
    """A key other than the subject would put the dossier's events on another partition, out of
    order with its others: the contract requires the key to be the dossier code."""
    bench = Bench()
    raw = bench.feed(SUBMISSION, valid_submitted(), key=key)
    assert bench.run(raw).count("dead_lettered") == 1
    letter = bench.assert_dead_lettered(raw, "malformed")
    assert letter["original"]["key_base64"] == (
        None if key is None else base64.b64encode(key).decode()
    )
    assert CODE not in bench.store.dossiers
    bench.assert_next_dossier_applies(SUBMISSION)


def test_key_not_subject_on_a_level_topic() -> None:
    bench = Bench()
    assert bench.run(bench.feed(SUBMISSION, valid_submitted())).count("applied") == 1
    raw = bench.feed(
        COMMUNE,
        ev.received(dossier=CODE, time="2025-03-03T09:00:00+07:00"),
        key=OTHER_CODE.encode(),
    )
    bench.run(raw)
    bench.assert_dead_lettered(raw, "malformed")
    assert bench.statuses(CODE) == [1]
    bench.assert_next_dossier_applies(COMMUNE)


# =========================================================================== Dossier codes


@pytest.mark.parametrize("yymmdd", ["250230", "250229", "230229", "250431", "250631", "251131"])
def test_dossier_code_with_an_impossible_date_is_schema(yymmdd: str) -> None:
    bench = Bench()
    code = f"{AGENCY}-{yymmdd}-0001"
    raw = bench.feed(SUBMISSION, valid_submitted(code))
    assert bench.run(raw).count("dead_lettered") == 1
    bench.assert_dead_lettered(raw, "schema")
    assert code not in bench.store.dossiers
    bench.assert_next_dossier_applies(SUBMISSION)


def test_30_february_code() -> None:
    """The issue's case by name: 000.00.19.H56-250230-0001."""
    bench = Bench()
    raw = bench.feed(SUBMISSION, valid_submitted("000.00.19.H56-250230-0001"))
    bench.run(raw)
    bench.assert_dead_lettered(raw, "schema")
    bench.assert_next_dossier_applies(SUBMISSION)


def test_29_february_of_a_leap_year_is_a_valid_code() -> None:
    bench = Bench()
    code = f"{AGENCY}-240229-0001"
    assert bench.run(bench.feed(SUBMISSION, valid_submitted(code))).count("applied") == 1


# =========================================================================== Strings: length


def _sized(field: str, chars: int, char: str = "a") -> tuple[str, dict[str, Any]]:
    """(topic, event) of CODE with `field` holding `chars` characters."""
    text = char * chars
    if field == "applicant.name":
        return SUBMISSION, valid_submitted(applicant={**ev.CITIZEN, "name": text})
    if field == "officer":
        return COMMUNE, ev.received(dossier=CODE, officer=text)
    if field == "reason":
        return COMMUNE, ev.reception_refused(dossier=CODE, reason=text)
    if field == "id":
        return SUBMISSION, valid_submitted(id=text)
    if field == "source":
        return SUBMISSION, valid_submitted(source="urn:" + text)
    assert field == "fees.code"
    return SUBMISSION, valid_submitted(fees=[(text, 1000)])


def _overhead(field: str) -> int:
    return len(ev.to_bytes(_sized(field, 0)[1]))


STRING_FIELDS = ["applicant.name", "officer", "reason", "id", "source", "fees.code"]


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_a_string_of_almost_1_mib_is_schema(field: str) -> None:
    """Under the message size limit, over any field's maximum length."""
    bench = Bench()
    topic, event = _sized(field, MIB - _overhead(field) - 16)
    raw = bench.feed(topic, event)
    assert raw.value is not None and len(raw.value) < MIB
    assert bench.run(raw).count("dead_lettered") == 1
    bench.assert_dead_lettered(raw, "schema")
    bench.assert_next_dossier_applies(topic)


def test_1_mib_names() -> None:
    """The issue's case by name: an applicant name of 1 MiB (Vietnamese text: 3 UTF-8 bytes a
    character) does not fit the message limit; one that fits is over the name's maximum."""
    bench = Bench()
    whole = bench.feed(*_sized("applicant.name", MIB))
    fitting = bench.feed(*_sized("applicant.name", (MIB - _overhead("applicant.name")) // 3, "ễ"))
    assert fitting.value is not None and len(fitting.value) <= MIB
    result = bench.run(whole, fitting)
    assert result.count("dead_lettered") == 2
    bench.assert_dead_lettered(whole, "malformed")  # oversized
    bench.assert_dead_lettered(fitting, "schema")
    bench.assert_next_dossier_applies(SUBMISSION)


SchemaPath = tuple[str, ...]


def _nodes(schema: Mapping[str, Any]) -> Iterator[tuple[SchemaPath, Mapping[str, Any]]]:
    """(path, node) of every schema node under properties/items/if-then-else, refs resolved."""
    root = schema

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            node = root["definitions"][str(node["$ref"]).rsplit("/", 1)[1]]
        return node

    def walk(node: Mapping[str, Any], path: SchemaPath) -> Iterator[tuple[SchemaPath, Any]]:
        node = resolve(node)
        yield path, node
        for name, child in node.get("properties", {}).items():
            yield from walk(child, (*path, name))
        items = node.get("items")
        if isinstance(items, Mapping):
            yield from walk(items, (*path, "[]"))
        for keyword in ("then", "else"):
            if isinstance(node.get(keyword), Mapping):
                yield from walk(node[keyword], path)

    yield from walk(schema, ())


def _string_nodes(schema: Mapping[str, Any]) -> Iterator[tuple[SchemaPath, Mapping[str, Any]]]:
    for path, node in _nodes(schema):
        types = node.get("type")
        if types == "string" or (isinstance(types, list) and "string" in types):
            yield path, node


def _schema_files() -> list[str]:
    return ["cloudevent.schema.json"] + [
        f"inbound/{t.removeprefix(ev.TYPE_PREFIX)}.schema.json" for t in INBOUND_TOPICS_BY_TYPE
    ]


@pytest.mark.parametrize("name", _schema_files())
def test_every_string_field_has_a_maximum_length(name: str) -> None:
    """Contract 1.1, Strings: 'Every string field has a maximum length in the schema files'."""
    unbounded = [
        ".".join(path) or "(root)"
        for path, node in _string_nodes(load_schema(name))
        if "maxLength" not in node and "enum" not in node and "const" not in node
    ]
    assert unbounded == [], f"{name}: string fields without maxLength: {unbounded}"


def _free_text_fields() -> list[Any]:
    """(short type, data path, maxLength) of every free-text string field of `data` with a
    maximum: no pattern, enum or const, so 'a' repeated is valid but for its length."""
    found: list[Any] = []
    for type_ in INBOUND_TOPICS_BY_TYPE:
        short = type_.removeprefix(ev.TYPE_PREFIX)
        schema = load_schema(f"inbound/{short}.schema.json")
        # A pattern on any branch (applicant.id_number of a citizen) makes 'aaa…' invalid.
        constrained = {
            path for path, node in _nodes(schema) if {"pattern", "enum", "const"} & set(node)
        }
        for path, node in _string_nodes(schema):
            if "maxLength" not in node or path in constrained:
                continue
            if "[]" in path or not path:
                continue
            found.append(
                pytest.param(short, path, node["maxLength"], id=f"{short}:{'.'.join(path)}")
            )
    return found


@pytest.mark.parametrize(("short", "path", "limit"), _free_text_fields())
def test_a_string_one_over_its_maximum_length_is_schema(
    short: str, path: SchemaPath, limit: int
) -> None:
    def event_with(chars: int) -> dict[str, Any]:
        event = ev.BUILDERS[short](dossier=CODE)
        parent = event["data"]
        for name in path[:-1]:
            parent = parent.setdefault(name, {})
        parent[path[-1]] = "a" * chars
        return event

    bench = Bench()
    topic = ev.topic_for(short)
    at_limit = bench.feed(topic, event_with(limit))
    over = bench.feed(topic, event_with(limit + 1) | {"id": "over-the-limit"})
    bench.run(at_limit)
    assert bench.fate(at_limit) not in ("dead_lettered:schema", "dead_lettered:malformed")
    bench.run(over)
    bench.assert_dead_lettered(over, "schema")


def _limit(schema_name: str, path: SchemaPath) -> int:
    [limit] = [
        node["maxLength"]
        for at, node in _string_nodes(load_schema(schema_name))
        if at == path and "maxLength" in node
    ]
    return int(limit)


def _over_and_at(topic: str, build: Any, limit: int) -> None:
    """`build(chars, id)` makes an event of CODE with the string under test `chars` long: at the
    limit it is not refused for its shape, one over it is `schema`."""
    bench = Bench()
    at_limit = bench.feed(topic, build(limit, "at-the-limit"))
    over = bench.feed(topic, build(limit + 1, "over-the-limit"))
    bench.run(at_limit, over)
    assert bench.fate(at_limit) not in ("dead_lettered:schema", "dead_lettered:malformed")
    bench.assert_dead_lettered(over, "schema")
    bench.assert_next_dossier_applies(topic)


def test_an_event_id_one_over_its_maximum_length_is_schema() -> None:
    def build(chars: int, tag: str) -> dict[str, Any]:
        return valid_submitted(id=tag[0] * chars, time="2025-03-03T08:00:00+07:00")

    _over_and_at(SUBMISSION, build, _limit("cloudevent.schema.json", ("id",)))


def test_a_document_one_over_its_maximum_length_is_schema() -> None:
    def build(chars: int, tag: str) -> dict[str, Any]:
        return ev.supplement_provided(dossier=CODE, documents=["d" * chars], id=tag)

    limit = _limit("inbound/supplement-provided.schema.json", ("documents", "[]"))
    _over_and_at(SUBMISSION, build, limit)


def test_a_fee_code_one_over_its_maximum_length_is_schema() -> None:
    def build(chars: int, tag: str) -> dict[str, Any]:
        return ev.payment_requested(dossier=CODE, fees=[("F" * chars, 1000)], id=tag)

    limit = _limit("inbound/payment-requested.schema.json", ("fees", "[]", "code"))
    _over_and_at(COMMUNE, build, limit)


# =========================================================================== Poison


class PoisonEngine(Decider):
    """The real engine, except that applying one event id raises: an engine bug, say, that
    only this input triggers. `when_known`: only once the dossier exists (a parked retry)."""

    def __init__(
        self, poison_id: str, error: type[Exception] = TypeError, *, when_known: bool = False
    ) -> None:
        super().__init__(CATALOGUE, CALENDAR)
        self.poison_id = poison_id
        self.error = error
        self.when_known = when_known
        self.raised = 0

    def apply(self, dossier: Dossier | None, event: InboundEvent) -> Decision:
        if event.id == self.poison_id and (dossier is not None or not self.when_known):
            self.raised += 1
            raise self.error("engine bug triggered by this input")
        return super().apply(dossier, event)


@pytest.mark.parametrize("error", [TypeError, KeyError, OverflowError, ZeroDivisionError])
def test_engine_exception_is_isolated_as_internal_error(error: type[Exception]) -> None:
    poison = ev.received(dossier=CODE, time="2025-03-03T09:00:00+07:00", id="poison")
    engine = PoisonEngine("poison", error)
    bench = Bench(engine)
    other = f"{AGENCY}-250303-0003"
    inputs = [
        bench.feed(SUBMISSION, valid_submitted()),
        bench.feed(COMMUNE, poison),
        bench.feed(SUBMISSION, valid_submitted(other)),
        bench.feed(COMMUNE, ev.received(dossier=other, time="2025-03-03T09:00:00+07:00")),
    ]
    result = bench.run(*inputs)
    assert engine.raised >= 1
    assert result.count("applied") == 3 and result.count("dead_lettered") == 1
    letter = bench.assert_dead_lettered(inputs[1], "internal-error")
    assert error.__name__ in letter["detail"]
    assert letter["original"]["key"] == CODE
    assert [bench.fate(raw) for raw in (inputs[0], inputs[2], inputs[3])] == ["applied"] * 3
    assert bench.statuses(CODE) == [1] and bench.statuses(other) == [1, 2]
    # The dossier the poison was meant for goes on with a legitimate reception.
    fine = bench.feed(COMMUNE, ev.received(dossier=CODE, time="2025-03-03T09:30:00+07:00"))
    assert bench.run(fine).count("applied") == 1
    assert bench.statuses(CODE) == [1, 2]
    bench.assert_next_dossier_applies(COMMUNE)


def test_engine_exception_on_a_parked_retry_is_isolated_as_internal_error() -> None:
    """The poison is parked first (its dossier unknown) and raises only when retried, in the
    batch of the submission it waited for: the submission still applies."""
    engine = PoisonEngine("poison", TypeError, when_known=True)
    bench = Bench(engine)
    early = bench.feed(
        COMMUNE, ev.received(dossier=CODE, time="2025-03-03T09:00:00+07:00", id="poison")
    )
    assert bench.run(early).count("parked") == 1
    submitted = bench.feed(SUBMISSION, valid_submitted())
    result = bench.run(submitted)
    assert engine.raised >= 1
    assert result.count("applied") == 1
    assert bench.fate(submitted) == "applied"
    letter = bench.assert_dead_lettered(early, "internal-error")
    assert "TypeError" in letter["detail"]
    assert bench.parked_count() == 0
    assert bench.statuses(CODE) == [1]
    bench.assert_next_dossier_applies(COMMUNE)


def test_an_engine_exception_in_the_issue_words() -> None:
    """The issue's case by name: one input whose handling raises, amid a whole lifecycle."""
    steps = ev.residence_lifecycle(CODE)
    poisoned_id = steps[2][1]["id"]  # processing-started
    bench = Bench(PoisonEngine(poisoned_id))
    inputs = [bench.feed(t, e) for t, e in steps]
    result = bench.run(*inputs)
    assert sum(result.outcomes.values()) == len(inputs)
    letter = bench.assert_dead_lettered(inputs[2], "internal-error")
    assert "TypeError" in letter["detail"]
    assert bench.fate(inputs[0]) == "applied" and bench.fate(inputs[1]) == "applied"
    bench.assert_next_dossier_applies(COMMUNE)
