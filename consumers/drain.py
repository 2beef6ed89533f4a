"""faust's consumer, without four asyncio tasks per record.

faust's fetcher hands every record to the conductor through
`Service.wait_first(callback(message), suspend_flow.wait())`, so that a record blocked on a
full stream buffer is abandoned when a rebalance suspends the flow. `wait_first` wraps each
of its coroutines, and the service's stopped and crashed events, in a task: four tasks and an
`asyncio.wait` per record, about a third of the engine process's CPU per input through Kafka.

Almost every record is delivered without the callback ever suspending: the buffer has room,
the flow is on. `FastDrainConsumer.wait_first` therefore runs the callback one step in place;
when that step finishes it, the result is the one `wait_first` would have returned, without a
task. When the callback suspends (the buffer is full, the flow is suspended, a lock is held),
the started coroutine continues under faust's own `wait_first`, exactly as before, so a
rebalance still interrupts it.

`RawSchema` hands the agent each record's key and value bytes as they are. faust's own "raw"
serializer gives the same bytes, but through its codec registry and settings lookups, twice
per record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import faust
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import AppT, CodecArg, Message
from mode import Service
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

_EVENT_WAIT = asyncio.Event.wait.__qualname__


class InPlaceDelivery(Service):
    """`wait_first` of a faust consumer, running the fetcher's callback in place while it
    does not suspend. Mixed into a `Service` that has faust's `suspend_flow` event."""

    suspend_flow: asyncio.Event
    # mode declares None as the default of a `Seconds` (no timeout); hence the casts below.

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        if not self._deliverable_in_place(coros, timeout):
            return await super().wait_first(*coros, timeout=cast(Seconds, timeout))
        callback, suspended = coros
        assert isinstance(callback, Coroutine) and isinstance(suspended, Coroutine)
        try:
            yielded = callback.send(None)
        except StopIteration as finished:
            suspended.close()  # never started: closing it only silences "never awaited"
            return WaitResults([callback], [finished.value], False)
        except BaseException:
            suspended.close()
            raise
        return await super().wait_first(
            _resume(callback, yielded), suspended, timeout=cast(Seconds, timeout)
        )

    def _deliverable_in_place(self, coros: tuple[WaitArgT, ...], timeout: Seconds | None) -> bool:
        # Only the fetcher's call: (the conductor's callback, the suspend-flow event's wait).
        if timeout is not None or len(coros) != 2:
            return False
        callback, suspended = coros
        return (
            isinstance(callback, Coroutine)
            and isinstance(suspended, Coroutine)
            and getattr(suspended, "__qualname__", "") == _EVENT_WAIT
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        )


class FastDrainConsumer(InPlaceDelivery, AIOKafkaConsumer):
    """faust's aiokafka consumer, delivering records in place while the flow is on."""


class RawSchema(faust.Schema[bytes | None, bytes | None]):
    """Keys and values as the bytes the broker delivered (the engine decodes them itself)."""

    def loads_key(
        self,
        app: AppT,
        message: Message,
        *,
        loads: Callable[..., Any] | None = None,
        serializer: CodecArg | None = None,
    ) -> Any:
        return message.key

    def loads_value(
        self,
        app: AppT,
        message: Message,
        *,
        loads: Callable[..., Any] | None = None,
        serializer: CodecArg | None = None,
    ) -> Any:
        return message.value


async def _resume(coroutine: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Go on driving `coroutine`, started by hand, from what its first step yielded, as the
    task that drives this wrapper would have driven it: wait for the future it yielded (or
    give the loop a turn for a bare yield), then send it on; a cancellation of this wrapper
    that did not already cancel that future is thrown in."""
    while True:
        thrown: BaseException | None = None
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                # As a task does on receiving it: the first step left the flag set.
                yielded._asyncio_future_blocking = False
                await yielded
        except BaseException as exc:  # handed to the coroutine, which decides
            if not (isinstance(yielded, asyncio.Future) and yielded.done()):
                thrown = exc
        try:
            yielded = coroutine.throw(thrown) if thrown is not None else coroutine.send(None)
        except StopIteration as finished:
            return finished.value
