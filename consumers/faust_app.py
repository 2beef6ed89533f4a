"""The consuming side: a faust-streaming agent over the four inbound topics.

faust brings what a long-running consumer needs and kafka-python leaves to the caller: a
worker with signal handling and graceful shutdown, batching (`noack_take`), explicit acks, and
an assignor that gives partition N of every co-partitioned topic to the same worker, so one
process sees all of a dossier's topics. The agent turns messages into `RawInput`s, puts them in
event-time order across topics (consumers.ordering), and acks each one only after the batch
that applied it committed: faust then commits no offset past an input still held or in flight.
Everything else is the service layer's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import faust
from faust.types import TP
from faust.types.auth import CredentialsT

from consumers.buffer import ByteBoundedQueue
from consumers.drain import FastDrainConsumer, RawSchema
from consumers.ordering import EventTimeGate, Held, event_time
from engine.application.commit import COMMIT_ATTEMPTS
from engine.application.ports import Position
from engine.application.service import RawInput

log = logging.getLogger(__name__)

# A batch that cannot be committed after engine.application.commit.COMMIT_ATTEMPTS tries ends the
# process with this code before faust acks it.
EXIT_CANNOT_COMMIT = 70


@dataclass(frozen=True)
class ConsumerConfig:
    """What the consuming side needs to know, built from the settings by the composition root."""

    broker_url: str  # faust's form: 'kafka://h1:1;kafka://h2:2' (dossier.kafka_clients)
    consumer_group: str
    topics: Mapping[str, str]  # Kafka topic -> the contract's inbound topic it carries
    datadir: Path  # faust keeps a little worker state on disk even without tables
    batch_size: int
    batch_timeout_ms: int
    ordering_max_idle_ms: int
    clock_mode: str
    parked_sweep_seconds: int
    stream_buffer_bytes: int
    # faust's broker_credentials: the SASL login and TLS context of the settings
    # (dossier.kafka_clients.faust_credentials); None connects in PLAINTEXT.
    credentials: CredentialsT | None = None


class BatchSink(Protocol):
    """Where batches go: engine.application.commit.BatchCommitter."""

    write_behind: bool

    def process(
        self,
        inputs: Sequence[RawInput],
        attempts: int = 5,
        clock_ceiling: datetime | None = None,
        failures_allowed: int = 0,
    ) -> Any: ...

    def submit(
        self, inputs: Sequence[RawInput], clock_ceiling: datetime | None = None
    ) -> concurrent.futures.Future[Any]: ...

    def committed_position(self, topic: str, partition: int) -> int: ...

    def own_partitions(self, partitions: frozenset[int]) -> None: ...


def to_raw_input(config: ConsumerConfig, event: Any) -> RawInput:
    message = event.message
    return RawInput(
        contract_topic=config.topics[message.topic],
        position=Position(message.topic, message.partition, message.offset),
        key=message.key,
        value=message.value,
        headers=tuple((str(k), bytes(v or b"")) for k, v in (message.headers or ())),
    )


def build_app(config: ConsumerConfig, sink: BatchSink) -> faust.App:
    datadir = config.datadir
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        config.consumer_group,
        broker=config.broker_url,
        broker_credentials=config.credentials,
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_disable_leader=True,  # no leader election topic: the engine keeps no faust tables
        topic_allow_declare=False,  # the topics are the contract's; deploy/ creates them
        consumer_auto_offset_reset="earliest",
        broker_commit_every=max(config.batch_size, 1),
        broker_commit_interval=1.0,
        # faust stops fetching a partition whose buffer is under pressure and resumes when it
        # has drained to under half: with room for 4 batches the batch thread sat idle, waiting
        # for input, 45% of the time (py-spy --idle). 16 batches measured +8-17% through Kafka
        # on PostgreSQL (bench/e2e_kafka.py), 8 and 32 less; peak RSS did not grow.
        stream_buffer_maxsize=max(16 * config.batch_size, 4096),
        consumer_max_fetch_size=8 * 1024 * 1024,
        stream_wait_empty=False,
        logging_config=None,
    )
    # This app's transport only (a class attribute of faust's; see consumers/drain.py).
    app.transport.Consumer = FastDrainConsumer  # type: ignore[misc]
    # Stream buffers bounded in bytes too (consumers/buffer.py).
    app.FlowControlQueue = functools.partial(  # type: ignore[method-assign]
        ByteBoundedQueue, max_bytes=config.stream_buffer_bytes, flow_control=app.flow_control
    )
    topics = app.topic(
        *config.topics,
        schema=RawSchema(),
        allow_empty=True,
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dossier-batch")
    within = config.batch_timeout_ms / 1000
    inbound = list(config.topics)
    gate = EventTimeGate(inbound, max_idle_s=config.ordering_max_idle_ms / 1000)
    lock = asyncio.Lock()  # the agent and the timer both drain the gate
    write_behind = sink.write_behind
    in_flight: set[asyncio.Task[None]] = set()  # acks waiting for their batch's commit
    streams: list[Any] = []

    def lag(topic: str, partition: int, next_offset: int | None) -> int | None:
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned to this worker: it cannot hold our partitions back
            return 0
        if highwater is None:
            return None  # not fetched yet: it may still deliver earlier inputs
        if next_offset is None:
            next_offset = sink.committed_position(topic, partition)
        return max(0, highwater - next_offset)

    async def drain(tick: bool = False) -> None:
        async with lock:
            loop = asyncio.get_running_loop()
            released = gate.release(lag, loop.time())
            if not released and not tick:
                return
            ceiling = gate.watermark(lag)
            for start in range(0, max(len(released), 1), config.batch_size):
                chunk = released[start : start + config.batch_size]
                inputs = [h.raw for h in chunk]
                if not write_behind:
                    await _commit_or_exit(loop, executor, sink, inputs, ceiling)
                    for held in chunk:
                        await streams[0].ack(held.token)
                    continue
                # Returns once the batch is staged; its commit, then its acks, come behind.
                future = await loop.run_in_executor(
                    executor, functools.partial(sink.submit, inputs, ceiling)
                )
                acking = loop.create_task(_ack_when_committed(future, chunk, streams[0]))
                in_flight.add(acking)
                acking.add_done_callback(in_flight.discard)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        async with lock:  # not while a batch of them is being applied
            dropped = gate.forget((tp.topic, tp.partition) for tp in revoked)
        if dropped:
            log.info("rebalance: %d held inputs left to the partitions' new owner", dropped)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def own_notices(sender: Any, assigned: Any, **_: Any) -> None:
        # Deadline notices of the dossiers on the partitions this worker now consumes.
        owned = frozenset(tp.partition for tp in assigned if tp.topic in inbound)
        sink.own_partitions(owned)
        log.info("assignment: deadline notices for partitions %s", sorted(owned) or "none")

    @app.agent(topics, concurrency=1)
    async def consume(stream: Any) -> None:
        streams[:] = [stream]
        async for events in stream.noack_take(config.batch_size, within=within):
            gate.add(Held(to_raw_input(config, e), event_time(e.message.value), e) for e in events)
            await drain()

    swept: list[float] = []  # when the timer last ran an empty batch for parked expiry

    @app.timer(interval=0.25)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        # Held inputs whose wait ran out go even when nothing new arrives; in wall-clock mode
        # the clock moves (deadline notices, parked expiry) without inputs too, and in either
        # mode parked inputs expire on time through a quiet night (an empty batch).
        if lock.locked():
            return  # the agent is draining: it will see what the timer would have
        now = asyncio.get_running_loop().time()
        sweep = bool(swept) and now - swept[0] >= config.parked_sweep_seconds
        if sweep or not swept:
            swept[:] = [now]
        if len(gate) or sweep or config.clock_mode == "wall":
            await drain(tick=sweep or config.clock_mode == "wall")

    return app


async def _ack_when_committed(
    future: concurrent.futures.Future[Any], chunk: list[Held], stream: Any
) -> None:
    try:
        await asyncio.wrap_future(future)
    except Exception:
        # The committer already retried it the plain way: as below, end before acking.
        log.critical("cannot commit; exiting so the batch is consumed again after restart")
        os._exit(EXIT_CANNOT_COMMIT)
    for held in chunk:
        await stream.ack(held.token)


async def _commit_or_exit(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    sink: BatchSink,
    inputs: list[RawInput],
    clock_ceiling: datetime | None = None,
) -> None:
    commit = functools.partial(
        sink.process,
        inputs,
        clock_ceiling=clock_ceiling,
        failures_allowed=COMMIT_ATTEMPTS - 1,
    )
    try:
        await loop.run_in_executor(executor, commit)
    except Exception:
        log.critical("cannot commit; exiting so the batch is consumed again after restart")
        os._exit(EXIT_CANNOT_COMMIT)
