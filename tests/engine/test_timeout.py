"""Per-item timeouts stop the runaway work and free the worker."""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import time

import pytest

from helpers import hang_on, spin_on, wait_until_idle
from raypool import RayMap, TaskTimeoutError


def test_two_hour_long_items_among_fifty_end_as_timeouts_and_free_their_workers() -> None:
    started = time.monotonic()
    out = RayMap(hang_on).map(range(50), timeout=1, safe_exceptions=True)
    assert time.monotonic() - started < 120  # an hour-long item did not run for an hour
    assert [out[i] for i in range(50) if i not in (5, 17)] == [
        i for i in range(50) if i not in (5, 17)
    ]
    for i in (5, 17):
        assert isinstance(out[i], TaskTimeoutError)
        assert isinstance(out[i], TimeoutError)
        assert isinstance(out[i], concurrent.futures.TimeoutError)
        assert isinstance(out[i], multiprocessing.TimeoutError)
    assert wait_until_idle()


def test_pure_python_spin_is_stopped_too() -> None:
    out = RayMap(spin_on, batch_size=4).map(range(8), timeout=0.5, safe_exceptions=True)
    assert isinstance(out[5], TaskTimeoutError)
    assert [out[i] for i in range(8) if i != 5] == [0, 1, 2, 3, 4, 6, 7]
    assert wait_until_idle()


def test_timeout_is_raised_without_safe_exceptions() -> None:
    with pytest.raises(TaskTimeoutError, match=r"timeout of 0\.5 s"):
        RayMap(hang_on).map([5], timeout=0.5)
    assert wait_until_idle()


def test_clock_starts_per_item_not_per_batch() -> None:
    def nap(x: int) -> int:
        time.sleep(0.3)
        return x

    # one batch of 5 items takes 1.5 s, each item 0.3 s: none may time out at 1 s
    assert RayMap(nap, batch_size=5).map(range(5), timeout=1) == list(range(5))


def test_user_signal_handlers_work_in_the_worker() -> None:
    def uses_signals(x: int) -> str:
        import signal

        got = []
        previous = signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
        try:
            signal.raise_signal(signal.SIGUSR1)
        finally:
            signal.signal(signal.SIGUSR1, previous)
        return f"{x}:{len(got)}"

    assert RayMap(uses_signals).map([1, 2]) == ["1:1", "2:1"]


def test_timeout_traceback_shows_where_the_item_was() -> None:
    out = RayMap(functools.partial(hang_on, hang=(0,))).map([0], timeout=0.5, safe_exceptions=True)
    assert "time.sleep" in str(out[0].__cause__)
