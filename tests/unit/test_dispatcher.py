"""``Dispatcher`` (``_dispatch``) with a scripted fake backend: a real dispatcher thread, no Ray.

The test thread plays Ray's callback threads: it finishes a task in the fake backend and
fires the callback the dispatcher registered for it. Every wait is bounded (the fake's
``wait_until``, ``Future.result(timeout=...)``, ``Event.wait(timeout)``); nothing sleeps.

What is tested: the cap on tasks in flight across calls and first-come-first-served order,
a call whose sink has no room not holding up the others, ``cancel``/``cancel_all``/
``cancel_streams``, ``close`` then ``wait_idle``, ``stop`` joining the thread, a cancelled
call never starting, a failing call ending with its error, and back-pressure through the
real ``StreamSink``/``IMapIterator``.

Events reach the dispatcher thread in order: a call started after an event and seen to
submit its task proves that event handled (used below to assert that nothing happened).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest
from fakes import TIMEOUT, FakeBackend, FakeTask, RecordingSink

from raypool._config import MapOptions
from raypool._dispatch import Call, CallState, Dispatcher, Sink
from raypool._outcome import Rerun, failed_batch
from raypool._results import FutureSink, IMapIterator, ListSink, Outputs, StreamSink
from raypool._scheduler import MapRun

_names = itertools.count()

#: A broken scheduler may loop or block: fail fast instead.
pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def make_dispatcher() -> Iterator[Callable[[int | None], Dispatcher]]:
    """Dispatchers whose threads are stopped after the test."""
    made: list[Dispatcher] = []

    def make(max_in_flight: int | None) -> Dispatcher:
        dispatcher = Dispatcher(max_in_flight, name=f"test-dispatcher-{next(_names)}")
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.stop()


def open_call(
    dispatcher: Dispatcher, sink: Sink, backend: FakeBackend, items: list[Any], **options: Any
) -> Call:
    """A call over ``items`` (one item per task unless ``batch_size`` says otherwise)."""
    opts = MapOptions(**{"batch_size": 1, "max_pending": 4, **options})
    return dispatcher.call(
        sink, lambda throttle: MapRun(iter(items), None, opts, backend, throttle=throttle)
    )


def list_sink(*, safe_exceptions: bool = False) -> tuple[ListSink, Future[list[Any]]]:
    future: Future[list[Any]] = Future()
    return ListSink(future, Outputs(safe_exceptions=safe_exceptions, ret_args=False), None), future


def thread_named(dispatcher: Dispatcher) -> threading.Thread:
    """The dispatcher's thread (it runs once a call has started)."""
    (thread,) = [t for t in threading.enumerate() if t.name == dispatcher._name]
    return thread


def notified(backend: FakeBackend, count: int) -> list[FakeTask]:
    """The first ``count`` tasks, once each has asked to be notified."""
    backend.wait_until(
        lambda: len(backend.tasks) >= count and all(t.callback for t in backend.tasks[:count])
    )
    return backend.tasks[:count]


def barrier(dispatcher: Dispatcher, backend: FakeBackend) -> None:
    """Return once the dispatcher has handled every event sent before this call."""
    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, ["barrier"], max_pending=1))
    task = backend.next_notified()
    assert task.items == ["barrier"]
    backend.finish(task)
    backend.fire(task)
    assert future.result(timeout=TIMEOUT) == ["barrier" * 10]


# -- the cap and the order of calls ------------------------------------------------------------


def test_tasks_in_flight_never_exceed_the_cap_and_calls_are_served_in_order(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(2)
    backend = FakeBackend()
    futures = []
    for owner in range(3):
        sink, future = list_sink()
        dispatcher.start(open_call(dispatcher, sink, backend, [10 * owner, 10 * owner + 1]))
        futures.append(future)

    backend.serve(6)

    assert [future.result(timeout=TIMEOUT) for future in futures] == [
        [0, 10],
        [100, 110],
        [200, 210],
    ]
    # Never more than two tasks in flight; calls got room first come, first served.
    assert backend.max_live == 2
    assert [task.items[0] // 10 for task in backend.tasks] == [0, 0, 1, 1, 2, 2]
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    assert dispatcher.active == 0
    assert backend.closed == 3  # each call's run was closed


def test_a_call_whose_sink_has_no_room_does_not_hold_up_the_others(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(2)
    backend = FakeBackend()
    stuck = RecordingSink(room=False, stream=True)  # a stream nobody reads
    stuck_call = open_call(dispatcher, stuck, backend, list(range(100, 110)), max_pending=2)
    dispatcher.start(stuck_call)
    backend.serve(2)  # its window is now full of batches nobody takes

    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, [1, 2, 3]))
    backend.serve(3)
    assert future.result(timeout=TIMEOUT) == [10, 20, 30]

    assert stuck.batches == []
    assert not stuck.ended.is_set()
    assert [task.items for task in backend.tasks if task.items[0] >= 100] == [[100], [101]]
    assert stuck_call.state is CallState.RUNNING
    assert dispatcher.active == 1


def test_close_releases_back_pressure_and_the_thread_ends_once_idle(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(2)
    backend = FakeBackend()
    stuck = RecordingSink(room=False, stream=True)
    dispatcher.start(open_call(dispatcher, stuck, backend, [1, 2, 3, 4], max_pending=2))
    backend.serve(2)
    thread = thread_named(dispatcher)
    assert not dispatcher.wait_idle(timeout=0)

    dispatcher.close()
    backend.serve(2)  # released, the call takes its batches and reads on
    assert stuck.wait_ended() is None
    assert stuck.released
    assert stuck.values() == [10, 20, 30, 40]
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_close_with_no_call_active_ends_the_thread_at_once(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, [1]))
    backend.serve(1)
    assert future.result(timeout=TIMEOUT) == [10]
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    thread = thread_named(dispatcher)
    assert thread.is_alive()  # idle, not closed: it waits for more calls

    dispatcher.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


# -- cancelling ---------------------------------------------------------------------------------


def test_cancel_ends_the_call_with_the_error_and_cancels_its_tasks(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(3)
    backend = FakeBackend()
    sink, future = list_sink()
    call = open_call(dispatcher, sink, backend, list(range(10)), max_pending=3)
    dispatcher.start(call)
    in_flight = notified(backend, 3)

    error = RuntimeError("cancelled by the test")
    dispatcher.cancel(call, error)
    assert future.exception(timeout=TIMEOUT) is error
    assert backend.cancelled == [in_flight]
    assert call.state is CallState.ENDED

    # A completion arriving after the cancel is ignored: nothing more starts for the call.
    # The barrier also needs a place under the cap: the cancelled tasks gave theirs back.
    backend.finish(in_flight[0])
    backend.fire(in_flight[0])
    barrier(dispatcher, backend)
    assert len(backend.tasks) == 4  # its three, and the barrier's
    assert backend.max_live == 3
    assert dispatcher.wait_idle(timeout=TIMEOUT)


def test_cancel_all_ends_every_call(make_dispatcher: Callable[[int | None], Dispatcher]) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    futures = []
    for owner in range(2):
        sink, future = list_sink()
        items = list(range(10 * owner, 10 * owner + 5))
        dispatcher.start(open_call(dispatcher, sink, backend, items, max_pending=2))
        futures.append(future)
    tasks = notified(backend, 4)

    error = CancelledError("the pool was terminated")
    dispatcher.cancel_all(error)
    for future in futures:
        assert future.exception(timeout=TIMEOUT) is error  # running: cannot be cancelled
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    cancelled = sorted(backend.cancelled, key=lambda handles: handles[0].items[0])
    assert cancelled == [
        [task for task in tasks if task.items[0] < 10],
        [task for task in tasks if task.items[0] >= 10],
    ]


def test_cancel_streams_spares_the_other_calls(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    stream = RecordingSink(stream=True)
    dispatcher.start(open_call(dispatcher, stream, backend, [100, 101, 102], max_pending=1))
    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, [1, 2], max_pending=2))
    tasks = notified(backend, 3)
    (stream_task,) = [task for task in tasks if task.items == [100]]

    error = CancelledError("the pool was shut down")
    dispatcher.cancel_streams(error)
    assert stream.wait_ended() is error
    assert backend.cancelled == [[stream_task]]

    backend.serve(2)
    assert future.result(timeout=TIMEOUT) == [10, 20]
    assert dispatcher.wait_idle(timeout=TIMEOUT)


def test_stop_ends_the_calls_and_joins_the_thread(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    sink = RecordingSink()
    dispatcher.start(open_call(dispatcher, sink, backend, list(range(10)), max_pending=2))
    in_flight = notified(backend, 2)
    thread = thread_named(dispatcher)

    dispatcher.stop()
    assert not thread.is_alive()
    assert sink.wait_ended(timeout=0) is None
    assert backend.cancelled == [in_flight]
    assert dispatcher.active == 0
    dispatcher.stop()  # idempotent


def test_sync_returns_once_the_events_before_it_are_handled_and_tasks_started(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(2)
    dispatcher.sync()  # no thread yet: at once
    backend = FakeBackend()
    sink, future = list_sink()
    synced_in_callback: list[bool] = []

    def sync_from_the_dispatcher_thread(_: Future[list[Any]]) -> None:
        dispatcher.sync()  # would wait for itself if it did not return at once
        synced_in_callback.append(True)

    future.add_done_callback(sync_from_the_dispatcher_thread)
    dispatcher.start(open_call(dispatcher, sink, backend, list(range(5))))
    dispatcher.sync()
    assert len(backend.tasks) == 2  # started before sync() returned: the cap's worth

    backend.serve(5)
    assert future.result(timeout=TIMEOUT) == [0, 10, 20, 30, 40]
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    assert synced_in_callback == [True]
    dispatcher.stop()
    dispatcher.sync()  # stopped: at once


# -- calls that end early -----------------------------------------------------------------------


def test_a_cancelled_future_never_starts_its_call(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    future: Future[Any] = Future()
    assert future.cancel()
    call = open_call(
        dispatcher, FutureSink(future, safe_exceptions=False, executor=True), backend, [1]
    )
    dispatcher.start(call)
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    assert backend.tasks == []
    assert backend.closed == 1
    assert call.state is CallState.ENDED
    assert future.cancelled()


def test_a_sink_that_does_not_begin_ends_with_no_error(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    sink = RecordingSink(begin=False)
    dispatcher.start(open_call(dispatcher, sink, backend, [1, 2, 3]))
    assert sink.wait_ended() is None
    assert sink.begun == 1
    assert sink.batches == []
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    assert backend.tasks == []


def test_a_call_that_fails_to_submit_ends_with_that_error(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    error = TypeError("cannot send the item")
    backend.submit_error = error
    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, [1, 2]))
    assert future.exception(timeout=TIMEOUT) is error
    assert dispatcher.wait_idle(timeout=TIMEOUT)
    barrier(dispatcher, backend)  # the thread survived it


def test_an_input_that_raises_ends_the_call_with_its_error_after_its_items(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    error = OSError("input broke")

    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise error

    sink = RecordingSink()
    opts = MapOptions(batch_size=1, max_pending=4)
    dispatcher.start(
        dispatcher.call(
            sink, lambda throttle: MapRun(broken(), None, opts, backend, throttle=throttle)
        )
    )
    backend.serve(2)
    assert sink.wait_ended() is error
    assert sink.values() == [10, 20]


def test_an_item_error_fails_a_list_call_and_only_it(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, [1, 2, 3], batch_size=3))
    task = backend.next_notified()
    backend.finish(task, failed_batch(3, ValueError("item failed"), retry=False))
    backend.fire(task)
    with pytest.raises(ValueError, match="item failed"):
        future.result(timeout=TIMEOUT)
    barrier(dispatcher, backend)


# -- back-pressure through the real stream sink -------------------------------------------------


def test_a_stream_reads_on_as_its_reader_takes_batches(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(None)
    backend = FakeBackend()
    sink = StreamSink(Outputs(safe_exceptions=False, ret_args=False))
    call = open_call(dispatcher, sink, backend, list(range(6)), max_pending=2)
    dispatcher.start(call)
    iterator = IMapIterator(sink, call)

    # Two batches fill the sink, two more the run's window: then it stops.
    backend.serve(4)
    barrier(dispatcher, backend)
    assert [task.items for task in backend.tasks if task.items != ["barrier"]] == [
        [0],
        [1],
        [2],
        [3],
    ]

    got = [iterator.next(timeout=TIMEOUT) for _ in range(4)]
    backend.serve(2)  # each batch read woke the call: it read on
    got += [iterator.next(timeout=TIMEOUT) for _ in range(2)]
    assert got == [0, 10, 20, 30, 40, 50]
    with pytest.raises(StopIteration):
        iterator.next(timeout=TIMEOUT)
    assert dispatcher.wait_idle(timeout=TIMEOUT)


# -- known problems ----------------------------------------------------------------------------


def test_a_split_after_a_lost_task_stays_under_the_cap(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    dispatcher = make_dispatcher(1)
    backend = FakeBackend()
    sink, future = list_sink()
    dispatcher.start(open_call(dispatcher, sink, backend, [0, 1], batch_size=2))
    task = backend.next_notified()
    backend.finish(task, failed_batch(2, RuntimeError("worker died"), rerun=Rerun.LOST))
    backend.fire(task)
    backend.serve(2)  # the two halves
    assert future.result(timeout=TIMEOUT) == [0, 10]
    assert backend.submitted == [[0, 1], [0], [1]]
    assert backend.max_live <= 1


# -- inside a Ray task: waits go through ``lend`` ------------------------------------------------


def test_a_lending_dispatcher_waits_through_lend_on_the_tasks_in_flight() -> None:
    backend = FakeBackend()
    lent: list[list[Any]] = []
    finished = threading.Event()

    def lend(handles: list[Any], timeout: float) -> None:
        lent.append(handles)  # a task waiting in ray.wait: here, for the test's go
        finished.wait(timeout)

    dispatcher = Dispatcher(None, name=f"test-dispatcher-{next(_names)}", lend=lend)
    try:
        assert dispatcher.lends
        sink, future = list_sink()
        dispatcher.start(open_call(dispatcher, sink, backend, [1, 2]))
        first, second = notified(backend, 2)
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(dispatcher.wait_until(future.done)))
        waiter.start()
        backend.wait_until(lambda: bool(lent))
        assert set(lent[0]) == {first, second}  # it waits on this pool's tasks
        for task in (first, second):
            backend.finish(task)
            backend.fire(task)
        finished.set()
        waiter.join(TIMEOUT)
        assert waited == [True]
        assert future.result(timeout=0) == [10, 20]
        assert not dispatcher.wait_until(lambda: False, timeout=0.01)  # the timeout holds
    finally:
        dispatcher.stop()


def test_a_dispatcher_outside_a_task_does_not_lend(
    make_dispatcher: Callable[[int | None], Dispatcher],
) -> None:
    assert not make_dispatcher(None).lends
