"""Scripted stand-ins for what ``MapRun`` and ``Dispatcher`` drive: no Ray anywhere.

* ``FakeBackend``: a ``_scheduler.Backend`` whose tasks finish when the test says, with the
  result the test says. It records every submission (items, sizes, order), the callbacks
  ``notify`` registered (the test fires them, as Ray's callback threads would), the handles
  cancelled and how often it was closed, and the most tasks the driver ever had in flight
  (``max_live``: submitted, and neither taken by ``result`` nor cancelled - counted where
  the driver calls the backend, so it is exact whatever the test thread does meanwhile).
  Thread-safe: the dispatcher thread submits while the test finishes.
* ``FakeStore``: a ``_store.CheckpointStore`` in a dict, recording lookups and rows.
* ``FakeThrottle``: a ``_scheduler.Throttle`` the test opens and shuts.
* ``RecordingSink``: a ``_dispatch.Sink`` with scripted ``begin``/``room``.
* ``drain``: the loop of ``_engine._iterate``, bounded, for runs on an auto-finishing backend.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from raypool._outcome import BatchResult, ItemError, Rerun, failed_batch
from raypool._scheduler import MapRun
from raypool._store import Recorded, Row

__all__ = [
    "Counting",
    "Died",
    "FakeBackend",
    "FakeStore",
    "FakeTask",
    "FakeThrottle",
    "RecordingSink",
    "TIMEOUT",
    "compute",
    "drain",
    "lost_when",
    "times_ten",
]

#: How long any wait of a test on another thread may take before the test fails.
TIMEOUT = 5.0


def times_ten(x: Any) -> Any:
    return x * 10


def compute(fn: Callable[[Any], Any], items: Sequence[Any]) -> BatchResult:
    """What a worker would return for ``items``: ``fn`` of each, its exceptions per item."""
    values: list[Any] = []
    errors: dict[int, ItemError] = {}
    for position, item in enumerate(items):
        try:
            values.append(fn(item))
        except Exception as exc:
            values.append(None)
            errors[position] = (exc, "".join(traceback.format_exception(exc)))
    return BatchResult(values, errors or None, 0.0)


class Died(Exception):
    """What a task whose worker died fails with, in these fakes."""


def lost_when(
    killer: Any, fn: Callable[[Any], Any] = times_ten
) -> Callable[[list[Any]], BatchResult]:
    """A ``respond`` for ``FakeBackend``: a task holding ``killer`` loses its worker (every
    time); the others compute ``fn``."""

    def respond(items: list[Any]) -> BatchResult:
        if killer in items:
            return failed_batch(len(items), Died(f"worker died running {items}"), rerun=Rerun.LOST)
        return compute(fn, items)

    return respond


class FakeTask:
    """A handle of ``FakeBackend``: the items sent, and (once finished) the result."""

    __slots__ = ("callback", "cancelled", "checked", "done", "id", "items", "result", "taken")

    def __init__(self, task_id: int, items: list[Any], checked: bool = False) -> None:
        self.id = task_id
        self.items = items
        self.checked = checked  # submitted as a rerun, each value checked
        self.result: BatchResult | None = None
        self.done = False
        self.taken = False  # result() was called: the driver no longer has it in flight
        self.cancelled = False
        self.callback: Callable[[Any], None] | None = None

    def __repr__(self) -> str:
        return f"<task {self.id} {self.items!r}>"


class FakeBackend:
    """A scripted backend.

    Args:
        fn: what a normal result computes per item (``compute``).
        cpus: ``Backend.cpus``.
        rerunnable: ``Backend.rerunnable``.
        respond: ``respond(items)`` is the result of a task the backend finishes itself
            (``auto``); ``None``: ``compute(fn, items)``.
        auto: when ``wait`` finds none of its handles finished, finish the oldest with
            ``respond`` (else ``wait`` fails the test: it would block forever).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any] = times_ten,
        *,
        cpus: int = 2,
        rerunnable: bool = True,
        respond: Callable[[list[Any]], BatchResult] | None = None,
        auto: bool = False,
    ) -> None:
        self.cpus = cpus
        self.rerunnable = rerunnable
        self.streams = False
        self.fn = fn
        self.respond = respond
        self.auto = auto
        self.tasks: list[FakeTask] = []
        self.cancelled: list[list[FakeTask]] = []
        self.closed = 0
        self.live = 0  # tasks submitted, neither taken by result() nor cancelled
        self.max_live = 0
        self.submit_error: BaseException | None = None  # raised by the next submit()
        self._finished: list[FakeTask] = []  # in the order they finished
        self._cond = threading.Condition()

    # -- what the test sees --------------------------------------------------------------------

    @property
    def submitted(self) -> list[list[Any]]:
        """The items of each task, in submission order."""
        with self._cond:
            return [task.items for task in self.tasks]

    def result_of(self, items: list[Any]) -> BatchResult:
        return self.respond(items) if self.respond is not None else compute(self.fn, items)

    def finish(self, task: FakeTask, result: BatchResult | None = None) -> None:
        """``task`` is done, with ``result`` (default: ``respond``/``compute`` of its items)."""
        with self._cond:
            assert not task.done, f"{task} finished twice"
            task.result = self.result_of(task.items) if result is None else result
            task.done = True
            self._finished.append(task)
            self._cond.notify_all()

    def fire(self, task: FakeTask) -> None:
        """Run the callback ``notify`` registered for ``task``, in this thread."""
        with self._cond:
            callback = task.callback
        assert callback is not None, f"nobody asked to be notified of {task}"
        callback(task)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Block until ``predicate()`` (checked under the backend's lock) holds."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for the fake backend: {self.tasks}")

    def next_notified(self, timeout: float = TIMEOUT) -> FakeTask:
        """The oldest task that asked to be notified and is neither finished nor cancelled,
        once there is one."""
        found: list[FakeTask] = []

        def pending() -> bool:
            found[:] = [t for t in self.tasks if t.callback and not t.done and not t.cancelled]
            return bool(found)

        self.wait_until(pending, timeout)
        return found[0]

    def serve(self, count: int, timeout: float = TIMEOUT) -> list[FakeTask]:
        """Finish and fire ``count`` tasks, oldest first, each once it was notified; after
        each, wait until the driver took its result in (or cancelled it). In lock-step so,
        the driver reacts to one completion at a time, as to Ray's slowest pace."""
        served = []
        for _ in range(count):
            task = self.next_notified(timeout)
            self.finish(task)
            self.fire(task)
            self.wait_until(lambda task=task: task.taken or task.cancelled, timeout)
            served.append(task)
        return served

    # -- Backend -------------------------------------------------------------------------------

    def submit(self, items: list[Any], checked: bool = False) -> FakeTask:
        with self._cond:
            if self.submit_error is not None:
                error, self.submit_error = self.submit_error, None
                raise error
            task = FakeTask(len(self.tasks), list(items), checked)
            self.tasks.append(task)
            self.live += 1
            self.max_live = max(self.max_live, self.live)
            self._cond.notify_all()
            return task

    def wait(self, handles: Sequence[Any]) -> Any:
        assert handles, "wait() with nothing in flight"
        with self._cond:
            for task in self._finished:
                if task in handles:
                    return task
        if not self.auto:
            raise AssertionError(f"wait() would block forever: none of {handles} will finish")
        task = handles[0]
        self.finish(task)
        return task

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        return self.wait(handles)

    def result(self, handle: Any, items: list[Any] | None, size: int) -> BatchResult:
        task: FakeTask = handle
        assert task.done, f"result() of {task} before it finished"
        assert task.result is not None
        assert size == len(task.items), f"result({task}, size={size})"
        with self._cond:
            if not task.taken and not task.cancelled:
                self.live -= 1
            task.taken = True
            self._cond.notify_all()
        return task.result

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        with self._cond:
            return [task for task in handles if task.done]

    def notify(self, handle: Any, callback: Callable[[Any], None]) -> None:
        with self._cond:
            task: FakeTask = handle
            assert task.callback is None, f"notify() twice for {task}"
            task.callback = callback
            self._cond.notify_all()

    def cancel(self, handles: Sequence[Any], *, kill: bool = False) -> None:
        with self._cond:
            self.cancelled.append(list(handles))
            for task in handles:
                if not task.taken and not task.cancelled:
                    self.live -= 1
                task.cancelled = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed += 1
            self._cond.notify_all()


class FakeStore:
    """A checkpoint in a dict: ``recorded`` is what an earlier run left."""

    def __init__(self, recorded: dict[bytes, Recorded] | None = None) -> None:
        self.data = dict(recorded or {})
        self.empty = not self.data
        self.lookups: list[list[bytes]] = []
        self.rows: list[Row] = []
        self.closed = 0
        self.close_error: BaseException | None = None

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Recorded]:
        self.lookups.append(list(keys))
        return {key: self.data[key] for key in keys if key in self.data}

    def record(self, rows: list[Row]) -> None:
        self.rows.extend(rows)

    def close(self) -> None:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error


class FakeThrottle:
    """Admits tasks while ``open``; records each task started."""

    def __init__(self, open: bool = True) -> None:
        self.open = open
        self.asked = 0
        self.handles: list[Any] = []

    def admit(self) -> bool:
        self.asked += 1
        return self.open

    def submitted(self, handle: Any) -> None:
        self.handles.append(handle)


class RecordingSink:
    """A ``Sink`` that keeps what it is given; ``room()`` is ``room`` until released."""

    def __init__(self, *, begin: bool = True, room: bool = True, stream: bool = False) -> None:
        self.stream = stream
        self._begin = begin
        self._room = room
        self.released = False
        self.begun = 0
        self.batches: list[tuple[list[Any] | None, list[Any], dict[int, ItemError] | None]] = []
        self.ends: list[BaseException | None] = []
        self.ended = threading.Event()

    def begin(self) -> bool:
        self.begun += 1
        return self._begin

    def room(self) -> bool:
        return self._room or self.released

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        self.batches.append((items, values, errors))
        return True

    def release(self) -> None:
        self.released = True

    def end(self, error: BaseException | None) -> None:
        self.ends.append(error)
        self.ended.set()

    def values(self) -> list[Any]:
        return [value for _, values, _ in self.batches for value in values]

    def wait_ended(self, timeout: float = TIMEOUT) -> BaseException | None:
        """The error the sink ended with, once it has."""
        assert self.ended.wait(timeout), "the sink never ended"
        assert len(self.ends) == 1, f"end() called {len(self.ends)} times"
        return self.ends[0]


class Counting(Iterator[Any]):
    """An iterator over ``items`` that counts the items read from it."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self.read = 0

    def __next__(self) -> Any:
        item = next(self._items)
        self.read += 1
        return item


def drain(run: MapRun, max_steps: int = 10_000) -> list[Any]:
    """The outputs of ``run`` as ``_engine._iterate`` yields them (an item's exception is
    raised unless ``safe_exceptions``), then ``run`` closed. The input's own exception is
    left in ``run.input_error``, not raised. Fails instead of looping forever."""
    out: list[Any] = []
    try:
        for _ in range(max_steps):
            run.fill()
            batch = run.pop_ready()
            if batch is not None:
                out.extend(run.emit(batch))
                continue
            if run.drained:
                return out
            run.wait()
        raise AssertionError(f"the run did not drain in {max_steps} steps")
    finally:
        run.close()
