"""RayMap's per-worker setup: initializer, initargs, max_tasks_per_worker."""

from __future__ import annotations

import pytest

from helpers import pid_of, read_state, set_state
from raypool import BrokenPoolError, RayMap


def test_initializer_state_reaches_the_items() -> None:
    rmap = RayMap(read_state, initializer=set_state, initargs=("ready", 2))
    assert rmap.map(range(3)) == [("ready", 2, x) for x in range(3)]


def test_initializer_in_sequential_mode_runs_once_here() -> None:
    calls: list[int] = []

    def init() -> None:
        calls.append(1)

    rmap = RayMap(lambda x: x + len(calls), initializer=init, sequential=True)
    assert rmap.map(range(3)) == [1, 2, 3]
    assert rmap.map(range(2)) == [1, 2]
    assert calls == [1]


def test_a_failing_initializer_fails_the_items_with_broken_pool_error() -> None:
    def init() -> None:
        raise OSError("no database")

    out = RayMap(lambda x: x, initializer=init).map(range(3), safe_exceptions=True)
    assert all(isinstance(e, BrokenPoolError) for e in out)
    assert "no database" in str(out[0])


def test_max_tasks_per_worker_replaces_the_process() -> None:
    pids = RayMap(pid_of, batch_size=1, max_pending=1, max_tasks_per_worker=1).map(range(3))
    assert len(set(pids)) == 3


def test_bad_setup_arguments() -> None:
    with pytest.raises(TypeError, match="initializer"):
        RayMap(abs, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        RayMap(abs, max_tasks_per_worker=0)
