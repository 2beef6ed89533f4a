"""The service layer over the in-memory unit of work: one batch, one transaction, every input
accounted for exactly once."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.application.ports import ChangeSet, Position
from engine.application.service import BatchProcessor, RawInput, ServiceConfig
from engine.calendar import WorkingCalendar
from engine.decider import Decider
from engine.procedures import load_catalogue
from engine.store.memory import InMemoryRepository, InMemoryStore, InMemoryUnitOfWork
from schemas.codec import ContractCodec
from tests.fixtures import events as ev

ENGINE = Decider(load_catalogue(), WorkingCalendar.load())
GROUP = "test-group"
CODE = "000.00.19.H56-250303-0001"


DECODER = ContractCodec()


def processor(ttl: timedelta = timedelta(days=7)) -> BatchProcessor:
    return BatchProcessor(ENGINE, DECODER, ServiceConfig("urn:test:engine", GROUP, ttl))


class Feed:
    """Hands out inputs with increasing offsets per topic, as a partition would."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def __call__(self, topic: str, event: Any, key: bytes | None = None) -> RawInput:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        value = event if isinstance(event, bytes) else ev.to_bytes(event)
        if key is None and isinstance(event, dict):
            key = str(event["subject"]).encode()
        return RawInput(topic, Position(topic, 0, offset), key, value)


def lifecycle(code: str = CODE) -> list[tuple[str, dict[str, Any]]]:
    return ev.residence_lifecycle(code)


def status_codes(store: InMemoryStore) -> list[int]:
    uow = InMemoryUnitOfWork(store)
    with uow:
        messages = uow.repo.unsent_outbox(10_000)
    return [
        json.loads(m.value)["data"]["status_code"] for m in messages if m.topic == "dossier.status"
    ]


def test_a_batch_applies_records_history_ledger_outbox_and_positions() -> None:
    store, feed = InMemoryStore(), Feed()
    result = processor().process(InMemoryUnitOfWork(store), [feed(t, e) for t, e in lifecycle()])
    assert result.count("applied") == 7
    assert status_codes(store) == [1, 2, 4, 6, 4, 9, 10]
    uow = InMemoryUnitOfWork(store)
    with uow:
        assert [row.seq for row in uow.repo.history(CODE)] == list(range(1, 8))
        assert uow.repo.load_positions(GROUP) == {
            ("dossier.submission", 0): 2,
            ("dossier.commune", 0): 5,
        }
        stored = uow.repo.load_dossiers([CODE])[CODE]
    assert stored.dossier.status_code == 10
    assert result.discount_vnd["single-level"] == 10000


def test_a_batch_whose_write_fails_commits_nothing() -> None:
    store, feed = InMemoryStore(), Feed()
    inputs = [feed(t, e) for t, e in lifecycle()]

    class Boom(Exception):
        pass

    class HistoryFails(InMemoryRepository):
        def write(self, changes: ChangeSet) -> None:
            # Half written, then the store fails.
            super().write(ChangeSet(dossiers=changes.dossiers, history=changes.history[:2]))
            raise Boom

    class BrokenUnitOfWork(InMemoryUnitOfWork):
        def _begin(self) -> None:
            self.repo = self._repo = HistoryFails(self.store)

    with pytest.raises(Boom):
        processor().process(BrokenUnitOfWork(store), inputs)
    assert status_codes(store) == []
    uow = InMemoryUnitOfWork(store)
    with uow:
        assert uow.repo.load_positions(GROUP) == {}
        assert uow.repo.load_dossiers([CODE]) == {}
        assert uow.repo.history(CODE) == []


def test_an_input_whose_handling_raises_is_dead_lettered_and_the_rest_apply() -> None:
    store, feed = InMemoryStore(), Feed()
    inputs = [feed(t, e) for t, e in lifecycle()]
    poison = inputs[-1]  # result-returned: nothing after it depends on it

    class Boom(Exception):
        pass

    class FailsOnOneInput(Decider):
        def apply(self, dossier: Any, event: Any) -> Any:
            if event.short_type == "result-returned":
                raise Boom("personal data could be quoted here: 001090012345")
            return super().apply(dossier, event)

    broken = processor()
    broken.decider = FailsOnOneInput(ENGINE.catalogue, ENGINE.calendar)
    result = broken.process(InMemoryUnitOfWork(store), inputs)
    assert result.count("dead_lettered") == 1
    assert result.dead_letters == {"internal-error": 1}
    assert result.count("applied") == len(inputs) - 1
    uow = InMemoryUnitOfWork(store)
    with uow:
        letters = [m for m in uow.repo.unsent_outbox(10_000) if m.topic == "dossier.dlq"]
    assert len(letters) == 1
    data = json.loads(letters[0].value)["data"]
    assert data["reason"] == "internal-error"
    assert "Boom" in data["detail"] and "001090012345" not in data["detail"]
    assert base64.b64decode(data["original"]["value_base64"]) == poison.value


def test_redelivered_positions_are_skipped_and_resent_events_are_duplicates() -> None:
    store, feed = InMemoryStore(), Feed()
    inputs = [feed(t, e) for t, e in lifecycle()]
    processor().process(InMemoryUnitOfWork(store), inputs[:4])
    # The broker re-delivers the whole range after a crash: the first four are skipped.
    again = processor().process(InMemoryUnitOfWork(store), inputs)
    assert again.redelivered == 4 and again.count("applied") == 3
    # A producer re-sends an event at a new offset: same source, id and content.
    resent = feed(*lifecycle()[1])
    dup = processor().process(InMemoryUnitOfWork(store), [resent])
    assert dup.count("duplicate") == 1
    assert status_codes(store) == [1, 2, 4, 6, 4, 9, 10]


def test_same_id_with_other_content_is_a_conflict_dead_letter() -> None:
    store, feed = InMemoryStore(), Feed()
    topic, submitted = lifecycle()[0]
    processor().process(InMemoryUnitOfWork(store), [feed(topic, submitted)])
    altered = dict(submitted, data={**submitted["data"], "channel": 1})
    raw = feed(topic, altered)
    result = processor().process(InMemoryUnitOfWork(store), [raw])
    assert result.dead_letters == {"conflict": 1}
    uow = InMemoryUnitOfWork(store)
    with uow:
        [letter] = [m for m in uow.repo.unsent_outbox(100) if m.topic == "dossier.dlq"]
    body = json.loads(letter.value)
    assert body["data"]["reason"] == "conflict"
    assert base64.b64decode(body["data"]["original"]["value_base64"]) == raw.value
    assert letter.message_id == f"dlq:{topic}:0:1"


def test_parked_inputs_wait_for_their_dossier_across_batches() -> None:
    store, feed = InMemoryStore(), Feed()
    steps = [feed(t, e) for t, e in lifecycle()]
    early = processor().process(InMemoryUnitOfWork(store), [steps[2], steps[1]])
    assert early.count("parked") == 2
    later = processor().process(InMemoryUnitOfWork(store), [steps[0]])
    assert later.count("applied") == 1 and later.unparked == 2
    assert status_codes(store) == [1, 2, 4]
    uow = InMemoryUnitOfWork(store)
    with uow:
        assert uow.repo.parked_count() == 0


def test_parked_inputs_expire_in_real_time_not_business_time() -> None:
    store, feed = InMemoryStore(), Feed()
    orphan = feed(
        "dossier.commune",
        ev.received(dossier="000.00.19.H56-250303-0009", time="2025-03-03T09:00:00+07:00"),
    )
    processor(timedelta(hours=1)).process(InMemoryUnitOfWork(store), [orphan])
    # A year of business time passes in one batch (a backlog read fast): nothing expires.
    year_later = feed(
        "dossier.submission",
        ev.submitted(procedure="1.001193", dossier=CODE, time="2026-03-03T12:00:00+07:00"),
    )
    result = processor(timedelta(hours=1)).process(InMemoryUnitOfWork(store), [year_later])
    assert result.dead_letters == {}
    # One whose real-time wait has run out is dead-lettered by the next batch, bytes and all.
    impatient = feed(
        "dossier.commune",
        ev.received(dossier="000.00.19.H56-250303-0010", time="2025-03-03T09:00:00+07:00"),
    )
    processor(timedelta(0)).process(InMemoryUnitOfWork(store), [impatient])
    expired = processor(timedelta(0)).process(InMemoryUnitOfWork(store), [])
    assert expired.dead_letters == {"parked-expired": 1}
    uow = InMemoryUnitOfWork(store)
    with uow:
        assert uow.repo.parked_count() == 1  # the first orphan still waits
        [letter] = [m for m in uow.repo.unsent_outbox(100) if m.topic == "dossier.dlq"]
    body = json.loads(letter.value)["data"]
    assert base64.b64decode(body["original"]["value_base64"]) == impatient.value


def test_deadline_notices_follow_the_business_clock() -> None:
    store, feed = InMemoryStore(), Feed()
    steps = [feed(t, e) for t, e in lifecycle()[:3]]
    processor().process(InMemoryUnitOfWork(store), steps)  # due 2025-03-12 09:00
    other = feed(
        "dossier.submission",
        ev.submitted(
            procedure="1.001193",
            dossier="000.00.19.H56-250313-0001",
            time="2025-03-13T09:00:00+07:00",
        ),
    )
    result = processor().process(InMemoryUnitOfWork(store), [other])
    assert result.notices == {"overdue": 1}
    again = feed(
        "dossier.submission",
        ev.submitted(
            procedure="1.001193",
            dossier="000.00.19.H56-250314-0001",
            time="2025-03-14T09:00:00+07:00",
        ),
    )
    assert processor().process(InMemoryUnitOfWork(store), [again]).notices == {}


@st.composite
def delivery_plans(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """An arrival order of the lifecycle's steps, and which of them are delivered twice."""
    order = draw(st.permutations(list(range(7))))
    twice = draw(st.lists(st.sampled_from(order), max_size=4))
    cut = draw(st.integers(0, len(order)))
    return list(order)[:cut] + twice + list(order)[cut:], twice


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delivery_plans(), st.integers(1, 5))
def test_any_input_delivered_twice_equals_once(
    plan: tuple[list[int], list[int]], batch: int
) -> None:
    order, _ = plan
    steps = lifecycle()

    def run(sequence: list[int]) -> tuple[list[int], int]:
        store, feed = InMemoryStore(), Feed()
        inputs = [feed(*steps[i]) for i in sequence]
        for start in range(0, len(inputs), batch):
            processor().process(InMemoryUnitOfWork(store), inputs[start : start + batch])
        uow = InMemoryUnitOfWork(store)
        with uow:
            history = len(uow.repo.history(CODE))
        return status_codes(store), history

    once = run(sorted(set(order), key=order.index))
    assert run(order) == once


def test_outcome_counts_settle_parked_inputs() -> None:
    store, feed = InMemoryStore(), Feed()
    steps = [feed(t, e) for t, e in lifecycle()]
    processor().process(InMemoryUnitOfWork(store), [steps[2], steps[1]])
    processor().process(InMemoryUnitOfWork(store), [steps[0], feed(*lifecycle()[0])])
    processor().process(InMemoryUnitOfWork(store), [feed("dossier.commune", b"{broken")])
    uow = InMemoryUnitOfWork(store)
    with uow:
        counts = {k: v for k, v in uow.repo.outcome_counts(GROUP).items() if v}
    assert counts == {
        ("dossier.commune", "applied"): 2,
        ("dossier.submission", "applied"): 1,
        ("dossier.submission", "duplicate"): 1,
        ("dossier.commune", "dead_lettered"): 1,
    }


def test_wall_clock_mode_raises_notices_without_new_inputs() -> None:
    store, feed = InMemoryStore(), Feed()
    steps = [feed(t, e) for t, e in lifecycle()[:3]]  # received 2025-03-03, due 2025-03-12
    business = processor()
    assert business.process(InMemoryUnitOfWork(store), steps).notices == {}
    assert (
        business.process(InMemoryUnitOfWork(store), []).notices == {}
    )  # business time stood still
    wall = BatchProcessor(
        ENGINE, DECODER, ServiceConfig("urn:test:engine", GROUP, timedelta(days=7), "wall")
    )
    assert wall.process(InMemoryUnitOfWork(store), []).notices == {"overdue": 1}


def test_deadline_notices_only_for_the_dossiers_of_the_partitions_owned() -> None:
    """Decider processes sharing a database each notify the dossiers of their own partitions."""
    store, feed = InMemoryStore(), Feed()
    first, second = "000.00.19.H56-250303-0001", "000.00.19.H56-250303-0002"

    def on(partition: int, raw: RawInput) -> RawInput:
        return replace(raw, position=replace(raw.position, partition=partition))

    received = [on(0, feed(t, e)) for t, e in lifecycle(first)[:3]]
    received += [on(1, feed(t, e)) for t, e in lifecycle(second)[:3]]  # both due 2025-03-12
    processor().process(InMemoryUnitOfWork(store), received)
    with InMemoryUnitOfWork(store) as uow:
        loaded = uow.repo.load_dossiers([first, second])
    assert (loaded[first].partition, loaded[second].partition) == (0, 1)

    def later(partition: int, day: int) -> RawInput:
        event = ev.submitted(
            procedure="1.001193",
            dossier=f"000.00.19.H56-2503{day}-0001",
            time=f"2025-03-{day}T09:00:00+07:00",
        )
        return on(partition, feed("dossier.submission", event))

    owner_of_1 = processor()
    owner_of_1.notice_partitions = frozenset({1})
    result = owner_of_1.process(InMemoryUnitOfWork(store), [later(1, 13)])
    assert result.notices == {"overdue": 1}
    owner_of_0 = processor()
    owner_of_0.notice_partitions = frozenset({0})
    result = owner_of_0.process(InMemoryUnitOfWork(store), [later(0, 14)])
    assert result.notices == {"overdue": 1}  # the other dossier's was sent by its owner
    with InMemoryUnitOfWork(store) as uow:
        notified = [
            json.loads(m.value)["subject"]
            for m in uow.repo.unsent_outbox(10_000)
            if m.topic == "dossier.deadline"
        ]
    assert sorted(notified) == [first, second]


def test_a_refused_parked_input_does_not_leave_the_ones_parked_after_it_waiting() -> None:
    """Both a wrong and the right payment arrive before the payment request: once it comes,
    the wrong one is refused and the right one still applies (every parked input gets its turn
    after each change of what waits for the dossier)."""
    store, feed = InMemoryStore(), Feed()
    steps = lifecycle()
    wrong = ev.payment_completed(
        dossier=CODE, amount=20000, time="2025-03-04T10:00:00+07:00", id="wrong-payment"
    )
    order = [steps[0], steps[1], steps[2], ("dossier.submission", wrong), steps[4], steps[3]]
    for topic, event in order:  # one batch each, as they would trickle in
        processor().process(InMemoryUnitOfWork(store), [feed(topic, event)])
    uow = InMemoryUnitOfWork(store)
    with uow:
        dossier = uow.repo.load_dossiers([CODE])[CODE].dossier
        assert uow.repo.parked_for([CODE]) == []
        letters = [m for m in uow.repo.unsent_outbox(10_000) if m.topic == "dossier.dlq"]
    assert dossier.paid and dossier.status_code == 4
    assert [json.loads(m.value)["data"]["reason"] for m in letters] == ["invalid-transition"]
