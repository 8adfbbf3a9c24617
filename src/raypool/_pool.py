"""RayPool: ``multiprocessing.Pool`` and ``concurrent.futures.Executor`` on the RayMap engine.

Every method turns into one engine call - a ``RayMap`` over the method's function, whose
``_MapRun`` the pool's ``Dispatcher`` drives - and a sink that delivers its outputs the way
the stdlib method does:

=====================================================  ============  ======================
method                                                 unpack        outputs go to
=====================================================  ============  ======================
``submit``, ``apply``, ``apply_async``                 ``"call"``    a ``Future``
``map``, ``map_async``, ``starmap``, ``starmap_async`` none / args   a list in a ``Future``
``imap``, ``imap_unordered``                           ``"none"``    ``IMapIterator``
=====================================================  ============  ======================

The stdlib names are translated here and only here (``processes`` caps tasks in flight,
``chunksize`` is ``batch_size``, ``maxtasksperchild`` is ``max_tasks_per_worker``); the
engine knows nothing of them. ``AsyncResult`` and ``IMapIterator`` keep ``multiprocessing``'s
behaviour: ``get(timeout)`` raises ``multiprocessing.TimeoutError``, an ``imap`` iterator
raises an item's exception at that item and can go on after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import multiprocessing
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures.process import _RemoteTraceback as _ExecutorRemoteTraceback
from types import MappingProxyType, TracebackType
from typing import Any, Generic, TypeVar

from ._config import MapOptions, Unpack, exception_types
from ._dispatch import Call, Dispatcher
from ._engine import RayMap, make_setup
from ._errors import PoolClosedError, RemoteTraceback
from ._outcome import ItemError
from ._runtime import cluster_cpus, ensure_ray
from ._store import Checkpoint, check_checkpoint
from ._worker import Setup

__all__ = [
    "AsyncResult",
    "IMapIterator",
    "MapResult",
    "Pool",
    "PoolState",
    "ProcessPoolExecutor",
    "RayPool",
]

logger = logging.getLogger("raypool")

R = TypeVar("R")

#: Finished batches an ``imap`` iterator holds for its reader before the call stops
#: reading input (the engine's window then bounds the rest). More smooths a bursty reader;
#: each batch held is memory.
STREAM_BATCHES = 2

#: With ``processes=None``, the most tasks of all the pool's calls in flight, per cluster
#: CPU (Ray runs one per CPU; the rest wait in Ray's queue). More keeps Ray busy with many
#: small submitted calls (2,000 tiny ``submit``s on 2 CPUs: about 540 calls/s with 100 in
#: flight, 440 with 10); work beyond it waits on the driver, where ``Future.cancel()``
#: still succeeds.
QUEUED_TASKS_PER_CPU = 16

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class PoolState(enum.Enum):
    """Where a pool is in its life."""

    #: Takes new work.
    RUN = "run"
    #: ``close()`` or ``shutdown()``: takes no new work; what was submitted completes.
    CLOSE = "close"
    #: ``terminate()``: takes no new work; what was running is cancelled.
    TERMINATE = "terminate"


@dataclasses.dataclass(frozen=True)
class _Defaults:
    """The keyword extensions: pool-wide defaults, overridden per call or by ``options()``."""

    timeout: float | None = None
    safe_exceptions: bool = False
    ret_args: bool = False
    checkpoint: Checkpoint = None
    chunksize: int | None = None
    remote_options: Mapping[str, Any] | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        MapOptions(timeout=self.timeout)  # validates the timeout
        _check_chunksize(self.chunksize)
        if self.remote_options is not None and not isinstance(self.remote_options, Mapping):
            raise TypeError(
                f"remote_options must be a dict, got {type(self.remote_options).__name__}"
            )
        check_checkpoint(self.checkpoint)

    def merged(self, **overrides: Any) -> _Defaults:
        """These defaults with every override that is not ``None``."""
        given = {k: v for k, v in overrides.items() if v is not None}
        options = self.remote_options
        if given.get("remote_options") is not None and options:
            given["remote_options"] = {**options, **given["remote_options"]}
        return dataclasses.replace(self, **given) if given else self


def _check_chunksize(chunksize: object) -> None:
    if chunksize is not None and (
        not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1
    ):
        raise ValueError(f"chunksize must be an int >= 1 or None, got {chunksize!r}")


def _check_count(name: str, value: object, message: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(message)


def _settle(future: Future[Any], error: BaseException) -> None:
    """End ``future`` with ``error``; a cancellation of a future not yet running cancels it."""
    if isinstance(error, CancelledError) and future.cancel():
        return
    # Already done or cancelled meanwhile is fine; checking first would race.
    with contextlib.suppress(InvalidStateError):
        future.set_exception(error)


def _progress_bar(total: int | None, description: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress=True needs the tqdm package: pip install 'raypool[progress]'"
        ) from None
    return tqdm(total=total, desc=description, unit="item", file=sys.stderr)


# -- sinks: where a call's outputs go ------------------------------------------------------------


class _FutureSink:
    """One call with one item (``submit``, ``apply_async``): its outcome sets a Future.

    For ``submit`` (``executor=True``) the worker traceback is attached as
    ``concurrent.futures`` attaches it, for ``apply_async`` as ``multiprocessing`` does.
    """

    def __init__(self, future: Future[Any], safe_exceptions: bool, executor: bool) -> None:
        self.future = future
        self._safe = safe_exceptions
        self._executor = executor

    def begin(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def room(self) -> bool:
        return True

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        try:
            if errors:
                exc = errors[0][0]
                cause = exc.__cause__
                if self._executor and isinstance(cause, RemoteTraceback):
                    # typeshed says a traceback object; it is the formatted text
                    exc.__cause__ = _ExecutorRemoteTraceback(str(cause))  # type: ignore[arg-type]
                if self._safe:
                    self.future.set_result(exc)
                else:
                    self.future.set_exception(exc)
            else:
                self.future.set_result(values[0])
        except InvalidStateError:
            pass  # ended by terminate() meanwhile
        return True

    def end(self, error: BaseException | None) -> None:
        if error is not None:
            _settle(self.future, error)


class _Outputs:
    """What a map-family call yields per item: values, errors as values or raised, pairs."""

    def __init__(self, *, safe_exceptions: bool, ret_args: bool, progress: Any) -> None:
        self.safe = safe_exceptions
        self.ret_args = ret_args
        self.progress = progress

    def count(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


class _ListSink:
    """A map-family call collected into one list (``map``, ``starmap``, their ``_async``).

    Unless ``safe_exceptions``, the first failed item in input order fails the call - once
    every item has finished, as the stdlib's ``map`` does (CPython issue #23992).
    """

    def __init__(self, future: Future[list[Any]], outputs: _Outputs) -> None:
        self.future = future
        self._outputs = outputs
        self._values: list[Any] = []
        self._error: BaseException | None = None

    def begin(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def room(self) -> bool:
        return True

    def put(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> bool:
        outputs = self._outputs
        outputs.count(len(values))
        if self._error is not None:
            return True
        if errors:
            if not outputs.safe:
                self._error = errors[min(errors)][0]
                self._values.clear()
                return True
            values = list(values)
            for position, (exc, _) in errors.items():
                values[position] = exc
        if outputs.ret_args:
            assert items is not None
            self._values.extend(zip(items, values, strict=True))
        else:
            self._values.extend(values)
        return True

    def end(self, error: BaseException | None) -> None:
        self._outputs.close()
        error = self._error or error
        if error is not None:
            _settle(self.future, error)
            return
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(self._values)


class _StreamSink:
    """The buffer between a call and its ``IMapIterator``: back-pressure on the call,
    blocking (or awaiting) reads for the iterator."""

    def __init__(self, pool: _PoolCore, outputs: _Outputs) -> None:
        self.outputs = outputs
        self.call: Call | None = None
        self.cond = threading.Condition()
        self.batches: deque[tuple[list[Any] | None, list[Any], dict[int, ItemError] | None]]
        self.batches = deque()
        self.done = False
        self.error: BaseException | None = None
        self._pool = pool
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def begin(self) -> bool:
        return True

    def room(self) -> bool:
        # Once the pool is closed nothing may stall join(): take everything, as the stdlib.
        return len(self.batches) < STREAM_BATCHES or self._pool.state is not PoolState.RUN

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
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
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
        """Wait until the result is available or ``timeout`` seconds pass."""
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


class MapResult(AsyncResult[list[R]]):
    """The result of ``map_async``/``starmap_async``: a list in input order."""


class IMapIterator(Iterator[Any]):
    """The iterator of ``imap``/``imap_unordered``, as in ``multiprocessing``.

    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` when no result arrives in
    time. An item's exception is raised when iteration reaches it (unless
    ``safe_exceptions``), and iteration can go on after it. It is also an async iterator:
    ``async for`` waits without blocking the event loop.

    Closing it (``close()``, dropping it, or leaving the pool's ``with`` block) cancels the
    call's work still in flight.
    """

    def __init__(self, sink: _StreamSink, dispatcher: Dispatcher, call: Call) -> None:
        self._sink = sink
        self._dispatcher = dispatcher
        self._call = call
        self._items: list[Any] | None = None
        self._values: list[Any] = []
        self._errors: dict[int, ItemError] | None = None
        self._position = 0
        self._finished = False

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``timeout`` in seconds, as ``multiprocessing``'s ``next``."""
        if self._position >= len(self._values):
            self._load(timeout)
        return self._output()

    def __next__(self) -> Any:
        return self.next()

    def _output(self) -> Any:
        position = self._position
        self._position = position + 1
        value = self._values[position]
        errors = self._errors
        if errors is not None and position in errors:
            exc = errors[position][0]
            if not self._sink.outputs.safe:
                raise exc
            value = exc
        if self._sink.outputs.ret_args:
            assert self._items is not None
            return self._items[position], value
        return value

    def _load(self, timeout: float | None) -> None:
        sink = self._sink
        with sink.cond:
            if not sink.cond.wait_for(lambda: sink.batches or sink.done, timeout):
                raise multiprocessing.TimeoutError
            self._take()

    def _take(self) -> None:
        # Called with the sink's lock held and something to read.
        sink = self._sink
        if sink.batches:
            self._items, self._values, self._errors = sink.batches.popleft()
            self._position = 0
            self._dispatcher.wake(self._call)
            return
        self._finished = True
        error, sink.error = sink.error, None
        if error is not None:
            raise error
        raise StopIteration

    def __aiter__(self) -> IMapIterator:
        return self

    async def __anext__(self) -> Any:
        if self._position >= len(self._values):
            loop = asyncio.get_running_loop()
            while True:
                waiter = self._sink.wait_async(loop)
                if waiter is None:
                    break
                try:
                    await waiter
                except asyncio.CancelledError:
                    self.close()
                    raise
            try:
                with self._sink.cond:
                    self._take()
            except StopIteration:
                raise StopAsyncIteration from None
        return self._output()

    def close(self) -> None:
        """Stop the call: its work in flight is cancelled."""
        if not self._finished:
            self._finished = True
            self._dispatcher.cancel(self._call)

    async def aclose(self) -> None:
        """``close()`` for ``async for`` users."""
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- the pool ----------------------------------------------------------------------------------


class _PoolCore:
    """The state one pool and all its ``options()`` views share."""

    def __init__(
        self,
        *,
        processes: int | None,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_worker: int | None,
        max_pending: int,
        address: str | None,
        runtime_env: dict[str, Any] | None,
        checkpointing: dict[str, Any],
    ) -> None:
        self.processes = processes
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_pending = max_pending
        self.address = address
        self.runtime_env = runtime_env
        self.checkpointing = checkpointing  # RayMap's checkpoint_every/_interval/_errors
        self.state = PoolState.RUN
        self.lock = threading.Lock()
        self.futures: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self.streams: weakref.WeakSet[_StreamSink] = weakref.WeakSet()
        self._dispatcher: Dispatcher | None = None
        self._setup: Setup | None = None

    def setup(self) -> Setup | None:
        """The initializer as workers receive it, made once for the whole pool."""
        if self.initializer is None:
            return None
        with self.lock:
            if self._setup is None:
                ensure_ray(self.address, runtime_env=self.runtime_env)
                self._setup = make_setup(self.initializer, self.initargs)
            return self._setup

    def dispatcher(self) -> Dispatcher:
        with self.lock:
            if self._dispatcher is None:
                limit = self.processes or QUEUED_TASKS_PER_CPU * cluster_cpus()
                self._dispatcher = Dispatcher(limit)
            return self._dispatcher

    def close(self) -> None:
        with self.lock:
            if self.state is PoolState.RUN:
                self.state = PoolState.CLOSE
            streams = list(self.streams)
            dispatcher = self._dispatcher
        if dispatcher is not None:
            for sink in streams:  # they may take everything now: let them
                if sink.call is not None:
                    dispatcher.wake(sink.call)
            dispatcher.close()

    def join(self) -> None:
        with self.lock:
            dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.wait_idle()
            dispatcher.stop()

    def cancel_streams(self) -> None:
        with self.lock:
            streams = list(self.streams)
            dispatcher = self._dispatcher
        if dispatcher is not None:
            for sink in streams:
                if sink.call is not None:
                    dispatcher.cancel(sink.call, CancelledError("the pool was shut down"))

    def terminate(self) -> None:
        with self.lock:
            self.state = PoolState.TERMINATE
            dispatcher = self._dispatcher
        for future in list(self.futures):
            future.cancel()
        if dispatcher is not None:
            dispatcher.cancel_all(CancelledError("the pool was terminated"))
            dispatcher.stop()


class RayPool(concurrent.futures.Executor):
    """A ``multiprocessing.Pool`` and a ``concurrent.futures.Executor`` that run on Ray.

    Change the import - ``from raypool import Pool`` or ``from raypool import
    ProcessPoolExecutor`` - and existing code runs on a local Ray or a cluster. Functions,
    lambdas, closures and ``__main__`` functions travel with dill; data goes through Ray's
    serializer. Constructing a pool does no I/O: Ray starts (or is connected to) on first
    use, and raypool never shuts down a Ray it did not start.

    Args:
        processes: at most this many of the pool's tasks run at once (default: as many as
            the Ray cluster's CPUs allow). It may exceed the cluster's CPUs: work queues.
        initializer: ``initializer(*initargs)`` runs once in each worker process before it
            runs its first item of this pool; globals it sets (in ``__main__`` too) are seen
            by the pool's functions in that process. If it raises, the items of that task
            fail with ``BrokenPoolError``, and it runs again for the pool's next task there.
        initargs: the initializer's arguments.
        maxtasksperchild: a worker process is replaced after running this many tasks of
            Ray (a task is one chunk of ``chunksize`` items, as the stdlib counts them).
        context: accepted for compatibility and ignored (Ray starts the processes).
        max_workers, mp_context, max_tasks_per_child: the ``ProcessPoolExecutor`` names
            of ``processes``, ``context`` and ``maxtasksperchild``.
        address: a Ray cluster to connect to (see ``RayMap``); ``None`` uses the Ray this
            process is connected to, or starts a local one.
        runtime_env: Ray runtime environment (as ``RayMap``).
        remote_options: default Ray options of each task, e.g. ``{"num_gpus": 1}``.
        ray_address, ray_remote_args: the names ``ray.util.multiprocessing.Pool`` gives
            ``address`` and ``remote_options``.
        max_pending: tasks in flight (plus finished, not yet read) per call; ``-1`` sizes it
            from the cluster's CPUs.
        chunksize: default items per task; ``None`` sizes tasks from measured durations.
        timeout, safe_exceptions, ret_args, checkpoint, progress: pool-wide defaults of the
            keyword extensions of the map methods (see ``map``).
        checkpoint_every, checkpoint_interval, checkpoint_errors: how checkpoints commit
            and whether they keep application exceptions (see ``RayMap``).
        max_retries: runs of an item whose worker process died under it, after the first
            (see ``RayMap``); then it fails alone with ``WorkerCrashedError``.
        retry_exceptions: ``True`` or exception classes: an item that raises one runs
            again, alone, up to ``max_retries`` times (see ``RayMap``).

    Raises:
        ValueError: ``processes`` < 1, and other out-of-range values.
        TypeError: an argument of the wrong type, or both ``processes`` and ``max_workers``.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        max_workers: int | None = None,
        mp_context: Any = None,
        max_tasks_per_child: int | None = None,
        address: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        remote_options: Mapping[str, Any] | None = None,
        ray_address: str | None = None,
        ray_remote_args: Mapping[str, Any] | None = None,
        max_pending: int = -1,
        chunksize: int | None = None,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
        progress: bool = False,
        checkpoint_every: int = 100,
        checkpoint_interval: float = 1.0,
        checkpoint_errors: bool = True,
        max_retries: int = 3,
        retry_exceptions: bool | Iterable[type[BaseException]] = False,
    ) -> None:
        for name, value, alias, other in (
            ("processes", processes, "max_workers", max_workers),
            ("maxtasksperchild", maxtasksperchild, "max_tasks_per_child", max_tasks_per_child),
            ("address", address, "ray_address", ray_address),
            ("remote_options", remote_options, "ray_remote_args", ray_remote_args),
        ):
            if value is not None and other is not None:
                raise TypeError(f"pass {name} or {alias}, not both")
        address = address or ray_address
        remote_options = remote_options or ray_remote_args
        _check_count("processes", processes, "Number of processes must be at least 1")
        _check_count("max_workers", max_workers, "max_workers must be greater than 0")
        _check_count(
            "maxtasksperchild",
            maxtasksperchild,
            "maxtasksperchild must be a positive int or None",
        )
        _check_count("max_tasks_per_child", max_tasks_per_child, "max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
        MapOptions(  # validates them
            max_pending=max_pending,
            checkpoint_every=checkpoint_every,
            checkpoint_interval=checkpoint_interval,
            max_retries=max_retries,
            retry_exceptions=exception_types(retry_exceptions),
        )
        self._defaults = _Defaults(
            timeout=timeout,
            safe_exceptions=bool(safe_exceptions),
            ret_args=bool(ret_args),
            checkpoint=checkpoint,
            chunksize=chunksize,
            remote_options=dict(remote_options) if remote_options else None,
            progress=bool(progress),
        )
        self._core = _PoolCore(
            processes=processes or max_workers,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_worker=maxtasksperchild or max_tasks_per_child,
            max_pending=max_pending,
            address=address,
            runtime_env=dict(runtime_env) if runtime_env else None,
            checkpointing={
                "checkpoint_every": checkpoint_every,
                "checkpoint_interval": checkpoint_interval,
                "checkpoint_errors": bool(checkpoint_errors),
                "max_retries": max_retries,
                "retry_exceptions": retry_exceptions,
            },
        )
        self._owner = True
        self._parent: RayPool | None = None

    # -- views and state ---------------------------------------------------------------------

    def options(
        self,
        *,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        chunksize: int | None = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> RayPool:
        """The same pool with other defaults for the keyword extensions.

        ``submit`` and ``apply`` pass their keyword arguments to the function, so this is
        how to give them a ``timeout``, ``safe_exceptions`` or Ray resources::

            pool.options(timeout=5, remote_options={"num_gpus": 1}).submit(fn, x)

        The view shares the pool's workers, state and lifetime: closing either closes both.
        """
        view = object.__new__(type(self))
        view._core = self._core
        view._defaults = self._defaults.merged(
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            ret_args=ret_args,
            checkpoint=checkpoint,
            chunksize=chunksize,
            remote_options=remote_options,
            progress=progress,
        )
        view._owner = False
        view._parent = self  # the pool lives as long as its views: dropping it terminates
        return view

    @property
    def state(self) -> PoolState:
        """``RUN``, ``CLOSE`` or ``TERMINATE``."""
        return self._core.state

    def _check_not_in_callback(self, method: str) -> None:
        dispatcher = self._core._dispatcher
        if dispatcher is not None and dispatcher.is_current_thread():
            raise RuntimeError(
                f"{method}() would wait for a result in the thread that delivers results "
                "(a callback of this pool): use the _async variant there"
            )

    def _check_running(self, executor: bool = False) -> None:
        state = self._core.state
        if state is not PoolState.RUN:
            if executor:
                raise PoolClosedError("cannot schedule new futures after shutdown")
            raise PoolClosedError(f"Pool not running (state={state.name})")

    def __repr__(self) -> str:
        core = self._core
        processes = core.processes if core.processes is not None else "auto"
        dispatcher = core._dispatcher
        active = dispatcher.active if dispatcher is not None else 0
        return (
            f"<{type(self).__name__} state={core.state.name} processes={processes} "
            f"active_calls={active}>"
        )

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is None or not getattr(self, "_owner", False) or core.state is not PoolState.RUN:
            return
        try:
            warnings.warn(
                f"unclosed running pool {self!r}", ResourceWarning, source=self, stacklevel=1
            )
            core.terminate()
        except Exception:
            pass  # at interpreter exit

    # -- running calls -----------------------------------------------------------------------

    def _start(
        self,
        method: str,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        unpack: Unpack,
        defaults: _Defaults,
        *,
        keep_order: bool = True,
        sink: Any,
    ) -> Call:
        core = self._core
        rmap = RayMap(
            fn,
            batch_size=defaults.chunksize,
            adaptive_tail_batching=defaults.chunksize is None,  # a chunksize is exact
            max_pending=core.max_pending,
            checkpoint=defaults.checkpoint,
            **core.checkpointing,
            address=core.address,
            runtime_env=core.runtime_env,
            remote_options=dict(defaults.remote_options) if defaults.remote_options else None,
            unpack=unpack,
            max_tasks_per_worker=core.max_tasks_per_worker,
        )
        rmap._setup = core.setup()
        run, _ = rmap._run(
            method,
            iterable,
            timeout=defaults.timeout,
            safe_exceptions=True,
            keep_order=keep_order,
            ret_args=defaults.ret_args,
        )
        return core.dispatcher().start(run, sink)

    def _outputs(self, defaults: _Defaults, iterable: Iterable[Any], method: str) -> _Outputs:
        progress = None
        if defaults.progress:
            try:
                total: int | None = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
            progress = _progress_bar(total, method)
        return _Outputs(
            safe_exceptions=defaults.safe_exceptions, ret_args=defaults.ret_args, progress=progress
        )

    def _call_future(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, *, executor: bool
    ) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        future: Future[Any] = Future()
        defaults = self._defaults
        sink = _FutureSink(future, defaults.safe_exceptions, executor)
        self._start("submit", fn, [(tuple(args), dict(kwargs))], "call", defaults, sink=sink)
        self._core.futures.add(future)
        return future

    def _map_future(
        self,
        method: str,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        unpack: Unpack,
        chunksize: int | None,
        overrides: dict[str, Any],
    ) -> Future[list[Any]]:
        _check_chunksize(chunksize)
        defaults = self._defaults.merged(chunksize=chunksize, **overrides)
        future: Future[list[Any]] = Future()
        outputs = self._outputs(defaults, iterable, method)
        try:
            self._start(method, fn, iterable, unpack, defaults, sink=_ListSink(future, outputs))
        except BaseException:
            outputs.close()
            raise
        return future

    def _imap(
        self,
        method: str,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        keep_order: bool,
        overrides: dict[str, Any],
        unpack: Unpack = "none",
    ) -> IMapIterator:
        _check_chunksize(chunksize)
        defaults = self._defaults.merged(chunksize=chunksize, **overrides)
        outputs = self._outputs(defaults, iterable, method)
        sink = _StreamSink(self._core, outputs)
        try:
            call = self._start(
                method, fn, iterable, unpack, defaults, keep_order=keep_order, sink=sink
            )
        except BaseException:
            outputs.close()
            raise
        sink.call = call
        self._core.streams.add(sink)
        return IMapIterator(sink, self._core.dispatcher(), call)

    # -- concurrent.futures.Executor ---------------------------------------------------------

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``.

        The future works with ``as_completed``, ``wait`` and ``add_done_callback``;
        ``cancel()`` succeeds while the task has not been handed to Ray (it waits while the
        pool has ``processes`` tasks in flight). Per-call options: ``pool.options(...)``.

        Raises:
            PoolClosedError: (a ``RuntimeError``) the pool was shut down.
            SerializationError: ``fn`` cannot be serialized.
        """
        self._check_running(executor=True)
        return self._call_future(fn, args, kwargs, executor=True)

    def map(  # type: ignore[override]
        self,
        func: Callable[..., R],
        *iterables: Any,
        chunksize: int | None = None,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> list[Any]:
        """``func`` applied to every item, as a list in input order.

        Serves both ``Pool.map(func, iterable, chunksize)`` (an int third positional
        argument is the ``chunksize``) and ``Executor.map(fn, *iterables)`` (several
        iterables are zipped and their items passed as arguments).

        Args:
            func: the function.
            *iterables: one iterable, or several to zip.
            chunksize: items per Ray task; ``None`` (default) sizes tasks from measured
                durations (about 50 ms each).
            timeout: seconds **each item** may run; it then fails with ``TaskTimeoutError``
                (a ``TimeoutError`` of every kind). ``Executor.map``'s ``timeout`` bounds
                the whole wait instead.
            safe_exceptions: return an item's exception in its place instead of raising.
            ret_args: return ``(item, result)`` pairs.
            checkpoint: ``True`` (a checkpoint in raypool's cache directory keyed by the
                function's module, name and a hash of its code, defaults and closure), a
                name (one in that directory), or a path; ``False`` turns a pool-wide one
                off. Finished items are recorded, and a rerun returns them in their place
                without computing them (see the README's "Checkpoints").
            remote_options: Ray options of the tasks (``num_cpus``, ``num_gpus``...).
            progress: show a progress bar on stderr (needs ``tqdm``).

        Raises:
            Exception: the first failed item's exception (in input order), unless
                ``safe_exceptions``, once every item has finished (as the stdlib).
            PoolClosedError: the pool was closed.
        """
        last = iterables[-1] if iterables else None
        if len(iterables) == 2 and isinstance(last, int) and chunksize is None:
            iterables, chunksize = iterables[:1], last  # Pool.map(func, iterable, chunksize)
        self._check_running()
        iterable, unpack = _zip(iterables, "map")
        overrides = _overrides(
            timeout, safe_exceptions, ret_args, checkpoint, remote_options, progress
        )
        self._check_not_in_callback("map")
        return self._map_future("map", func, iterable, unpack, chunksize, overrides).result()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new work; with ``wait``, return when all submitted work is done.

        ``cancel_futures`` cancels the futures not yet started. Idempotent.
        """
        self._core.close()
        if cancel_futures:
            for future in list(self._core.futures):
                future.cancel()
        if wait:
            self._core.join()

    # -- multiprocessing.Pool ----------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = _EMPTY,
    ) -> R:
        """``func(*args, **kwds)`` in a worker; blocks until the result is ready."""
        self._check_not_in_callback("apply")
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = _EMPTY,
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[R]:
        """``func(*args, **kwds)`` in a worker; returns an ``AsyncResult``.

        ``callback(result)`` or ``error_callback(exception)`` runs in this process when the
        call completes. Per-call options: ``pool.options(...)``.
        """
        self._check_running()
        return AsyncResult(
            self._call_future(func, args, kwds, executor=False), callback, error_callback
        )

    def map_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> MapResult[R]:
        """``map`` without blocking: a ``MapResult`` whose ``get()`` is the list and whose
        ``callback`` receives it (in input order). Keyword extensions as ``map``."""
        self._check_running()
        overrides = _overrides(
            timeout, safe_exceptions, ret_args, checkpoint, remote_options, progress
        )
        future = self._map_future("map_async", func, iterable, "none", chunksize, overrides)
        return MapResult(future, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> list[Any]:
        """``map`` with each item unpacked as the arguments: ``func(*item)``."""
        self._check_not_in_callback("starmap")
        return self.starmap_async(
            func,
            iterable,
            chunksize,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            ret_args=ret_args,
            checkpoint=checkpoint,
            remote_options=remote_options,
            progress=progress,
        ).get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> MapResult[R]:
        """``starmap`` without blocking, as ``map_async``."""
        self._check_running()
        overrides = _overrides(
            timeout, safe_exceptions, ret_args, checkpoint, remote_options, progress
        )
        future = self._map_future("starmap_async", func, iterable, "args", chunksize, overrides)
        return MapResult(future, callback, error_callback)

    def imap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> IMapIterator:
        """A lazy ``map``: results in input order, as they become available.

        The input is read only as far ahead as the call's window, so an endless generator
        works. An item's exception is raised when iteration reaches it (unless
        ``safe_exceptions``) and iteration may go on after it. ``chunksize=None`` (the
        default; the stdlib's is 1) sizes tasks automatically. Keyword extensions as
        ``map``.
        """
        overrides = _overrides(
            timeout, safe_exceptions, ret_args, checkpoint, remote_options, progress
        )
        self._check_running()
        return self._imap("imap", func, iterable, chunksize, True, overrides)

    def imap_unordered(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> IMapIterator:
        """``imap`` with results in the order they finish."""
        overrides = _overrides(
            timeout, safe_exceptions, ret_args, checkpoint, remote_options, progress
        )
        self._check_running()
        return self._imap("imap_unordered", func, iterable, chunksize, False, overrides)

    def close(self) -> None:
        """Take no new work; what was submitted completes. Then ``join()``."""
        self._core.close()

    def join(self) -> None:
        """Wait until all work is done (``close()`` or ``terminate()`` first).

        Raises:
            ValueError: the pool is still running.
        """
        if self._core.state is PoolState.RUN:
            raise ValueError("Pool is still running")
        self._core.join()

    def terminate(self) -> None:
        """Stop now: work in flight is cancelled, and results not yet delivered raise
        ``concurrent.futures.CancelledError``."""
        self._core.terminate()

    def __enter__(self) -> RayPool:
        self._check_running()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving normally waits for submitted futures and async results and cancels
        ``imap`` iterators still open; leaving by an exception terminates the pool.

        Differences: ``multiprocessing.Pool`` always terminates (results not yet fetched
        are lost) and ``Executor`` always waits.
        """
        if exc_type is not None:
            self.terminate()
            return
        self._core.cancel_streams()
        self._core.close()
        self._core.join()


#: ``from raypool import Pool`` replaces ``from multiprocessing import Pool``.
Pool = RayPool


class ProcessPoolExecutor(RayPool):
    """``RayPool`` with ``concurrent.futures.ProcessPoolExecutor``'s constructor -
    ``ProcessPoolExecutor(max_workers, mp_context, initializer, initargs, *,
    max_tasks_per_child)``, plus ``RayPool``'s keyword-only options - and its lazy ``map``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            initializer=initializer,
            initargs=initargs,
            max_workers=max_workers,
            mp_context=mp_context,
            max_tasks_per_child=max_tasks_per_child,
            **options,
        )

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> Iterator[Any]:
        """``Executor.map``: an iterator of ``fn(*args)`` over the zipped ``iterables``.

        As ``concurrent.futures``: an item's exception is raised when the iteration
        reaches it, and the rest is cancelled; ``timeout`` bounds the whole wait, from this
        call (``TimeoutError``). Work starts at once and the input is read as results are
        taken. For a per-item timeout use ``options(timeout=...)``. ``chunksize=None``
        (default; the stdlib's is 1) sizes tasks automatically. Extensions as
        ``RayPool.map``.

        Raises:
            PoolClosedError: (a ``RuntimeError``) the executor was shut down.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_running(executor=True)
        iterable, unpack = _zip(iterables, "map")
        overrides = _overrides(
            None, safe_exceptions, ret_args, checkpoint, remote_options, progress
        )
        results = self._imap("map", fn, iterable, chunksize, True, overrides, unpack)
        return _until(results, deadline)


def _until(results: IMapIterator, deadline: float | None) -> Iterator[Any]:
    """``results`` as ``Executor.map`` yields them: waiting at most until ``deadline``; a
    failure or an early exit cancels the rest."""
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield results.next(remaining)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                raise concurrent.futures.TimeoutError from None
    finally:
        results.close()


def _overrides(
    timeout: float | None,
    safe_exceptions: bool | None,
    ret_args: bool | None,
    checkpoint: Checkpoint,
    remote_options: Mapping[str, Any] | None,
    progress: bool | None,
) -> dict[str, Any]:
    """A call's keyword extensions, ``None`` meaning "the pool's default"."""
    return {
        "timeout": timeout,
        "safe_exceptions": safe_exceptions,
        "ret_args": ret_args,
        "checkpoint": checkpoint,
        "remote_options": remote_options,
        "progress": progress,
    }


def _zip(iterables: tuple[Any, ...], method: str) -> tuple[Iterable[Any], Unpack]:
    if not iterables:
        raise TypeError(f"{method}() needs at least one iterable")
    if len(iterables) == 1:
        return iterables[0], "none"
    return zip(*iterables, strict=False), "args"  # as the stdlib: the shortest wins
