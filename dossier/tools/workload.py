"""Publishing a simulated workload, and watching the engine catch up (kafka-python).

Used by `dossier simulate`, the main job, the end-to-end tests and the benchmarks, so that
all of them exercise the same path a province's systems would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer, TopicPartition

from dossier import kafka_clients
from dossier.settings import Settings
from dossier.tools.simulation import SimulatedMessage


def create_input_producer(settings: Settings) -> KafkaProducer:
    return kafka_clients.producer(
        settings, max_request_size=8 * 1024 * 1024, client_id="dossier-simulator"
    )


@dataclass
class PublishReport:
    sent: int
    seconds: float
    stopped_early: bool


def publish(
    producer: KafkaProducer,
    messages: Sequence[SimulatedMessage],
    topic_name: Callable[[str], str],
    *,
    rate: float | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_sent: Callable[[SimulatedMessage, float], None] | None = None,
) -> PublishReport:
    """Send in order, at `rate` messages/s or as fast as possible; flush before returning."""
    started = time.perf_counter()
    sent = 0
    for message in messages:
        if stop is not None and stop.is_set():
            break
        if rate:
            ahead = started + sent / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        producer.send(
            topic_name(message.topic),
            key=message.key,
            value=message.value,
            headers=list(message.headers) or None,  # a signing system's ce-signature
        )
        if on_sent is not None:
            on_sent(message, time.perf_counter())
        sent += 1
        if on_progress is not None and sent % 500 == 0:
            on_progress(500)
    producer.flush()
    if on_progress is not None and sent % 500:
        on_progress(sent % 500)
    return PublishReport(sent, time.perf_counter() - started, sent < len(messages))


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    consumer = kafka_clients.consumer(settings, client_id="dossier-watch")
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def read_topic(
    settings: Settings, topic: str, *, timeout_s: float = 10.0, expect: int | None = None
) -> list[Any]:
    """Every record of a topic from the beginning (until `expect` records or an idle timeout)."""
    consumer = kafka_clients.consumer(
        settings,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(timeout_s * 1000),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for items in batch.values():
                records.extend(items)
            done = all(consumer.position(tp) >= ends[tp] for tp in partitions)
            if expect is not None and len(records) >= expect and done:
                break
            if expect is None and done:
                break
        return records
    finally:
        consumer.close()
