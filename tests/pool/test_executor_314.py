"""Python 3.14's ``concurrent.futures`` additions, on every Python raypool supports:
``Executor.map(buffersize=)`` and ``ProcessPoolExecutor.terminate_workers()`` /
``kill_workers()``. The cases follow CPython's own tests of them
(``test_concurrent_futures/executor.py``, ``test_process_pool.py``)."""

from __future__ import annotations

import gc
import itertools
import operator
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

import raypool
from helpers import (
    buffered_map_in_task,
    cpus_in_task,
    hang_noting_stop,
    hold,
    log_call,
    square,
    stubborn,
    wait_for_lines,
    wait_for_path,
)


@pytest.fixture
def executor() -> Iterator[raypool.ProcessPoolExecutor]:
    made = raypool.ProcessPoolExecutor(2)
    yield made
    made.shutdown(wait=False, cancel_futures=True)


def _shutdown_within(executor: Any, seconds: float = 60.0) -> bool:
    """Whether ``shutdown(wait=True)`` returns within ``seconds``."""
    done = threading.Event()

    def shut() -> None:
        executor.shutdown(wait=True)
        done.set()

    threading.Thread(target=shut, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.parametrize(
    ("buffersize", "error", "message"),
    [
        (0, ValueError, "buffersize must be None or > 0"),
        (-1, ValueError, "buffersize must be None or > 0"),
        (2.0, TypeError, "buffersize must be an integer or None"),
        ("2", TypeError, "buffersize must be an integer or None"),
    ],
)
def test_map_buffersize_rejects_what_is_not_a_positive_integer(
    executor: Any, buffersize: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        executor.map(str, range(4), buffersize=buffersize)


def test_map_buffersize_reads_no_further_than_the_buffer_when_nobody_reads(
    executor: Any,
) -> None:
    ints = iter(range(4))
    executor.map(str, ints, buffersize=2)
    assert _shutdown_within(executor)
    assert next(ints) == 2, "should have read only `buffersize` items of the input"


@pytest.mark.parametrize(("chunksize", "buffersize"), [(None, 3), (1, 3), (5, 2)])
def test_map_buffersize_keeps_the_input_read_within_the_buffer_ahead_of_the_consumer(
    executor: Any, chunksize: int | None, buffersize: int
) -> None:
    taken = 0
    ahead: list[int] = []

    def source() -> Iterator[int]:
        for i in range(300):
            ahead.append(i + 1 - taken)  # read, not yet taken by the consumer
            yield i

    results = []
    for value in executor.map(square, source(), chunksize=chunksize, buffersize=buffersize):
        results.append(value)
        taken += 1
    assert results == [i * i for i in range(300)]
    # The consumer counts an item as taken just after it gets it: one more chunk may be
    # read meanwhile.
    most = (buffersize + 1) * (chunksize or 1)  # as the stdlib's: one item a chunk
    assert max(ahead) <= most, (max(ahead), most)


@pytest.mark.parametrize(("view_chunksize", "per_task"), [(None, 1), (5, 5)])
def test_map_buffersize_chunks_are_one_item_unless_the_executor_says_otherwise(
    executor: Any, view_chunksize: int | None, per_task: int
) -> None:
    view = executor.options(chunksize=view_chunksize) if view_chunksize else executor
    tasks = [task for _, task in view.map(cpus_in_task, range(20), buffersize=2)]
    assert [tasks.count(task) for task in dict.fromkeys(tasks)] == [per_task] * (20 // per_task)


def test_map_buffersize_dropped_unread_reads_no_further(executor: Any, tmp_path: Path) -> None:
    log = str(tmp_path / "calls")
    ints = iter(range(100))
    results = executor.map(log_call, itertools.repeat(log), ints, chunksize=1, buffersize=2)
    assert wait_for_lines(log, 2)  # both chunks ran: their results wait in the window
    del results  # dropped unread: what was submitted completes, as the stdlib's
    gc.collect()
    assert _shutdown_within(executor)
    assert next(ints) == 2, "should have read only `buffersize` elements from `ints`"


def test_map_buffersize_on_an_infinite_iterable(executor: Any) -> None:
    results = executor.map(str, itertools.count(), chunksize=1, buffersize=2)
    assert [next(results) for _ in range(3)] == ["0", "1", "2"]
    assert _shutdown_within(executor)
    # What was read still arrives; then the input left unread is an error, as the stdlib's
    # next submit() after shutdown.
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        for _ in range(10):
            next(results)


def test_map_buffersize_ends_cleanly_when_the_input_ended_before_the_shutdown(
    executor: Any,
) -> None:
    results = executor.map(str, iter(range(2)), buffersize=2)
    assert _shutdown_within(executor)
    assert list(results) == ["0", "1"]


def test_map_buffersize_inside_a_task_waits_in_ray() -> None:
    # A nested pool's reader waits lending its task's CPU: it must ask for each batch first.
    with raypool.Pool(1) as pool:
        result = pool.apply_async(buffered_map_in_task, (20,))
        assert result.get(timeout=120) == [i * i for i in range(20)]


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_map_buffersize_yields_every_result_in_order(executor: Any, buffersize: int) -> None:
    assert list(executor.map(str, range(4), buffersize=buffersize)) == ["0", "1", "2", "3"]
    assert list(executor.map(operator.add, range(4), range(4), buffersize=buffersize)) == [
        0,
        2,
        4,
        6,
    ]


def test_map_buffersize_on_several_infinite_empty_or_no_iterables(executor: Any) -> None:
    results = executor.map(operator.add, itertools.count(), itertools.count(), buffersize=2)
    assert [next(results) for _ in range(3)] == [0, 2, 4]
    assert list(executor.map(pow, itertools.count(), range(5), buffersize=2)) == [
        pow(i, i) for i in range(5)
    ]
    assert next(executor.map(str, [], buffersize=2), None) is None
    assert next(executor.map(str, buffersize=2), None) is None  # as the stdlib: nothing
    assert next(executor.map(str), None) is None


def test_map_buffersize_with_a_chunksize_and_a_timeout(executor: Any) -> None:
    results = executor.map(square, range(50), chunksize=4, buffersize=2, timeout=120)
    assert list(results) == [i * i for i in range(50)]


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_stopping_the_workers_stops_the_running_call_and_cancels_the_rest(
    tmp_path: Path, method: str
) -> None:
    started, stopped = str(tmp_path / "started"), str(tmp_path / "stopped")
    executor = raypool.ProcessPoolExecutor(1)
    running = executor.submit(hang_noting_stop, started, stopped)
    assert wait_for_path(started)
    pending = [executor.submit(square, i) for i in range(5)]
    getattr(executor, method)()
    with pytest.raises(BrokenProcessPool, match=method):
        running.result(timeout=60)
    for future in pending:
        assert future.cancelled()
        with pytest.raises(CancelledError):
            future.result(timeout=0)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(square, 1)
    if method == "terminate_workers":
        assert wait_for_path(stopped), "the running call was not stopped"
    assert _shutdown_within(executor)
    getattr(executor, method)()  # again, once shut down: nothing left to do


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_stopping_the_workers_of_a_fresh_executor_or_after_a_crash_is_harmless(
    method: str,
) -> None:
    fresh = raypool.ProcessPoolExecutor(1)
    getattr(fresh, method)()
    with pytest.raises(RuntimeError):
        fresh.submit(square, 1)
    crashed = raypool.ProcessPoolExecutor(1)  # the stdlib's would be broken now
    with pytest.raises(BrokenProcessPool):
        crashed.submit(os._exit, 1).result(timeout=120)
    getattr(crashed, method)()
    assert _shutdown_within(crashed)


def test_kill_workers_ends_a_call_that_swallows_the_stop(tmp_path: Path) -> None:
    started = tmp_path / "started"
    executor = raypool.ProcessPoolExecutor(1)
    running = executor.submit(stubborn, str(started))
    assert wait_for_path(started)
    pid = int(started.read_text())
    executor.kill_workers()
    with pytest.raises(BrokenProcessPool):
        running.result(timeout=60)
    deadline = time.monotonic() + 60
    while _running(pid):
        assert time.monotonic() < deadline, "the worker process still runs"
        time.sleep(0.05)
    with raypool.ProcessPoolExecutor(1) as fresh:  # Ray starts workers for later work
        assert list(fresh.map(square, range(4))) == [0, 1, 4, 9]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_terminate_workers_ends_map_iterators_with_the_error(tmp_path: Path) -> None:
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    executor = raypool.ProcessPoolExecutor(1)
    results = executor.map(hold, [started], [release], timeout=120)
    assert wait_for_path(started)
    executor.terminate_workers()
    with pytest.raises(BrokenProcessPool):
        next(results)
