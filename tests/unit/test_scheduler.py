"""``MapRun`` (``_scheduler``) driven by a scripted fake backend: no Ray.

What is tested: the window (tasks in flight plus finished batches not yet taken), the
ordered reorder buffer and unordered delivery, replay from a checkpoint and the rows
recorded into it, the retry/split tree after a lost task, a result too large and
``retry_exceptions``, cancelling and closing, an input that raises and ``StreamLimits``,
the ``RunState`` machine, and the ``Throttle``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import (
    Counting,
    Died,
    FakeBackend,
    FakeStore,
    FakeThrottle,
    compute,
    drain,
    lost_when,
    times_ten,
)

from raypool._config import MapOptions, StreamLimits
from raypool._errors import RemoteTraceback, TaskTimeoutError
from raypool._keys import item_key, key_salt
from raypool._outcome import BatchResult, Rerun, failed_batch
from raypool._scheduler import (
    WINDOW_EXTRA,
    WINDOW_PER_CPU,
    MapRun,
    OnError,
    RunState,
)
from raypool._store import CheckpointStore

#: A broken scheduler may loop or block: fail fast instead.
pytestmark = pytest.mark.timeout(10)


def make_run(
    items: Iterator[Any] | list[Any] | range,
    backend: FakeBackend,
    *,
    store: CheckpointStore | None = None,
    on_error: OnError | None = None,
    limits: StreamLimits | None = None,
    throttle: FakeThrottle | None = None,
    **options: Any,
) -> MapRun:
    return MapRun(
        iter(items),
        None,
        MapOptions(**options),
        backend,
        store=store,
        on_error=on_error,
        limits=limits,
        throttle=throttle,
    )


def key(item: Any, options: MapOptions | None = None) -> bytes:
    options = options or MapOptions()
    found = item_key(item, key_salt(options.unpack, options.batched))
    assert found is not None
    return found


# -- 1. the window ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep_order", [True, False])
def test_window_bounds_tasks_in_flight_and_items_read(keep_order: bool) -> None:
    backend = FakeBackend()
    source = Counting(range(100))
    run = make_run(source, backend, batch_size=2, max_pending=3, keep_order=keep_order)

    run.fill()
    stats = run.statistics()
    assert stats.batches_in_flight == 3
    assert stats.items_read == 6
    assert source.read == 6
    assert backend.submitted == [[0, 1], [2, 3], [4, 5]]
    assert stats.window == 3

    run.fill()  # full: nothing more
    assert len(backend.tasks) == 3

    head = backend.tasks[0]
    backend.finish(head)
    run.complete(head)
    run.fill()
    # A finished batch not yet taken still holds its place in the window.
    assert len(backend.tasks) == 3
    assert source.read == 6
    assert run.statistics().batches_buffered == 1
    assert run.statistics().batches_in_flight == 2

    batch = run.pop_ready()
    assert batch is not None
    assert list(run.emit(batch)) == [0, 10]
    run.fill()
    # Taking it frees exactly one place.
    assert backend.submitted[3:] == [[6, 7]]
    assert source.read == 8
    assert run.statistics().batches_in_flight == 3
    run.fill()
    assert len(backend.tasks) == 4


def test_ordered_run_does_not_read_ahead_behind_an_outstanding_head() -> None:
    backend = FakeBackend()
    source = Counting(range(100))
    run = make_run(source, backend, batch_size=2, max_pending=3)
    run.fill()
    head, second, third = backend.tasks

    for task in (third, second):  # every task but the head finishes
        backend.finish(task)
        run.complete(task)
        assert run.pop_ready() is None
        run.fill()
        assert len(backend.tasks) == 3
        assert source.read == 6
    stats = run.statistics()
    assert (stats.batches_in_flight, stats.batches_buffered) == (1, 2)

    backend.finish(head)
    run.complete(head)
    outputs = []
    while (batch := run.pop_ready()) is not None:
        outputs.extend(run.emit(batch))
    assert outputs == [0, 10, 20, 30, 40, 50]
    run.fill()
    assert backend.submitted[3:] == [[6, 7], [8, 9], [10, 11]]
    assert source.read == 12


def test_max_pending_minus_one_sizes_the_window_from_the_cpus() -> None:
    backend = FakeBackend(cpus=3)
    run = make_run(range(1000), backend, batch_size=1)
    run.fill()
    assert run.window == WINDOW_PER_CPU * 3 + WINDOW_EXTRA
    assert run.statistics().batches_in_flight == run.window


# -- 2. output order -------------------------------------------------------------------------


def test_ordered_run_buffers_until_the_head_batch_is_done() -> None:
    backend = FakeBackend()
    run = make_run(range(8), backend, batch_size=2, max_pending=4)
    run.fill()
    tasks = backend.tasks
    assert [task.items for task in tasks] == [[0, 1], [2, 3], [4, 5], [6, 7]]

    for task in (tasks[3], tasks[1], tasks[2]):
        backend.finish(task)
        run.complete(task)
        assert run.pop_ready() is None
    backend.finish(tasks[0])
    run.complete(tasks[0])

    batches = []
    while (batch := run.pop_ready()) is not None:
        batches.append(list(run.emit(batch)))
    assert batches == [[0, 10], [20, 30], [40, 50], [60, 70]]
    run.fill()  # the input ends
    assert run.state is RunState.DRAINING
    assert run.drained


def test_unordered_run_delivers_in_completion_order() -> None:
    backend = FakeBackend()
    run = make_run(range(8), backend, batch_size=2, max_pending=4, keep_order=False)
    run.fill()
    tasks = backend.tasks

    batches = []
    for pair in ((2, 0), (3, 1)):
        for index in pair:
            backend.finish(tasks[index])
            run.complete(tasks[index])
        while (batch := run.pop_ready()) is not None:
            batches.append(list(run.emit(batch)))
    assert batches == [[40, 50], [0, 10], [60, 70], [20, 30]]


def test_wait_completes_the_task_the_backend_finished_first() -> None:
    backend = FakeBackend()
    run = make_run(range(6), backend, batch_size=2, max_pending=3, keep_order=False)
    run.fill()
    backend.finish(backend.tasks[1])
    run.wait()
    batch = run.pop_ready()
    assert batch is not None
    assert list(run.emit(batch)) == [20, 30]
    assert run.statistics().batches_in_flight == 2


# -- 3. checkpoints --------------------------------------------------------------------------


def test_recorded_items_are_replayed_not_submitted() -> None:
    options = MapOptions(batch_size=2, max_pending=4, safe_exceptions=True)
    boom = ValueError("recorded boom")
    store = FakeStore(
        {
            key(0): (False, "recorded-0"),
            key(1): (False, "recorded-1"),
            key(2): (False, "recorded-2"),
            key(3): (True, (boom, "worker traceback text")),
        }
    )
    backend = FakeBackend(auto=True)
    run = make_run(
        range(10), backend, store=store, batch_size=2, max_pending=4, safe_exceptions=True
    )

    outputs = drain(run)

    assert outputs[:3] == ["recorded-0", "recorded-1", "recorded-2"]
    assert outputs[3] is boom
    assert isinstance(boom.__cause__, RemoteTraceback)
    assert "worker traceback text" in str(boom.__cause__)
    assert outputs[4:] == [40, 50, 60, 70, 80, 90]
    assert backend.submitted == [[4, 5], [6, 7], [8, 9]]
    stats = run.statistics()
    assert stats.items_replayed == 4
    assert stats.items_submitted == 6
    assert stats.items_read == 10
    assert stats.items_done == 10
    # Only computed items are recorded, with their keys; replayed ones are not again.
    assert store.rows == [(key(x, options), False, x * 10) for x in range(4, 10)]
    assert store.closed == 1


def test_a_replayed_failure_is_raised_unless_safe_exceptions() -> None:
    store = FakeStore({key(0): (False, 0), key(1): (True, (KeyError("recorded"), ""))})
    backend = FakeBackend(auto=True)
    run = make_run(range(3), backend, store=store, batch_size=2, max_pending=4)
    run.fill()
    batch = run.pop_ready()
    assert batch is not None
    outputs = run.emit(batch)
    assert next(outputs) == 0
    with pytest.raises(KeyError, match="recorded"):
        next(outputs)
    run.close()
    assert backend.submitted == [[2]]


def test_an_empty_checkpoint_is_not_looked_up_and_gets_every_computed_row() -> None:
    store = FakeStore()
    backend = FakeBackend(auto=True)
    run = make_run(range(5), backend, store=store, batch_size=2, max_pending=2)
    assert drain(run) == [0, 10, 20, 30, 40]
    assert store.lookups == []
    assert store.rows == [(key(x), False, x * 10) for x in range(5)]


def test_rows_leave_out_the_items_a_resume_must_compute_again() -> None:
    timeout = TaskTimeoutError()
    raised = KeyError("k")
    result = BatchResult(
        [0, None, None, 30],
        {1: (timeout, ""), 2: (raised, "tb")},
        0.0,
        retry=frozenset({1}),
    )
    store = FakeStore()
    backend = FakeBackend(auto=True, respond=lambda items: result)
    run = make_run(range(4), backend, store=store, batch_size=4, safe_exceptions=True)
    outputs = drain(run)
    assert outputs == [0, timeout, raised, 30]
    assert store.rows == [
        (key(0), False, 0),
        (key(2), True, (raised, "tb")),
        (key(3), False, 30),
    ]


# -- 4. retries ------------------------------------------------------------------------------


def test_a_lost_task_splits_down_to_the_item_that_kills_its_worker() -> None:
    store = FakeStore()
    throttle = FakeThrottle()
    backend = FakeBackend(auto=True, respond=lost_when(5))
    run = make_run(
        range(8),
        backend,
        store=store,
        throttle=throttle,
        batch_size=8,
        max_retries=2,
        safe_exceptions=True,
    )
    run.fill()
    assert backend.submitted == [list(range(8))]

    delivered = []
    while not run.drained:
        run.wait()
        while (batch := run.pop_ready()) is not None:
            delivered.append(list(run.emit(batch)))
        run.fill()
    run.close()

    assert backend.submitted == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3],  # halves, then halves of the half that failed...
        [4, 5, 6, 7],
        [4, 5],
        [6, 7],
        [4],
        [5],  # ...down to the killer alone,
        [5],  # then run again max_retries times
        [5],
    ]
    assert len(delivered) == 1  # one batch, delivered once, in order
    (outputs,) = delivered
    assert outputs[:5] == [0, 10, 20, 30, 40]
    assert isinstance(outputs[5], Died)
    assert outputs[6:] == [60, 70]
    stats = run.statistics()
    assert (stats.batches_submitted, stats.items_submitted, stats.items_done) == (1, 8, 8)
    # The killer's failure says nothing about the item: it is not checkpointed.
    assert sorted(row[0] for row in store.rows) == sorted(key(x) for x in range(8) if x != 5)
    # Every task, reruns too, was reported to the throttle.
    assert throttle.handles == backend.tasks


def test_a_result_too_large_splits_but_a_single_item_is_not_retried() -> None:
    def respond(items: list[Any]) -> BatchResult:
        if 2 in items:
            return failed_batch(len(items), Died("too large"), rerun=Rerun.SPLIT)
        return compute(times_ten, items)

    backend = FakeBackend(auto=True, respond=respond)
    run = make_run(range(4), backend, batch_size=4, max_retries=3, safe_exceptions=True)
    outputs = drain(run)
    assert backend.submitted == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3]]
    assert outputs[:2] == [0, 10]
    assert isinstance(outputs[2], Died)
    assert outputs[3] == 30


def test_a_result_that_could_not_be_sent_back_runs_again_once_checked() -> None:
    calls: list[list[Any]] = []

    def respond(items: list[Any]) -> BatchResult:
        calls.append(items)
        if len(calls) == 1:  # the task's result as a whole could not be pickled
            return failed_batch(len(items), Died("at pickle"), rerun=Rerun.CHECKED)
        result = compute(times_ten, items)  # checked: the one value fails alone
        return result._replace(errors={2: (Died("item 2 at pickle"), "")})

    backend = FakeBackend(auto=True, respond=respond)
    run = make_run(range(4), backend, batch_size=4, max_retries=3, safe_exceptions=True)
    outputs = drain(run)
    assert backend.submitted == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert [task.checked for task in backend.tasks] == [False, True]
    assert outputs[:2] == [0, 10]
    assert str(outputs[2]) == "item 2 at pickle"
    assert outputs[3] == 30


def test_a_checked_run_that_fails_as_a_whole_again_is_not_run_a_third_time() -> None:
    def respond(items: list[Any]) -> BatchResult:
        return failed_batch(len(items), Died("at pickle"), rerun=Rerun.CHECKED)

    backend = FakeBackend(auto=True, respond=respond)
    run = make_run(range(2), backend, batch_size=2, safe_exceptions=True)
    outputs = drain(run)
    assert [task.checked for task in backend.tasks] == [False, True]
    assert [str(out) for out in outputs] == ["at pickle", "at pickle"]


def test_reruns_of_lost_tasks_are_checked() -> None:
    backend = FakeBackend(auto=True, respond=lost_when(3))
    run = make_run(range(4), backend, batch_size=4, max_retries=1, safe_exceptions=True)
    drain(run)
    assert [task.checked for task in backend.tasks] == [False] + [True] * (len(backend.tasks) - 1)


def test_retry_exceptions_run_an_item_again_alone() -> None:
    runs: dict[int, int] = {}

    def fn(x: int) -> int:
        runs[x] = runs.get(x, 0) + 1
        if x == 1 and runs[x] == 1:
            raise ValueError("flaky once")
        if x == 2:
            raise ValueError("always")
        if x == 3:
            raise KeyError("not retried")
        return x * 10

    backend = FakeBackend(fn, auto=True)
    run = make_run(
        range(5),
        backend,
        batch_size=5,
        max_retries=2,
        retry_exceptions=(ValueError,),
        safe_exceptions=True,
    )
    outputs = drain(run)
    assert backend.submitted == [[0, 1, 2, 3, 4], [1], [2], [2]]
    assert runs == {0: 1, 1: 2, 2: 3, 3: 1, 4: 1}  # 2: 1 + max_retries runs
    assert outputs[:2] == [0, 10]
    assert isinstance(outputs[2], ValueError)
    assert str(outputs[2]) == "always"
    assert isinstance(outputs[3], KeyError)
    assert outputs[4] == 40


def test_a_lost_task_is_not_rerun_when_its_items_are_not_kept() -> None:
    backend = FakeBackend(auto=True, rerunnable=False, respond=lost_when(5))
    run = make_run(range(8), backend, batch_size=8, max_retries=2, safe_exceptions=True)
    outputs = drain(run)
    assert backend.submitted == [list(range(8))]
    assert len(outputs) == 8
    assert all(isinstance(output, Died) for output in outputs)


def test_a_backend_that_cannot_rerun_never_splits_a_lost_task() -> None:
    """Even with its items kept (``ret_args``), a lost task of a non-rerunnable backend is
    not run again: its items fail."""
    backend = FakeBackend(auto=True, rerunnable=False, respond=lost_when(5))
    run = make_run(
        range(8), backend, batch_size=8, max_retries=2, safe_exceptions=True, ret_args=True
    )
    outputs = drain(run)
    assert backend.submitted == [list(range(8))]
    assert [item for item, _ in outputs] == list(range(8))
    assert all(isinstance(value, Died) for _, value in outputs)


def test_reruns_wait_for_the_throttle() -> None:
    """Parts of a lost task run again only as the throttle admits them, before new input."""
    throttle = FakeThrottle()
    backend = FakeBackend(respond=lost_when(1))
    run = make_run(range(4), backend, throttle=throttle, batch_size=2, max_pending=8)
    throttle.open = False
    run.fill()
    assert backend.submitted == []
    throttle.open = True
    run.fill()
    assert backend.submitted == [[0, 1], [2, 3]]
    throttle.open = False
    first = backend.tasks[0]
    backend.finish(first)
    run.complete(first)  # lost: [0] and [1] wait for the throttle
    assert backend.submitted == [[0, 1], [2, 3]]
    assert run.wants_tasks
    assert not run.drained
    throttle.open = True
    run.fill()
    assert backend.submitted == [[0, 1], [2, 3], [0], [1]]
    assert not run.wants_tasks


def test_on_error_sees_each_failed_item_as_its_batch_completes() -> None:
    seen: list[tuple[Any, BaseException]] = []

    def fn(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(x)
        return x

    backend = FakeBackend(fn, rerunnable=False)
    run = make_run(
        range(6),
        backend,
        on_error=lambda item, exc: seen.append((item, exc)),
        batch_size=3,
        safe_exceptions=True,
    )
    run.fill()
    second = backend.tasks[1]
    backend.finish(second)
    run.complete(second)
    assert [(item, exc.args) for item, exc in seen] == [(3, (3,))]
    first = backend.tasks[0]
    backend.finish(first)
    run.complete(first)
    assert [item for item, _ in seen] == [3, 0]
    run.close()


# -- 5. closing ------------------------------------------------------------------------------


def test_close_cancels_the_tasks_in_flight_once() -> None:
    backend = FakeBackend()
    run = make_run(range(100), backend, batch_size=2, max_pending=3)
    run.fill()
    in_flight = list(backend.tasks)

    run.close()
    assert backend.cancelled == [in_flight]
    assert backend.closed == 1
    assert run.state is RunState.CLOSED
    assert run.tasks_in_flight == 0
    assert run.statistics().batches_in_flight == 0

    run.close()
    run.fill()
    assert backend.cancelled == [in_flight]
    assert backend.closed == 1
    assert len(backend.tasks) == 3
    assert run.state is RunState.CLOSED


def test_close_of_a_drained_run_cancels_nothing() -> None:
    backend = FakeBackend(auto=True)
    run = make_run(range(3), backend, batch_size=2)
    assert drain(run) == [0, 10, 20]
    assert backend.cancelled == []
    assert backend.closed == 1


def test_close_records_finished_results_before_cancelling_the_rest() -> None:
    store = FakeStore()
    backend = FakeBackend()
    run = make_run(range(100), backend, store=store, batch_size=2, max_pending=3)
    run.fill()
    first, second, third = backend.tasks
    backend.finish(second)
    backend.finish(third, failed_batch(2, Died("lost"), rerun=Rerun.LOST))

    run.close()
    assert store.rows == [(key(2), False, 20), (key(3), False, 30)]
    assert len(backend.tasks) == 3  # closing: the lost task is not run again
    assert backend.cancelled == [[first]]
    assert store.closed == 1
    assert backend.closed == 1
    run.close()
    assert store.closed == 1


def test_close_closes_the_backend_even_if_the_checkpoint_fails() -> None:
    store = FakeStore()
    store.close_error = OSError("disk full")
    backend = FakeBackend()
    run = make_run(range(10), backend, store=store, batch_size=2, max_pending=2)
    run.fill()
    with pytest.raises(OSError, match="disk full"):
        run.close()
    assert backend.closed == 1
    assert run.state is RunState.CLOSED


# -- 6. input that fails or stops --------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 4, 5])
def test_an_input_that_raises_keeps_the_items_read_before(k: int) -> None:
    error = OSError("input broke")

    def broken() -> Iterator[int]:
        yield from range(k)
        raise error

    backend = FakeBackend(auto=True)
    run = make_run(broken(), backend, batch_size=2, max_pending=10)
    assert run.state is RunState.FILLING
    run.fill()
    assert run.state is RunState.DRAINING
    assert run.input_error is error
    expected = [list(range(k))[i : i + 2] for i in range(0, k, 2)]
    assert backend.submitted == expected
    assert drain(run) == [x * 10 for x in range(k)]
    assert run.input_error is error
    assert run.statistics().items_read == k


def test_limit_reads_exactly_that_many_items() -> None:
    source = Counting(range(1000))
    backend = FakeBackend(auto=True)
    run = make_run(source, backend, limits=StreamLimits(limit=5), batch_size=2, max_pending=10)
    assert drain(run) == [0, 10, 20, 30, 40]
    assert source.read == 5
    assert backend.submitted == [[0, 1], [2, 3], [4]]


def test_stop_event_halts_input_and_output() -> None:
    stop = threading.Event()
    source = Counting(range(1000))
    backend = FakeBackend()
    run = make_run(source, backend, limits=StreamLimits(stop=stop), batch_size=1, max_pending=2)
    run.fill()
    assert backend.submitted == [[0], [1]]

    stop.set()
    first = backend.tasks[0]
    backend.finish(first)
    run.complete(first)
    batch = run.pop_ready()
    assert batch is not None
    assert list(run.emit(batch)) == []  # stop halts the output too
    run.fill()  # there is room again, but the input is halted
    assert run.state is RunState.DRAINING
    assert source.read == 2
    assert len(backend.tasks) == 2
    assert not run.drained  # the second task is still in flight
    run.close()
    assert backend.cancelled == [[backend.tasks[1]]]


def test_a_spent_time_budget_reads_nothing() -> None:
    source = Counting(range(10))
    backend = FakeBackend()
    run = make_run(source, backend, limits=StreamLimits(time_budget=0), batch_size=1)
    run.fill()
    assert source.read == 0
    assert backend.tasks == []
    assert run.state is RunState.DRAINING
    assert run.drained


# -- 7. states -------------------------------------------------------------------------------


def test_drained_only_once_nothing_is_in_flight_or_buffered() -> None:
    backend = FakeBackend()
    run = make_run(range(4), backend, batch_size=2, max_pending=4)
    assert run.state is RunState.FILLING
    assert run.wants_tasks
    assert not run.drained
    run.fill()  # reads [0, 1], [2, 3], then finds the end
    assert len(backend.tasks) == 2
    assert run.state is RunState.DRAINING
    assert not run.wants_tasks
    assert not run.drained  # two tasks in flight

    for task in backend.tasks:
        backend.finish(task)
        run.complete(task)
        assert not run.drained
    assert run.statistics().batches_buffered == 2
    first = run.pop_ready()
    assert first is not None
    run.take(first)
    assert not run.drained  # one batch is buffered
    second = run.pop_ready()
    assert second is not None
    run.take(second)
    assert run.drained
    run.close()
    assert run.state is RunState.CLOSED
    assert not run.drained


def test_a_full_window_keeps_filling_state_until_the_end_is_read() -> None:
    backend = FakeBackend()
    run = make_run(range(4), backend, batch_size=2, max_pending=2)
    run.fill()
    # The window filled before the read that finds the end of the input.
    assert run.state is RunState.FILLING
    for task in backend.tasks:
        backend.finish(task)
        run.complete(task)
    while (batch := run.pop_ready()) is not None:
        run.take(batch)
    assert not run.drained
    run.fill()
    assert run.state is RunState.DRAINING
    assert run.drained
    assert len(backend.tasks) == 2


LEGAL = {
    (RunState.FILLING, RunState.DRAINING),
    (RunState.FILLING, RunState.CLOSED),
    (RunState.DRAINING, RunState.CLOSED),
}


def run_in(state: RunState) -> MapRun:
    run = make_run([], FakeBackend(), batch_size=1)
    if state is not RunState.FILLING:
        run.fill()  # the input is empty: DRAINING
    if state is RunState.CLOSED:
        run.close()
    assert run.state is state
    return run


@pytest.mark.parametrize("source", list(RunState))
@pytest.mark.parametrize("target", list(RunState))
def test_only_the_listed_state_moves_are_allowed(source: RunState, target: RunState) -> None:
    run = run_in(source)
    if (source, target) in LEGAL:
        run._move(target)
        assert run.state is target
    else:
        with pytest.raises(RuntimeError, match=f"from {source.name} to {target.name}"):
            run._move(target)
        assert run.state is source


# -- 8. throttle -----------------------------------------------------------------------------


def test_a_shut_throttle_stops_fill() -> None:
    throttle = FakeThrottle(open=False)
    source = Counting(range(100))
    backend = FakeBackend()
    run = make_run(source, backend, throttle=throttle, batch_size=2, max_pending=5)
    run.fill()
    assert throttle.asked >= 1
    assert backend.tasks == []
    assert source.read == 0
    assert run.state is RunState.FILLING

    throttle.open = True
    run.fill()
    assert len(backend.tasks) == 5
    assert throttle.handles == backend.tasks
    run.close()


def test_the_throttle_hears_of_every_task_including_reruns() -> None:
    throttle = FakeThrottle()
    backend = FakeBackend(auto=True, respond=lost_when(3))
    run = make_run(
        range(4),
        backend,
        throttle=throttle,
        batch_size=4,
        max_retries=1,
        safe_exceptions=True,
    )
    drain(run)
    assert backend.submitted == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3], [3]]
    assert throttle.handles == backend.tasks
