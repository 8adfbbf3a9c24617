from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
from concurrent.futures.process import BrokenProcessPool

import pytest

from raypool import (
    BatchLengthError,
    BrokenPoolError,
    ClusterUnreachableError,
    RayPoolError,
    RemoteError,
    ResultTooLargeError,
    SerializationError,
    TaskTimeoutError,
)


def test_timeout_error_is_every_stdlib_timeout() -> None:
    error = TaskTimeoutError("took too long")
    for cls in (TimeoutError, concurrent.futures.TimeoutError, multiprocessing.TimeoutError):
        assert isinstance(error, cls)
    assert isinstance(error, RayPoolError)
    assert str(error) == "took too long"


@pytest.mark.parametrize(
    "error",
    [
        TaskTimeoutError("t"),
        RemoteError("mod.Type", "msg", "tb text"),
        BatchLengthError("wrong"),
        BrokenPoolError("lost"),
        SerializationError("nope"),
        ClusterUnreachableError("far"),
        ResultTooLargeError("huge"),
    ],
)
def test_errors_pickle_round_trip(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


def test_bases_users_already_catch() -> None:
    assert issubclass(BrokenPoolError, BrokenProcessPool)
    assert issubclass(BatchLengthError, ValueError)
    assert issubclass(SerializationError, pickle.PicklingError)
    assert issubclass(ClusterUnreachableError, ConnectionError)


def test_remote_error_keeps_what_it_can() -> None:
    error = RemoteError("pkg.Odd", "it broke", "Traceback ...")
    assert error.type_name == "pkg.Odd"
    assert error.message == "it broke"
    assert error.traceback_text == "Traceback ..."
    assert "pkg.Odd" in str(error)
    assert "it broke" in str(error)
