"""asyncio users: awaiting futures and ``async for`` over results never block the loop."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

import raypool
from helpers import count_lines, fail_on, log_then_hang, square_when_released


def nap(x: float) -> float:
    time.sleep(x)
    return x


async def _until_lines(path: Path, count: int, timeout: float = 60.0) -> None:
    """Returns once ``path`` has ``count`` lines, polling from the event loop."""
    deadline = time.monotonic() + timeout
    while count_lines(path) < count:
        assert time.monotonic() < deadline, f"{path.name} never reached {count} lines"
        await asyncio.sleep(0.01)


async def _released_by_the_loop(marks: Path, awaitable: Awaitable[Any]) -> Any:
    """Awaits ``awaitable``: work of ``square_when_released(marks, ...)``, which waits for
    ``marks/release``. A task on this loop creates that file once the work has started, so
    the work can only finish - and the await return - if the loop ran while it was awaited;
    had it been blocked, the items fail with "never released"."""
    done = False

    async def releaser() -> bool:
        await _until_lines(marks / "started", 1)
        (marks / "release").touch()
        return not done

    task = asyncio.create_task(releaser())
    try:
        value = await awaitable
        done = True
        assert await task  # the release came while the await was pending
        return value
    finally:
        task.cancel()


def test_await_a_submitted_future(tmp_path: Path) -> None:
    with raypool.Pool() as pool:

        async def main() -> object:
            future = pool.submit(square_when_released, str(tmp_path), 7)
            return await _released_by_the_loop(tmp_path, asyncio.wrap_future(future))

        assert asyncio.run(main()) == 49


def test_async_for_over_imap(tmp_path: Path) -> None:
    with raypool.Pool() as pool:
        fn = functools.partial(square_when_released, str(tmp_path))

        async def collect() -> list[int]:
            return [x async for x in pool.imap(fn, range(50))]

        async def main() -> object:
            return await _released_by_the_loop(tmp_path, collect())

        assert asyncio.run(main()) == [x * x for x in range(50)]

        async def unordered() -> set[float]:
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


def test_cancelling_the_consumer_cancels_the_work(tmp_path: Path) -> None:
    from helpers import wait_until_idle

    started = tmp_path / "started"
    hang = functools.partial(log_then_hang, str(started))

    with raypool.Pool() as pool:

        async def consume() -> None:
            async for _ in pool.imap(hang, range(4), chunksize=1):
                pass

        async def main() -> None:
            task = asyncio.create_task(consume())
            await _until_lines(started, 2)  # both CPUs run an item that never ends
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert wait_until_idle()
