"""Event-time order across topics (the consumer's gate), with plain objects."""

from __future__ import annotations

from datetime import datetime

from consumers.ordering import EventTimeGate, Held, event_time
from engine.application.ports import Position
from engine.application.service import RawInput

TOPICS = ("p.dossier.submission", "p.dossier.commune", "p.dossier.district", "p.dossier.province")


def held(topic: str, offset: int, time: str | None, partition: int = 0) -> Held:
    raw = RawInput(topic.removeprefix("p."), Position(topic, partition, offset), b"k", b"{}")
    return Held(raw, None if time is None else datetime.fromisoformat(time))


def everything_read(topic: str, partition: int, next_offset: int | None) -> int | None:
    return 0


def offsets(items: list[Held]) -> list[tuple[str, int | None]]:
    return [(h.raw.position.topic.split(".")[-1], h.raw.position.offset) for h in items]


def test_inputs_go_lowest_event_time_first_across_topics() -> None:
    gate = EventTimeGate(TOPICS, max_idle_s=1.0)
    gate.add(
        [
            held("p.dossier.submission", 0, "2025-03-03T08:00:00+07:00"),
            held("p.dossier.submission", 1, "2025-03-05T08:00:00+07:00"),  # a withdrawal, later
            held("p.dossier.commune", 0, "2025-03-03T09:00:00+07:00"),  # the reception before it
        ]
    )
    assert offsets(gate.release(everything_read, now=0.0)) == [
        ("submission", 0),
        ("commune", 0),
        ("submission", 1),
    ]
    assert len(gate) == 0


def test_an_input_waits_for_a_topic_that_may_still_deliver_an_earlier_one() -> None:
    gate = EventTimeGate(TOPICS, max_idle_s=1.0)
    gate.add([held("p.dossier.submission", 5, "2025-03-05T08:00:00+07:00")])

    def commune_behind(topic: str, partition: int, next_offset: int | None) -> int | None:
        return None if topic.endswith("commune") else 0  # its lag is not known yet

    assert gate.release(commune_behind, now=10.0) == []
    assert gate.watermark(commune_behind) is None  # nothing released yet: no limit known
    assert gate.release(commune_behind, now=10.5) == []
    gate.add([held("p.dossier.commune", 3, "2025-03-04T08:00:00+07:00")])
    assert offsets(gate.release(commune_behind, now=10.6)) == [("commune", 3)]
    # The commune topic is still behind, and the submission input is later than what it gave.
    assert gate.watermark(commune_behind) == datetime.fromisoformat("2025-03-05T08:00:00+07:00")
    # After the idle limit the held input goes anyway: a silent producer cannot block others.
    assert offsets(gate.release(commune_behind, now=12.0)) == [("submission", 5)]


def test_partitions_are_independent_and_bad_inputs_go_at_once() -> None:
    gate = EventTimeGate(TOPICS, max_idle_s=1.0)
    gate.add(
        [
            held("p.dossier.commune", 0, "2025-03-03T09:00:00+07:00", partition=1),
            held("p.dossier.commune", 1, None, partition=0),
        ]
    )

    def partition_1_behind(topic: str, partition: int, next_offset: int | None) -> int | None:
        return 5 if partition == 1 else 0

    assert offsets(gate.release(partition_1_behind, now=0.0)) == [("commune", 1)]
    assert len(gate) == 1


def test_event_time_is_read_cheaply_and_none_when_absent() -> None:
    assert event_time(b'{"time": "2025-03-03T09:00:00+07:00"}') == datetime.fromisoformat(
        "2025-03-03T09:00:00+07:00"
    )
    for bad in (b"", b"\xff", b"[]", b'{"time": "yesterday"}', b'{"time": "2025-03-03T09:00:00"}'):
        assert event_time(bad) is None
    assert event_time(None) is None


def test_a_rebalance_forgets_what_is_held_for_partitions_given_away() -> None:
    gate = EventTimeGate(TOPICS, max_idle_s=1.0)
    gate.add(
        [
            held("p.dossier.commune", 0, "2025-03-03T09:00:00+07:00", partition=0),
            held("p.dossier.commune", 0, "2025-03-03T09:00:00+07:00", partition=1),
        ]
    )
    assert gate.forget([("p.dossier.commune", 1), ("p.dossier.submission", 1)]) == 1
    assert offsets(gate.release(everything_read, now=0.0)) == [("commune", 0)]
    assert len(gate) == 0


def test_a_topic_known_to_have_unread_records_is_waited_for_beyond_the_idle_limit() -> None:
    gate = EventTimeGate(TOPICS, max_idle_s=1.0, max_lagging_wait_s=30.0)
    gate.add([held("p.dossier.submission", 5, "2025-03-05T08:00:00+07:00")])

    def commune_has_records(topic: str, partition: int, next_offset: int | None) -> int | None:
        return 40 if topic.endswith("commune") else 0

    assert gate.release(commune_has_records, now=0.0) == []
    assert gate.release(commune_has_records, now=5.0) == []  # past the idle limit: still waits
    assert offsets(gate.release(commune_has_records, now=31.0)) == [("submission", 5)]


def test_a_lagging_topic_that_already_showed_a_later_input_holds_nothing_back() -> None:
    gate = EventTimeGate(TOPICS, max_idle_s=1.0, max_lagging_wait_s=30.0)
    gate.add([held("p.dossier.commune", 7, "2025-03-05T09:00:00+07:00")])
    assert len(gate.release(everything_read, now=0.0)) == 1  # the commune topic moved on

    def commune_has_more(topic: str, partition: int, next_offset: int | None) -> int | None:
        return 40 if topic.endswith("commune") else 0

    gate.add([held("p.dossier.submission", 5, "2025-03-05T08:00:00+07:00")])
    # Commune's next records come after 09:00, later than this 08:00 input: no need to wait.
    assert offsets(gate.release(commune_has_more, now=0.1)) == [("submission", 5)]
