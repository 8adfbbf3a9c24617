"""asyncio variants: never block the loop; cancelling the consumer cancels the work."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import pytest

from helpers import (
    count_lines,
    fail_on,
    log_then_hang,
    square,
    square_when_released,
    wait_until_idle,
)
from raypool import RayMap


async def _until_lines(path: Path, count: int, timeout: float = 60.0) -> None:
    """Returns once ``path`` has ``count`` lines, polling from the event loop."""
    deadline = time.monotonic() + timeout
    while count_lines(path) < count:
        assert time.monotonic() < deadline, f"{path.name} never reached {count} lines"
        await asyncio.sleep(0.01)


def test_map_async_and_imap_async_results() -> None:
    async def main() -> tuple[list[int], list[int]]:
        rmap = RayMap(square, batch_size=3)
        mapped = await rmap.map_async(range(30))
        streamed = [x async for x in rmap.imap_async(range(30), keep_order=False)]
        return mapped, sorted(streamed)

    mapped, streamed = asyncio.run(main())
    assert mapped == streamed == [x * x for x in range(30)]


def test_event_loop_keeps_running_while_waiting(tmp_path: Path) -> None:
    # The items wait for a file that only a task on this loop creates, once it sees them
    # running: the map can only finish if the loop ran while it was awaited.
    released_while_awaiting = False

    async def main() -> list[int]:
        nonlocal released_while_awaiting
        done = False

        async def releaser() -> None:
            nonlocal released_while_awaiting
            await _until_lines(tmp_path / "started", 1)
            released_while_awaiting = not done
            (tmp_path / "release").touch()

        task = asyncio.create_task(releaser())
        fn = functools.partial(square_when_released, str(tmp_path))
        out = await RayMap(fn, batch_size=1).map_async(range(4))
        done = True
        await task
        return out

    assert asyncio.run(main()) == [0, 1, 4, 9]
    assert released_while_awaiting


def test_cancelling_the_consumer_cancels_the_work(tmp_path: Path) -> None:
    started = tmp_path / "started"
    hang = functools.partial(log_then_hang, str(started))

    async def main() -> None:
        async def consume() -> None:
            async for _ in RayMap(hang, batch_size=1, max_pending=4).imap_async(range(10)):
                pass

        task = asyncio.create_task(consume())
        await _until_lines(started, 2)  # both CPUs run an item that never ends
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
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
