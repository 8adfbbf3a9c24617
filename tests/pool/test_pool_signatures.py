"""Every stdlib method keeps its stdlib signature: names, order, kinds and defaults.

Ray's Pool drops ``chunksize`` from ``starmap_async``, so ``starmap_async(f, it, 4)``
binds 4 to ``callback`` there; these tests would have caught it. raypool's additions
are keyword-only and come after the stdlib's parameters.
"""

from __future__ import annotations

import inspect
import multiprocessing.pool
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import ProcessPoolExecutor as StdExecutor
from typing import Any

import pytest

import raypool

# Documented differences: chunksize=None sizes tasks automatically (the stdlib's default
# is 1 for imap/imap_unordered/Executor.map); Executor.map's ``fn`` is ``func``, as Pool's.
DEFAULTS_THAT_DIFFER = {("imap", "chunksize"), ("imap_unordered", "chunksize")}

POOL_METHODS = [
    "apply",
    "apply_async",
    "map",
    "map_async",
    "starmap",
    "starmap_async",
    "imap",
    "imap_unordered",
    "close",
    "join",
    "terminate",
]


def _params(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", POOL_METHODS)
def test_pool_methods_keep_the_stdlib_signature(name: str) -> None:
    ours = _params(getattr(raypool.RayPool, name))
    theirs = _params(getattr(multiprocessing.pool.Pool, name))
    if name == "map":  # one map serves Pool and Executor: map(func, *iterables, chunksize)
        assert [p.name for p in ours[:2]] == ["func", "iterables"]
        assert ours[1].kind is inspect.Parameter.VAR_POSITIONAL
        assert "chunksize" in [p.name for p in ours]
        return
    assert [(p.name, p.kind) for p in ours[: len(theirs)]] == [(p.name, p.kind) for p in theirs]
    for mine, std in zip(ours, theirs, strict=False):
        if (name, std.name) not in DEFAULTS_THAT_DIFFER:
            assert mine.default == std.default, (name, std.name)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs) :])


def test_executor_methods_keep_the_stdlib_signature() -> None:
    submit = _params(raypool.RayPool.submit)
    assert [(p.name, p.kind) for p in submit] == [
        (p.name, p.kind) for p in _params(Executor.submit)
    ]
    shutdown = _params(raypool.RayPool.shutdown)
    assert [(p.name, p.kind, p.default) for p in shutdown] == [
        (p.name, p.kind, p.default) for p in _params(Executor.shutdown)
    ]
    executor_map = _params(raypool.ProcessPoolExecutor.map)
    std_map = _params(Executor.map)[:3]  # fn, *iterables, timeout
    assert [(p.name, p.kind, p.default) for p in executor_map[:3]] == [
        (p.name, p.kind, p.default) for p in std_map
    ]
    assert executor_map[3].name == "chunksize"
    assert executor_map[3].kind is inspect.Parameter.KEYWORD_ONLY
    # Python 3.14's buffersize, offered on every Python; its default as the stdlib's.
    assert (executor_map[4].name, executor_map[4].kind, executor_map[4].default) == (
        "buffersize",
        inspect.Parameter.KEYWORD_ONLY,
        None,
    )
    if "buffersize" in inspect.signature(StdExecutor.map).parameters:
        std = [(p.name, p.kind) for p in _params(StdExecutor.map)]
        assert [(p.name, p.kind) for p in executor_map[: len(std)]] == std


@pytest.mark.parametrize("name", ["terminate_workers", "kill_workers"])
def test_executor_stop_methods_keep_the_stdlib_signature(name: str) -> None:
    """Python 3.14's ``ProcessPoolExecutor`` methods, offered on every Python."""
    assert _params(getattr(raypool.ProcessPoolExecutor, name)) == []
    if hasattr(StdExecutor, name):
        assert _params(getattr(StdExecutor, name)) == []
    pool_map = {p.name: p for p in _params(raypool.RayPool.map)}
    assert pool_map["timeout"].default is None
    assert pool_map["chunksize"].kind is inspect.Parameter.KEYWORD_ONLY


def test_constructors_keep_the_stdlib_signatures() -> None:
    pool = _params(raypool.Pool.__init__)
    std_pool = _params(multiprocessing.pool.Pool.__init__)
    assert [(p.name, p.kind, p.default) for p in pool[: len(std_pool)]] == [
        (p.name, p.kind, p.default) for p in std_pool
    ]
    executor = _params(raypool.ProcessPoolExecutor.__init__)
    std_executor = _params(StdExecutor.__init__)
    assert [(p.name, p.kind, p.default) for p in executor[: len(std_executor)]] == [
        (p.name, p.kind, p.default) for p in std_executor
    ]


def test_starmap_async_binds_chunksize_positionally() -> None:
    with raypool.Pool() as pool:
        seen: list[Any] = []
        result = pool.starmap_async(pow, [(2, 3)], 4, seen.append)
        assert result.get(60) == [8]
    assert seen == [[8]]
