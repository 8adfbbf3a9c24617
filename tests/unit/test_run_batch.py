"""run_batch in this process: the code every Ray task runs, tested without Ray."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError

import pytest

import raypool._worker
from raypool import BatchLengthError, TaskTimeoutError
from raypool._worker import IN_WORKER, _Cancelled, _Watchdog, run_batch


def test_values_in_order_and_errors_by_position() -> None:
    def f(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(x)
        return x * 10

    result = run_batch(f, [1, 2, 3, 4, 6, 7])
    assert result.values == [10, 20, None, 40, None, 70]
    assert result.errors is not None
    assert sorted(result.errors) == [2, 4]
    exc, tb = result.errors[2]
    assert isinstance(exc, ValueError)
    assert "in f" in tb
    assert result.retry is None


@pytest.mark.parametrize(
    ("unpack", "items", "expected"),
    [
        ("auto", [(1, 2), {"a": 3, "b": 4}, 5], [(1, 2), (3, 4), (5, None)]),
        ("none", [(1, 2)], [((1, 2), None)]),
        ("args", [[1, 2]], [(1, 2)]),
        ("kwargs", [{"a": 1}], [(1, None)]),
    ],
)
def test_calling_conventions(unpack: str, items: list[object], expected: list[object]) -> None:
    def f(a: object, b: object = None) -> tuple[object, object]:
        return a, b

    assert run_batch(f, items, unpack=unpack).values == expected  # type: ignore[arg-type]


def test_timeout_interrupts_a_sleeping_item_and_the_batch_goes_on() -> None:
    def f(x: float) -> float:
        time.sleep(x)
        return x

    started = time.monotonic()
    result = run_batch(f, [0.0, 30.0, 0.0], timeout=0.3)
    assert time.monotonic() - started < 10
    assert result.values == [0.0, None, 0.0]
    assert result.errors is not None
    exc, tb = result.errors[1]
    assert isinstance(exc, TaskTimeoutError)
    assert "time.sleep" in tb  # where the item was when it was stopped
    assert result.retry == frozenset({1})


def test_timeout_interrupts_pure_python_and_cannot_be_swallowed() -> None:
    def stubborn(_: object) -> None:
        while True:
            try:
                while True:
                    pass
            except Exception:  # a user's broad except does not catch the timeout
                pass

    result = run_batch(stubborn, [1], timeout=0.2)
    assert result.errors is not None
    assert isinstance(result.errors[0][0], TaskTimeoutError)


def test_each_item_has_its_own_clock() -> None:
    def f(x: float) -> float:
        time.sleep(x)
        return x

    # Four items of 0.2 s with a 0.5 s timeout: the batch takes longer than the timeout,
    # no item does.
    result = run_batch(f, [0.2] * 4, timeout=0.5)
    assert result.errors is None
    assert result.values == [0.2] * 4


def test_signal_state_is_restored() -> None:
    before = signal.getsignal(signal.SIGALRM)
    run_batch(lambda x: x, [1, 2], timeout=1)
    assert signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.fixture
def watchdog(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Watchdog, threading.Event]]:
    """A watchdog entered on the main thread whose own timer never fires during the test
    (the test calls its tick), and a cancel event it watches; its timer and SIGALRM handler
    are restored whatever the test does."""
    monkeypatch.setattr(raypool._worker, "TICK_SECONDS", 3600.0)
    handler, setitimer = signal.getsignal(signal.SIGALRM), signal.setitimer  # a test may patch it
    cancelled = threading.Event()
    dog = _Watchdog(cancelled)
    dog.__enter__()
    try:
        yield dog, cancelled
    finally:
        setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)


def _tick(dog: _Watchdog) -> None:
    dog._on_alarm(signal.SIGALRM, None)


def test_a_tick_once_the_batch_is_settled_raises_nothing(
    watchdog: tuple[_Watchdog, threading.Event],
) -> None:
    dog, cancelled = watchdog
    cancelled.set()
    with pytest.raises(_Cancelled):  # the control: while the batch runs, the tick stops it
        _tick(dog)
    dog.settled = True  # the batch's outcome is known (run_batch, _run_piece)
    _tick(dog)  # a tick from here to the timer's end must not escape the batch's handling


def test_a_tick_while_the_watchdog_stops_raises_nothing(
    watchdog: tuple[_Watchdog, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tick can fire in __exit__ before the timer is off, when no caller settled.
    dog, cancelled = watchdog
    cancelled.set()
    handler = signal.getsignal(signal.SIGALRM)
    setitimer = signal.setitimer

    def tick_first(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        _tick(dog)  # the tick that comes in just then
        return setitimer(which, seconds, interval)

    monkeypatch.setattr(signal, "setitimer", tick_first)
    dog.__exit__(None, None, None)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is not handler  # the one before, restored


def test_a_cancelled_batch_reports_cancelled_items() -> None:
    cancelled = threading.Event()
    cancelled.set()

    def slow(x: int) -> int:
        time.sleep(30)  # the tick interrupts the sleep
        return x

    result = run_batch(slow, [1, 2], cancelled=cancelled, caught=IN_WORKER)
    assert result.errors is not None
    assert sorted(result.errors) == [0, 1]
    assert all(isinstance(error, CancelledError) for error, _ in result.errors.values())


def test_off_the_main_thread_an_overrun_is_reported_after_the_fact() -> None:
    out = {}

    def work() -> None:
        out["result"] = run_batch(lambda x: time.sleep(x) or x, [0.4, 0.0], timeout=0.1)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    result = out["result"]
    assert result.errors is not None
    assert isinstance(result.errors[0][0], TaskTimeoutError)
    assert result.values[1] == 0.0


def test_batched_function_gets_the_list() -> None:
    result = run_batch(lambda xs: [x + 1 for x in xs], [1, 2, 3], batched=True)
    assert result.values == [2, 3, 4]
    assert result.errors is None


def test_batched_length_mismatch_fails_every_item_clearly() -> None:
    result = run_batch(lambda xs: xs[:-1], [1, 2, 3], batched=True)
    assert result.errors is not None
    assert sorted(result.errors) == [0, 1, 2]
    exc = result.errors[0][0]
    assert isinstance(exc, BatchLengthError)
    assert "2 results for a batch of 3" in str(exc)


def test_batched_exception_applies_to_the_batch() -> None:
    def f(xs: list[int]) -> list[int]:
        raise KeyError("model not loaded")

    result = run_batch(f, [1, 2], batched=True)
    assert result.errors is not None
    assert all(isinstance(result.errors[i][0], KeyError) for i in (0, 1))


def test_failures_at_the_edges_and_in_a_row_keep_positions() -> None:
    def f(x: int) -> int:
        if x in (0, 3, 4, 7):
            raise ValueError(x)
        return x

    result = run_batch(f, list(range(8)))
    assert result.values == [None, 1, 2, None, None, 5, 6, None]
    assert result.errors is not None
    assert {p: e.args[0] for p, (e, _) in result.errors.items()} == {0: 0, 3: 3, 4: 4, 7: 7}


def test_auto_unpacks_tuple_subclasses_mixed_with_plain_items() -> None:
    from collections import namedtuple

    Point = namedtuple("Point", "x y")

    def f(a: int, b: int = 0) -> int:
        return a + b

    assert run_batch(f, [Point(1, 2), 5, {"a": 1, "b": 1}]).values == [3, 5, 2]


def _exit(x: int) -> int:
    if x == 1:
        sys.exit(3)
    return x


def _terminated_by_ray(x: int) -> int:
    exc = SystemExit(1)
    exc.ray_terminate_msg = "The process receives a SIGTERM."  # type: ignore[attr-defined]
    raise exc


def test_in_a_worker_a_base_exception_is_the_items_outcome() -> None:
    result = run_batch(_exit, [0, 1, 2], caught=IN_WORKER)
    assert result.values == [0, None, 2]
    assert result.errors is not None
    assert isinstance(result.errors[1][0], SystemExit)


def test_in_the_callers_process_ctrl_c_goes_through() -> None:
    def interrupt(x: int) -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(interrupt, [0])


def test_ray_ending_the_worker_is_not_an_items_outcome() -> None:
    with pytest.raises(SystemExit):
        run_batch(_terminated_by_ray, [0, 1], caught=IN_WORKER)
