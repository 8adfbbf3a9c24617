"""What a pool call's outputs go to (sinks), and what the caller holds (result handles).

A sink receives one call's finished batches in the dispatcher thread (``_dispatch.Sink``)
and must never block there:

=================  ==============================================  ======================
sink               call                                            the caller holds
=================  ==============================================  ======================
``FutureSink``     ``submit``, ``apply``, ``apply_async``          a ``Future``, an
                                                                   ``AsyncResult``
``ListSink``       ``map``, ``starmap``, their ``_async``          ``MapResult`` / a list
``StreamSink``     ``imap``, ``imap_unordered``, ``Executor.map``  ``IMapIterator``
=================  ==============================================  ======================

``AsyncResult`` and ``IMapIterator`` keep ``multiprocessing``'s behaviour: ``get(timeout)``
raises ``multiprocessing.TimeoutError``; an ``imap`` iterator raises an item's exception at
that item and can go on after it, and its ``next()`` may be called from several threads.
Outputs are shaped by ``_outcome.output``/``outputs``, as the engine's are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures.process import _RemoteTraceback as _ExecutorRemoteTraceback
from typing import Any, Generic, TypeVar

from ._dispatch import Call, Dispatcher
from ._errors import ForkedProcessError, RemoteTraceback, ResultPicklingError
from ._outcome import ItemError, output, outputs

__all__ = [
    "STREAM_BATCHES",
    "AsyncResult",
    "FutureSink",
    "IMapIterator",
    "ListSink",
    "MapResult",
    "Outputs",
    "PoolFuture",
    "StreamSink",
    "executor_error",
    "settle",
]

logger = logging.getLogger("raypool")

R = TypeVar("R")

#: Finished batches an ``imap`` iterator holds for its reader before the call stops
#: reading input (the engine's window then bounds the rest). More smooths a bursty reader;
#: each batch held is memory.
STREAM_BATCHES = 2

#: A finished batch as a sink receives it: ``(items, values, errors)``.
Batch = tuple[list[Any] | None, list[Any], dict[int, ItemError] | None]


def settle(future: Future[Any], error: BaseException) -> None:
    """End ``future`` with ``error``; a cancellation of a future not yet running cancels it."""
    if isinstance(error, CancelledError) and future.cancel():
        # Wake wait()/as_completed() on it, as the stdlib's executors do for a future they
        # cancel (cancel() alone does not); done already if a lane's take() saw it.
        with contextlib.suppress(RuntimeError):
            future.set_running_or_notify_cancel()
        return
    # Already done or cancelled meanwhile is fine; checking first would race.
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)


class Outputs:
    """How a map-family call's outputs are shaped, and its progress bar (if any)."""

    def __init__(self, *, safe_exceptions: bool, ret_args: bool, progress: Any = None) -> None:
        self.safe = safe_exceptions
        self.ret_args = ret_args
        self.progress = progress

    @classmethod
    def with_progress(
        cls, *, safe_exceptions: bool, ret_args: bool, total: int | None, description: str
    ) -> Outputs:
        """``Outputs`` that show a progress bar on stderr (needs ``tqdm``)."""
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress=True needs the tqdm package: pip install 'raypool[progress]'"
            ) from None
        bar = tqdm(total=total, desc=description, unit="item", file=sys.stderr)
        return cls(safe_exceptions=safe_exceptions, ret_args=ret_args, progress=bar)

    def count(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


# -- sinks: where a call's outputs go ------------------------------------------------------------


def executor_error(exc: BaseException) -> BaseException:
    """An item's exception as ``concurrent.futures`` delivers it: the worker traceback as its
    ``_RemoteTraceback``, and a result that could not be pickled as the exception its
    pickling raised (``multiprocessing.Pool`` reports the ``MaybeEncodingError`` itself)."""
    if isinstance(exc, ResultPicklingError) and exc.reason is not None:
        reason, exc = exc, exc.reason
        exc.__cause__ = reason.__cause__
    if isinstance(exc.__cause__, RemoteTraceback):
        # typeshed says a traceback object; it is the formatted text
        exc.__cause__ = _ExecutorRemoteTraceback(str(exc.__cause__))  # type: ignore[arg-type]
    return exc


class _FutureBacked:
    """A sink whose outcome sets a Future: it starts unless the future was cancelled, and
    takes every batch at once (no back-pressure)."""

    stream = False
    future: Future[Any]

    def begin(self) -> bool:
        try:
            return self.future.set_running_or_notify_cancel()
        except RuntimeError:  # cancelled, and waiters told already (``settle``)
            return False

    def room(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def _let_go(self) -> Future[Any]:
        """The future, which this sink stops referencing: once the caller has the outcome,
        nothing of the call (still referenced by the dispatcher for a moment) holds it."""
        future, self.future = self.future, _SETTLED
        return future


#: What a sink holds once it has settled its future.
_SETTLED: Future[Any] = Future()
_SETTLED.cancel()


class FutureSink(_FutureBacked):
    """One call with one item (``submit``, ``apply_async``): its outcome sets a Future.

    The outcome is kept from ``put`` and set by ``end``, once the call's run is closed (its
    checkpoint row written). For ``submit`` (``executor=True``) the worker traceback is
    attached as ``concurrent.futures`` attaches it, for ``apply_async`` as
    ``multiprocessing`` does.
    """

    def __init__(self, future: Future[Any], safe_exceptions: bool, executor: bool) -> None:
        self.future = future
        self._safe = safe_exceptions
        self._executor = executor
        self._outcome: tuple[bool, Any] | None = None  # (failed, exception or value)

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        if errors and not self._safe:
            exc = errors[0][0]
            if self._executor:
                exc = executor_error(exc)
            self._outcome = True, exc
        else:
            value = output(items, values, errors, 0, safe_exceptions=True, ret_args=False)
            self._outcome = False, value
        return True

    def end(self, error: BaseException | None) -> None:
        outcome, self._outcome = self._outcome, None
        future = self._let_go()
        if outcome is None:
            if error is not None:
                settle(future, error)
            return
        # Ended by terminate() meanwhile is fine; checking first would race.
        with contextlib.suppress(InvalidStateError):
            failed, value = outcome
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)


class ListSink(_FutureBacked):
    """A map-family call collected into one list (``map``, ``starmap``, their ``_async``).

    Unless ``safe_exceptions``, the first failed item in input order fails the call - once
    every item has finished, as the stdlib's ``map`` does (CPython issue #23992).
    """

    def __init__(self, future: Future[list[Any]], outputs: Outputs, total: int | None) -> None:
        self.future = future
        self._outputs = outputs
        self._values: list[Any] = []
        self._error: BaseException | None = None
        #: Items not delivered yet (``MapResult._number_left``), when the input has a length.
        self.left = total

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        shape = self._outputs
        shape.count(len(values))
        if self.left is not None:
            self.left -= len(values)
        if self._error is not None:
            return True
        if errors and not shape.safe:
            self._error = errors[min(errors)][0]
            self._values.clear()
            return True
        self._values.extend(
            outputs(items, values, errors, safe_exceptions=True, ret_args=shape.ret_args)
        )
        return True

    def end(self, error: BaseException | None) -> None:
        self._outputs.close()
        error, self._error = self._error or error, None
        values, self._values = self._values, []
        future = self._let_go()
        if error is not None:
            settle(future, error)
            return
        with contextlib.suppress(InvalidStateError):
            future.set_result(values)


class StreamSink:
    """The buffer between a call and its ``IMapIterator``: back-pressure on the call,
    blocking (or awaiting) reads for the iterator."""

    def __init__(
        self,
        outputs: Outputs,
        stream: bool = True,
        on_demand: bool = False,
        released: threading.Event | None = None,
    ) -> None:
        #: ``False`` for ``Executor.map``: leaving the ``with`` block (or the interpreter)
        #: waits for it, as the stdlib's submitted futures complete.
        self.stream = stream
        #: Takes a batch only while a reader waits for one (``Executor.map(buffersize=)``):
        #: finished batches stay in the call's window, which then bounds all read ahead.
        self.on_demand = on_demand
        self.wanted = False  # a reader waits (on-demand only; under ``cond``)
        #: Set by ``release()``: the call's input is to stop (``buffersize``'s).
        self._released = released
        self.outputs = outputs
        self.cond = threading.Condition()
        self.batches: deque[Batch] = deque()
        self.done = False
        self.error: BaseException | None = None
        self._bounded = True
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def begin(self) -> bool:
        return True

    def room(self) -> bool:
        if not self._bounded:
            return True
        if self.on_demand:
            return self.wanted and not self.batches
        return len(self.batches) < STREAM_BATCHES

    def release(self) -> None:
        # As the stdlib's imap, which buffers everything: nothing may stall join(). A
        # buffersize map reads no more input instead (the stdlib's submits no more).
        self._bounded = False
        if self._released is not None:
            self._released.set()

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        with self.cond:
            self.batches.append((items, values, errors))
            self._notify()
        self.outputs.count(len(values))
        return True

    def end(self, error: BaseException | None) -> None:
        self.outputs.close()
        with self.cond:
            self.done = True
            self.error = error
            self._notify()

    def wait_async(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """A future set when there is something to read, or ``None`` if there is now."""
        with self.cond:
            if self.batches or self.done:
                return None
            waiter = loop.create_future()
            self._waiters.append((loop, waiter))
            return waiter

    def _notify(self) -> None:
        self.cond.notify_all()
        for loop, waiter in self._waiters:
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                loop.call_soon_threadsafe(_release, waiter)
        self._waiters.clear()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# -- what the caller holds ---------------------------------------------------------------------


class AsyncResult(Generic[R]):
    """The result of ``apply_async``/``map_async``/``starmap_async``, as in ``multiprocessing``.

    ``callback``/``error_callback`` run in the driver, in the pool's dispatcher thread,
    before ``ready()`` turns true; an exception they raise is logged, not lost silently.
    """

    def __init__(
        self,
        future: Future[R],
        callback: Callable[[R], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._future = future
        self._dispatcher = future.lender if isinstance(future, PoolFuture) else None
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._pid = os.getpid()
        future.add_done_callback(self._done)

    def _done(self, future: Future[R]) -> None:
        try:
            if future.cancelled():
                error: BaseException | None = CancelledError("the pool was terminated")
            else:
                error = future.exception()
            if error is None:
                if self._callback is not None:
                    self._callback(future.result())
            elif self._error_callback is not None:
                self._error_callback(error)
        except Exception:
            logger.exception("raypool: a callback of %r raised", self)
        finally:
            self._event.set()

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not self._future.cancelled() and self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds pass.

        Raises:
            ForkedProcessError: in a child forked from the pool's process, where nothing
                would ever deliver the result.
        """
        if self._pid != os.getpid() and not self.ready():
            raise ForkedProcessError.inherited("this result", self._pid)
        if self._dispatcher is not None:  # inside a Ray task: wait in Ray, lending the CPU
            self._dispatcher.wait_until(self._event.is_set, timeout)
        else:
            self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> R:
        """The result, or the exception the call raised, raised here.

        Raises:
            multiprocessing.TimeoutError: the result is not ready within ``timeout``.
            concurrent.futures.CancelledError: the pool was terminated first.
        """
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        return self._future.result()

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__name__} {state}>"


class PoolFuture(Future[R]):
    """The ``Future`` of a pool's call. Inside a Ray task (``Dispatcher.lends``), its
    ``result()`` and ``exception()`` wait in Ray, lending the task's CPU to the pool's
    tasks; ``concurrent.futures.wait``/``as_completed`` do not (they wait on the future
    itself)."""

    def __init__(self) -> None:
        super().__init__()
        self._dispatcher: Dispatcher | None = None

    def wait_through(self, dispatcher: Dispatcher) -> None:
        """Wait through ``dispatcher`` from now on, if it lends."""
        if dispatcher.lends:
            self._dispatcher = dispatcher

    @property
    def lender(self) -> Dispatcher | None:
        """The dispatcher waits go through, or ``None``."""
        return self._dispatcher

    def result(self, timeout: float | None = None) -> R:
        if self._dispatcher is not None:
            self._dispatcher.wait_until(self.done, timeout)
            timeout = 0  # waited already: done, or the timeout has passed
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._dispatcher is not None:
            self._dispatcher.wait_until(self.done, timeout)
            timeout = 0
        return super().exception(timeout)


class MapResult(AsyncResult[list[R]]):
    """The result of ``map_async``/``starmap_async``: a list in input order."""

    def __init__(
        self,
        future: Future[list[R]],
        callback: Callable[[list[R]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        sink: ListSink,
    ) -> None:
        super().__init__(future, callback, error_callback)
        self._sink = sink

    @property
    def _number_left(self) -> int:
        """Items not finished yet (read-only; ``0`` once ready). A compatibility attribute:
        scripts poll the stdlib's to show progress. The stdlib counts chunks; raypool's
        chunks are sized on the fly, so this counts items - chunks of one. Without a
        ``len()`` of the input, ``1`` until ready."""
        if self.ready():
            return 0
        left = self._sink.left
        return 1 if left is None else max(left, 0)


class _Reading:
    """The batch an ``IMapIterator`` hands out, and a counter of the positions handed out:
    ``next()`` on an ``itertools.count`` is atomic (one C call under the GIL: the
    free-threaded build is not covered), so each position goes to one reader without a lock,
    and a reader that holds this object never mixes two batches."""

    __slots__ = ("errors", "items", "plain", "positions", "size", "values")

    def __init__(self, batch: Batch, ret_args: bool) -> None:
        self.items, self.values, self.errors = batch
        self.size = len(self.values)
        self.plain = not self.errors and not ret_args  # the value is the output
        self.positions = itertools.count()


_NOTHING = _Reading((None, [], None), False)


class IMapIterator(Iterator[Any]):
    """The iterator of ``imap``/``imap_unordered``, as in ``multiprocessing``.

    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` when no result arrives in
    time. An item's exception is raised when iteration reaches it (unless
    ``safe_exceptions``), and iteration can go on after it. Several threads may call
    ``next()`` at once: each result goes to one of them. It is also an async iterator:
    ``async for`` waits without blocking the event loop.

    Closing it (``close()``, dropping it, or leaving the pool's ``with`` block) cancels the
    call's work still in flight - but for ``Executor.map``'s (``keeps_work``), whose work
    completes, as the stdlib's submitted futures do, when it is dropped unread.
    """

    def __init__(self, sink: StreamSink, call: Call, keeps_work: bool = False) -> None:
        self._sink = sink
        self._call = call
        self._reading = _NOTHING
        self._lock = threading.Lock()  # one reader at a time takes the next batch
        self._finished = False
        self._read = False  # a reader has asked for a result
        self._keeps_work = keeps_work
        self._pid = os.getpid()

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``timeout`` in seconds, as ``multiprocessing``'s ``next``."""
        reading = self._reading
        position = next(reading.positions)
        if position < reading.size:  # the hot path: no lock
            if reading.plain:
                values = reading.values
                value = values[position]
                values[position] = None  # handed out: the caller owns it now
                return value
            return self._shaped(reading, position)
        return self._next_batch(timeout)

    def __next__(self) -> Any:
        # ``next()`` without a timeout, repeated rather than called: a for loop over
        # tiny results spends most of its time here.
        reading = self._reading
        position = next(reading.positions)
        if position < reading.size:
            if reading.plain:
                values = reading.values
                value = values[position]
                values[position] = None
                return value
            return self._shaped(reading, position)
        return self._next_batch(None)

    def _shaped(self, reading: _Reading, position: int) -> Any:
        """The output at ``position``; the batch lets go of its value (and item) - each
        position is read once, by one reader."""
        values, items = reading.values, reading.items
        try:
            if reading.plain:
                return values[position]
            outputs = self._sink.outputs
            return output(
                items,
                values,
                reading.errors,
                position,
                safe_exceptions=outputs.safe,
                ret_args=outputs.ret_args,
            )
        finally:
            values[position] = None
            if items is not None:
                items[position] = None

    def _next_batch(self, timeout: float | None) -> Any:
        if self._pid != os.getpid():
            raise ForkedProcessError.inherited("this imap iterator", self._pid)
        self._read = True
        if timeout is not None:
            timeout = max(0.0, timeout)  # as the stdlib: a negative timeout does not wait
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise multiprocessing.TimeoutError
        sink = self._sink
        try:
            while True:
                reading = self._reading  # another reader may have taken a batch meanwhile
                position = next(reading.positions)
                if position < reading.size:
                    return self._shaped(reading, position)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                dispatcher = self._call.dispatcher
                if sink.on_demand:
                    self._want()
                if dispatcher.lends:  # inside a Ray task: wait in Ray, lending the CPU
                    dispatcher.wait_until(lambda: bool(sink.batches) or sink.done, left)
                    left = 0.0
                with sink.cond:
                    if not sink.cond.wait_for(lambda: sink.batches or sink.done, left):
                        raise multiprocessing.TimeoutError
                    self._take()
        finally:
            self._lock.release()

    def _want(self) -> None:
        """Ask an on-demand sink for the next batch (a reader is about to wait)."""
        sink = self._sink
        with sink.cond:
            if sink.batches or sink.done or sink.wanted:
                return
            sink.wanted = True
        self._call.dispatcher.wake(self._call)

    def _take(self) -> None:
        # Called with the sink's lock held and something to read.
        sink = self._sink
        if sink.batches:
            self._reading = _Reading(sink.batches.popleft(), sink.outputs.ret_args)
            sink.wanted = False
            self._call.dispatcher.wake(self._call)
            return
        self._finished = True
        self._reading = _NOTHING
        error, sink.error = sink.error, None
        if error is not None:
            raise error
        raise StopIteration

    def __aiter__(self) -> IMapIterator:
        return self

    async def __anext__(self) -> Any:
        loop = asyncio.get_running_loop()
        sink = self._sink
        self._read = True
        while True:
            reading = self._reading
            position = next(reading.positions)
            if position < reading.size:
                return self._shaped(reading, position)
            if sink.on_demand:
                self._want()
            # Only tries the lock: a thread reading at the same time may hold it while it
            # waits, and the event loop must not wait with it.
            if self._lock.acquire(blocking=False):
                try:
                    if self._reading is reading:  # nobody took the next batch meanwhile
                        with sink.cond:
                            if sink.batches or sink.done:
                                try:
                                    self._take()
                                except StopIteration:
                                    raise StopAsyncIteration from None
                                continue
                    else:
                        continue
                finally:
                    self._lock.release()
            waiter = sink.wait_async(loop)
            try:
                await (asyncio.sleep(0) if waiter is None else waiter)
            except asyncio.CancelledError:
                self.close()
                raise

    def close(self) -> None:
        """Stop the call: its work in flight is cancelled."""
        if not self._finished:
            self._finished = True
            self._call.dispatcher.cancel(self._call)

    async def aclose(self) -> None:
        """``close()`` for ``async for`` users."""
        self.close()

    def __del__(self) -> None:
        # No module globals here: at the interpreter's exit they may be gone already.
        try:
            if self._keeps_work and not self._read:  # ex.map(save, files), never read
                self._sink.release()
                self._call.dispatcher.wake(self._call)
            else:
                self.close()
        except Exception:
            pass
