"""``MapRun`` reading an open ``Feed`` and driving a streaming backend: no Ray.

The pool's submitted calls run this way (``_lanes``): the feed has nothing to give for a
while without ending, and a task reports its items' results in pieces, in order, while it
runs. Tested: reading what waits and no more, draining once the feed closes, output of
each piece at once, and reruns of only what a lost task had not reported.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from fakes import Died, compute, times_ten

from raypool._batching import BatchSizer
from raypool._config import MapOptions
from raypool._outcome import BatchResult, Rerun, failed_batch
from raypool._scheduler import MapRun, RunState

pytestmark = pytest.mark.timeout(10)


class ListFeed:
    """A ``Feed`` the test fills and closes."""

    error = None

    def __init__(self) -> None:
        self.queue: deque[Any] = deque()
        self.closed = False
        self.read = 0

    @property
    def ended(self) -> bool:
        return self.closed and not self.queue

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def take(self, size: int) -> list[Any]:
        taken = [self.queue.popleft() for _ in range(min(size, len(self.queue)))]
        self.read += len(taken)
        return taken


class PieceTask:
    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.pieces: deque[BatchResult] = deque()


class PieceBackend:
    """A streaming backend: the test queues each task's pieces (``PieceTask.pieces``)."""

    cpus = 2
    rerunnable = True
    streams = True

    def __init__(self) -> None:
        self.tasks: list[PieceTask] = []

    @property
    def submitted(self) -> list[list[Any]]:
        return [task.items for task in self.tasks]

    def submit(self, items: list[Any], checked: bool = False) -> PieceTask:
        task = PieceTask(list(items))
        self.tasks.append(task)
        return task

    def result(self, handle: Any, items: list[Any] | None, size: int) -> BatchResult:
        task: PieceTask = handle
        piece = task.pieces.popleft()
        assert len(piece.values) <= size
        return piece

    def wait(self, handles: Sequence[Any]) -> Any:
        return next(task for task in handles if task.pieces)

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        return self.wait(handles)

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        return []

    def notify(self, handle: Any, callback: Callable[[Any], None]) -> None:
        pass

    def cancel(self, handles: Sequence[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def make_run(feed: ListFeed, backend: PieceBackend, **options: Any) -> MapRun:
    options.setdefault("keep_order", False)
    options.setdefault("adaptive_tail_batching", False)  # sizes as the test says
    options.setdefault("safe_exceptions", True)
    return MapRun(iter(()), None, MapOptions(**options), backend, feed=feed)


def outputs(run: MapRun) -> list[Any]:
    out: list[Any] = []
    while (batch := run.pop_ready()) is not None:
        out.extend(run.emit(batch))
    return out


def test_an_open_feed_with_nothing_waiting_does_not_end_the_run() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=10)
    run.fill()
    assert run.state is RunState.FILLING
    assert backend.submitted == []
    feed.queue.extend([1, 2, 3])
    run.fill()
    assert backend.submitted == [[1, 2, 3]]  # what waited, in one task
    backend.tasks[0].pieces.append(compute(times_ten, [1, 2, 3]))
    assert run.complete(backend.tasks[0]) is False
    assert outputs(run) == [10, 20, 30]
    assert run.state is RunState.FILLING
    assert not run.drained
    feed.closed = True
    run.fill()
    assert run.drained


def test_a_closed_feed_still_runs_what_waits() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=2)
    feed.queue.extend([1, 2, 3])
    feed.closed = True
    run.fill()
    assert backend.submitted == [[1, 2], [3]]
    assert run.state is RunState.DRAINING
    assert not run.drained


def test_each_piece_is_output_as_it_comes_and_the_task_stays_in_flight() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=4)
    feed.queue.extend([1, 2, 3, 4])
    run.fill()
    (task,) = backend.tasks
    task.pieces.append(compute(times_ten, [1]))
    assert run.complete(task) is True  # more to come
    assert run.tasks_in_flight == 1
    assert outputs(run) == [10]
    task.pieces.append(compute(times_ten, [2, 3]))
    assert run.complete(task) is True
    assert outputs(run) == [20, 30]
    task.pieces.append(compute(times_ten, [4]))
    assert run.complete(task) is False
    assert run.tasks_in_flight == 0
    assert outputs(run) == [40]


def test_a_lost_task_runs_again_only_the_items_it_had_not_reported() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=4, max_retries=0)
    feed.queue.extend(["a", "b", "c", "d"])
    run.fill()
    (task,) = backend.tasks
    task.pieces.append(BatchResult(["A"], None, 0.0))
    run.complete(task)
    task.pieces.append(failed_batch(3, Died("worker died"), rerun=Rerun.LOST))
    assert run.complete(task) is False
    assert backend.submitted == [["a", "b", "c", "d"], ["b"], ["c", "d"]]
    assert outputs(run) == ["A"]  # nothing of the lost part is output as failed


def test_items_that_raised_a_retried_exception_run_again_and_the_rest_is_output() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=3, retry_exceptions=(ValueError,), max_retries=1)
    feed.queue.extend([1, 2, 3])
    run.fill()
    (task,) = backend.tasks

    def flaky(x: int) -> int:
        if x == 2:
            raise ValueError("flaky")
        return x * 10

    task.pieces.append(compute(flaky, [1, 2, 3]))
    run.complete(task)
    assert outputs(run) == [10, 30]
    assert backend.submitted[1:] == [[2]]
    backend.tasks[1].pieces.append(compute(times_ten, [2]))
    run.complete(backend.tasks[1])
    assert outputs(run) == [20]


def test_a_streaming_run_refuses_ordered_output() -> None:
    with pytest.raises(ValueError, match="unordered"):
        MapRun(iter(()), None, MapOptions(keep_order=True), PieceBackend(), feed=ListFeed())


@pytest.mark.parametrize(
    ("waiting", "expected"),
    [(400, 10), (20, 10), (5, 3), (3, 2), (1, 1)],
)
def test_the_calls_waiting_go_in_at_least_as_many_tasks_as_cpus(
    waiting: int, expected: int
) -> None:
    sizer = BatchSizer(None, cpus=2, total=None)
    sizer.observe(100, 0.5)  # 5 ms per call: 10 per task
    assert sizer.next_size(0, waiting) == expected


def test_slow_calls_after_tiny_ones_still_spread_over_the_cpus() -> None:
    sizer = BatchSizer(None, cpus=8, total=None)
    sizer.observe(10_000, 1.0)  # 0.1 ms per call so far
    assert sizer.next_size(0, 8) == 1  # eight calls on eight CPUs: one task each
    assert sizer.next_size(0, 16) == 2


def test_a_retried_exception_in_an_early_piece_runs_that_item_again() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=3, retry_exceptions=(ValueError,), max_retries=1)
    feed.queue.extend([1, 2, 3])
    run.fill()
    (task,) = backend.tasks

    def fails(x: int) -> int:
        raise ValueError("flaky")

    task.pieces.append(compute(fails, [1]))
    assert run.complete(task) is True
    assert backend.submitted[1:] == [[1]]  # alone, while its task goes on
    assert outputs(run) == []
    task.pieces.append(compute(times_ten, [2, 3]))
    assert run.complete(task) is False
    backend.tasks[1].pieces.append(compute(times_ten, [1]))
    assert run.complete(backend.tasks[1]) is False
    assert sorted(outputs(run)) == [10, 20, 30]


def test_a_piece_that_cannot_be_unpickled_runs_again_checked_alone() -> None:
    feed, backend = ListFeed(), PieceBackend()
    run = make_run(feed, backend, batch_size=3)
    feed.queue.extend([1, 2, 3])
    run.fill()
    (task,) = backend.tasks
    task.pieces.append(failed_batch(1, ValueError("cannot unpickle"), rerun=Rerun.CHECKED))
    assert run.complete(task) is True  # the other calls of the task go on
    assert backend.submitted[1:] == [[1]]
    task.pieces.append(compute(times_ten, [2, 3]))
    run.complete(task)
    assert outputs(run) == [20, 30]
