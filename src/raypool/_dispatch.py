"""The pool's scheduler thread: runs many map calls at once, woken by Ray, never polling.

An engine iterator (``RayMap.imap``) makes progress while its consumer pulls. A pool must also
make progress on work nobody is waiting for yet (``apply_async``, ``submit``, ``map_async``),
and cap how many tasks of all its calls run at once. ``Dispatcher`` does both with one
daemon thread per pool, driving each call's ``MapRun`` - the engine's one scheduler::

    caller threads --start / cancel / wake--+
                                            v
    Ray (ObjectRef.future callbacks) --done--> events --> dispatcher thread:
                                                            complete the finished task,
                                                            hand ready batches to the Sink,
                                                            start tasks while the cap allows,
                                                            close the calls that ended

* A call's ``MapRun`` is opened in the caller's thread (so a bad argument or an
  unserializable function raises there, before anything runs), with its ``Call`` as the
  run's ``Throttle``; once ``start``ed it is touched only by the dispatcher thread.
* ``Sink`` is what receives a call's outputs: a future, a list, or a stream with
  back-pressure. Its methods run in the dispatcher thread and must not block.
* A streaming task (submitted calls) wakes the thread once per piece of results; it
  stays in flight, and is watched again, until its last piece.
* Tasks in flight across all calls never exceed ``max_in_flight``; calls waiting for room
  are served first come, first served. A call that holds as much as its own window allows
  (a stream nobody reads) waits without holding the others up.
* Inside a Ray task (a pool opened by a function a pool runs), a thread that waits for
  the pool's results must wait in Ray: Ray lends a task's CPU to other tasks only while
  it waits in ``ray.get``/``ray.wait``, and on a small cluster the pool's own tasks need
  that CPU. Such a dispatcher is given ``lend`` (``_runtime.lend_cpu``), and
  ``wait_until`` waits through it on the pool's tasks in flight.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any, Protocol

from . import _lifecycle
from ._outcome import ItemError
from ._scheduler import MapRun, Throttle

__all__ = ["Call", "CallState", "Dispatcher", "Sink"]

logger = logging.getLogger("raypool")


class Sink(Protocol):
    """Receives the outputs of one call, in the dispatcher thread."""

    #: The caller reads the outputs as a stream (``imap``): leaving the pool's ``with``
    #: block cancels such calls (``cancel_streams``) rather than waiting for them.
    stream: bool

    def begin(self) -> bool:
        """The call is about to start its first task. ``False``: it was cancelled."""

    def room(self) -> bool:
        """Whether ``put`` may be called now (``False`` applies back-pressure)."""

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        """One finished batch, in the call's output order. ``False``: stop the call."""

    def release(self) -> None:
        """No more back-pressure: the pool is closing, and nothing may stall its join."""

    def end(self, error: BaseException | None) -> None:
        """The call is over: after its last ``put``, or because of ``error``."""


class CallState(enum.Enum):
    """Where a ``Call`` is in its life."""

    #: Opened, handed to the dispatcher (or about to be); its sink has not begun.
    NEW = "new"
    #: Its sink has begun: its run's tasks may start.
    RUNNING = "running"
    #: Delivered, failed or cancelled: its run is closed and its sink has ended.
    ENDED = "ended"


class Call:
    """One call the dispatcher runs: a ``MapRun`` and where its outputs go.

    The call is its run's ``Throttle``: the run asks it whether one more task may start
    (the dispatcher's cap) and tells it of each task started.
    """

    __slots__ = ("dispatcher", "queued", "run", "sink", "state")

    def __init__(
        self, dispatcher: Dispatcher, sink: Sink, open_run: Callable[[Throttle], MapRun]
    ) -> None:
        self.dispatcher = dispatcher
        self.sink = sink
        self.state = CallState.NEW
        self.queued = False  # in the dispatcher's queue of calls wanting to start tasks
        self.run = open_run(self)

    def admit(self) -> bool:
        return self.dispatcher.admit()

    def submitted(self, handle: Any) -> None:
        self.dispatcher.task_started(self, handle)


#: How long one wait through ``lend`` lasts at most: a result that arrives without a task
#: of this pool finishing (a call answered by its checkpoint) is seen this late.
LEND_SECONDS = 0.05
#: How often ``wait_until`` looks again while no task of the pool is in flight.
IDLE_POLL_SECONDS = 0.005
#: How often ``finish`` checks, while it waits, that its work can still end.
FINISH_CHECK_SECONDS = 0.5

# Events for the dispatcher thread.
_START = "start"
_DONE = "done"
_WAKE = "wake"
_CANCEL = "cancel"
_CANCEL_ALL = "cancel-all"
_CANCEL_STREAMS = "cancel-streams"
_RELEASE = "release"
_SYNC = "sync"
_STOP = "stop"


class Dispatcher:
    """Runs calls in a background thread, at most ``max_in_flight`` tasks at once.

    Args:
        max_in_flight: the most tasks of all calls in flight at once, or ``None``.
        name: the thread's name.
    """

    def __init__(
        self,
        max_in_flight: int | None,
        name: str = "raypool-dispatcher",
        lend: Callable[[list[Any], float], object] | None = None,
        finishes_at_exit: bool = False,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._limit = max_in_flight
        self._lend = lend
        self._alive = alive
        self.finishes_at_exit = finishes_at_exit  # a ProcessPoolExecutor's (see ``_running``)
        self._handles: dict[Any, None] = {}  # tasks in flight, kept only to ``lend``
        self._name = name
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._waiting: deque[Call] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0  # calls started and not ended
        self._calls: dict[Call, None] = {}  # the same calls, in the dispatcher thread
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- any thread ---------------------------------------------------------------------------

    def call(self, sink: Sink, open_run: Callable[[Throttle], MapRun]) -> Call:
        """A call whose outputs go to ``sink``, its run opened now, in this thread, by
        ``open_run(throttle)``; it runs once ``start``ed."""
        return Call(self, sink, open_run)

    def start(self, call: Call) -> None:
        """Hand ``call`` to the dispatcher thread.

        Raises:
            RuntimeError: the dispatcher was closed (by the interpreter's exit: a pool's
                own ``close()`` refuses new calls before).
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
                _running.add(self)
        self._events.put((_START, call))

    def wake(self, call: Call) -> None:
        """``call``'s sink has room again."""
        self._events.put((_WAKE, call))

    def cancel(self, call: Call, error: BaseException | None = None) -> None:
        """End ``call`` now, its tasks in flight cancelled; its sink ends with ``error``."""
        self._events.put((_CANCEL, call, error))

    def cancel_all(self, error: BaseException, *, kill: bool = False) -> None:
        """End every call, as ``cancel`` does; with ``kill``, the processes running their
        tasks end at once."""
        self._events.put((_CANCEL_ALL, error, kill))

    def cancel_streams(self, error: BaseException) -> None:
        """End every call whose sink is a stream, as ``cancel`` does."""
        self._events.put((_CANCEL_STREAMS, error))

    def close(self) -> None:
        """No more calls will start: sinks take everything from now on, and the thread
        ends once the active calls have ended."""
        with self._lock:
            self._closing = True
            self._events.put((_RELEASE,))
            if self._active == 0:
                self._stop_locked()

    def finish(self) -> None:
        """Take no more calls and wait for the active ones, but for streams (cancelled:
        nobody will read them) - what a ``ProcessPoolExecutor`` does at exit. Stops
        waiting once ``alive()`` is false (the user shut Ray down: nothing would end)."""
        self.cancel_streams(CancelledError("the interpreter is exiting"))
        self.close()
        while not self.wait_idle(FINISH_CHECK_SECONDS) and self._alive():
            pass

    def sync(self) -> None:
        """Return once the dispatcher thread has handled the events posted before this call
        and started the tasks there is room for. At once in the dispatcher thread itself,
        with no thread, or past the interpreter's exit hook (a thread may never run then)."""
        with self._lock:  # a _STOP, posted under it too, comes after the _SYNC
            thread = self._thread
            if thread is None or thread is threading.current_thread() or _lifecycle.exited():
                return
            handled = threading.Event()
            self._events.put((_SYNC, handled))
        while not handled.wait(FINISH_CHECK_SECONDS):
            if not thread.is_alive():  # ended by an error of its own: nothing will come
                return

    def is_current_thread(self) -> bool:
        return self._thread is threading.current_thread()

    @property
    def active(self) -> int:
        """Calls started and not ended."""
        return self._active

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no call is active; ``False`` if ``timeout`` passed first."""
        if self._lend is not None:
            return self.wait_until(lambda: self._active == 0, timeout)
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    @property
    def lends(self) -> bool:
        """Whether waits for this dispatcher's results go through ``wait_until``."""
        return self._lend is not None

    def wait_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``done()``; ``False`` if ``timeout`` passed first. Waits through
        ``lend`` on the tasks in flight (with no ``lend``, polls: use it only when
        ``lends``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            left = LEND_SECONDS if deadline is None else deadline - now
            if left <= 0:
                return False
            handles = self._in_flight_now()
            if handles and self._lend is not None:
                self._lend(handles, min(left, LEND_SECONDS))
                if time.monotonic() - now >= IDLE_POLL_SECONDS:
                    continue
            # Nothing runs yet, or a task has finished and the dispatcher has not taken it
            # in (``lend`` returns at once): give it a moment rather than spin.
            time.sleep(min(max(left, 0.0), IDLE_POLL_SECONDS))
        return True

    def _in_flight_now(self) -> list[Any]:
        while True:
            try:
                return list(self._handles)  # the dispatcher thread may change it meanwhile
            except RuntimeError:
                continue

    def stop(self) -> None:
        """End the thread once it has handled the events before this one (idempotent)."""
        with self._lock:
            thread = self._stop_locked()
        current = threading.current_thread()
        # Past the exit hook, a thread may never end: a pool dropped then must not hang.
        if thread is not None and thread is not current and not _lifecycle.exited():
            thread.join()

    def _stop_locked(self) -> threading.Thread | None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._events.put((_STOP,))
        return thread

    # -- the dispatcher thread ----------------------------------------------------------------

    def _loop(self) -> None:
        while self._handle_burst():
            pass

    def _handle_burst(self) -> bool:
        """Handle the next burst of events as one: one pass of filling after them all.
        ``False`` once stopped. A function of its own so that no event - and no call, sink or
        result it references - stays alive in the loop's frame while the thread waits."""
        events = [self._events.get()]
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        synced: list[threading.Event] = []
        try:
            for event in events:
                if event[0] is _STOP:
                    self._end_all(None)
                    return False
                if event[0] is _SYNC:
                    synced.append(event[1])
                else:
                    self._handle(event)
            self._fill()
            return True
        finally:
            for handled in synced:
                handled.set()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind is _CANCEL_ALL:
            self._end_all(event[1], kill=event[2])
            return
        if kind is _CANCEL_STREAMS:
            for stream in [call for call in self._calls if call.sink.stream]:
                self._end(stream, event[1])
            return
        if kind is _RELEASE:
            for released in list(self._calls):
                released.sink.release()
                self._handle((_WAKE, released))
            return
        call: Call = event[1]
        if call.state is CallState.ENDED:
            if kind is _DONE:
                self._handles.pop(event[2], None)
            return
        try:
            if kind is _START:
                self._calls[call] = None
                self._enqueue(call)
            elif kind is _DONE:
                handle = event[2]
                if not call.run.owns(handle):
                    self._handles.pop(handle, None)
                    return  # cancelled meanwhile
                self._in_flight -= 1
                try:
                    more = call.run.complete(handle)
                except BaseException:
                    if call.run.owns(handle):  # still the run's: ending the call counts it
                        self._in_flight += 1
                    raise
                if more:  # a piece of a streaming task: more to come
                    self._in_flight += 1
                    self._watch(call, handle)
                else:
                    self._handles.pop(handle, None)
                self._deliver(call)
                self._enqueue(call)
            elif kind is _WAKE:
                self._deliver(call)
                self._enqueue(call)
            elif kind is _CANCEL:
                self._end(call, event[2])
        except BaseException as exc:  # the thread must survive any call
            self._end(call, exc)

    def _enqueue(self, call: Call) -> None:
        if call.state is not CallState.ENDED and not call.queued and call.run.wants_tasks:
            call.queued = True
            if call.run.reruns_waiting:  # items of a lost task go before new work
                self._waiting.appendleft(call)
            else:
                self._waiting.append(call)

    def _fill(self) -> None:
        waiting = self._waiting
        while waiting and (self._limit is None or self._in_flight < self._limit):
            call = waiting[0]
            if call.state is CallState.ENDED:
                waiting.popleft()
                continue
            try:
                if call.state is CallState.NEW:
                    call.state = CallState.RUNNING
                    if not call.sink.begin():
                        waiting.popleft()
                        call.queued = False
                        self._end(call, None)
                        continue
                # Batches answered from the checkpoint finish without a task: deliver
                # them, and read on while that frees room.
                while True:
                    call.run.fill()
                    delivered = self._deliver(call)
                    ended = call.state is CallState.ENDED
                    if not delivered or ended or not call.run.wants_tasks:
                        break
            except BaseException as exc:
                self._end(call, exc)
            capped = self._limit is not None and self._in_flight >= self._limit
            if capped and call.state is not CallState.ENDED:
                break  # the cap stopped it: it stays first in line
            waiting.popleft()
            call.queued = False

    def admit(self) -> bool:
        """Whether one more task may start now (dispatcher thread)."""
        return self._limit is None or self._in_flight < self._limit

    def task_started(self, call: Call, handle: Any) -> None:
        """``call``'s run started the task ``handle`` (dispatcher thread)."""
        self._in_flight += 1
        if self._lend is not None:
            self._handles[handle] = None
        self._watch(call, handle)

    def _watch(self, call: Call, handle: Any) -> None:
        call.run.when_done(handle, lambda done: self._events.put((_DONE, call, done)))

    def _deliver(self, call: Call) -> int:
        """Hand ``call``'s finished batches to its sink while it has room; end the call
        when all is delivered. Returns how many batches were handed over."""
        run, sink = call.run, call.sink
        delivered = 0
        while sink.room():
            batch = run.pop_ready()
            if batch is None:
                break
            delivered += 1
            if not sink.put(*run.take(batch)):
                self._end(call, None, ended_by_sink=True)
                return delivered
        if run.drained:
            self._end(call, run.input_error)
        return delivered

    def _end(
        self,
        call: Call,
        error: BaseException | None,
        *,
        ended_by_sink: bool = False,
        kill: bool = False,
    ) -> None:
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        self._calls.pop(call, None)
        self._in_flight -= call.run.tasks_in_flight
        try:
            call.run.close(kill=kill)
        except BaseException as exc:  # e.g. the checkpoint could not be written
            error = error or exc
        if not ended_by_sink:
            try:
                call.sink.end(error)
            except BaseException:
                logger.exception("raypool: a result handler failed")
        with self._idle:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()
                if self._closing:
                    self._stop_locked()

    def _end_all(self, error: BaseException | None, *, kill: bool = False) -> None:
        self._waiting.clear()
        self._handles.clear()
        for call in list(self._calls):
            self._end(call, error, kill=kill)


#: Dispatchers with a thread (it keeps its dispatcher alive while it runs, also when the
#: pool was dropped). At exit, while Ray is still up: those that finish at exit complete
#: their calls, then every one's calls are cancelled and its thread stopped.
_running: _lifecycle.LiveSet[Dispatcher] = _lifecycle.LiveSet(
    {
        _lifecycle.Phase.FINISH_EXECUTORS: lambda dispatcher: (
            dispatcher.finish() if dispatcher.finishes_at_exit else None
        ),
        _lifecycle.Phase.CANCEL_CALLS: lambda dispatcher: dispatcher.cancel_all(
            CancelledError("the interpreter is exiting")
        ),
        _lifecycle.Phase.STOP_THREADS: lambda dispatcher: dispatcher.stop(),
    }
)
