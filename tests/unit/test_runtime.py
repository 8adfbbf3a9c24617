"""How Ray's exceptions for a whole task become each item's outcome (no Ray started)."""

from __future__ import annotations

import ray.exceptions

from raypool import ResultTooLargeError, WorkerCrashedError
from raypool._runtime import _refused_token, is_lost_task, is_too_large, translate_ray_error


def test_a_result_ray_could_not_store_is_too_large_not_lost() -> None:
    full = ray.exceptions.OutOfDiskError("Local disk is full")
    for exc in (full, ray.exceptions.RayTaskError("_execute_batch", "tb", full)):
        assert is_too_large(exc)
        assert not is_lost_task(exc)
        error, _ = translate_ray_error(exc)
        assert isinstance(error, ResultTooLargeError)
        assert str(error).endswith("(OutOfDiskError: Local disk is full)")
        assert error.__cause__ is full


def test_a_dead_worker_is_lost_and_the_memory_monitor_is_named() -> None:
    died = ray.exceptions.WorkerCrashedError()
    assert is_lost_task(died)
    assert not is_too_large(died)
    error, _ = translate_ray_error(died)
    assert isinstance(error, WorkerCrashedError)
    assert str(error).startswith("the worker process running this item died")

    oom = ray.exceptions.OutOfMemoryError("1 worker(s) were killed\nlong advice")
    assert is_lost_task(oom)
    error, _ = translate_ray_error(oom)
    assert isinstance(error, WorkerCrashedError)
    assert str(error) == (
        "Ray's memory monitor killed the worker process running this item: its node ran low "
        "on memory (1 worker(s) were killed)"
    )
    assert error.__cause__ is oom


def test_an_exception_of_fn_is_neither() -> None:
    cause = ValueError("bad")
    exc = ray.exceptions.RayTaskError("_execute_batch", "tb", cause)
    assert not is_lost_task(exc)
    assert not is_too_large(exc)
    assert translate_ray_error(exc)[0] is cause


def test_a_refused_token_is_found_in_the_chain_ray_builds() -> None:
    inner = RuntimeError("Failed to connect to GCS. ... InvalidAuthToken: token is missing")
    outer = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    outer.__cause__ = inner
    assert _refused_token(outer)
    other = ConnectionError("Failed to connect")
    other.__cause__ = RuntimeError("GCS is down")
    assert not _refused_token(other)
