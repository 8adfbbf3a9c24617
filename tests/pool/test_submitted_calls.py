"""Submitted calls share tasks (``_lanes``): what a caller of ``submit``/``apply_async`` sees.

Most tests hold a one-process pool's only slot with ``hold`` while they submit, so that the
calls wait together and are packed into one task once the slot frees: which calls shared
a task is then known, not hoped for (each call reports the id of its Ray task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, as_completed, wait
from pathlib import Path
from typing import Any

import pytest

import raypool
from helpers import (
    Scaler,
    count_lines,
    counted_closure,
    cpus_in_task,
    die_now,
    double_in_task,
    hold,
    in_task,
    in_task_when,
    log_then_wait_for,
    make_adder,
    put_in_store,
    square,
    task_name,
    touch,
    wait_for_path,
)
from raypool import WorkerCrashedError

TIMEOUT = 60


class Held:
    """A one-process executor whose slot ``hold`` keeps busy until ``release()``."""

    def __init__(self, tmp_path: Path) -> None:
        self.executor = raypool.ProcessPoolExecutor(1)
        # Measured durations make the lane pack waiting calls together.
        list(self.executor.map(square, range(4)))
        [f.result(TIMEOUT) for f in [self.executor.submit(square, i) for i in range(50)]]
        started, self._release = tmp_path / "held", tmp_path / "release"
        self.holder = self.executor.submit(hold, str(started), str(self._release))
        assert wait_for_path(started, TIMEOUT)

    def release(self) -> None:
        """Free the slot."""
        self._release.touch()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    held = Held(tmp_path)
    yield held
    held.release()
    held.executor.shutdown(wait=True, cancel_futures=True)


def test_each_call_of_a_task_resolves_when_it_finishes(held: Held, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    fast = held.executor.submit(in_task, 1)
    slow = held.executor.submit(in_task_when, str(gate), 2)
    held.release()
    assert fast.result(TIMEOUT)[0] == 1
    assert not slow.done()  # it waits for the gate, which opens only now
    assert next(as_completed([slow, fast], TIMEOUT)) is fast
    gate.touch()
    assert slow.result(TIMEOUT)[0] == 2
    assert fast.result()[1] == slow.result()[1]  # one task ran both


def test_calls_to_different_functions_share_a_task(held: Held) -> None:
    futures = [held.executor.submit(fn, x) for x in range(3) for fn in (in_task, double_in_task)]
    held.release()
    results = [future.result(TIMEOUT) for future in futures]
    assert [value for value, _ in results] == [x * k for x in range(3) for k in (1, 2)]
    assert len({task for _, task in results}) == 1


def test_calls_asking_for_other_resources_run_in_other_tasks(held: Held) -> None:
    half = held.executor.options(remote_options={"num_cpus": 0.5})
    plain = [held.executor.submit(cpus_in_task, x) for x in range(3)]
    halves = [half.submit(cpus_in_task, x) for x in range(3)]
    held.release()
    plain_results = [future.result(TIMEOUT) for future in plain]
    half_results = [future.result(TIMEOUT) for future in halves]
    assert {cpus for cpus, _ in plain_results} == {1.0}
    assert {cpus for cpus, _ in half_results} == {0.5}
    assert not {task for _, task in plain_results} & {task for _, task in half_results}


def test_cancel_succeeds_until_the_call_is_packed_into_a_task(held: Held, tmp_path: Path) -> None:
    never = tmp_path / "never"
    waiting = held.executor.submit(touch, str(never))
    assert waiting.cancel()  # still waiting in the driver: it never runs
    packed = held.executor.submit(in_task, 1)
    held.release()
    packed.result(TIMEOUT)
    assert not packed.cancel()  # packed, and done: too late
    assert waiting.cancelled()
    # Later calls of the same lane have run: the cancelled one would have run before them.
    held.executor.submit(square, 2).result(TIMEOUT)
    assert not never.exists()


def test_a_call_alone_in_its_task_is_a_plain_ray_task(held: Held) -> None:
    # A plain task costs Ray less than a streaming one, which only a task of several calls
    # needs: its results go back in pieces.
    alone = held.executor.options(chunksize=1)
    singles = [alone.submit(task_name) for _ in range(2)]
    shared = [held.executor.submit(task_name) for _ in range(2)]
    held.release()
    assert {future.result(TIMEOUT) for future in singles} == {"_execute_call"}
    assert {future.result(TIMEOUT) for future in shared} == {"_execute_calls"}


def test_a_plain_task_fails_and_times_out_as_a_streaming_one(tmp_path: Path) -> None:
    with raypool.ProcessPoolExecutor(2) as executor:
        alone = executor.options(chunksize=1, max_retries=0)
        assert alone.submit(task_name).result(TIMEOUT) == "_execute_call"
        with pytest.raises(WorkerCrashedError):
            alone.submit(die_now, 2).result(TIMEOUT)
        gate = tmp_path / "never"
        with pytest.raises(raypool.TaskTimeoutError):
            alone.options(timeout=0.5).submit(in_task_when, str(gate), 1).result(TIMEOUT)
        with pytest.raises(ZeroDivisionError):
            alone.submit(divmod, 1, 0).result(TIMEOUT)
        # A result only cloudpickle can send back.
        assert alone.submit(make_adder, 2).result(TIMEOUT)(40) == 42
        assert alone.submit(square, 7).result(TIMEOUT) == 49  # the pool goes on


def test_an_object_ref_in_a_result_stays_readable(held: Held) -> None:
    # A result holding a ref the worker made: Ray must learn who owns it (its pickler
    # does; a plain pickle of the ref would lose that).
    import ray

    alone = held.executor.options(chunksize=1)
    futures = [alone.submit(put_in_store, "one"), held.executor.submit(put_in_store, "two")]
    futures.append(held.executor.submit(put_in_store, "three"))
    held.release()
    results = [future.result(TIMEOUT) for future in futures]
    assert results[1][1] == results[2][1] != results[0][1]  # a plain task, a streaming one
    refs = [ref for refs, _ in results for ref in refs]
    assert ray.get(refs, timeout=TIMEOUT) == ["one", "two", "three"]
    with raypool.Pool(2) as pool:
        mapped = [ref for refs, _ in pool.map(put_in_store, range(5)) for ref in refs]
        assert ray.get(mapped, timeout=TIMEOUT) == list(range(5))


def test_with_max_tasks_per_child_every_task_streams() -> None:
    # Ray counts ``max_calls`` per remote function: one kind of task for every call keeps
    # the count of tasks a worker process runs.
    with raypool.ProcessPoolExecutor(2, max_tasks_per_child=3) as executor:
        names = [executor.options(chunksize=1).submit(task_name) for _ in range(4)]
        assert {future.result(TIMEOUT) for future in names} == {"_execute_calls"}


def test_a_packed_call_cannot_be_cancelled(tmp_path: Path) -> None:
    with raypool.ProcessPoolExecutor(1) as executor:
        started, release = tmp_path / "started", tmp_path / "release"
        running = executor.submit(hold, str(started), str(release))
        assert wait_for_path(started, TIMEOUT)
        assert running.running()
        assert not running.cancel()
        release.touch()
        assert running.result(TIMEOUT)


def test_shutdown_cancel_futures_cancels_every_call_not_yet_packed(
    held: Held, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    futures = [held.executor.submit(touch, str(log) + str(i)) for i in range(5)]
    held.executor.shutdown(wait=False, cancel_futures=True)
    assert all(future.cancelled() for future in futures)
    held.release()
    held.executor.shutdown(wait=True)
    assert not any(Path(str(log) + str(i)).exists() for i in range(5))


def test_a_crash_fails_only_the_call_that_caused_it(held: Held) -> None:
    once = held.executor.options(max_retries=0)
    futures = [once.submit(in_task, 1), once.submit(die_now, 2), once.submit(in_task, 3)]
    held.release()
    assert futures[0].result(TIMEOUT)[0] == 1
    with pytest.raises(WorkerCrashedError):
        futures[1].result(TIMEOUT)
    assert futures[2].result(TIMEOUT)[0] == 3


def test_per_call_timeout_applies_to_its_calls_only(held: Held, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    timed = held.executor.options(timeout=0.5)
    late = timed.submit(in_task_when, str(gate), 1)
    plain = held.executor.submit(in_task, 2)
    held.release()
    with pytest.raises(raypool.TaskTimeoutError):
        late.result(TIMEOUT)
    assert plain.result(TIMEOUT)[0] == 2


def test_safe_exceptions_per_call_in_a_shared_task(held: Held) -> None:
    safe = held.executor.options(safe_exceptions=True)
    returned = safe.submit(divmod, 1, 0)
    raised = held.executor.submit(divmod, 1, 0)
    held.release()
    assert isinstance(returned.result(TIMEOUT), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        raised.result(TIMEOUT)


def test_wait_add_done_callback_and_asyncio_see_each_call(held: Held, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    fast = held.executor.submit(square, 3)
    slow = held.executor.submit(in_task_when, str(gate), 4)
    seen: list[Any] = []
    fast.add_done_callback(lambda future: seen.append(future.result()))
    held.release()
    done, pending = wait([fast, slow], TIMEOUT, return_when=FIRST_COMPLETED)
    assert done == {fast}
    assert pending == {slow}
    assert seen == [9]

    async def both() -> list[Any]:
        gate.touch()
        return list(await asyncio.gather(asyncio.wrap_future(slow), asyncio.wrap_future(fast)))

    assert asyncio.run(both())[1] == 9


def test_apply_async_calls_are_packed_and_each_calls_back(tmp_path: Path) -> None:
    with raypool.Pool(1) as pool:
        got: list[int] = []
        results = [pool.apply_async(square, (x,), callback=got.append) for x in range(200)]
        assert [result.get(TIMEOUT) for result in results] == [x * x for x in range(200)]
        assert sorted(got) == [x * x for x in range(200)]
        assert pool.apply(square, (7,)) == 49


def test_a_function_is_serialized_once_per_pool_while_what_it_captured_stands(
    tmp_path: Path,
) -> None:
    log = tmp_path / "pickles"
    fn, set_factor = counted_closure(str(log))
    with raypool.ProcessPoolExecutor() as executor:
        assert executor.submit(fn, 2).result(TIMEOUT) == 2
        once = count_lines(log)
        futures = [executor.submit(fn, x) for x in range(20)]
        assert [future.result(TIMEOUT) for future in futures] == list(range(20))
        assert count_lines(log) == once
        set_factor(5)  # a value it captured is rebound: a new copy carries it
        assert executor.submit(fn, 2).result(TIMEOUT) == 10
        assert count_lines(log) > once


def test_a_bound_method_travels_with_its_objects_state_at_each_call() -> None:
    scaler = Scaler(2)
    with raypool.ProcessPoolExecutor() as executor:
        assert executor.submit(scaler.scale, 3).result(TIMEOUT) == 6
        scaler.factor = 10  # as the stdlib pickles it for every call
        assert executor.submit(scaler.scale, 3).result(TIMEOUT) == 30


def test_terminate_settles_waiting_calls_so_that_wait_returns(held: Held) -> None:
    futures = [held.executor.submit(square, x) for x in range(5)]
    held.executor.terminate()
    done, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done
    assert done == set(futures)
    assert all(future.cancelled() for future in futures)


def test_calls_submitted_together_run_at_once_even_after_tiny_ones(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with raypool.ProcessPoolExecutor(2) as executor:
        # Tiny calls measured: a lane would pack hundreds of them in one task.
        [f.result(TIMEOUT) for f in [executor.submit(square, i) for i in range(300)]]
        both = [executor.submit(log_then_wait_for, str(log), 2, x, 30.0) for x in range(2)]
        # Each waits until both have started: only calls in two tasks at once can.
        assert [future.result(TIMEOUT) for future in both] == [True, True]
