"""asyncio variants: never block the loop; cancelling the consumer cancels the work."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from helpers import fail_on, square, wait_until_idle
from raypool import RayMap


def test_map_async_and_imap_async_results() -> None:
    async def main() -> tuple[list[int], list[int]]:
        rmap = RayMap(square, batch_size=3)
        mapped = await rmap.map_async(range(30))
        streamed = [x async for x in rmap.imap_async(range(30), keep_order=False)]
        return mapped, sorted(streamed)

    mapped, streamed = asyncio.run(main())
    assert mapped == streamed == [x * x for x in range(30)]


def test_event_loop_keeps_running_while_waiting() -> None:
    def slow(x: int) -> int:
        time.sleep(0.5)
        return x

    async def main() -> tuple[list[int], int]:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        out = await RayMap(slow, batch_size=1).map_async(range(4))
        stop = True
        await task
        return out, ticks

    out, ticks = asyncio.run(main())
    assert out == [0, 1, 2, 3]
    assert ticks >= 50  # about 1 s of waiting, 10 ms per tick: the loop was free


def test_cancelling_the_consumer_cancels_the_work() -> None:
    def hang(x: int) -> int:
        time.sleep(3600)
        return x

    async def main() -> None:
        async def consume() -> None:
            async for _ in RayMap(hang, batch_size=1, max_pending=4).imap_async(range(10)):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until_idle()


def test_async_errors_and_safe_exceptions() -> None:
    async def main() -> list[object]:
        rmap = RayMap(fail_on)
        with pytest.raises(ValueError, match="bad item 3"):
            await rmap.map_async(range(5))
        return await rmap.map_async(range(5), safe_exceptions=True, ret_args=True)

    out = asyncio.run(main())
    assert [arg for arg, _ in out] == list(range(5))  # type: ignore[misc]
    assert isinstance(out[3][1], ValueError)  # type: ignore[index]
