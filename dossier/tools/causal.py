"""Publishing a simulated workload the way real agencies act: after seeing the previous step.

Kafka orders a dossier's events on one topic, never across topics (the contract's "Arrival
order"). In real time that hardly matters: a commune officer receives a dossier minutes or days
after the portal sent it. A month of work replayed in a minute is another matter: a few
seconds of consumer lag are days of business time, the engine's batches mix partitions, and a
withdrawal sent by the portal can overtake the commune's reception of the same dossier, which
then has nothing left to receive. No real agency behaves like that: it acts on a dossier it
has seen.

So each message whose dossier's previous message went to *another* topic waits until the
engine has committed that previous message (its position in the engine's database passed
it); messages that follow on the same topic go at once, since Kafka keeps their order.
Everything else flows in arrival order, a bounded stretch of business time ahead of the
oldest waiting action, so the engine's business clock never runs far ahead of a dossier.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dossier.tools.simulation import SimulatedMessage

Positions = Mapping[tuple[str, int], int]  # (deployed topic, partition) -> next offset


class _Sent:
    """Where a sent message landed; filled in by the producer's I/O thread on acknowledgement."""

    __slots__ = ("offset", "partition", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic  # deployed topic name
        self.partition: int | None = None
        self.offset: int | None = None

    def acked(self, metadata: Any) -> None:
        self.partition = metadata.partition
        self.offset = metadata.offset

    def committed(self, positions: Positions) -> bool:
        if self.offset is None or self.partition is None:
            return False
        return positions.get((self.topic, self.partition), 0) > self.offset


@dataclass
class CausalReport:
    sent: int
    seconds: float
    stopped_early: bool
    sent_indices: list[int] = field(default_factory=list)  # in send order
    waits: int = 0  # messages that had to wait for the engine


class PublishStalled(RuntimeError):
    pass


def publish_following(
    producer: Any,
    messages: Sequence[SimulatedMessage],
    topic_name: Callable[[str], str],
    committed: Callable[[], Positions],
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_idle: Callable[[], None] | None = None,
    max_ahead: timedelta = timedelta(hours=12),
    max_waiting: int = 20_000,
    poll_s: float = 0.05,
    stall_s: float = 180.0,
) -> CausalReport:
    """Send `messages` so that no dossier's action overtakes its previous one on another topic.

    `committed()` returns the engine's committed positions; `on_idle` is called while waiting
    (it may raise, e.g. when the engine died); `stall_s` without any progress raises
    PublishStalled.
    """
    started = time.perf_counter()
    errors: list[BaseException] = []
    last: dict[str, tuple[str, _Sent]] = {}  # dossier -> (contract topic, where it landed)
    queues: dict[str, deque[int]] = {}
    sent_indices: list[int] = []
    waiting = waits = 0
    oldest_waiting: datetime | None = None
    positions: Positions = {}
    polled = 0.0
    last_progress = time.monotonic()

    def send(index: int) -> None:
        nonlocal last_progress
        message = messages[index]
        deployed = topic_name(message.topic)
        future = producer.send(
            deployed,
            key=message.key,
            value=message.value,
            headers=list(message.headers) or None,  # a signing system's ce-signature
        )
        if message.dossier is not None:
            ref = _Sent(deployed)
            future.add_callback(ref.acked)
            last[message.dossier] = (message.topic, ref)
        future.add_errback(errors.append)
        sent_indices.append(index)
        last_progress = time.monotonic()
        if on_progress is not None and len(sent_indices) % 500 == 0:
            on_progress(500)

    def may_send(message: SimulatedMessage) -> bool:
        assert message.dossier is not None
        previous = last.get(message.dossier)
        if previous is None or previous[0] == message.topic:
            return True
        return previous[1].committed(positions)

    def release() -> int:
        nonlocal waiting
        released = 0
        for dossier in list(queues):
            queue = queues[dossier]
            while queue and may_send(messages[queue[0]]):
                send(queue.popleft())
                released += 1
            if not queue:
                del queues[dossier]
        waiting -= released
        return released

    i, n = 0, len(messages)
    stopped = False
    while i < n or queues:
        if stop is not None and stop.is_set():
            stopped = True
            break
        if errors:
            raise errors[0]
        while i < n:
            message = messages[i]
            if queues and (
                waiting >= max_waiting
                or (oldest_waiting is not None and message.time > oldest_waiting + max_ahead)
            ):
                break
            dossier = message.dossier
            if dossier is None:
                send(i)
            elif dossier in queues:
                queues[dossier].append(i)
                waiting += 1
            elif may_send(message):
                send(i)
            else:
                queues[dossier] = deque([i])
                waiting += 1
                waits += 1
                if oldest_waiting is None or message.time < oldest_waiting:
                    oldest_waiting = message.time
            i += 1
            if i % 2000 == 0 and stop is not None and stop.is_set():
                break
        if not queues:
            oldest_waiting = None
            continue
        now = time.monotonic()
        if now - polled >= poll_s:
            producer.flush()  # the waiting ones need their predecessors' offsets
            positions = committed()
            polled = now
            if release():
                heads = [messages[q[0]].time for q in queues.values()]
                oldest_waiting = min(heads) if heads else None
                continue
        if on_idle is not None:
            on_idle()
        if time.monotonic() - last_progress > stall_s:
            raise PublishStalled(
                f"{waiting} messages of {len(queues)} dossiers waited {stall_s:.0f} s for the "
                "engine to take their previous actions"
            )
        time.sleep(poll_s / 2)
    producer.flush()
    if errors:
        raise errors[0]
    if on_progress is not None and len(sent_indices) % 500:
        on_progress(len(sent_indices) % 500)
    return CausalReport(
        sent=len(sent_indices),
        seconds=time.perf_counter() - started,
        stopped_early=stopped,
        sent_indices=sent_indices,
        waits=waits,
    )


class DatabasePositions:
    """The engine's committed positions, read from its database (what it has really taken)."""

    def __init__(self, database_url: str, consumer_group: str) -> None:
        from engine.store.sql import create_db_engine

        self._db = create_db_engine(database_url)
        self._group = consumer_group

    def __call__(self) -> Positions:
        from sqlalchemy.exc import SQLAlchemyError

        from engine.store.queries import positions

        try:
            with self._db.connect() as connection:
                return positions(connection, self._group)
        except SQLAlchemyError:  # the engine has not created its schema yet
            return {}

    def close(self) -> None:
        self._db.dispose()


def publish_stream(
    producer: Any,
    messages: Sequence[SimulatedMessage],
    topic_name: Callable[[str], str],
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CausalReport:
    """Everything in arrival order, as fast as the producer goes; the engine's event-time gate
    (consumers.ordering) puts the topics back in order."""
    from dossier.tools.workload import publish

    report = publish(producer, messages, topic_name, stop=stop, on_progress=on_progress)
    return CausalReport(report.sent, report.seconds, report.stopped_early)
