"""How Ray's exceptions for a whole task become each item's outcome (no Ray started)."""

from __future__ import annotations

from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

import ray.exceptions

from raypool import (
    BrokenPoolError,
    EnvironmentSetupError,
    ResultTooLargeError,
    ResultUnpicklingError,
    TaskCancelledError,
    WorkerCrashedError,
    WorkerUnpicklingError,
)
from raypool._outcome import Rerun
from raypool._runtime import _refused_token, classify, unpickling_failure


def test_a_result_ray_could_not_store_is_too_large_and_splits() -> None:
    full = ray.exceptions.OutOfDiskError("Local disk is full")
    for exc in (full, ray.exceptions.RayTaskError("_execute_batch", "tb", full)):
        error, _, rerun = classify(exc)
        assert rerun is Rerun.SPLIT
        assert isinstance(error, ResultTooLargeError)
        assert isinstance(error, MemoryError)
        assert str(error).endswith("(OutOfDiskError: Local disk is full)")
        assert error.__cause__ is full


def test_a_dead_worker_is_lost_and_the_memory_monitor_is_named() -> None:
    died = ray.exceptions.WorkerCrashedError()
    error, _, rerun = classify(died)
    assert rerun is Rerun.LOST
    assert isinstance(error, WorkerCrashedError)
    assert isinstance(error, BrokenProcessPool)
    assert str(error).startswith("the worker process running this item died")

    oom = ray.exceptions.OutOfMemoryError("1 worker(s) were killed\nlong advice")
    error, _, rerun = classify(oom)
    assert rerun is Rerun.LOST
    assert isinstance(error, WorkerCrashedError)
    assert str(error) == (
        "Ray's memory monitor killed the worker process running this item: its node ran low "
        "on memory (1 worker(s) were killed)"
    )
    assert error.__cause__ is oom


def test_an_item_the_worker_could_not_unpickle_splits() -> None:
    cause = ray.exceptions.RaySystemError("at unpickle")
    error, _, rerun = classify(ray.exceptions.RayTaskError("_execute_batch", "tb", cause))
    assert rerun is Rerun.SPLIT
    assert isinstance(error, WorkerUnpicklingError)
    assert isinstance(error, BrokenProcessPool)
    assert "could not be unpickled in the worker: at unpickle" in str(error)


def test_any_other_failure_of_the_task_is_a_broken_pool_not_rerun() -> None:
    cause = ValueError("in raypool's task")  # items' and results' failures never get here
    error, _, rerun = classify(ray.exceptions.RayTaskError("_execute_batch", "tb", cause))
    assert rerun is Rerun.NO
    assert type(error) is BrokenPoolError
    assert error.__cause__ is cause
    lost = ray.exceptions.OwnerDiedError("0" * 56, "", "")  # an argument's owner died
    error, _, rerun = classify(ray.exceptions.RayTaskError("_execute_batch", "tb", lost))
    assert rerun is Rerun.LOST


def test_a_result_that_could_not_be_unpickled_here_is_checked() -> None:
    in_the_driver = (
        classify(ray.exceptions.RaySystemError("at unpickle")),
        unpickling_failure(SystemExit(1)),
        unpickling_failure(ZeroDivisionError("at unpickle")),
    )
    for error, _, rerun in in_the_driver:
        assert rerun is Rerun.CHECKED
        assert isinstance(error, ResultUnpicklingError)
        assert isinstance(error, MaybeEncodingError)
        assert isinstance(error, BrokenProcessPool)


def test_a_task_ray_cancelled_is_a_cancelled_error_not_rerun() -> None:
    cause = ray.exceptions.TaskCancelledError()
    for exc in (cause, ray.exceptions.RayTaskError("_execute_batch", "tb", cause)):
        error, _, rerun = classify(exc)
        assert isinstance(error, TaskCancelledError)
        assert isinstance(error, CancelledError)
        assert rerun is Rerun.NO


def test_a_runtime_env_that_failed_is_named_and_not_rerun() -> None:
    exc = ray.exceptions.RuntimeEnvSetupError("pip install failed")
    error, _, rerun = classify(exc)
    assert isinstance(error, EnvironmentSetupError)
    assert isinstance(error, BrokenProcessPool)
    assert "pip install failed" in str(error)
    assert rerun is Rerun.NO


def test_an_error_that_is_not_ray_s_is_passed_on() -> None:
    exc = OSError("disk")
    assert classify(exc) == (exc, "", Rerun.NO)


def test_a_refused_token_is_found_in_the_chain_ray_builds() -> None:
    inner = RuntimeError("Failed to connect to GCS. ... InvalidAuthToken: token is missing")
    outer = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    outer.__cause__ = inner
    assert _refused_token(outer)
    other = ConnectionError("Failed to connect")
    other.__cause__ = RuntimeError("GCS is down")
    assert not _refused_token(other)
