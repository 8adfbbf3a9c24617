"""sequential=True: everything in the calling thread, no Ray, same behaviour."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from helpers import fail_on
from raypool import RayMap, TaskTimeoutError


def test_runs_in_this_process() -> None:
    assert RayMap(lambda _: os.getpid(), sequential=True).map(range(3)) == [os.getpid()] * 3


def test_same_behaviour_as_ray_mode() -> None:
    errors: list[object] = []
    for sequential in (False, True):
        rmap = RayMap(
            fail_on, batch_size=2, sequential=sequential, on_error=lambda a, e: errors.append(a)
        )
        out = rmap.map(range(6), safe_exceptions=True, ret_args=True)
        assert [a for a, _ in out] == list(range(6))
        assert [type(r).__name__ for _, r in out] == ["int"] * 3 + ["ValueError"] + ["int"] * 2
        with pytest.raises(ValueError, match="bad item 3"):
            rmap.map(range(6))
    assert errors.count(3) == 4


def test_checkpoint_in_sequential_mode(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    calls: list[int] = []

    def f(x: int) -> int:
        calls.append(x)
        return -x

    assert RayMap(f, sequential=True, checkpoint_path=str(ckpt)).map(range(5)) == [
        0,
        -1,
        -2,
        -3,
        -4,
    ]
    assert RayMap(f, sequential=True, checkpoint_path=str(ckpt)).map(range(7)) == [
        -x for x in range(7)
    ]
    assert calls == [0, 1, 2, 3, 4, 5, 6]


def test_timeout_in_the_main_thread_interrupts() -> None:
    def f(x: float) -> float:
        time.sleep(x)
        return x

    out = RayMap(f, sequential=True).map([0.0, 60.0, 0.0], timeout=0.3, safe_exceptions=True)
    assert out[0] == out[2] == 0.0
    assert isinstance(out[1], TaskTimeoutError)


def test_async_in_sequential_mode() -> None:
    out = asyncio.run(RayMap(lambda x: x + 1, sequential=True).map_async(range(3)))
    assert out == [1, 2, 3]


def test_lazy_in_sequential_mode() -> None:
    pulled = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(100):
            pulled.append(i)
            yield i

    it = RayMap(lambda x: x, sequential=True, batch_size=1, max_pending=2).imap(source())
    assert next(it) == 0
    assert len(pulled) <= 3
    it.close()
