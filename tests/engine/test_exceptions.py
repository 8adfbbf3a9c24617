"""Exceptions come back as themselves, with the worker traceback as __cause__."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import pytest

from helpers import (
    NeedsTwoArgs,
    Unpicklable,
    fail_on,
    log_then_hang,
    raise_needs_two,
    raise_unpicklable,
    wait_for_lines,
    wait_for_path,
    wait_until_idle,
)
from raypool import RayMap, RemoteError, RemoteTraceback, WorkerUnpicklingError


def test_error_keeps_type_message_and_remote_traceback() -> None:
    with pytest.raises(ValueError, match="bad item 3") as info:
        RayMap(fail_on).map(range(10))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in str(cause)
    assert "raise ValueError" in str(cause)


def two_errors(failed: str, x: int) -> int:
    """Item 6 fails at once; item 2 fails later: half a second after item 6 failed."""
    if x == 2:
        if not wait_for_path(failed):
            raise RuntimeError("item 6 never ran")
        time.sleep(0.5)
        raise KeyError("late but first")
    if x == 6:
        Path(failed).touch()
        raise IndexError("early but second")
    return x


def test_ordered_mode_raises_the_first_error_in_input_order(tmp_path: Path) -> None:
    # The positive control: raised on arrival, item 6's error comes first.
    control = functools.partial(two_errors, str(tmp_path / "control"))
    with pytest.raises(IndexError, match="early but second"):
        RayMap(control, batch_size=1).map(range(10), keep_order=False)
    got = []
    fn = functools.partial(two_errors, str(tmp_path / "failed"))
    with pytest.raises(KeyError, match="late but first"):
        for value in RayMap(fn, batch_size=1).imap(range(10)):
            got.append(value)
    assert got == [0, 1]


def test_unordered_mode_raises_on_arrival() -> None:
    def two_errors(x: int) -> int:
        if x == 0:
            time.sleep(60)  # until the call ends and cancels it
            raise KeyError("slow")
        if x == 1:
            raise IndexError("fast")
        return x

    with pytest.raises(IndexError, match="fast"):
        RayMap(two_errors, batch_size=1).map(range(4), keep_order=False)


def test_safe_exceptions_yield_the_exception_itself() -> None:
    out = RayMap(fail_on, batch_size=2).map(range(6), safe_exceptions=True)
    assert out[:3] == [0, 1, 2]
    assert type(out[3]) is ValueError
    assert str(out[3]) == "bad item 3"
    assert isinstance(out[3].__cause__, RemoteTraceback)
    assert out[4:] == [4, 5]


def test_ret_args_with_errors() -> None:
    out = RayMap(fail_on).map(range(5), safe_exceptions=True, ret_args=True)
    assert [arg for arg, _ in out] == list(range(5))
    assert isinstance(out[3][1], ValueError)


@pytest.mark.parametrize(
    ("fn", "type_name"),
    [(raise_unpicklable, "Unpicklable"), (raise_needs_two, "NeedsTwoArgs")],
)
def test_exception_that_cannot_travel_becomes_remote_error(fn: object, type_name: str) -> None:
    out = RayMap(fn).map([7], safe_exceptions=True)  # type: ignore[arg-type]
    error = out[0]
    assert isinstance(error, RemoteError)
    assert error.type_name.endswith(type_name)
    assert "7" in error.message
    assert type_name in error.traceback_text
    assert not isinstance(error, (Unpicklable, NeedsTwoArgs))


def test_on_error_sees_each_failed_item() -> None:
    seen: list[tuple[object, BaseException]] = []
    lock = threading.Lock()

    def record(arg: object, exc: BaseException) -> None:
        with lock:
            seen.append((arg, exc))

    rmap = RayMap(functools.partial(fail_on, bad=4), on_error=record, batch_size=3)
    out = rmap.map([1, 4, 2, 4, 5], safe_exceptions=True)
    assert [type(v) for v in out] == [int, ValueError, int, ValueError, int]
    assert sorted(arg for arg, _ in seen) == [4, 4]  # type: ignore[type-var]
    assert all(isinstance(exc, ValueError) for _, exc in seen)


def test_first_error_cancels_the_rest(tmp_path: Path) -> None:
    started = str(tmp_path / "started")

    def slow_or_fail(x: int) -> int:
        if x == 0:  # fails once another item is running (and would run for an hour)
            if not wait_for_lines(started, 1):
                raise RuntimeError("no other item started")
            raise ValueError("first")
        return log_then_hang(started, x)

    with pytest.raises(ValueError, match="first"):
        RayMap(slow_or_fail, batch_size=1, max_pending=4).map(range(20))
    assert wait_until_idle()


def test_a_module_only_on_the_drivers_path_reaches_the_workers(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "driver_side_module.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_side_module  # type: ignore[import-not-found]

    assert RayMap(driver_side_module.double).map([1, 2]) == [2, 4]


def test_function_workers_cannot_import_is_a_clear_error(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # As on another node: the driver imported the module from a file the workers lack.
    source = tmp_path / "only_on_the_driver.py"
    source.write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_driver  # type: ignore[import-not-found]

    source.unlink()
    ckpt = tmp_path / "c.ckpt"
    rmap = RayMap(only_on_the_driver.double, checkpoint_path=str(ckpt))
    with pytest.raises(WorkerUnpicklingError, match="only_on_the_driver") as info:
        rmap.map([1, 2])
    assert "runtime_env" in str(info.value)
    # the failure says nothing about the items: it is not checkpointed
    out = RayMap(only_on_the_driver.double, checkpoint_path=str(ckpt), sequential=True).imap([1])
    assert list(out) == [2]
    assert out.statistics().items_replayed == 0
