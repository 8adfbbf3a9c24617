"""Drop-in behaviour a real program notices, side by side with the stdlib where it has the
feature (the fixtures of ``conftest.py``): memory a finished call keeps, exceptions of every
kind from a worker, Ray's failures, validation, nesting and the interpreter's exit."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import pickle
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from types import SimpleNamespace
from typing import Any

import pytest

import raypool
from helpers import (
    ErrorAtUnpickle,
    bad_result_on,
    count_lines,
    exit_on,
    flaky_until,
    identity,
    interrupt_on,
    log_call,
    log_then_wait_for,
    payload,
    pid_of,
    put_in,
    put_in_held,
    set_shared,
    square_when_released,
    use_shared,
    wait_until_idle,
)
from raypool import ResultPicklingError, ResultUnpicklingError, WorkerUnpicklingError


@pytest.fixture(scope="module")
def raypool_pool() -> Iterator[raypool.Pool]:
    """A raypool pool for the scenarios the stdlib's pool cannot run."""
    with raypool.Pool(2) as pool:
        yield pool


# -- 1. finished work is released ------------------------------------------------------------

#: How each method runs ``identity`` over a list of ``payload``s, returning the outputs.
RUNS: dict[str, Callable[[Any, list[Any]], list[Any]]] = {
    "map": lambda pool, xs: pool.map(identity, xs),
    "imap": lambda pool, xs: list(pool.imap(identity, xs)),
    "imap_unordered": lambda pool, xs: list(pool.imap_unordered(identity, xs)),
    "starmap": lambda pool, xs: pool.starmap(identity, [(x,) for x in xs]),
    "apply_async": lambda pool, xs: [pool.apply_async(identity, (x,)).get() for x in xs],
    "map_async": lambda pool, xs: pool.map_async(identity, xs).get(),
}


def _alive_after(run: Callable[[list[Any]], list[Any]]) -> tuple[int, int]:
    """``(arguments, results)`` still alive once ``run`` returned and both were dropped."""
    arguments = [payload(n) for n in range(10)]
    argument_refs = [weakref.ref(x) for x in arguments]
    results = run(arguments)
    assert sorted(r.n for r in results) == list(range(10))  # copies: not the arguments
    assert not any(r is x for r, x in zip(results, arguments, strict=True))
    result_refs = [weakref.ref(r) for r in results]
    del arguments, results
    # multiprocessing's task thread drops its last task a moment after handing it over:
    # wait (a bounded while) for every reference to go, rather than look once.
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        alive = (
            sum(r() is not None for r in argument_refs),
            sum(r() is not None for r in result_refs),
        )
        if alive == (0, 0) or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


@pytest.mark.parametrize("method", RUNS)
def test_a_finished_call_keeps_no_argument_or_result(pool: Any, method: str) -> None:
    for _ in range(3):  # the last call of a series too
        assert _alive_after(lambda xs: RUNS[method](pool, xs)) == (0, 0)


@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered", "starmap", "apply_async"])
def test_with_a_checkpoint_too(method: str, tmp_path: Any) -> None:
    with raypool.Pool(2, checkpoint=tmp_path / f"{method}.sqlite") as pool:
        for _ in range(2):  # computed, then answered from the checkpoint
            assert _alive_after(lambda xs: RUNS[method](pool, xs)) == (0, 0)


def test_submitted_results_are_released(make_executor: Callable[..., Any]) -> None:
    with make_executor(2) as executor:
        for _ in range(3):
            alive = _alive_after(lambda xs: [executor.submit(identity, x).result() for x in xs])
            assert alive == (0, 0)


def test_executor_map_keeps_no_result_it_yielded(make_executor: Callable[..., Any]) -> None:
    with make_executor(2) as executor:
        results = executor.map(identity, [payload(n) for n in range(10)])
        yielded = [weakref.ref(next(results)) for _ in range(5)]
        gc.collect()
        assert sum(r() is not None for r in yielded) == 0
        assert [r.n for r in results] == list(range(5, 10))


# -- 4. validation and messages as the stdlib ------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "error"),
    [
        ("maxtasksperchild", 0, ValueError),
        ("maxtasksperchild", -1, ValueError),
        ("maxtasksperchild", 0.5, ValueError),
        ("maxtasksperchild", "12", ValueError),
        ("processes", 0, ValueError),
        ("processes", -1, ValueError),
        ("processes", 0.5, ValueError),
        ("processes", "12", TypeError),
    ],
)
def test_pool_counts_are_checked_as_the_stdlib(
    make_pool: Callable[..., Any], keyword: str, value: Any, error: type[Exception]
) -> None:
    kwargs = {"processes": 2, keyword: value}
    with pytest.raises(error):
        make_pool(**kwargs)


@pytest.mark.parametrize(
    ("keyword", "value", "error"),
    [
        ("max_tasks_per_child", 0, ValueError),
        ("max_tasks_per_child", -1, ValueError),
        ("max_tasks_per_child", 0.5, TypeError),
        ("max_tasks_per_child", "12", TypeError),
        ("max_workers", 0, ValueError),
        ("max_workers", -1, ValueError),
        ("max_workers", "12", TypeError),
    ],
)
def test_executor_counts_are_checked_as_the_stdlib(
    request: pytest.FixtureRequest,
    make_executor: Callable[..., Any],
    keyword: str,
    value: Any,
    error: type[Exception],
) -> None:
    stdlib = request.node.callspec.params["make_executor"] == "concurrent.futures"
    if stdlib and keyword == "max_tasks_per_child" and sys.version_info < (3, 11):
        pytest.skip("the stdlib's executor has max_tasks_per_child from Python 3.11 on")
    kwargs = {"max_workers": 2, keyword: value}
    with pytest.raises(error):
        make_executor(**kwargs)


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), (0.5, ValueError), ("12", TypeError)]
)
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_chunksize_is_checked_as_the_stdlib(
    pool: Any, method: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        list(getattr(pool, method)(identity, [1, 2], value))


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_a_non_iterable_is_pythons_own_type_error(pool: Any, method: str) -> None:
    with pytest.raises(TypeError, match=r"^'int' object is not iterable$"):
        list(getattr(pool, method)(identity, 3))


@pytest.mark.parametrize("method", ["imap", "imap_unordered", "map", "map_async", "starmap"])
def test_raypool_raises_it_at_the_call(method: str) -> None:
    with raypool.Pool(2) as pool, pytest.raises(TypeError, match=r"^'int' object is not iterable$"):
        getattr(pool, method)(identity, 3)  # not at the first next(), as the stdlib's imap


@pytest.mark.parametrize("kind", ["multiprocessing", "raypool"])
def test_a_running_pool_dropped_warns_as_the_stdlib(kind: str) -> None:
    pool = multiprocessing.get_context("spawn").Pool(1) if kind == "multiprocessing" else None
    pools = [pool or raypool.Pool(2)]
    assert pools[0].map(identity, [1]) == [1]
    del pool
    with pytest.warns(ResourceWarning, match="^unclosed running multiprocessing pool"):
        _drop(pools)


def _drop(objects: list[Any]) -> None:
    objects.clear()
    gc.collect()


def test_retries_per_call(tmp_path: Any) -> None:
    items = [1, 6, 2]
    with raypool.Pool(2) as pool:
        log = str(tmp_path / "default")
        with pytest.raises(ConnectionError):  # the pool retries no exception
            pool.starmap(flaky_until, [(log, x) for x in items])
        log = str(tmp_path / "retried")
        calls = [(log, x) for x in items]
        assert pool.starmap(flaky_until, calls, retry_exceptions=(ConnectionError,)) == items
        log = str(tmp_path / "too-few")
        calls = [(log, x) for x in items]
        with pytest.raises(ConnectionError):  # a third run was needed
            pool.starmap(flaky_until, calls, retry_exceptions=True, max_retries=1)
        log = str(tmp_path / "map")
        results = pool.map(functools.partial(flaky_until, log), items, retry_exceptions=True)
        assert results == items
        log = str(tmp_path / "imap")
        results = pool.imap(functools.partial(flaky_until, log), items, retry_exceptions=True)
        assert list(results) == items


# -- 2. BaseException from user code is that item's outcome ----------------------------------
# -- 3. no Ray exception type reaches a caller ------------------------------------------------


def test_sys_exit_in_a_submitted_call_is_its_outcome(make_executor: Callable[..., Any]) -> None:
    with make_executor(2) as executor:
        with pytest.raises(SystemExit) as info:
            executor.submit(exit_on, 2).result()
        assert info.value.code == 3
        assert executor.submit(exit_on, 1).result() == 1  # the executor goes on


def test_keyboard_interrupt_in_a_submitted_call_is_its_outcome(
    make_executor: Callable[..., Any],
) -> None:
    with make_executor(2) as executor:
        with pytest.raises(KeyboardInterrupt):
            executor.submit(interrupt_on, 2).result()
        assert executor.submit(interrupt_on, 1).result() == 1


@pytest.mark.parametrize(
    ("kind", "error"), [("ErrorAtPickle", pickle.PicklingError), ("ExitAtPickle", SystemExit)]
)
def test_a_result_that_cannot_be_pickled_is_the_exception_its_pickling_raised(
    make_executor: Callable[..., Any], kind: str, error: type[BaseException]
) -> None:
    with make_executor(2) as executor:
        with pytest.raises(error):
            executor.submit(bad_result_on, kind, 2).result()
        with pytest.raises(error):  # Executor.map too, at that item
            list(executor.map(functools.partial(bad_result_on, kind), range(4)))


@pytest.mark.parametrize("kind", ["ErrorAtUnpickle", "ExitAtUnpickle"])
def test_a_result_that_cannot_be_unpickled_is_a_broken_process_pool(
    make_executor: Callable[..., Any], kind: str
) -> None:
    # The stdlib's executor breaks as a whole; raypool's fails that call and goes on.
    with make_executor(2) as executor, pytest.raises(BrokenProcessPool):
        executor.submit(bad_result_on, kind, 2).result()


def test_an_argument_that_cannot_be_unpickled_is_a_broken_process_pool(
    make_executor: Callable[..., Any],
) -> None:
    with make_executor(2) as executor, pytest.raises(BrokenProcessPool):
        executor.submit(identity, ErrorAtUnpickle()).result()


def test_a_result_that_cannot_be_pickled_is_a_maybe_encoding_error(pool: Any) -> None:
    with pytest.raises(MaybeEncodingError):
        pool.apply(bad_result_on, ("ErrorAtPickle", 2))
    with pytest.raises(MaybeEncodingError):
        pool.map(functools.partial(bad_result_on, "ErrorAtPickle"), range(6))
    assert pool.map(identity, range(3)) == [0, 1, 2]  # the pool goes on


# The stdlib's Pool cannot do the next ones: its worker dies, or its result thread does, and
# the call waits forever. raypool's answers are those the stdlib gives where it can.

BAD = 2
OTHERS = [0, 1, 3, 4, 5]


def _outputs(pool: Any, fn: Callable[..., Any], method: str) -> list[Any]:
    items = range(6)
    if method == "map":
        return list(pool.map(fn, items, safe_exceptions=True))
    if method == "imap":
        return list(pool.imap(fn, items, safe_exceptions=True))
    return [pool.apply_async(fn, (x,)).get() if x != BAD else _raised(pool, fn, x) for x in items]


def _raised(pool: Any, fn: Callable[..., Any], x: Any) -> BaseException:
    try:
        pool.apply_async(fn, (x,)).get()
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn}({x!r}) raised nothing")


@pytest.mark.parametrize("method", ["map", "imap", "apply_async"])
@pytest.mark.parametrize(
    ("fn", "error"),
    [
        (exit_on, SystemExit),
        (interrupt_on, KeyboardInterrupt),
        (functools.partial(bad_result_on, "ErrorAtPickle"), ResultPicklingError),
        (functools.partial(bad_result_on, "ExitAtPickle"), ResultPicklingError),
        (functools.partial(bad_result_on, "ErrorAtUnpickle"), ResultUnpicklingError),
        (functools.partial(bad_result_on, "ExitAtUnpickle"), ResultUnpicklingError),
    ],
    ids=[
        "exit",
        "interrupt",
        "error-at-pickle",
        "exit-at-pickle",
        "error-at-unpickle",
        "exit-at-unpickle",
    ],
)
def test_raypool_pool_reports_each_failure_at_its_item(
    raypool_pool: Any, method: str, fn: Callable[..., Any], error: type[BaseException]
) -> None:
    outputs = _outputs(raypool_pool, fn, method)
    assert [out for i, out in enumerate(outputs) if i != BAD] == OTHERS
    assert isinstance(outputs[BAD], error), outputs[BAD]
    if isinstance(outputs[BAD], (ResultPicklingError, ResultUnpicklingError)):
        assert isinstance(outputs[BAD], MaybeEncodingError)
        assert "item 2" in str(outputs[BAD]) or "(2,)" in str(outputs[BAD])


def test_raypool_names_the_item_that_cannot_be_unpickled_in_the_worker(raypool_pool: Any) -> None:
    items = [1, ErrorAtUnpickle(), 3]
    outputs = raypool_pool.map(identity, items, safe_exceptions=True)
    assert outputs[0] == 1
    assert outputs[2] == 3
    assert isinstance(outputs[1], WorkerUnpicklingError)
    assert isinstance(outputs[1], BrokenProcessPool)
    assert "ErrorAtUnpickle" in str(outputs[1])
    assert "division by zero" in str(outputs[1])


# -- 8. attributes that real clients read ----------------------------------------------------


def test_processes_and_max_workers_hold_the_size(
    make_pool: Callable[..., Any], make_executor: Callable[..., Any]
) -> None:
    assert make_pool(3)._processes == 3
    assert make_executor(3)._max_workers == 3


def test_without_a_size_they_hold_the_clusters_cpus() -> None:
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    with raypool.Pool() as pool, raypool.ProcessPoolExecutor() as executor:
        assert pool._processes == cpus
        assert executor._max_workers == cpus
        assert isinstance(pool._processes, int)


# -- 9. maxtasksperchild recycles as often as under multiprocessing --------------------------


def test_maxtasksperchild_recycles_a_worker_per_chunk(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(5, maxtasksperchild=1)
    assert len(set(pool.map(pid_of, range(20)))) == 20  # chunks of 1 (20 / (4 * 5))
    assert len(set(pool.imap(pid_of, range(6)))) == 6  # imap: chunksize 1, as the stdlib's


# -- 10. processes means concurrency ---------------------------------------------------------


def test_more_processes_than_cpus_run_at_once(make_pool: Callable[..., Any], tmp_path: Any) -> None:
    # Each item logs itself and waits until all 8 have: only 8 at once can all return True.
    import ray

    assert ray.cluster_resources()["CPU"] < 8
    log = str(tmp_path / "started")
    with make_pool(8) as pool:
        assert pool.map(functools.partial(log_then_wait_for, log, 8), range(8), 1) == [True] * 8


def test_an_explicit_num_cpus_wins(tmp_path: Any) -> None:
    log = str(tmp_path / "started")
    pool = raypool.Pool(8, remote_options={"num_cpus": 1})
    try:
        wait = functools.partial(log_then_wait_for, log, 4, timeout=2.0)
        assert False in pool.map(wait, range(4), 1)  # 2 at once: the first 2 never see 4
    finally:
        pool.terminate()


# -- 6. leaving the interpreter --------------------------------------------------------------

_LEAVE = """
import atexit, sys, time

address, marker, kind = sys.argv[1:4]
if kind.startswith("raypool"):
    import ray, raypool
    ray.init(address=address, logging_level="error")
    Executor, Pool = raypool.ProcessPoolExecutor, raypool.Pool
else:
    from concurrent.futures import ProcessPoolExecutor as Executor
    from multiprocessing import Pool


def save(path):
    time.sleep(1)
    with open(path, "w") as file:
        file.write("saved")


def late(pool):
    try:
        pool.submit(save, marker + ".late") if hasattr(pool, "submit") else pool.apply_async(
            save, (marker + ".late",)
        )
        print("late: accepted", flush=True)
    except (RuntimeError, ValueError) as exc:
        print(f"late: {exc}", flush=True)


if __name__ == "__main__":
    if kind == "raypool-pool":
        pool = Pool(2)
        atexit.register(late, pool)
        pool.apply_async(save, (marker,))
    elif kind.endswith("-dropped"):
        Executor(2).submit(save, marker)  # nobody keeps the executor
    else:
        executor = Executor(2)
        atexit.register(late, executor)
        executor.submit(save, marker)  # the script's last line
"""


def _leave(tmp_path: Any, kind: str) -> tuple[Any, Any]:
    import ray

    script = tmp_path / "leave.py"
    script.write_text(_LEAVE)
    marker = tmp_path / "saved"
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, str(script), address, str(marker), kind],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, marker


@pytest.mark.parametrize("kind", ["concurrent.futures-dropped", "raypool-dropped"])
def test_a_dropped_executor_completes_its_work_too(tmp_path: Any, kind: str) -> None:
    proc, marker = _leave(tmp_path, kind)
    assert marker.read_text() == "saved"
    assert "Warning" not in proc.stderr


@pytest.mark.parametrize("kind", ["concurrent.futures", "raypool"])
def test_an_executor_completes_its_work_before_the_interpreter_exits(
    tmp_path: Any, kind: str
) -> None:
    proc, marker = _leave(tmp_path, kind)
    assert marker.read_text() == "saved"
    # The stdlib's executor says "after shutdown" here (its ThreadPoolExecutor, and raypool's,
    # "after interpreter shutdown")
    late = "cannot schedule new futures after interpreter shutdown"
    expected = late if kind == "raypool" else late.replace("interpreter ", "")
    assert proc.stdout.splitlines() == [f"late: {expected}"]


def test_a_pool_cancels_its_work_at_exit(tmp_path: Any) -> None:
    proc, marker = _leave(tmp_path, "raypool-pool")
    assert wait_until_idle()  # the task was stopped, or never started
    assert not marker.exists()
    assert proc.stdout.splitlines() == [
        "late: cannot schedule new futures after interpreter shutdown"
    ]


# -- 7. multiprocessing.Manager() objects as arguments and initargs -------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Manager() as started:
        yield started


def test_a_manager_queue_in_a_partial(pool: Any, manager: Any) -> None:
    queue = manager.Queue()
    assert pool.map(functools.partial(put_in, queue), range(5)) == list(range(5))
    assert sorted(queue.get(timeout=10) for _ in range(5)) == list(range(5))


def test_manager_proxies_as_arguments(pool: Any, manager: Any) -> None:
    queue = manager.Queue()
    assert pool.starmap(put_in, [(queue, x) for x in range(3)]) == [0, 1, 2]
    assert pool.apply_async(put_in, (queue, 7)).get(timeout=60) == 7
    assert sorted(queue.get(timeout=10) for _ in range(4)) == [0, 1, 2, 7]


def test_manager_proxies_as_initargs(make_pool: Callable[..., Any], manager: Any) -> None:
    shared = (manager.dict(), manager.Lock(), manager.Event(), manager.Namespace())
    with make_pool(2, initializer=set_shared, initargs=(shared,)) as pool:
        assert pool.map(use_shared, range(4)) == list(range(4))
    shared_dict, _, event, namespace = shared
    assert dict(shared_dict) == {x: x * x for x in range(4)}
    assert event.is_set()
    assert namespace.last in range(4)


def test_a_manager_proxy_in_a_submitted_call(
    make_executor: Callable[..., Any], manager: Any
) -> None:
    queue = manager.Queue()
    with make_executor(2) as executor:
        assert executor.submit(put_in, queue, 3).result(timeout=60) == 3
    assert queue.get(timeout=10) == 3


def test_a_manager_proxy_an_argument_holds_as_an_attribute(
    make_executor: Callable[..., Any], pool: Any, manager: Any
) -> None:
    # CPython's test_ressources_gced_in_workers passes such an object (its __del__ sets
    # a manager Event): the proxy must carry its manager's authkey to the worker.
    # A class of the user's own would do as well where workers can import its module.
    queue = manager.Queue()
    with make_executor(2) as executor:
        held = SimpleNamespace(held=queue)
        assert executor.submit(put_in_held, held, 3).result(timeout=60) == 3
    assert pool.map(functools.partial(put_in_held, SimpleNamespace(held=queue)), [4]) == [4]
    assert pool.starmap(put_in_held, [(SimpleNamespace(held=queue), 5)]) == [5]
    assert sorted(queue.get(timeout=10) for _ in range(3)) == [3, 4, 5]


@pytest.mark.parametrize("kind", ["Queue", "Lock", "RLock", "Semaphore", "Event"])
def test_a_multiprocessing_object_is_refused_at_the_call(kind: str) -> None:
    shared = getattr(multiprocessing.get_context("spawn"), kind)()
    with raypool.Pool(2) as pool:
        with pytest.raises(raypool.NotShareableError, match=r"Manager\(\)") as info:
            pool.apply_async(identity, (shared,))
        assert isinstance(info.value, RuntimeError)  # what multiprocessing raises for them
        assert "an argument of the call" in str(info.value)
        with pytest.raises(raypool.NotShareableError, match="the function"):
            pool.map(functools.partial(put_in, shared), range(3))
        with pytest.raises(raypool.NotShareableError, match="the first item"):
            pool.starmap(put_in, [(shared, 1)])
        with pytest.raises(raypool.NotShareableError, match="an argument of the call"):
            pool.apply_async(identity, (SimpleNamespace(held=shared),))
    with pytest.raises(raypool.NotShareableError, match="an initarg"):
        raypool.Pool(2, initializer=set_shared, initargs=(shared,))


def test_tqdm_process_map_lock_is_refused_clearly() -> None:
    tqdm = pytest.importorskip("tqdm")
    with pytest.raises(raypool.NotShareableError, match=r"Manager\(\)"):
        raypool.ProcessPoolExecutor(
            2, initializer=tqdm.tqdm.set_lock, initargs=(tqdm.tqdm.get_lock(),)
        )


# -- 5. nested pools do not deadlock ---------------------------------------------------------

_NESTED = """
import ray, raypool


def square(x):
    return x * x


def inner(x):  # the second level: a pool in a task of a pool in a task
    with raypool.Pool() as pool:
        total = sum(pool.map(square, range(x + 2)))
        total += sum(pool.imap(square, range(2)))
        total += pool.apply_async(square, (x,)).get()
    with raypool.ProcessPoolExecutor() as executor:
        return total + executor.submit(square, x).result()


def outer(x):
    with raypool.Pool() as pool:
        return pool.map(inner, range(x + 2))


if __name__ == "__main__":
    ray.init(num_cpus=1, include_dashboard=False, logging_level="error")
    with raypool.Pool() as pool:
        print(pool.map(outer, range(2)), flush=True)
"""


#: An open bug, seen in 3 of about 14 CI runs of this test and never in 16 local runs: a
#: streaming task's next piece, peeked inside a nested pool's task, is refused by Ray
#: ("access a Ray object whose owner is unknown"). It gets one more run, with a warning,
#: until it is understood; any other failure, or the same one twice, fails the test.
_KNOWN_FLAKE = "whose owner is unknown"


def test_a_nested_pool_lends_its_cpu_only_while_waiting_on_ray_tasks() -> None:
    # In a task, a pool waits for its results in ``ray.wait`` (lending its CPU) on its tasks
    # in flight; a call Ray refused to start has a handle of raypool's own among them.
    import ray

    from raypool._runtime import lend_cpu

    ready = ray.put(1)
    lend_cpu([object(), ready], 10.0)  # returns at once: the ref is there
    lend_cpu([object()], 10.0)  # nothing of Ray's to wait on: returns at once


def test_nested_pools_finish_on_a_single_cpu(tmp_path: Any) -> None:
    script = tmp_path / "nested.py"
    script.write_text(_NESTED)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path
        )

    proc = run()
    if proc.returncode != 0 and _KNOWN_FLAKE in proc.stderr:
        # Its head holds the worker's traceback (where Ray refused), its tail the driver's.
        seen = proc.stderr if len(proc.stderr) <= 8000 else proc.stderr[:6000] + proc.stderr[-2000:]
        warnings.warn(f"known flake, run again: {seen}", stacklevel=1)
        proc = run()
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]

    def inner(x: int) -> int:
        return sum(n * n for n in range(x + 2)) + 1 + 2 * x * x

    expected = [[inner(x) for x in range(y + 2)] for y in range(2)]
    assert proc.stdout.splitlines() == [str(expected)]


def test_map_async_number_left_counts_down(make_pool: Callable[..., Any], tmp_path: Any) -> None:
    # Scripts poll it for progress; the stdlib counts chunks, raypool items (chunks of one).
    with make_pool(2) as pool:
        result = pool.map_async(functools.partial(square_when_released, str(tmp_path)), range(4), 1)
        assert result._number_left == 4  # nothing can finish before the release
        (tmp_path / "release").touch()
        assert result.get(timeout=60) == [0, 1, 4, 9]
        assert result._number_left == 0


def test_executor_map_left_unread_still_runs_every_call(
    make_executor: Callable[..., Any], tmp_path: Any
) -> None:
    log = str(tmp_path / "calls")
    with make_executor(2) as executor:
        executor.map(functools.partial(log_call, log), range(20))  # never read, dropped
    assert count_lines(log) == 20
    log = str(tmp_path / "partly")
    with make_executor(2) as executor:
        results = executor.map(functools.partial(log_call, log), range(20), chunksize=1)
        assert next(results) == 0
    assert count_lines(log) == 20  # leaving the block waited for the rest, as the stdlib
