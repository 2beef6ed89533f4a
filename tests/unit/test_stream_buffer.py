"""The consumer's stream buffer is bounded in bytes as well as in records."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mode.utils.queues import FlowControlEvent

from consumers.buffer import ByteBoundedQueue, record_bytes


@dataclass
class Message:
    key: bytes | None
    value: bytes | None


@dataclass
class Event:
    message: Message


def event(size: int) -> Event:
    return Event(Message(b"k", b"x" * (size - 1)))


def queue(maxsize: int = 100, max_bytes: int = 10_000) -> ByteBoundedQueue:
    flow = FlowControlEvent()
    flow.resume()  # faust resumes the flow once partitions are assigned
    return ByteBoundedQueue(maxsize=maxsize, max_bytes=max_bytes, flow_control=flow)


def test_small_records_are_bounded_by_their_count() -> None:
    q = queue()
    for _ in range(99):
        q.force_put_nowait(event(10))
    assert q.qsize() == 99 and not q.full()
    q.force_put_nowait(event(10))
    assert q.full()


def test_large_records_fill_the_buffer_by_their_bytes() -> None:
    q = queue()
    for _ in range(9):
        q.force_put_nowait(event(1000))
    assert not q.full()
    q.force_put_nowait(event(1000))  # 10 records, 10,000 bytes: the byte bound
    assert q.full()
    # faust pauses the partition at the pressure-high mark: it reads qsize() too.
    assert q.qsize() >= q.pressure_high_size


def test_bytes_are_released_as_records_are_taken_and_on_clear() -> None:
    q = queue()
    for _ in range(10):
        q.force_put_nowait(event(1000))
    q.get_nowait()
    assert q.bytes == 9000 and not q.full()
    q.clear()
    assert q.bytes == 0 and q.qsize() == 0


def test_a_put_waits_while_the_bytes_are_at_their_bound() -> None:
    async def scenario() -> list[str]:
        q = queue(maxsize=100, max_bytes=2000)
        steps: list[str] = []
        q.force_put_nowait(event(2000))

        async def producer() -> None:
            await q.put(event(10))
            steps.append("put")

        task = asyncio.ensure_future(producer())
        await asyncio.sleep(0.01)
        steps.append("taking")
        q.get_nowait()
        await asyncio.wait_for(task, 1)
        return steps

    assert asyncio.run(scenario()) == ["taking", "put"]


def test_record_bytes_counts_key_and_value_and_ignores_other_items() -> None:
    assert record_bytes(Event(Message(b"ab", b"cde"))) == 5
    assert record_bytes(Event(Message(None, None))) == 0
    assert record_bytes(object()) == 0
