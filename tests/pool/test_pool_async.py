"""asyncio users: awaiting futures and ``async for`` over results never block the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

import raypool
from helpers import fail_on, square


def nap(x: float) -> float:
    time.sleep(x)
    return x


async def _ticks_while(awaitable: object) -> tuple[object, int]:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        return await awaitable, ticks  # type: ignore[misc]
    finally:
        stop.set()
        await task


def test_await_a_submitted_future() -> None:
    with raypool.Pool() as pool:

        async def main() -> tuple[object, int]:
            return await _ticks_while(asyncio.wrap_future(pool.submit(nap, 0.5)))

        value, ticks = asyncio.run(main())
    assert value == 0.5
    assert ticks > 1  # the loop ran while the task did


def test_async_for_over_imap() -> None:
    with raypool.Pool() as pool:

        async def collect() -> list[int]:
            return [x async for x in pool.imap(square, range(50))]

        async def main() -> tuple[object, int]:
            return await _ticks_while(collect())

        values, _ticks = asyncio.run(main())
        assert values == [x * x for x in range(50)]

        async def unordered() -> set[int]:
            return {x async for x in pool.imap_unordered(nap, [0.3, 0.0])}

        assert asyncio.run(unordered()) == {0.3, 0.0}


def test_async_for_raises_the_items_exception_and_goes_on() -> None:
    with raypool.Pool() as pool:

        async def main() -> list[object]:
            it = pool.imap(fail_on, range(5))
            out: list[object] = []
            while True:
                try:
                    out.append(await it.__anext__())
                except ValueError as exc:
                    out.append(type(exc))
                except StopAsyncIteration:
                    return out

        assert asyncio.run(main()) == [0, 1, 2, ValueError, 4]


def test_cancelling_the_consumer_cancels_the_work() -> None:
    from helpers import wait_until_idle

    with raypool.Pool() as pool:

        async def consume() -> None:
            async for _ in pool.imap(nap, [3600] * 4, chunksize=1):
                pass

        async def main() -> None:
            task = asyncio.create_task(consume())
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert wait_until_idle()
