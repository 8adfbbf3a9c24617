"""The same scenarios against the stdlib and raypool: same results, same exception types.

Each test takes ``make``, a factory of ``multiprocessing`` pools (spawned children, since
this process runs Ray's threads) or of ``RayPool``s, as CPython's ``create_executor_tests``
runs one behavioural test against every executor kind.
"""

from __future__ import annotations

import concurrent.futures.process
import functools
import multiprocessing
import multiprocessing.pool
import threading
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Executor,
    Future,
    as_completed,
    wait,
)
from typing import Any

import pytest

import raypool
from helpers import (
    SayWhenError,
    add,
    count_lines,
    divide,
    exception_throwing_generator,
    fail_first_log_rest,
    fail_on,
    log_then_hang,
    raise_runtime_error,
    read_state,
    set_state,
    sleep_then,
    slow_square,
    square,
    wait_for_lines,
)

# -- multiprocessing.Pool --------------------------------------------------------------------


def test_map_starmap_apply(pool: Any) -> None:
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert pool.map(square, range(10), 3) == [x * x for x in range(10)]  # chunksize
    assert pool.map(square, []) == []
    assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.apply(add, (1, 2)) == 3
    assert pool.apply(fail_on, (1,), {"bad": 2}) == 1


def test_async_results(pool: Any) -> None:
    result = pool.apply_async(add, (2, 3))
    assert result.get(timeout=60) == 5
    assert result.ready()
    assert result.successful()
    mapped = pool.map_async(square, range(5))
    assert mapped.get(timeout=60) == [0, 1, 4, 9, 16]
    assert pool.starmap_async(add, [(1, 1)]).get(timeout=60) == [2]


def test_callbacks_run_before_ready_and_map_gets_input_order(pool: Any) -> None:
    errors: list[BaseException] = []
    failed = pool.apply_async(divide, (1, 0), error_callback=errors.append)
    failed.wait(60)
    assert failed.ready()
    assert not failed.successful()
    assert len(errors) == 1
    assert type(errors[0]) is ZeroDivisionError
    values: list[Any] = []
    done = pool.map_async(square, range(6), callback=values.append)
    done.wait(60)
    assert values == [[x * x for x in range(6)]]


def test_errors_are_the_users_own_type(pool: Any) -> None:
    with pytest.raises(ZeroDivisionError):
        pool.apply(divide, (1, 0))
    with pytest.raises(ValueError, match="bad item 3"):
        pool.map(fail_on, range(6))
    with pytest.raises(ZeroDivisionError):
        pool.starmap_async(divide, [(1, 0)]).get(60)
    with pytest.raises(TypeError):
        pool.map(divide, [(1, 0)])  # map passes the tuple as one argument
    with pytest.raises(ZeroDivisionError):
        pool.starmap(divide, [(1, 1), (1, 0)])
    with pytest.raises(ZeroDivisionError):
        pool.apply_async(divide, (1, 0)).get(60)


def test_imap_raises_at_the_item_and_goes_on(pool: Any) -> None:
    it = pool.imap(fail_on, range(6))
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert list(it) == [4, 5]


def test_imap_orders_and_imap_unordered_covers(pool: Any) -> None:
    assert list(pool.imap(square, range(20))) == [x * x for x in range(20)]
    assert list(pool.imap(square, iter(range(20)), 4)) == [x * x for x in range(20)]
    assert sorted(pool.imap_unordered(square, range(20))) == sorted(x * x for x in range(20))
    assert list(pool.imap(square, [])) == []


def test_timeouts_of_waiting_are_multiprocessing_timeouts(pool: Any) -> None:
    slow = pool.apply_async(sleep_then, (1, 1.5))
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.05)
    with pytest.raises(ValueError, match="not ready"):
        slow.successful()
    assert not slow.ready()
    it = pool.imap(slow_square, [3])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=60) == 9
    assert slow.get(timeout=60) == 1


def test_initializer_state_is_seen_by_the_functions(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2, set_state, ("ready",))
    assert pool.map(read_state, range(4)) == [("ready", x) for x in range(4)]
    pool.close()
    pool.join()


def test_closed_and_terminated_pools_refuse_work(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    for call in (
        lambda: pool.map(square, [1]),
        lambda: pool.apply_async(square, (1,)),
        lambda: pool.imap(square, [1]),
        lambda: pool.starmap(add, [(1, 2)]),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    pool.join()
    other = make_pool(2)
    other.terminate()
    with pytest.raises(ValueError, match="Pool not running"):
        other.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        other.__enter__()


def test_close_then_join_completes_submitted_work(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    results = [pool.apply_async(square, (x,)) for x in range(8)]
    mapped = pool.map_async(square, range(8))
    pool.close()
    pool.join()
    assert [r.get(0) for r in results] == [x * x for x in range(8)]
    assert mapped.get(0) == [x * x for x in range(8)]


def test_context_manager_returns_the_pool(make_pool: Callable[..., Any]) -> None:
    with make_pool(2) as pool:
        assert pool.map(square, range(3)) == [0, 1, 4]


def test_bad_arguments(make_pool: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        make_pool(0)
    with pytest.raises(TypeError):
        make_pool(2, initializer=42)


def test_pools_cannot_be_pickled(make_pool: Callable[..., Any]) -> None:
    import pickle

    pool = make_pool(1)
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_worker_traceback_is_the_stdlibs_remote_traceback(pool: Any) -> None:
    with pytest.raises(RuntimeError) as info:
        pool.apply(raise_runtime_error)
    assert info.value.args == (123,)
    cause = info.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert "raise RuntimeError(123)  # a comment the traceback shows" in cause.tb


def test_map_finishes_every_item_before_raising(pool: Any, tmp_path: Any) -> None:
    # CPython issue #23992: map() does not fail fast.
    log = str(tmp_path / "finished.log")
    with pytest.raises(ValueError, match="first item"):
        pool.map(functools.partial(fail_first_log_rest, path=log), range(4), 1)
    assert count_lines(log) == 3


def test_an_input_that_raises(pool: Any) -> None:
    with pytest.raises(SayWhenError):
        pool.map(square, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(square, exception_throwing_generator(10, 3), 1)
    it = pool.imap(square, exception_throwing_generator(10, 3), 1)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap(square, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    expected = [x * x for x in range(10)]
    unordered = pool.imap_unordered(square, exception_throwing_generator(10, 3), 1)
    with pytest.raises(SayWhenError):
        for _ in range(10):
            expected.remove(next(unordered))


# -- concurrent.futures ------------------------------------------------------------------------


def test_executor_is_an_executor_with_real_futures(make_executor: Callable[..., Any]) -> None:
    with make_executor() as executor:
        assert isinstance(executor, Executor)
        future = executor.submit(add, 1, b=2)
        assert isinstance(future, Future)
        assert future.result(timeout=60) == 3
        futures = [executor.submit(square, x) for x in range(6)]
        assert sorted(f.result() for f in as_completed(futures, timeout=60)) == [
            x * x for x in range(6)
        ]
        done, _ = wait(futures, timeout=60)
        assert done == set(futures)
        first, _ = wait([executor.submit(square, 3)], return_when=FIRST_COMPLETED, timeout=60)
        assert [f.result() for f in first] == [9]


def test_executor_futures_carry_the_users_exception(make_executor: Callable[..., Any]) -> None:
    with make_executor() as executor:
        future = executor.submit(divide, 1, 0)
        assert type(future.exception(timeout=60)) is ZeroDivisionError
        with pytest.raises(ZeroDivisionError):
            future.result()


def test_submit_traceback_is_the_executors_remote_traceback(
    make_executor: Callable[..., Any],
) -> None:
    with make_executor() as executor:
        exc = executor.submit(raise_runtime_error).exception(timeout=60)
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is concurrent.futures.process._RemoteTraceback
    assert "raise RuntimeError(123)  # a comment the traceback shows" in cause.tb


def test_executor_map_is_lazy_and_raises_at_the_item(make_executor: Callable[..., Any]) -> None:
    with make_executor() as executor:
        results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
        assert next(results) == (0, 1)
        assert next(results) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(results)


def test_executor_map_timeout_bounds_the_whole_wait(make_executor: Callable[..., Any]) -> None:
    with make_executor() as executor:
        results: list[Any] = []
        with pytest.raises(concurrent.futures.TimeoutError):
            for value in executor.map(sleep_then, [1, 2, 3], [0, 0, 5], timeout=2.5):
                results.append(value)
        assert results == [1, 2]


def test_done_callbacks(make_executor: Callable[..., Any]) -> None:
    called = threading.Event()
    seen: list[Any] = []

    def record(future: Future[Any]) -> None:
        seen.append(future.result())
        called.set()

    with make_executor() as executor:
        executor.submit(square, 7).add_done_callback(record)
        assert called.wait(60)
    assert seen == [49]


def test_executor_map_zips_iterables(make_executor: Callable[..., Any]) -> None:
    with make_executor() as executor:
        assert list(executor.map(square, range(5))) == [0, 1, 4, 9, 16]
        assert list(executor.map(add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]
        assert list(executor.map(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        with pytest.raises(ZeroDivisionError):
            list(executor.map(divide, [1, 1], [1, 0]))


def test_submit_after_shutdown_is_a_runtime_error(make_executor: Callable[..., Any]) -> None:
    executor = make_executor()
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(square, 1)
    executor.shutdown()  # idempotent


def test_futures_not_started_can_be_cancelled(make_executor: Callable[..., Any]) -> None:
    executor = make_executor(max_workers=1)
    first = executor.submit(sleep_then, 1, 1.0)
    queued = [executor.submit(square, x) for x in range(5)]
    assert queued[-1].cancel()
    assert queued[-1].cancelled()
    with pytest.raises(CancelledError):
        queued[-1].result()
    assert first.result(timeout=60) == 1
    assert [f.result(timeout=60) for f in queued[:-1]] == [0, 1, 4, 9]
    executor.shutdown()


def test_shutdown_cancel_futures(make_executor: Callable[..., Any], tmp_path: Any) -> None:
    started = tmp_path / "started"
    executor = make_executor(max_workers=1)
    first = executor.submit(log_then_hang, str(started), 1, 1.0)
    queued = [executor.submit(square, x) for x in range(6)]
    assert wait_for_lines(started, 1), "the first future never started"
    executor.shutdown(wait=True, cancel_futures=True)  # while the first one runs
    assert first.result() == 1
    assert queued[-1].cancelled()
    for future in queued:
        assert future.cancelled() or future.result() == queued.index(future) ** 2


def test_shutdown_cancel_futures_starts_what_the_free_workers_take(
    make_executor: Callable[..., Any],
) -> None:
    # CPython's test_cancel_futures: the stdlib's process pool hands calls to its idle
    # workers before it cancels the rest, so some run - not every one is cancelled.
    executor = make_executor(max_workers=2)
    futures = [executor.submit(sleep_then, i, 0.05) for i in range(30)]
    executor.shutdown(wait=True, cancel_futures=True)
    ran = [future for future in futures if not future.cancelled()]
    assert 0 < len(ran) < 10, len(ran)
    assert all(future.result() == futures.index(future) for future in ran)


def test_executor_initializer(make_executor: Callable[..., Any]) -> None:
    with make_executor(initializer=set_state, initargs=("on",)) as executor:
        assert executor.submit(read_state, 1).result(timeout=60) == ("on", 1)


def test_executor_bad_arguments(make_executor: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        make_executor(max_workers=0)
    with pytest.raises(TypeError):
        make_executor(initializer=42)


def test_imap_next_from_several_threads() -> None:
    """An imap iterator may be read by several threads: each result goes to exactly one of
    them, and every reader sees the end. (raypool only: the stdlib's ``next()`` may raise a
    spurious ``TimeoutError`` when another thread took the item it was woken for, and
    readers still waiting when the last item is taken wait forever - seen on 3.10.)"""
    with raypool.Pool() as pool:
        it = pool.imap(square, range(400))
        taken: list[list[int]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def read(into: list[int]) -> None:
            try:
                into.extend(iter(lambda: next(it, None), None))
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read, args=(into,)) for into in taken]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
        assert not any(reader.is_alive() for reader in readers)
    assert errors == []
    assert sorted(value for into in taken for value in into) == [x * x for x in range(400)]


def test_work_that_races_close_either_completes_or_is_refused(
    make_pool: Callable[..., Any],
) -> None:
    """Calls started from other threads while the pool closes are refused or complete
    before join() returns - none starts on a closed pool."""
    pool = make_pool(2)
    results: list[Any] = []
    started = threading.Event()

    def submit() -> None:
        while True:
            try:
                results.append(pool.apply_async(square, (len(results),)))
            except ValueError:  # Pool not running
                return
            started.set()

    submitters = [threading.Thread(target=submit) for _ in range(3)]
    for submitter in submitters:
        submitter.start()
    assert started.wait(60)
    pool.close()
    pool.join()
    for submitter in submitters:
        submitter.join(60)
    assert results
    assert all(result.ready() for result in results)
