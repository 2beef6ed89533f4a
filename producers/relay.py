"""The outbox relay: publishes committed outputs to Kafka, marking rows sent only once acked.

Outputs are written to the outbox in the same transaction as the state that caused them, so a
crash can never lose one; the relay turns that into at-least-once publication with stable
CloudEvent ids. kafka-python's synchronous futures make "sent only after the broker
acknowledged" a plain loop, which is why the relay uses it rather than faust's producer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from engine.application.ports import Outbox, OutboxMessage, UnitOfWork

log = logging.getLogger(__name__)


class Waker(Protocol):
    """Told after every commit that the outbox may hold something new."""

    def set(self) -> None: ...


class Flag(Protocol):
    """What the relay needs of an event: a thread's or a process's (`multiprocessing`)."""

    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class OutboxRelay:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork[Outbox]],
        producer: KafkaProducer,
        topic_name: Callable[[str], str],
        *,
        batch_size: int = 2000,
        send_timeout_s: float = 30.0,
        on_published: Callable[[list[OutboxMessage]], None] | None = None,
        retention: Mapping[str, timedelta] | None = None,
        purge_interval_s: float = 60.0,
    ) -> None:
        """`retention`: how long the database keeps a sent message of each topic named; the
        topic is then its record (dead letters: their bytes may hold personal data)."""
        self._uow_factory = uow_factory
        self._producer = producer
        self._topic_name = topic_name
        self._batch_size = batch_size
        self._send_timeout_s = send_timeout_s
        self._on_published = on_published
        self._retention = dict(retention or {})
        self._purge_interval_s = purge_interval_s
        self._next_purge = 0.0

    def publish_pending(self) -> int:
        """Publish one batch of unsent rows; the number published. Raises on broker failure."""
        with self._uow_factory() as uow:
            pending = uow.repo.unsent_outbox(self._batch_size)
        if not pending:
            return 0
        futures = [
            self._producer.send(
                self._topic_name(message.topic),
                key=message.key,
                value=message.value,
                headers=[("ce_id", message.message_id.encode("utf-8"))],
            )
            for message in pending
        ]
        self._producer.flush(timeout=self._send_timeout_s)
        for future in futures:
            future.get(timeout=self._send_timeout_s)  # raises if the broker did not ack
        with self._uow_factory() as uow:
            uow.repo.mark_sent([m.id for m in pending if m.id is not None], datetime.now(UTC))
            uow.commit()
        if self._on_published is not None:
            self._on_published(pending)
        return len(pending)

    def purge_expired(self, now: datetime | None = None, chunk: int = 5000) -> int:
        """Delete the sent messages older than their topic's retention; how many."""
        moment = now or datetime.now(UTC)
        purged = 0
        for topic, keep in sorted(self._retention.items()):
            while True:
                with self._uow_factory() as uow:
                    deleted = uow.repo.purge_sent(topic, moment - keep, chunk)
                    uow.commit()
                purged += deleted
                if deleted < chunk:
                    break
        return purged

    def _purge_when_due(self) -> None:
        if not self._retention or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + self._purge_interval_s
        purged = self.purge_expired()
        if purged:
            log.info("outbox: deleted %d sent messages past their retention", purged)

    def drain(self) -> int:
        """Publish until nothing is pending; the number published."""
        total = 0
        while (sent := self.publish_pending()) > 0:
            total += sent
        return total

    def run(
        self,
        stop: Flag,
        wake: Flag,
        idle_wait_s: float = 0.2,
        lease: Callable[[], bool] | None = None,
        standby_s: float = 1.0,
    ) -> None:
        """Publish until `stop` is set; a broker outage pauses publishing, loses nothing.

        With a `lease` (engine.store.sql.RelayLease.held), publish only while holding it:
        of several engine processes, one relay publishes and the others stand by.
        """
        backoff = 0.5
        leading = False
        while not stop.is_set():
            if lease is not None:
                if not lease():
                    if leading:
                        log.warning("outbox relay lost its lease; standing by")
                    leading = False
                    stop.wait(standby_s)
                    continue
                if not leading:
                    log.info("outbox relay holds the lease: publishing")
                leading = True
            try:
                sent = self.drain()
                backoff = 0.5
                self._purge_when_due()
            except KafkaError as exc:
                log.warning(
                    "outbox relay paused: broker unavailable (%s); retrying", type(exc).__name__
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if sent == 0:
                wake.wait(idle_wait_s)
                wake.clear()
        if lease is not None and not leading:
            return
        try:
            self.drain()  # a clean stop publishes what the last batch committed
        except KafkaError:
            log.warning("outbox relay stopped with unsent rows; they are sent after restart")


class Lease(Protocol):
    """Who publishes among several engine processes (engine.store.sql.RelayLease)."""

    def held(self) -> bool: ...

    def release(self) -> None: ...


class RelayJob:
    """A relay with its lease and what to close after it: what the composition root builds
    once and runs in a thread of the engine, in a child process, or to drain a replay."""

    def __init__(
        self,
        relay: OutboxRelay,
        lease: Lease | None = None,
        closing: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.relay = relay
        self.lease = lease
        self._closing = list(closing)

    def run(self, stop: Flag, wake: Flag) -> None:
        self.relay.run(stop, wake, lease=self.lease.held if self.lease is not None else None)

    def drain(self) -> int:
        return self.relay.drain()

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
        for close in self._closing:
            close()
