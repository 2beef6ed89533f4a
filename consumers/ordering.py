"""Event-time order across the inbound topics: Kafka Streams' timestamp synchronization.

Nothing orders one dossier's events across topics. Live, the topics move together and the
engine parks the odd early arrival. Catching up a backlog, a consumer may read days of
`dossier.submission` before the matching `dossier.commune` records: a withdrawal would then
overtake the reception it followed, and a clock driven by the fast topic would expire parked
inputs and raise overdue notices that the slow topic's events would have prevented.

The gate holds consumed inputs per (partition, topic) and releases them lowest event time first,
the way Kafka Streams picks the record with the smallest timestamp among a task's partitions.
An input waits only while another topic of its partition may still deliver an earlier one:
that topic is holding no inputs, is not caught up to its high watermark, and has not already
shown an input at least as late (producers publish each topic in time order, so what follows on
it is later). Live, with every topic moving, nothing waits; catching up a backlog, the slow
topic is waited for. As in Kafka Streams
(KIP-695), a topic known to have unread records is waited for (they are on their way; at most
`max_lagging_wait_s`, a safety valve), while one whose lag is unknown is waited for at most
`max_idle_s` (`max.task.idle.ms`), so a silent producer delays the others by a bounded time and
never blocks them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from engine.application.service import RawInput
from schemas.codec import plausible_time

# (topic, partition, next offset seen) -> records known unread (0: caught up), None if unknown
Lag = Callable[[str, int, int | None], int | None]


@dataclass(frozen=True, slots=True)
class Held:
    raw: RawInput
    time: datetime | None  # None: undecodable; released at once, the engine dead-letters it
    token: Any = None  # what the transport needs to acknowledge it (a faust event)


def event_time(value: bytes | None, now: datetime | None = None) -> datetime | None:
    """The input's `time`, cheaply; None when it has none that parses, or one the decoder will
    refuse (contract 1.1, "Time": before 2000 or over a day after `now`, the wall clock). Such
    an input goes first, as a bad one does, and never holds other inputs or the clock back."""
    if not value:
        return None
    try:
        document = orjson.loads(value)
        time = datetime.fromisoformat(document["time"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if time.tzinfo is None or plausible_time(time, now or datetime.now(UTC)) is None:
        return None
    return time


class EventTimeGate:
    def __init__(
        self, topics: Sequence[str], max_idle_s: float, max_lagging_wait_s: float = 30.0
    ) -> None:
        self.topics = tuple(topics)
        self.max_idle_s = max_idle_s
        self.max_lagging_wait_s = max_lagging_wait_s
        self._queues: dict[tuple[int, str], deque[Held]] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._blocked_since: dict[int, float] = {}
        self._released_time: dict[int, datetime] = {}
        self._seen_time: dict[tuple[str, int], datetime] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, items: Iterable[Held]) -> None:
        for item in items:
            position = item.raw.position
            partition = position.partition if position.partition is not None else -1
            self._queues.setdefault((partition, position.topic), deque()).append(item)
            if position.offset is not None:
                self._next_offset[(position.topic, partition)] = position.offset + 1
            if item.time is not None:
                seen = self._seen_time.get((position.topic, partition))
                if seen is None or item.time > seen:
                    self._seen_time[(position.topic, partition)] = item.time

    def forget(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Drop what is held from partitions this process no longer owns (a rebalance).

        Held inputs were never acknowledged, so the new owner consumes them again.
        """
        dropped = 0
        for topic, partition in partitions:
            queue = self._queues.pop((partition, topic), None)
            dropped += len(queue) if queue else 0
            self._next_offset.pop((topic, partition), None)
            self._seen_time.pop((topic, partition), None)
        for partition in {p for _, p in partitions}:
            if not any(p == partition for p, _ in self._queues):
                self._released_time.pop(partition, None)
                self._blocked_since.pop(partition, None)
        return dropped

    def release(self, lag: Lag, now: float) -> list[Held]:
        """Inputs that may go now, in the order to apply them."""
        released: list[Held] = []
        for partition in sorted({p for p, _ in self._queues}):
            released.extend(self._release_partition(partition, lag, now))
        return released

    def _release_partition(self, partition: int, lag: Lag, now: float) -> list[Held]:
        out: list[Held] = []
        queues = {t: q for (p, t), q in self._queues.items() if p == partition and q}
        timed_out = False
        # A topic's lag, asked once per release: it is a lookup in the consumer, and an idle
        # topic would otherwise be asked again for every input released past it.
        lags: dict[str, int | None] = {}

        def lag_of(topic: str) -> int | None:
            if topic not in lags:
                lags[topic] = lag(topic, partition, self._next_offset.get((topic, partition)))
            return lags[topic]

        while queues:
            topic = min(queues, key=lambda t: _sort_key(queues[t][0]))
            head = queues[topic][0]
            if head.time is not None and not timed_out:
                unread = [
                    lag_of(t)
                    for t in self.topics
                    if t not in queues and not self._seen_since(t, partition, head.time)
                ]
                behind = [n for n in unread if n != 0]
                if behind:
                    since = self._blocked_since.setdefault(partition, now)
                    known = any(n is not None for n in behind)
                    limit = self.max_lagging_wait_s if known else self.max_idle_s
                    if now - since < limit:
                        break
                    timed_out = True  # waited long enough: release what is here, in order
            queues[topic].popleft()
            if not queues[topic]:
                del queues[topic]
            out.append(head)
            if head.time is not None:
                previous = self._released_time.get(partition)
                if previous is None or head.time > previous:
                    self._released_time[partition] = head.time
        if not queues:
            self._blocked_since.pop(partition, None)
        elif out:
            self._blocked_since[partition] = now
        for key in [k for k, q in self._queues.items() if not q]:
            del self._queues[key]
        return out

    def _seen_since(self, topic: str, partition: int, time: datetime) -> bool:
        seen = self._seen_time.get((topic, partition))
        return seen is not None and seen >= time

    def watermark(self, lag: Lag) -> datetime | None:
        """The event time every partition has reached: a ceiling for the engine clock.

        A partition still holding inputs has not got past its earliest held one, and one whose
        topics have unread records has not got past what it released: the clock must not run
        ahead of them, or their dossiers would see deadlines pass too soon. A partition with
        nothing held or unread sets no limit (None when none does).
        """
        limits: list[datetime] = []
        for partition, released in self._released_time.items():
            held = [
                q[0].time
                for (p, _), q in self._queues.items()
                if p == partition and q and q[0].time is not None
            ]
            if held:
                limits.append(min(held))
            elif any(
                lag(t, partition, self._next_offset.get((t, partition))) != 0 for t in self.topics
            ):
                limits.append(released)
        return min(limits) if limits else None


def _sort_key(item: Held) -> tuple[int, float]:
    # Undecodable inputs first: they change no dossier, so their order does not matter.
    return (0, 0.0) if item.time is None else (1, item.time.timestamp())
