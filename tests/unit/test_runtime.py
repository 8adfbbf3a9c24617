"""How Ray's exceptions for a whole task become each item's outcome (no Ray started)."""

from __future__ import annotations

import ray.exceptions

from raypool import ResultTooLargeError, WorkerCrashedError
from raypool._runtime import _refused_token, classify


def test_a_result_ray_could_not_store_is_too_large_not_lost() -> None:
    full = ray.exceptions.OutOfDiskError("Local disk is full")
    for exc in (full, ray.exceptions.RayTaskError("_execute_batch", "tb", full)):
        error, _, lost, too_large = classify(exc)
        assert too_large
        assert not lost
        assert isinstance(error, ResultTooLargeError)
        assert str(error).endswith("(OutOfDiskError: Local disk is full)")
        assert error.__cause__ is full


def test_a_dead_worker_is_lost_and_the_memory_monitor_is_named() -> None:
    died = ray.exceptions.WorkerCrashedError()
    error, _, lost, too_large = classify(died)
    assert lost
    assert not too_large
    assert isinstance(error, WorkerCrashedError)
    assert str(error).startswith("the worker process running this item died")

    oom = ray.exceptions.OutOfMemoryError("1 worker(s) were killed\nlong advice")
    error, _, lost, _ = classify(oom)
    assert lost
    assert isinstance(error, WorkerCrashedError)
    assert str(error) == (
        "Ray's memory monitor killed the worker process running this item: its node ran low "
        "on memory (1 worker(s) were killed)"
    )
    assert error.__cause__ is oom


def test_an_exception_of_fn_is_neither() -> None:
    cause = ValueError("bad")
    exc = ray.exceptions.RayTaskError("_execute_batch", "tb", cause)
    error, _, lost, too_large = classify(exc)
    assert not lost
    assert not too_large
    assert error is cause


def test_a_task_ray_cancelled_is_not_rerun() -> None:
    error, _, lost, too_large = classify(ray.exceptions.TaskCancelledError())
    assert isinstance(error, WorkerCrashedError)
    assert not lost
    assert not too_large


def test_an_error_that_is_not_ray_s_is_passed_on() -> None:
    exc = OSError("disk")
    assert classify(exc) == (exc, "", False, False)


def test_a_refused_token_is_found_in_the_chain_ray_builds() -> None:
    inner = RuntimeError("Failed to connect to GCS. ... InvalidAuthToken: token is missing")
    outer = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    outer.__cause__ = inner
    assert _refused_token(outer)
    other = ConnectionError("Failed to connect")
    other.__cause__ = RuntimeError("GCS is down")
    assert not _refused_token(other)
