"""Fixtures of the pool tests: the session's real Ray, and the side-by-side factories.

``make_pool``/``pool``/``make_executor`` give a ``multiprocessing`` pool (spawned children,
since this process runs Ray's threads) or a raypool one, as CPython's
``create_executor_tests`` runs one behavioural test against every executor kind.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor as StdExecutor
from typing import Any

import pytest

import raypool


@pytest.fixture(autouse=True)
def _ray(ray_cluster: None) -> None:
    """Every pool test runs against the session's real Ray."""


SPAWN = multiprocessing.get_context("spawn")


def _std_pool(processes: int = 2, *args: Any, **kwargs: Any) -> Any:
    return SPAWN.Pool(processes, *args, **kwargs)


def _std_executor(max_workers: int = 2, *args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("mp_context", SPAWN)
    return StdExecutor(max_workers, *args, **kwargs)


@pytest.fixture(params=["multiprocessing", "raypool"])
def make_pool(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        pool = _std_pool(*args, **kwargs) if request.param == "multiprocessing" else None
        pool = pool or raypool.Pool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.terminate()


@pytest.fixture(scope="module", params=["multiprocessing", "raypool"])
def pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A running pool shared by the tests that neither close nor break it."""
    shared = _std_pool() if request.param == "multiprocessing" else raypool.Pool()
    yield shared
    shared.terminate()


@pytest.fixture(params=["concurrent.futures", "raypool"])
def make_executor(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        if request.param == "concurrent.futures":
            executor = _std_executor(*args, **kwargs)
        else:
            executor = raypool.ProcessPoolExecutor(*args, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=False, cancel_futures=True)
