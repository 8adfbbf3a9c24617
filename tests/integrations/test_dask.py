"""dask on raypool (issue 14): dask's local schedulers driving a raypool ``Pool`` or
``ProcessPoolExecutor``, each result compared with dask's ``"sync"`` scheduler.

dask reaches a pool three ways: (a) ``dask.compute(x, scheduler=executor)`` - any
``concurrent.futures.Executor``: ``executor.submit`` and ``executor._max_workers``; tasks
travel through raypool's own serialization; (b) ``dask.config.set(scheduler="processes",
pool=pool)`` - ``pool.submit`` and ``pool._max_workers``, tasks and results as cloudpickle
bytes, a task's exception packed by dask in the worker and raised again in the caller; (c)
the ``"processes"`` scheduler given the executor (``config.set`` or ``compute(...,
pool=executor)``). The graphs use builtins, ``operator``, numpy and lambdas only, so the
workers never import this module.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import raypool

dask = pytest.importorskip("dask")
np = pytest.importorskip("numpy")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
dask_mp = pytest.importorskip("dask.multiprocessing")
delayed = dask.delayed


# -- fixtures ----------------------------------------------------------------------------------
# These override tests/pool/conftest.py's parametrized ``pool`` (stdlib Pool or raypool) if
# the file goes there: a stdlib ``multiprocessing.Pool`` is not an ``Executor``, so
# ``scheduler=pool`` (path (a)) would be dask's ``ValueError("Unexpected scheduler")``.
# ``ray_cluster`` (tests/conftest.py) is requested so the file works in any test directory.


@pytest.fixture(scope="module")
def pool(ray_cluster: None) -> Iterator[raypool.Pool]:
    shared = raypool.Pool()
    yield shared
    shared.terminate()


@pytest.fixture(scope="module")
def executor(ray_cluster: None) -> Iterator[raypool.ProcessPoolExecutor]:
    shared = raypool.ProcessPoolExecutor()
    yield shared
    shared.shutdown(wait=False, cancel_futures=True)


# -- graphs ------------------------------------------------------------------------------------


def _graphs() -> tuple[Any, ...]:
    """Small collections of each kind: a few dozen tasks in all."""
    x = da.arange(24, chunks=5)  # 5 chunks, the last one short
    array_sum = ((x + 1) * 2).sum()
    array_values = (da.arange(12, chunks=4) ** 2)[::2]  # an ndarray result
    matrix = da.ones((6, 6), chunks=3).dot(da.arange(6, chunks=3))
    bag = (
        db.from_sequence(range(10), npartitions=3)
        .map(lambda v: v * v)
        .filter(lambda v: v % 2 == 0)
        .sum()
    )
    bag_list = db.from_sequence(["a", "bb", "ccc"], npartitions=2).map(len)
    offset = 10
    squares = [delayed(operator.mul)(i, i) for i in range(5)]
    total = delayed(sum)(squares)
    shifted = delayed(lambda t: t + offset)(total)  # a closure: pickled by value
    return array_sum, array_values, matrix, bag, bag_list, total, shifted


def _expected() -> tuple[Any, ...]:
    return dask.compute(*_graphs(), scheduler="sync")


def _assert_same(got: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, np.ndarray):
            np.testing.assert_array_equal(g, e)
        else:
            assert g == e, (g, e)


class _SubmitSpy:
    """Wraps a bound ``submit`` to count dask's calls (proves the work went through it)."""

    def __init__(self, submit: Callable[..., Any]) -> None:
        self.submit = submit
        self.calls: list[str] = []

    def __call__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return self.submit(fn, *args, **kwargs)


# -- (a) scheduler=<Executor> --------------------------------------------------------------------


def test_compute_with_executor_as_scheduler(executor: Any) -> None:
    _assert_same(dask.compute(*_graphs(), scheduler=executor), _expected())


def test_compute_with_pool_as_scheduler(pool: Any) -> None:
    # raypool.Pool is also a concurrent.futures.Executor, which is all path (a) checks
    _assert_same(dask.compute(*_graphs(), scheduler=pool), _expected())


def test_collection_compute_method_with_executor(executor: Any) -> None:
    x = da.arange(10, chunks=3)
    assert x.sum().compute(scheduler=executor) == 45
    np.testing.assert_array_equal((x + 1).compute(scheduler=executor), np.arange(1, 11))


def test_config_scheduler_executor(executor: Any) -> None:
    # dask.config.set(scheduler=<Executor>) goes through get_scheduler too (base.py:1284)
    with dask.config.set(scheduler=executor):
        _assert_same(dask.compute(*_graphs()), _expected())


def test_executor_scheduler_goes_through_submit(executor: Any, monkeypatch: Any) -> None:
    spy = _SubmitSpy(executor.submit)
    monkeypatch.setattr(executor, "submit", spy)
    assert dask.compute(delayed(operator.add)(1, 2), scheduler=executor) == (3,)
    assert spy.calls
    assert set(spy.calls) == {"batch_execute_tasks"}


def test_max_workers_as_dask_reads_it(pool: Any, executor: Any) -> None:
    # get_scheduler asserts isinstance(n, numbers.Integral) and n > 0 (base.py:1274-1277)
    for p in (pool, executor):
        n = p._max_workers
        assert isinstance(n, int)
        assert n > 0
    assert pool._max_workers == pool._processes


# chunksize=-1 ("divide the ready tasks evenly over the workers") is not tested: in dask
# 2026.8.0 it raises ZeroDivisionError in dask/local.py:494/526 with any executor whose
# futures are not already done at submit (fire_tasks runs with an empty ready list while
# tasks run: chunksize becomes 0), a stdlib ThreadPoolExecutor included. A dask bug.


def test_executor_scheduler_chunksize(executor: Any) -> None:
    # chunksize (tasks per submit) is get_async's keyword, forwarded by compute
    expected = _expected()
    for chunksize in (2, 4):
        _assert_same(dask.compute(*_graphs(), scheduler=executor, chunksize=chunksize), expected)


# -- (b) scheduler="processes" with pool=<raypool.Pool> ------------------------------------------


def test_processes_scheduler_config_pool(pool: Any) -> None:
    with dask.config.set(scheduler="processes", pool=pool):
        _assert_same(dask.compute(*_graphs()), _expected())


def test_processes_scheduler_config_pool_goes_through_submit(pool: Any, monkeypatch: Any) -> None:
    spy = _SubmitSpy(pool.submit)
    monkeypatch.setattr(pool, "submit", spy)
    with dask.config.set(scheduler="processes", pool=pool):
        assert dask.compute(delayed(operator.add)(1, 2)) == (3,)
    assert spy.calls
    assert set(spy.calls) == {"batch_execute_tasks"}


def test_bag_default_scheduler_uses_config_pool(pool: Any) -> None:
    # dask.bag's default scheduler is "processes" (dask/bag/core.py:83): config pool= suffices
    bag = db.from_sequence(range(7), npartitions=3).map(lambda v: v + 1)
    with dask.config.set(pool=pool):
        assert bag.compute() == list(range(1, 8))
        assert bag.sum().compute() == 28


# -- (c) the "processes" scheduler given the executor --------------------------------------------


def test_processes_scheduler_config_executor(executor: Any) -> None:
    with dask.config.set(scheduler="processes", pool=executor):
        _assert_same(dask.compute(*_graphs()), _expected())


def test_processes_scheduler_pool_keyword(executor: Any) -> None:
    # compute(**kwargs) reaches dask_mp.get(..., pool=executor) (base.py:769)
    _assert_same(dask.compute(*_graphs(), scheduler="processes", pool=executor), _expected())


def test_processes_scheduler_chunksize(executor: Any) -> None:
    expected = _expected()
    for chunksize in (1, 3):  # the processes path defaults to 6 (multiprocessing.py:185)
        with dask.config.set(scheduler="processes", pool=executor, chunksize=chunksize):
            _assert_same(dask.compute(*_graphs()), expected)


def test_multiprocessing_get_direct(executor: Any) -> None:
    dsk = {
        "x": 1,
        "y": (operator.add, "x", 2),
        "z": (operator.mul, "y", "y"),
        "w": (sum, ["x", "y", "z"]),
    }
    assert dask_mp.get(dsk, "w", pool=executor) == 1 + 3 + 9
    assert dask_mp.get(dsk, ["z", "y"], pool=executor) == (9, 3)
    assert dask_mp.get(dsk, "w", pool=executor, optimize_graph=False) == 13


def test_multiprocessing_get_lambda_result(executor: Any) -> None:
    # a task returning a lambda: results travel as cloudpickle bytes in this path
    dsk = {"f": (lambda: lambda v: v + 1,)}
    f = dask_mp.get(dsk, "f", pool=executor)
    assert f(2) == 3


# -- exceptions raised in a task ---------------------------------------------------------------

#: (graph factory, exception type, regex on str(exception)); builtins only (see above)
_FAILING: list[tuple[str, Callable[[], Any], type[BaseException], str]] = [
    ("delayed-zerodiv", lambda: delayed(operator.truediv)(1, 0), ZeroDivisionError, "division"),
    (
        "delayed-keyerror",
        lambda: delayed(operator.getitem)({"a": 1}, "missing-key"),
        KeyError,
        "missing-key",
    ),
    (
        "delayed-valueerror",
        lambda: delayed(operator.add)(delayed(int)("not-a-number"), 1),
        ValueError,
        "not-a-number",
    ),
    (
        "bag-zerodiv",
        lambda: db.from_sequence([2, 1, 0], npartitions=3).map(lambda v: 1 / v).sum(),
        ZeroDivisionError,
        "division",
    ),
    (
        "array-zerodiv",
        lambda: da.from_array(np.array([2, 1, 0]), chunks=1).map_blocks(
            lambda b: np.asarray([1 // int(v) for v in b], dtype=int), dtype=int
        ),
        ZeroDivisionError,
        "division",
    ),
]

_PATHS: list[tuple[str, Callable[[Any, Any, Any], Any]]] = [
    ("a-executor", lambda x, p, e: dask.compute(x, scheduler=e)),
    ("a-pool", lambda x, p, e: dask.compute(x, scheduler=p)),
    ("b-config-pool", lambda x, p, e: _with_config(x, scheduler="processes", pool=p)),
    ("c-config-executor", lambda x, p, e: _with_config(x, scheduler="processes", pool=e)),
    ("c-keyword", lambda x, p, e: dask.compute(x, scheduler="processes", pool=e)),
]


def _with_config(x: Any, **config: Any) -> Any:
    with dask.config.set(**config):
        return dask.compute(x)


@pytest.mark.parametrize(("path", "run"), _PATHS, ids=[p for p, _ in _PATHS])
@pytest.mark.parametrize(
    ("kind", "make", "exc_type", "match"), _FAILING, ids=[f[0] for f in _FAILING]
)
def test_task_exception_reaches_caller(
    pool: Any,
    executor: Any,
    path: str,
    run: Callable[[Any, Any, Any], Any],
    kind: str,
    make: Callable[[], Any],
    exc_type: type[BaseException],
    match: str,
) -> None:
    with pytest.raises(exc_type, match=match) as info:
        run(make(), pool, executor)
    assert isinstance(info.value, exc_type)
    # the sync scheduler raises the same type, as a reference
    with pytest.raises(exc_type, match=match):
        dask.compute(make(), scheduler="sync")


def test_processes_path_exception_carries_remote_traceback(executor: Any) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        dask.compute(delayed(operator.truediv)(1, 0), scheduler="processes", pool=executor)
    err = info.value
    remote = getattr(dask_mp, "RemoteException", None)
    if remote is not None and isinstance(err, remote):
        # without tblib: a RemoteException subclass that is also a ZeroDivisionError
        assert isinstance(err.exception, ZeroDivisionError)
        assert "Traceback" in str(err)
    else:
        # with tblib: the original exception, re-raised with the worker's traceback
        assert type(err) is ZeroDivisionError


@pytest.mark.parametrize(("path", "run"), _PATHS, ids=[p for p, _ in _PATHS])
def test_pool_usable_after_task_exception(
    pool: Any, executor: Any, path: str, run: Callable[[Any, Any, Any], Any]
) -> None:
    # dask stops at the first failed task and leaves the rest of the graph's submitted
    # batches running (it cancels nothing); the pool must still serve the next compute
    bad = delayed(sum)([delayed(operator.truediv)(1, 0), delayed(operator.add)(1, 1)])
    with pytest.raises(ZeroDivisionError):
        run(bad, pool, executor)
    good = delayed(operator.add)(2, 3)
    assert run(good, pool, executor) == (5,)
