"""The pieces of the parallel replay from Kafka that need no broker: the serial order as a sort
key computed per partition, the batch places the parent hands out, and the co-partitioning
checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from dossier.replay.kafka import (
    KafkaShardResult,
    merge_keys,
    order_key,
    partition_count_problem,
    serial_owners,
    shared_between_workers,
)
from dossier.replay.serial import merged

TOPICS = ("p.dossier.commune", "p.dossier.district", "p.dossier.province", "p.dossier.submission")
CONTRACT = {topic: topic.removeprefix("p.") for topic in TOPICS}
T0 = datetime(2025, 6, 2, 8, 0, tzinfo=timezone(timedelta(hours=7)))
ZONES = (timezone(timedelta(hours=7)), UTC, timezone(timedelta(hours=-5)))


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


# A few instants, each written in several offsets (equal times tie), and values with no
# readable time (they sort as the earliest, as bad inputs do).
values = st.one_of(
    st.builds(
        lambda minutes, zone: orjson.dumps(
            {"time": (T0 + timedelta(minutes=minutes)).astimezone(zone).isoformat()}
        ),
        st.integers(0, 5),
        st.sampled_from(ZONES),
    ),
    st.sampled_from([b"{not json", b'{"time": "yesterday"}', b'{"time": "2025-06-02T08:00:00"}']),
    st.none(),
)
partitions = st.dictionaries(
    st.tuples(st.sampled_from(TOPICS), st.integers(0, 3)),
    st.tuples(st.integers(0, 1000), st.lists(values, max_size=8)),
    max_size=10,
).map(
    lambda drawn: {
        slot: [Record(start + n, value) for n, value in enumerate(items)]
        for slot, (start, items) in drawn.items()
    }
)

Slot = tuple[str, int]
Place = tuple[str, int, int]  # topic, partition, offset


def serial_order(records: Mapping[Slot, Sequence[Record]]) -> list[Place]:
    order: list[Place] = []
    for raw in merged(records, CONTRACT):
        position = raw.position
        assert position.partition is not None and position.offset is not None
        order.append((position.topic, position.partition, position.offset))
    return order


def sorted_by_keys(records: Mapping[Slot, Sequence[Record]]) -> list[Place]:
    rank = {topic: n for n, topic in enumerate(sorted(TOPICS))}
    keyed: list[tuple[int, Place]] = []
    for (topic, partition), items in records.items():
        keys = merge_keys(items, rank[topic], partition)
        keyed.extend(
            (key, (topic, partition, r.offset)) for key, r in zip(keys, items, strict=True)
        )
    return [place for _, place in sorted(keyed)]


@settings(max_examples=300, deadline=None)
@given(partitions, st.data())
def test_the_merge_is_a_sort_by_per_partition_keys(
    records: dict[Slot, list[Record]], data: st.DataObject
) -> None:
    full = serial_order(records)
    assert sorted_by_keys(records) == full
    # So merging any subset of the partitions yields the full merge restricted to it.
    subset = data.draw(st.sets(st.sampled_from(sorted(records)))) if records else set()
    part = {slot: records[slot] for slot in subset}
    assert serial_order(part) == [place for place in full if place[:2] in subset]


def test_order_keys_order_as_the_merge_heap_does() -> None:
    same_instant = T0.astimezone(UTC)
    assert order_key(T0, 2, 0, 9) == order_key(same_instant, 2, 0, 9)  # by instant
    assert order_key(None, 3, 5, 100) < order_key(datetime(1, 1, 2, tzinfo=UTC), 0, 0, 0)
    assert order_key(T0, 0, 7, 1) < order_key(T0, 1, 0, 0)  # then topic, partition, offset
    assert order_key(T0, 1, 0, 5) < order_key(T0, 1, 1, 0) < order_key(T0, 1, 1, 1)
    # A time east of UTC on the first day is an instant before the earliest: a key all the
    # same (the bit fields must not go negative), by instant.
    first_day = datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=7)))
    assert 0 < order_key(first_day, 3, 3, 3) < order_key(None, 0, 0, 0)


def test_serial_owners_gives_each_place_its_worker() -> None:
    worker_0 = [10 << 8 | 0, 30 << 8 | 0, 31 << 8 | 0]
    worker_1 = [20 << 8 | 1, 40 << 8 | 1]
    assert serial_owners([worker_0, worker_1]) == bytes([0, 1, 0, 0, 1])
    assert serial_owners([[], []]) == b""


def test_partition_counts_must_agree() -> None:
    three = {(f"{topic}", p): (0, 1) for topic in TOPICS for p in range(3)}
    assert partition_count_problem(three) is None
    assert partition_count_problem({}) is None
    uneven = {**three, ("p.dossier.commune", 3): (0, 0)}
    problem = partition_count_problem(uneven)
    assert problem is not None and "p.dossier.commune: 4" in problem


def test_what_two_workers_share_is_found() -> None:
    def result(codes: dict[str, int], keys: set[int]) -> KafkaShardResult:
        return KafkaShardResult(0, {}, codes, keys)

    apart = [result({"A": 0, "C": 2}, {1, 2}), result({"B": 1}, {3})]
    assert shared_between_workers(apart) is None
    code = shared_between_workers([result({"A": 0}, {1}), result({"A": 1}, {2})])
    assert code == "dossier A has inputs in partition 0 and in 1"
    key = shared_between_workers([result({"A": 0}, {1}), result({"B": 1}, {1})])
    assert key is not None and "(source, id)" in key
