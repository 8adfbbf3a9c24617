"""``RayPool(actors=True)``: submitted calls run in kept Ray actors (``_runners``), the
way the joblib backend runs its batches."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import raypool
from helpers import (
    add,
    cpus_in_task,
    die_now,
    hang_noting_stop,
    hold,
    identity,
    pid_of,
    wait_for_path,
)
from raypool import _runners


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ended_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _cpus_taken_within(seconds: float) -> bool:
    """Whether Ray reports no CPU available within ``seconds`` (its view lags a little)."""
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0.0) > 0.0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_calls_run_in_actors_kept_for_the_next_pool_holding_no_cpu() -> None:
    with raypool.Pool(2, actors=True) as pool:
        first = {pool.apply(pid_of, (i,)) for i in range(10)}
        cpus = {pool.apply(cpus_in_task, (i,))[0] for i in range(2)}
    with raypool.Pool(2, actors=True) as pool:
        second = {future.result() for future in [pool.submit(pid_of, i) for i in range(50)]}
    assert os.getpid() not in first
    assert len(first) == 1  # one call at a time: the one idle runner each time
    assert first <= second
    assert len(second) <= 2
    assert cpus == {0.0}


class _Spy:
    """Stands for a runner's actor method: notes each task sent through it."""

    def __init__(self, method: Any, name: str, sent: list[str]) -> None:
        self._method, self._name, self._sent = method, name, sent

    def remote(self, *args: Any) -> Any:
        self._sent.append(self._name)
        return self._method.remote(*args)


def test_arguments_reach_runners_as_sent_pickled_by_the_driver_only_when_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = ray.put(41)
    plain: list[Any] = [b"x", "s", 3, 2.5, True, None]
    other: list[Any] = [[1, 2], {"k": (1,)}, ref]
    sent: list[str] = []
    with raypool.Pool(2, actors=True) as pool:
        pool.submit(identity, 0).result(timeout=60)  # its runner started: one call at a time
        for runners in _runners._sets.values():
            for runner in runners._runners:
                monkeypatch.setattr(runner, "pickled", _Spy(runner.pickled, "pickled", sent))
                monkeypatch.setattr(runner, "call", _Spy(runner.call, "call", sent))
        back = [pool.submit(identity, value).result(timeout=60) for value in plain + other]
        assert pool.submit(add, a=1, b=2).result(timeout=60) == 3
    assert sent == ["pickled"] * len(plain) + ["call"] * len(other) + ["pickled"]
    assert back == plain + other
    assert [type(value) for value in back[: len(plain)]] == [type(value) for value in plain]
    assert ray.get(back[-1]) == 41  # an ObjectRef argument stays one, as Ray passes it


def test_runners_start_while_tasks_hold_every_cpu(tmp_path: Path) -> None:
    # They ask Ray for no CPU: an actor with Ray's default (one CPU to be placed) would wait.
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with raypool.Pool(2) as tasks:
        held = [tasks.options(chunksize=1).submit(hold, f"{started}{i}", release) for i in range(2)]
        assert all(wait_for_path(f"{started}{i}") for i in range(2))
        assert _cpus_taken_within(60), "the two tasks did not take both CPUs"
        env = {"env_vars": {"RAYPOOL_TEST": "every-cpu-held"}}  # runners of their own
        try:
            with raypool.Pool(1, actors=True, runtime_env=env) as pool:
                assert pool.apply_async(pid_of, (0,)).get(timeout=60) != os.getpid()
        finally:
            Path(release).touch()
        assert all(future.result(timeout=60) for future in held)


def test_a_slow_call_holds_up_no_other_call(tmp_path: Path) -> None:
    # Sent before the pool measured any task, the slow call has none queued behind it.
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with raypool.Pool(2, actors=True) as pool:
        slow = pool.submit(hold, started, release)
        assert wait_for_path(started)
        quick = [pool.submit(pid_of, i) for i in range(20)]
        assert len({future.result(timeout=60) for future in quick}) == 1
        assert not slow.done()
        Path(release).touch()
        assert slow.result(timeout=60)


def test_a_runner_that_dies_fails_its_call_and_is_replaced() -> None:
    with raypool.Pool(2, actors=True, max_retries=0) as pool:
        before = pool.apply(pid_of, (0,))
        with pytest.raises(raypool.WorkerCrashedError, match="died"):
            pool.apply(die_now, (0,))
        after = {pool.apply(pid_of, (i,)) for i in range(4)}
    assert _ended_within(before, 60)  # the call ran on the one idle runner, and killed it
    assert before not in after
    assert all(_alive(pid) for pid in after)


def test_timeouts_and_cancellation_stop_calls_in_runners(tmp_path: Path) -> None:
    started, stopped = str(tmp_path / "started"), str(tmp_path / "stopped")
    with raypool.Pool(2, actors=True) as pool:
        late = pool.options(timeout=0.5).submit(hang_noting_stop, started, stopped)
        with pytest.raises(TimeoutError):
            late.result(timeout=60)
        assert wait_for_path(stopped)
    started, stopped = str(tmp_path / "started2"), str(tmp_path / "stopped2")
    pool = raypool.Pool(2, actors=True)
    hung = pool.submit(hang_noting_stop, started, stopped)
    assert wait_for_path(started)
    pool.terminate()  # cancels the running call: its runner stops it
    assert wait_for_path(stopped), "the call went on running after terminate()"
    assert hung.cancelled() or isinstance(hung.exception(timeout=60), BaseException)


def test_idle_runners_end_once_no_pool_used_them_for_idle_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_runners, "IDLE_SECONDS", 0.2)
    with raypool.Pool(1, actors=True, runtime_env={"env_vars": {"RAYPOOL_TEST": "idle"}}) as pool:
        pid = pool.apply(pid_of, (0,))
    assert _ended_within(pid, 60), "an idle runner outlived IDLE_SECONDS"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"maxtasksperchild": 2}, "maxtasksperchild"),
        ({"max_tasks_per_child": 2}, "maxtasksperchild"),
        ({"remote_options": {"num_gpus": 1}}, r"\['num_gpus'\]"),
        ({"ray_remote_args": {"num_cpus": 1}}, r"\['num_cpus'\]"),
    ],
)
def test_actors_refuse_options_they_cannot_honour(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        raypool.Pool(2, actors=True, **options)  # type: ignore[arg-type]
