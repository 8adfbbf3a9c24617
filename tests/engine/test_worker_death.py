"""A worker process that dies under an item: only that item fails, the rest completes."""

from __future__ import annotations

import functools
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import raypool
from helpers import die_on, flaky_until, killed_once, log_then_die_on, segfault_on, square
from raypool import BrokenPoolError, RayMap, WorkerCrashedError


@pytest.mark.parametrize("crash", [die_on, segfault_on], ids=["os._exit", "segfault"])
def test_only_the_item_that_kills_its_worker_fails(crash: object) -> None:
    out = RayMap(crash, batch_size=8).map(range(20), safe_exceptions=True)  # type: ignore[arg-type]
    assert isinstance(out[5], WorkerCrashedError)
    assert isinstance(out[5], BrokenPoolError)
    assert isinstance(out[5], BrokenProcessPool)
    assert out[:5] + out[6:] == [x for x in range(20) if x != 5]


def test_the_crash_is_raised_and_the_engine_stays_usable() -> None:
    rmap = RayMap(die_on, batch_size=4)
    with pytest.raises(WorkerCrashedError, match="died"):
        rmap.map(range(8))
    assert rmap.map(range(5)) == list(range(5))
    assert RayMap(square).map(range(10)) == [x * x for x in range(10)]


def test_max_retries_counts_the_runs_of_the_crashing_item_alone(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    fn = functools.partial(log_then_die_on, str(log))
    rmap = RayMap(fn, batch_size=8, max_retries=2, adaptive_tail_batching=False)
    out = rmap.map(range(8), safe_exceptions=True)
    assert isinstance(out[5], WorkerCrashedError)
    assert [x for i, x in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7]
    runs_of_5 = log.read_text().split().count("5")
    # in the batch of 8, its half of 4, its quarter of 2, then alone: once plus 2 retries
    assert runs_of_5 == 3 + 3
    with pytest.raises(ValueError, match="max_retries"):
        RayMap(fn, max_retries=-1)


def test_a_worker_killed_from_outside_is_retried(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with raypool.Pool() as pool:
        result = pool.map_async(
            functools.partial(killed_once, str(pid_file)), range(8), chunksize=4
        )
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the victim never started"
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        assert result.get(timeout=120) == list(range(8))
        # the pool is still usable, and the same input maps again
        assert pool.map(functools.partial(killed_once, str(pid_file)), range(8)) == list(range(8))
        out = pool.map(die_on, range(10), chunksize=5, safe_exceptions=True)
        assert isinstance(out[5], WorkerCrashedError)
        assert pool.map(square, range(4)) == [0, 1, 4, 9]


def test_retry_exceptions_reruns_matching_failures_alone(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    fn = functools.partial(flaky_until, str(log))
    rmap = RayMap(fn, batch_size=4, retry_exceptions=[ConnectionError], max_retries=3)
    # items 1 and 6 fail twice with ConnectionError, then succeed; 3 raises ValueError
    out = rmap.map(range(8), safe_exceptions=True)
    assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert isinstance(out[3], ValueError)
    calls = log.read_text().split()
    assert calls.count("1") == calls.count("6") == 3
    assert calls.count("3") == 1  # not a retried type
    # too few retries: the last failure is the result
    log.unlink()
    out = RayMap(fn, batch_size=4, retry_exceptions=True, max_retries=1).map(
        range(8), safe_exceptions=True
    )
    assert isinstance(out[1], ConnectionError)
    assert isinstance(out[3], ValueError)
    assert log.read_text().split().count("3") == 2  # True retries every Exception
    log.unlink()
    sequential = RayMap(fn, retry_exceptions=ConnectionError, sequential=True)
    assert sequential.map([1, 2]) == [1, 2]
    assert log.read_text().split().count("1") == 3
    with pytest.raises(TypeError, match="retry_exceptions"):
        RayMap(fn, retry_exceptions=[42])  # type: ignore[list-item]


def test_the_pool_retries_too(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    with raypool.Pool(retry_exceptions=(ConnectionError,)) as pool:
        fn = functools.partial(flaky_until, str(log))
        assert pool.map(fn, [1, 2], safe_exceptions=True) == [1, 2]
        assert log.read_text().split().count("1") == 3
