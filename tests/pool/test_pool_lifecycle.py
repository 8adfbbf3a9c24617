"""Pool state, processes, initializer, maxtasksperchild, ``with``, terminate, join."""

from __future__ import annotations

import gc
import itertools
import logging
import subprocess
import sys
import time
from concurrent.futures import CancelledError, Executor
from pathlib import Path
from typing import Any

import pytest

import raypool
from helpers import fail_init, init_log, pid_of, slow_square, square, wait_until_idle
from raypool import BrokenPoolError, PoolClosedError, PoolState


def interval(x: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(x)
    return start, time.time()


def nap(x: float) -> float:
    time.sleep(x)
    return x


def test_processes_caps_the_tasks_running_at_once() -> None:
    with raypool.Pool(1) as pool:
        spans = sorted(pool.map(interval, [0.2] * 4, chunksize=1))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # never two at once


def test_more_processes_than_cpus_queue_up() -> None:
    with raypool.Pool(8) as pool:
        assert pool.map(nap, [0.05] * 16, chunksize=1) == [0.05] * 16


def test_maxtasksperchild_replaces_worker_processes() -> None:
    with raypool.Pool(1, maxtasksperchild=1) as pool:
        pids = pool.map(pid_of, range(3), chunksize=1)
    assert len(set(pids)) == 3


def test_initializer_runs_once_per_worker_process_per_pool(tmp_path: Path) -> None:
    log = tmp_path / "init.log"
    with raypool.Pool(initializer=init_log, initargs=(str(log),)) as pool:
        used = set(pool.map(pid_of, range(30), chunksize=1))
        used |= set(pool.map(pid_of, range(30), chunksize=1))
    first = log.read_text().split()
    assert len(first) == len(set(first))  # once per process
    assert used <= {int(pid) for pid in first}
    with raypool.Pool(initializer=init_log, initargs=(str(log),)) as pool:
        again = set(pool.map(pid_of, range(10), chunksize=1))
    assert len(log.read_text().split()) == len(first) + len(again)  # a new pool: again


def test_a_failing_initializer_breaks_the_items_clearly() -> None:
    with raypool.Pool(initializer=fail_init) as pool:
        with pytest.raises(BrokenPoolError, match="initializer failed on purpose"):
            pool.map(square, range(3))
        future = pool.submit(square, 2)
        assert isinstance(future.exception(60), BrokenPoolError)


def test_leaving_with_waits_for_futures_and_cancels_open_iterators() -> None:
    with raypool.Pool() as pool:
        future = pool.submit(slow_square, 3)
        result = pool.apply_async(slow_square, (4,))
        endless = pool.imap(square, itertools.count())  # never ends
        for _ in pool.imap(square, range(10**6)):
            break
    assert future.result(0) == 9
    assert result.get(0) == 16
    with pytest.raises(CancelledError):
        list(endless)  # what it had buffered, then the cancellation
    assert pool.state is PoolState.CLOSE
    assert wait_until_idle()


def test_leaving_with_by_an_exception_terminates() -> None:
    with pytest.raises(KeyError), raypool.Pool() as pool:
        result = pool.apply_async(nap, (3600,))
        raise KeyError("user error")
    assert pool.state is PoolState.TERMINATE
    with pytest.raises(CancelledError):
        result.get(30)
    assert wait_until_idle()


def test_terminate_stops_running_work() -> None:
    pool = raypool.Pool()
    results = [pool.apply_async(nap, (3600,)) for _ in range(4)]
    stream = pool.imap(nap, [3600] * 4)
    pool.terminate()
    for result in results:
        with pytest.raises(CancelledError):
            result.get(30)
    with pytest.raises(CancelledError):
        next(stream)
    pool.join()
    assert wait_until_idle()


def test_join_after_close_completes_iterators_nobody_reads() -> None:
    pool = raypool.Pool()
    it = pool.imap(square, range(200), chunksize=1)
    pool.close()
    pool.join()
    assert list(it) == [x * x for x in range(200)]


def test_dropping_a_running_pool_warns_and_frees_its_work() -> None:
    pool = raypool.Pool()
    pool.apply_async(nap, (3600,))
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool  # the last reference: collected at once
    assert wait_until_idle()


def test_dropping_an_imap_iterator_cancels_its_work() -> None:
    with raypool.Pool() as pool:
        it = pool.imap(nap, [0] + [3600] * 6, chunksize=1)
        assert next(it) == 0
        del it
        gc.collect()
        assert wait_until_idle()


def test_state_repr_and_types() -> None:
    pool = raypool.Pool(3)
    assert isinstance(pool, Executor)
    assert raypool.Pool is raypool.RayPool
    assert isinstance(raypool.ProcessPoolExecutor(), raypool.RayPool)
    assert "state=RUN" in repr(pool)
    assert "processes=3" in repr(pool)
    pool.close()
    assert "state=CLOSE" in repr(pool)
    with pytest.raises(PoolClosedError):
        pool.apply(square, (1,))
    pool.join()
    pool.terminate()
    assert pool.state is PoolState.TERMINATE


def test_a_failing_callback_is_logged_and_the_result_still_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_callback(_: Any) -> None:
        raise RuntimeError("callback bug")

    with raypool.Pool() as pool, caplog.at_level(logging.ERROR, logger="raypool"):
        result = pool.apply_async(square, (3,), callback=broken_callback)
        assert result.get(60) == 9
    assert "callback bug" in caplog.text


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="not both"):
        raypool.Pool(2, max_workers=2)
    with pytest.raises(TypeError, match="not both"):
        raypool.Pool(address="auto", ray_address="auto")
    with pytest.raises(ValueError, match="maxtasksperchild"):
        raypool.Pool(maxtasksperchild=0)
    with pytest.raises(TypeError, match="processes"):
        raypool.Pool("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending"):
        raypool.Pool(max_pending=0)
    # context and mp_context are accepted and ignored
    raypool.Pool(context=object()).close()
    raypool.ProcessPoolExecutor(2, object()).shutdown()


def test_a_view_keeps_its_pool_alive() -> None:
    timed = raypool.Pool().options(timeout=30)  # the pool itself is not kept by the caller
    gc.collect()
    assert timed.state is PoolState.RUN
    assert timed.map(square, [3]) == [9]
    timed.terminate()


def test_waiting_inside_a_callback_is_refused_not_a_deadlock() -> None:
    errors: list[BaseException] = []

    with raypool.Pool() as pool:

        def callback(_: Any) -> None:
            try:
                pool.map(square, [1])
            except RuntimeError as exc:
                errors.append(exc)

        pool.apply_async(square, (2,), callback=callback).wait(60)
    assert len(errors) == 1
    assert "_async" in str(errors[0])


def test_closing_without_join_ends_the_dispatcher_thread_when_work_is_done() -> None:
    import threading

    def dispatchers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "raypool-dispatcher"}

    # Other tests' pools may still be ending theirs: follow this pool's thread only.
    before = dispatchers()
    pool = raypool.Pool()
    result = pool.map_async(square, range(10))
    (mine,) = dispatchers() - before
    pool.close()
    assert result.get(60) == [x * x for x in range(10)]
    mine.join(30)
    assert not mine.is_alive()


def test_leaving_the_interpreter_with_work_in_flight(tmp_path: Path) -> None:
    script = tmp_path / "leave.py"
    script.write_text(
        "import time, raypool\n"
        "pool = raypool.Pool()\n"
        "result = pool.apply_async(time.sleep, (3600,))  # one CPU of two, for an hour\n"
        "it = pool.imap(abs, range(10**9))\n"
        "next(it)\n"
        "print('leaving')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "leaving"
    assert "shutdown" not in proc.stderr


_EXIT_WITH_TASKS_RUNNING = """
import os, sys, time
import ray, raypool

address, marker = sys.argv[1:3]
ray.init(address=address, logging_level="error")

def nap(x):
    open(f"{marker}.{x}", "w").close()
    time.sleep(3600)

pool = raypool.Pool(2)
results = pool.map_async(nap, range(2), chunksize=1)
while not all(os.path.exists(f"{marker}.{x}") for x in range(2)):
    time.sleep(0.05)  # until both tasks run: the exit must cancel running tasks
print("leaving", flush=True)
"""


def _cancel_keys() -> set[str]:
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list("cancel:", namespace="raypool")
    return {key.decode() if isinstance(key, bytes) else key for key in keys}


def test_a_driver_leaving_with_tasks_running_leaves_no_cancel_key(tmp_path: Path) -> None:
    """The exit cancels the pool's running tasks through a flag in Ray's key-value store;
    the flag is deleted before Ray shuts down, so a cluster that outlives the driver keeps
    none."""
    import ray

    before = _cancel_keys()
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_TASKS_RUNNING, address, str(tmp_path / "running")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "leaving"
    assert wait_until_idle()  # Ray ended the driver's tasks
    assert _cancel_keys() - before == set()
