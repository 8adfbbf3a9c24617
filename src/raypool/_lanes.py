"""Submitted calls - ``submit``, ``apply_async``, ``apply`` - packed into shared tasks.

A task per call costs Ray's fixed price per task on every call. Instead each call joins
the ``Lane`` of its pool that matches what goes into a task (Ray options, timeout,
retries), and the lane's one ``MapRun`` - the engine's scheduler, reading the lane as an
open ``Feed`` - packs the calls that wait into streaming Ray tasks (sent to kept actors
in a pool with ``actors=True``: ``_runners``)::

    submit(fn, *args) ──> Functions.ship(fn): serialized once per pool
                     ──> Lane.add: a CallItem and its FutureSink wait in the lane
                              │  Future.cancel() succeeds until the next step
    dispatcher thread ──> Lane.take: the run packs what waits into tasks (the future
                              │  turns RUNNING) - as many calls as the measured durations
                              │  fit in one task, spread over as many tasks as the pool
                              │  runs at once
                              v
    Ray worker: the calls in order; results sent back in pieces as they finish
                              │
    dispatcher thread ──> Lane.put: each call's FutureSink settles its future

A call whose worker dies is run again (the scheduler splits the calls that had not
reported until the one at fault runs alone), so a crash fails only the call that caused
it. Closing the pool closes its lanes: calls already added still run, and a lane's run
ends once they have.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from . import _lifecycle
from ._backend import CallBackend, Functions
from ._config import MapOptions
from ._dispatch import Call, CallState, Dispatcher
from ._engine import RunSpec, open_calls
from ._outcome import ItemError
from ._results import FutureSink
from ._scheduler import MapRun, Throttle
from ._serialization import check_items
from ._worker import CallItem

__all__ = ["Lane", "Lanes"]


class Lane:
    """The submitted calls of one pool that can share tasks: the ``Feed`` of their run
    (calls waiting to be packed) and the ``Sink`` of its outputs (calls packed, whose
    futures are settled as their results arrive)."""

    #: Leaving the pool's ``with`` block waits for the calls: they are not a stream.
    stream = False
    #: A lane's input never fails (``Feed``).
    error: BaseException | None = None

    def __init__(
        self, dispatcher: Dispatcher, spec: RunSpec, options: MapOptions, cpus: int
    ) -> None:
        self._lock = threading.Lock()
        self._waiting: deque[tuple[CallItem, FutureSink]] = deque()
        self._packed: dict[int, FutureSink] = {}  # id(item) -> its sink; dispatcher thread
        self._closed = False
        self.read = 0
        self.backend: CallBackend | None = None
        self.call = dispatcher.call(
            self, lambda throttle: self._open(spec, options, throttle, cpus)
        )

    def _open(self, spec: RunSpec, options: MapOptions, throttle: Throttle, cpus: int) -> MapRun:
        run, self.backend = open_calls(spec, options, self, throttle, cpus)
        return run

    # -- caller threads -----------------------------------------------------------------------

    def add(self, item: CallItem, sink: FutureSink, proxies: bool) -> bool:
        """Queue a call; ``False`` if the lane is closed (the pool is closing)."""
        with self._lock:
            if self._closed:
                return False
            if proxies and self.backend is not None:
                self.backend.ships_proxies = True
            self._waiting.append((item, sink))
            first = len(self._waiting) == 1
        if first:  # the run stopped reading when nothing waited: tell it
            self.call.dispatcher.wake(self.call)
        return True

    # -- the run's Feed (dispatcher thread) ---------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._closed and not self._waiting

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self, size: int) -> list[Any]:
        items: list[Any] = []
        with self._lock:
            waiting = self._waiting
            while waiting and len(items) < size:
                item, sink = waiting.popleft()
                if sink.begin():  # False: cancelled while it waited
                    self._packed[id(item)] = sink
                    items.append(item)
        self.read += len(items)
        return items

    # -- the call's Sink (dispatcher thread) --------------------------------------------------

    def begin(self) -> bool:
        return True

    def room(self) -> bool:
        return True

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        assert items is not None  # a streaming run keeps its items
        for position, item in enumerate(items):
            sink = self._packed.pop(id(item), None)
            if sink is None:
                continue
            error = errors.get(position) if errors else None
            sink.put([item], [values[position]], None if error is None else {0: error})
            sink.end(None)
        return True

    def release(self) -> None:
        """The pool is closing: take no more calls; the lane's run ends once those added
        have run."""
        with self._lock:
            self._closed = True

    def end(self, error: BaseException | None) -> None:
        with self._lock:
            self._closed = True
            left = [sink for _, sink in self._waiting]
            self._waiting.clear()
        left += self._packed.values()
        self._packed.clear()
        error = error or CancelledError("the pool was shut down")
        for sink in left:
            sink.end(error)


class Lanes:
    """A pool's lanes, one per set of options that go into a task, and the functions its
    calls were submitted with (``Functions``: each serialized once)."""

    def __init__(self) -> None:
        self.functions = Functions()
        #: (what goes into a task, its lane), compared with ``==``: Ray's scheduling
        #: strategies compare by identity, and are held here, so never confused.
        self._lanes: list[tuple[tuple[Any, ...], Lane]] = []

    def prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[CallItem, bool]:
        """The call as a task carries it, and whether its arguments hold ``Manager()``
        proxies. Raises what serializing ``fn`` raises, and ``NotShareableError`` for a
        ``multiprocessing`` queue, lock... among the arguments - at the call."""
        digest, box = self.functions.ship(fn)
        proxies = check_items([(args, kwargs)], "an argument of the call")
        return CallItem(digest, box, args, kwargs), proxies

    def add(
        self,
        dispatcher: Dispatcher,
        spec: RunSpec,
        options: MapOptions,
        prepared: tuple[CallItem, bool],
        sink: FutureSink,
        cpus: int,
    ) -> Call:
        """Queue the call in its lane, opening the lane if needed (its tasks spread over
        ``cpus``, the pool's size). The caller holds the pool's lock, and has checked that
        the pool runs.

        Raises:
            RuntimeError: the interpreter's exit closed the pool's lanes meanwhile.
        """
        key = (
            spec.worker.remote_options,
            options.timeout,
            options.max_retries,
            options.retry_exceptions,
            options.batch_size,
        )
        item, proxies = prepared
        for _ in range(2):
            lane = self._lane(key, dispatcher, spec, options, cpus)
            if lane.add(item, sink, proxies):
                break
            if _lifecycle.exiting():  # released by the exit hook
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            # else its run ended (an error of its own) meanwhile: open another
        else:
            raise RuntimeError("submitted calls cannot be queued: their lane keeps ending")
        return lane.call

    def _lane(
        self,
        key: tuple[Any, ...],
        dispatcher: Dispatcher,
        spec: RunSpec,
        options: MapOptions,
        cpus: int,
    ) -> Lane:
        """The running lane of ``key``, or a new one (whose run ``dispatcher`` starts)."""
        lanes = self._lanes
        for index, (known, lane) in enumerate(lanes):
            if known == key:
                if lane.call.state is not CallState.ENDED:
                    return lane
                del lanes[index]  # ended by an error of its own
                break
        lane = Lane(dispatcher, spec, options, cpus)
        try:
            dispatcher.start(lane.call)
        except BaseException:  # closed by the interpreter's exit meanwhile
            lane.call.run.close()
            raise
        lanes.append((key, lane))
        return lane
