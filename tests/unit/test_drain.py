"""consumers.drain: the fetcher's records delivered in place, and faust's behaviour kept when
a delivery has to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mode import Service

from consumers.drain import InPlaceDelivery


class Fetcher(InPlaceDelivery, Service):
    """A service with the `suspend_flow` event of faust's consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())  # type: ignore[arg-type]


def tasks_made_by(fetcher: Fetcher, call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
    async def counting() -> tuple[Any, int]:
        loop = asyncio.get_running_loop()
        made = 0
        factory = loop.get_task_factory()

        def count(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            nonlocal made
            made += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(count)
        try:
            return await call(), made
        finally:
            loop.set_task_factory(factory)

    return counting()


def test_a_callback_that_never_waits_is_delivered_without_a_task() -> None:
    async def test() -> None:
        fetcher = Fetcher()
        delivered: list[str] = []

        async def callback(message: str) -> str:
            delivered.append(message)
            return "done"

        results, tasks = await tasks_made_by(
            fetcher, lambda: fetcher.wait_first(callback("m1"), fetcher.suspend_flow.wait())
        )
        assert delivered == ["m1"]
        assert results.results == ["done"] and not results.stopped
        assert tasks == 0

    run(test)


def test_a_callback_that_waits_goes_on_under_faust_wait_first() -> None:
    async def test() -> None:
        fetcher = Fetcher()
        room = asyncio.get_running_loop().create_future()
        steps: list[str] = []

        async def callback(message: str) -> str:
            steps.append(f"{message} waits")
            await room  # a full stream buffer
            await asyncio.sleep(0)  # a bare yield too
            steps.append(f"{message} delivered")
            return "done"

        asyncio.get_running_loop().call_later(0.01, room.set_result, None)
        results, tasks = await tasks_made_by(
            fetcher, lambda: fetcher.wait_first(callback("m1"), fetcher.suspend_flow.wait())
        )
        assert steps == ["m1 waits", "m1 delivered"]
        assert results.results == ["done"]
        assert tasks == 4  # faust's: the callback, the suspend-flow wait, stopped, crashed

    run(test)


def test_a_waiting_callback_is_cancelled_when_the_flow_is_suspended() -> None:
    async def test() -> None:
        fetcher = Fetcher()
        never = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def callback() -> None:
            try:
                await never
            except asyncio.CancelledError:
                seen.append("cancelled inside the callback")
                raise

        asyncio.get_running_loop().call_later(0.01, fetcher.suspend_flow.set)
        results = await fetcher.wait_first(callback(), fetcher.suspend_flow.wait())
        await asyncio.sleep(0.01)  # the losing task's cancellation runs
        assert results.results == [True]  # the suspend-flow wait won, as in faust
        assert seen == ["cancelled inside the callback"]
        assert never.cancelled()

    run(test)


def test_a_callback_failing_at_once_raises_to_the_fetcher() -> None:
    async def test() -> None:
        fetcher = Fetcher()

        async def callback() -> None:
            raise ValueError("cannot decode")

        with pytest.raises(ValueError, match="cannot decode"):
            await fetcher.wait_first(callback(), fetcher.suspend_flow.wait())

    run(test)


def test_a_callback_failing_after_a_wait_raises_to_the_fetcher() -> None:
    async def test() -> None:
        fetcher = Fetcher()
        failed = asyncio.get_running_loop().create_future()

        async def callback() -> None:
            await failed

        asyncio.get_running_loop().call_later(0.01, failed.set_exception, KeyError("gone"))
        with pytest.raises(KeyError, match="gone"):
            await fetcher.wait_first(callback(), fetcher.suspend_flow.wait())

    run(test)


def test_while_the_flow_is_suspended_delivery_is_faust_own() -> None:
    async def test() -> None:
        fetcher = Fetcher()
        fetcher.suspend_flow.set()

        async def callback() -> None:
            await asyncio.sleep(1)

        results, tasks = await tasks_made_by(
            fetcher, lambda: fetcher.wait_first(callback(), fetcher.suspend_flow.wait())
        )
        assert results.results == [True]  # the suspend-flow wait won
        assert tasks == 4  # faust's own wait_first: nothing ran in place

    run(test)


def test_other_waits_of_the_consumer_are_faust_own() -> None:
    async def test() -> None:
        fetcher = Fetcher()

        async def work() -> str:
            return "w"

        results, tasks = await tasks_made_by(fetcher, lambda: fetcher.wait_first(work()))
        assert results.results == ["w"]
        assert tasks == 3  # the coroutine, stopped, crashed

    run(test)
