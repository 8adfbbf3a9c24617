"""RayMap, and the one way a map call is opened: ``open_run``.

Both front ends open their calls here: ``RayMap`` (the engine's own API) and ``RayPool``
(the ``multiprocessing``/``concurrent.futures`` facade). A call is opened in the caller's
thread, so that a bad argument, an unserializable function or an unreachable cluster
raises there, before anything runs:

1. ``RunSpec`` - built once per ``RayMap``, and once per pool or pool view - says how calls
   run: their default ``MapOptions``, the ``WorkerOptions``, the initializer (shipped once
   for all the calls that share it), ``on_error`` and the default checkpoint.
2. ``open_run`` takes a function, an input and the call's ``MapOptions``: it opens the input
   with ``iter()``, opens the checkpoint (``_store``), connects to Ray and ships the callable
   once (dill, inline or one ``ray.put``), and returns the call's ``_scheduler.MapRun``.
3. The run is driven by its consumer: ``MapIterator`` (a generator in the caller's thread),
   ``_aiterate`` (asyncio: awaits Ray's futures, no thread), or the pool's dispatcher thread
   (``_dispatch``), whose ``Call`` is the run's ``Throttle``.

The input is never materialized and a result is dropped once yielded: memory is bounded by
the window. This module knows nothing of the ``multiprocessing`` vocabulary; the pool facade
translates into ``MapOptions``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import ray

from ._backend import CallBackend, InlineBackend, RayBackend
from ._config import (
    Checkpoint,
    MapOptions,
    StopCondition,
    StreamLimits,
    Unpack,
    WorkerOptions,
    check_checkpoint,
    retry_types,
)
from ._keys import key_salt
from ._runtime import ensure_ray, job_runtime_env
from ._scheduler import Backend, Feed, MapRun, MapStatistics, OnError, Throttle
from ._serialization import check_items, check_shareable, dumps_callable
from ._store import open_checkpoint
from ._worker import Setup

__all__ = [
    "Initializer",
    "MapIterator",
    "MapStatistics",
    "RayMap",
    "RayMapIterator",
    "RunSpec",
    "connect",
    "open_calls",
    "open_run",
]

R = TypeVar("R")


class Initializer:
    """``initializer(*initargs)``, run once in each worker process before it runs its first
    item of the calls that share this object (a ``RayMap``'s, or a pool's and its views').

    Workers receive it as a ``Setup`` under one key, made and put in the object store once.

    Raises:
        TypeError: ``initializer`` is not callable.
    """

    def __init__(self, initializer: Callable[..., Any], initargs: Iterable[Any] = ()) -> None:
        if not callable(initializer):
            raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
        self._fn = initializer
        self._args = tuple(initargs)
        #: They hold ``Manager()`` proxies (refused: ``multiprocessing`` queues, locks...).
        self.ships_proxies = check_shareable(self._args, "an initarg")
        self._lock = threading.RLock()  # an initializer may use its own RayMap
        self._setup: Setup | None = None
        self._ran_here = False

    def for_workers(self) -> Setup:
        """The ``Setup`` workers receive (Ray must be connected)."""
        with self._lock:
            if self._setup is None:
                blob, digest = dumps_callable(self._fn)
                self._setup = uuid.uuid4().hex, digest, [ray.put(blob)], self._args
            return self._setup

    def run_here(self) -> None:
        """Run it in this process, once (sequential mode)."""
        with self._lock:
            if not self._ran_here:
                self._fn(*self._args)
                self._ran_here = True


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """How the calls of one ``RayMap`` (or one pool view) run, apart from their function
    and their per-call options.

    Attributes:
        options: the calls' default ``MapOptions``.
        worker: where and how tasks run.
        initializer: shared by every call of this spec (and of specs copied from it).
        on_error: ``on_error(item, exception)`` in the driver for each failed item.
        checkpoint: the calls' default ``checkpoint=``.
        checkpoint_path: ray-map's name for a default checkpoint file.

    Raises:
        TypeError: ``on_error`` is not callable, ``checkpoint`` is not a checkpoint, or
            both ``checkpoint`` and ``checkpoint_path`` are given.
    """

    options: MapOptions
    worker: WorkerOptions = dataclasses.field(default_factory=WorkerOptions)
    initializer: Initializer | None = None
    on_error: OnError | None = None
    checkpoint: Checkpoint = None
    checkpoint_path: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if self.on_error is not None and not callable(self.on_error):
            raise TypeError(f"on_error must be callable, got {type(self.on_error).__name__}")
        check_checkpoint(self.checkpoint)
        if self.checkpoint is not None and self.checkpoint_path is not None:
            raise TypeError("pass checkpoint or checkpoint_path, not both")


def connect(spec: RunSpec) -> None:
    """Connect this process to the Ray ``spec`` names, unless it is sequential."""
    worker = spec.worker
    if not worker.sequential:
        runtime_env = dict(worker.runtime_env) if worker.runtime_env else None
        ensure_ray(worker.address, password=worker.password, runtime_env=runtime_env)


def open_run(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    spec: RunSpec,
    options: MapOptions | None = None,
    *,
    checkpoint: Checkpoint = None,
    limits: StreamLimits | None = None,
    throttle: Throttle | None = None,
) -> MapRun:
    """Open one map call of ``fn`` over ``iterable``; nothing runs until it is driven.

    Args:
        fn: the function.
        iterable: the input; opened here with ``iter()``.
        spec: how calls run.
        options: this call's options (default: ``spec.options``).
        checkpoint: this call's ``checkpoint=`` (``None``: the spec's).
        limits: ways the input stops early.
        throttle: a cap on tasks shared with other calls (the pool's dispatcher).

    Raises:
        TypeError: ``iterable`` is not iterable.
        SerializationError: ``fn`` cannot be serialized.
        CheckpointError: the checkpoint cannot be used.
        ClusterUnreachableError, ForkedProcessError: Ray cannot be used from here.
    """
    options = options or spec.options
    iterator = iter(iterable)  # Python's own TypeError, as the stdlib's pools raise
    ships_proxies = _first_item_proxies(iterable, options)
    store = open_checkpoint(
        checkpoint,
        fn,
        default=spec.checkpoint,
        default_path=spec.checkpoint_path,
        salt=key_salt(options.unpack, options.batched),
        every=options.checkpoint_every,
        interval=options.checkpoint_interval,
        errors=options.checkpoint_errors,
    )
    try:
        backend = _backend(fn, spec, options, ships_proxies)
    except BaseException:
        if store is not None:
            store.close()
        raise
    total = _length(iterable)
    if total is not None and limits is not None and limits.limit is not None:
        total = min(total, limits.limit)
    return MapRun(
        iterator,
        total,
        options,
        backend,
        store=store,
        on_error=spec.on_error,
        limits=limits,
        throttle=throttle,
    )


def open_calls(
    spec: RunSpec, options: MapOptions, feed: Feed, throttle: Throttle, cpus: int
) -> tuple[MapRun, CallBackend]:
    """Open the run that packs submitted calls (``_worker.CallItem``) from ``feed`` into
    streaming tasks (a task of one call: a plain task; with ``actors``, sent to kept
    actors), sized from measured call durations and spread over ``cpus`` tasks at once
    (the pool's size), as long as the feed is open.

    Returns:
        The run, and its backend (``ships_proxies`` may be turned on as calls arrive).
    """
    connect(spec)
    worker = spec.worker
    backend = CallBackend(
        cpus=cpus,
        timeout=options.timeout,
        remote_options=_remote_options(worker),
        setup=None if spec.initializer is None else spec.initializer.for_workers(),
        max_calls=worker.max_tasks_per_worker,
        actors=worker.actors,
    )
    backend.ships_proxies = bool(spec.initializer and spec.initializer.ships_proxies)
    options = dataclasses.replace(options, keep_order=False)
    if worker.actors:
        throttle = _RunnerThrottle(throttle, backend)
    run = MapRun(iter(()), None, options, backend, throttle=throttle, feed=feed)
    return run, backend


class _RunnerThrottle:
    """The pool's cap on tasks in flight, and its runners' room: a task starts only when
    one of them can take it (``CallBackend.can_take``)."""

    def __init__(self, throttle: Throttle, backend: CallBackend) -> None:
        self._throttle = throttle
        self._backend = backend

    def admit(self) -> bool:
        return self._backend.can_take() and self._throttle.admit()

    def submitted(self, handle: Any) -> None:
        self._throttle.submitted(handle)


def _remote_options(worker: WorkerOptions) -> dict[str, Any]:
    remote_options = dict(worker.remote_options)
    if worker.runtime_env and dict(worker.runtime_env) != job_runtime_env():
        # Ray was started elsewhere, or with another environment: each task carries it.
        remote_options.setdefault("runtime_env", dict(worker.runtime_env))
    return remote_options


def _first_item_proxies(iterable: Iterable[Any], options: MapOptions) -> bool:
    """Whether the first item of a list (a call's arguments, for ``submit``) holds
    ``Manager()`` proxies; raises ``NotShareableError`` for a ``multiprocessing`` queue,
    lock... there - at the call, before anything runs."""
    if not isinstance(iterable, Sequence) or not len(iterable):
        return False
    where = "an argument of the call" if options.unpack == "call" else "the first item"
    return check_items([iterable[0]], where)


def _backend(
    fn: Callable[..., Any], spec: RunSpec, options: MapOptions, ships_proxies: bool = False
) -> Backend:
    worker = spec.worker
    if worker.sequential:
        if spec.initializer is not None:
            spec.initializer.run_here()
        return InlineBackend(
            fn, unpack=options.unpack, timeout=options.timeout, batched=options.batched
        )
    connect(spec)
    blob, digest = dumps_callable(fn)
    return RayBackend(
        blob,
        digest,
        unpack=options.unpack,
        timeout=options.timeout,
        batched=options.batched,
        remote_options=_remote_options(worker),
        setup=None if spec.initializer is None else spec.initializer.for_workers(),
        max_calls=worker.max_tasks_per_worker,
        ships_proxies=ships_proxies or bool(spec.initializer and spec.initializer.ships_proxies),
    )


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _iterate(run: MapRun) -> Generator[Any, None, None]:
    try:
        while True:
            run.fill()
            batch = run.pop_ready()
            if batch is not None:
                yield from run.emit(batch)
                if run.halt_output is not None and run.halt_output():
                    return
                continue
            if run.drained:
                break
            run.wait()
        if run.input_error is not None:
            raise run.input_error
    finally:
        run.close()


async def _aiterate(run: MapRun) -> AsyncIterator[Any]:
    try:
        while True:
            run.fill()
            batch = run.pop_ready()
            if batch is not None:
                for output in run.emit(batch):
                    yield output
                if run.halt_output is not None and run.halt_output():
                    return
                continue
            if run.drained:
                break
            await run.wait_async()
        if run.input_error is not None:
            raise run.input_error
    finally:
        run.close()


class MapIterator(Iterator[Any]):
    """The iterator ``RayMap.imap`` returns: a generator plus ``statistics()``.

    Closing it (or dropping it, or breaking out of the loop that consumes it) cancels the
    call's tasks still in flight.
    """

    def __init__(self, run: MapRun) -> None:
        self._run = run
        self._gen = _iterate(run)

    def __iter__(self) -> Iterator[Any]:
        # A for loop runs the generator directly, without a Python-level __next__ per item.
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Stop the call: cancel its tasks in flight and flush its checkpoint."""
        self._gen.close()

    def statistics(self) -> MapStatistics:
        """A snapshot of this call's progress."""
        return self._run.statistics()


class RayMapIterator(MapIterator):
    """``MapIterator`` with ``len()`` when the input had one (for progress bars), as
    ray-map's ``submit`` returns."""

    def __len__(self) -> int:
        if self._run.total is None:
            raise TypeError("the length of this map is unknown: its input has no len()")
        return self._run.total


class RayMap(Generic[R]):
    """Map a function over an iterable on Ray: streaming, batched and back-pressured.

    Keeps the API of the ``ray-map`` package (``from raypool import RayMap`` replaces
    ``from ray_map import RayMap``). Constructing it does no I/O; Ray starts (or is
    connected to) on the first call.

    Args:
        fn: the function. An item is passed as ``unpack`` says (by default a tuple as
            ``fn(*item)``, a dict as ``fn(**item)``, anything else as ``fn(item)``).
            Lambdas and closures are fine: it is serialized with dill.
        batch_size: items per Ray task; ``None`` (default) sizes batches from the measured
            item duration, to about 50 ms of work per task, and 1 for slow items.
        max_pending: batches in flight at once - in ordered mode finished batches waiting
            behind a slower one count too (in batches of the current size), which bounds
            memory; ``-1`` (default): ``4 * CPUs + 2`` of the cluster.
        checkpoint_path: a file recording each finished item (an SQLite database); a rerun
            yields recorded items without computing them again. Timeouts and lost workers
            are not recorded. A ray-map checkpoint found there is converted, with a
            warning, and its file kept as ``PATH.ray-map``. See the README's "Checkpoints".
        checkpoint_every: finished items that make the checkpoint commit: at most about
            this many (or ``checkpoint_interval`` seconds' worth) are lost if the process
            is killed.
        checkpoint: ``True``: a checkpoint in raypool's cache directory named after ``fn``
            (its module, qualified name and a hash of its code, defaults and closure, so
            that editing ``fn`` starts afresh); a name: the checkpoint of that name there;
            a path: that file (as ``checkpoint_path``). Each map call can override it.
        checkpoint_interval: seconds after which finished items are committed even if
            fewer than ``checkpoint_every``.
        checkpoint_errors: record application exceptions and replay them on a rerun (as
            ray-map does); ``False``: keep them out, so that a rerun retries them.
        max_retries: when a worker process dies under a task (``os._exit``, a segfault, a
            kill, the out-of-memory killer, a lost node), its items run again, in halves,
            until the item that killed it runs alone; that item is retried this many times
            before it ends as a ``WorkerCrashedError``. The other items are unaffected.
            Application exceptions are retried only if ``retry_exceptions`` says so. A
            task whose result Ray cannot store is split the same way, and the item whose
            result is too large ends as a ``ResultTooLargeError`` (not retried).
        retry_exceptions: ``True`` (any ``Exception``) or exception classes: an item that
            raises one runs again, alone, up to ``max_retries`` times (as Ray's option of
            that name, but per item); its last outcome is the result.
        address: a Ray cluster to connect to (``"host:port"``, ``"ray://host:port"``,
            ``"auto"``); ``None`` starts a local instance. Unreachable: an error within
            seconds, never a silent local fallback. Ignored if Ray is already initialized.
        password: the cluster's legacy Redis password.
        runtime_env: Ray runtime environment of the tasks (passed to ``ray.init`` when this
            starts Ray, else to each task).
        remote_options: passed to ``.options()`` of each task, e.g. ``{"num_cpus": 0.5}``.
        on_error: ``on_error(item, exception)`` is called in the caller's process for each
            failed item as its batch arrives (replayed items excluded).
        init_if_needed: start or connect to Ray in the constructor instead of lazily.
        adaptive_tail_batching: when the input has a ``len()``, shrink batches near the
            end so the last tasks finish together.
        tail_batches_per_core: the tail starts when fewer than this many batches per CPU
            are left.
        tail_min_batch_size: batches never shrink below this.
        unpack: ``"auto"`` (above), ``"none"`` (``fn(item)``), ``"args"`` (``fn(*item)``)
            or ``"kwargs"`` (``fn(**item)``).
        batched: ``fn`` takes a whole batch (a list of items) and returns a list of as many
            results - vectorized numpy work, model inference. A ``timeout`` then applies to
            each call; a wrong length is a ``BatchLengthError`` for each item of the batch.
        initializer: ``initializer(*initargs)`` runs once in each worker process before
            that process runs its first item of this ``RayMap`` (state it sets up - a
            connection, a model, a global in ``__main__`` - is there for later items).
            If it raises, the items of that task fail with ``BrokenPoolError``.
        initargs: the initializer's arguments (through Ray's serializer).
        max_tasks_per_worker: a worker process exits after running this many tasks
            (batches) and Ray starts a fresh one; ``None``: never.
        sequential: run everything in the calling thread, with no Ray at all: same
            ordering, ``ret_args``, ``safe_exceptions``, ``on_error`` and checkpoint
            behaviour, and ``pdb`` works in ``fn``. A timeout interrupts an item as in a
            worker when called from the main thread (it uses ``SIGALRM`` meanwhile); from
            another thread it can only report, after the item returns, that it overran.

    Raises:
        TypeError: ``fn`` is not callable.
        ValueError: an option is out of range (``batch_size < 1``, ``max_pending == 0``...).
    """

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        batch_size: int | None = None,
        max_pending: int = -1,
        checkpoint_path: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 100,
        address: str | None = None,
        password: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        remote_options: dict[str, Any] | None = None,
        on_error: OnError | None = None,
        init_if_needed: bool = False,
        adaptive_tail_batching: bool = True,
        tail_batches_per_core: int = 2,
        tail_min_batch_size: int = 1,
        unpack: Unpack = "auto",
        batched: bool = False,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        sequential: bool = False,
        checkpoint: Checkpoint = None,
        checkpoint_interval: float = 1.0,
        checkpoint_errors: bool = True,
        max_retries: int = 3,
        retry_exceptions: bool | Iterable[type[BaseException]] = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"RayMap needs a callable, got {type(fn).__name__}: {fn!r}")
        self.fn = fn
        self._spec = RunSpec(
            MapOptions(
                batch_size=batch_size,
                max_pending=max_pending,
                unpack=unpack,
                batched=batched,
                adaptive_tail_batching=adaptive_tail_batching,
                tail_batches_per_core=tail_batches_per_core,
                tail_min_batch_size=tail_min_batch_size,
                checkpoint_every=checkpoint_every,
                checkpoint_interval=checkpoint_interval,
                checkpoint_errors=bool(checkpoint_errors),
                max_retries=max_retries,
                retry_exceptions=retry_types(retry_exceptions),
            ),
            WorkerOptions(
                address=address,
                password=password,
                runtime_env=runtime_env,
                remote_options={} if remote_options is None else remote_options,
                max_tasks_per_worker=max_tasks_per_worker,
                sequential=sequential,
            ),
            initializer=None if initializer is None else Initializer(initializer, initargs),
            on_error=on_error,
            checkpoint=checkpoint,
            checkpoint_path=checkpoint_path,
        )
        if init_if_needed:
            connect(self._spec)

    @property
    def batch_size(self) -> int | None:
        """The fixed batch size, or ``None`` when batches are sized automatically."""
        return self._spec.options.batch_size

    @property
    def max_pending(self) -> int:
        """The window of batches, or ``-1`` when sized from the cluster."""
        return self._spec.options.max_pending

    @property
    def checkpoint_path(self) -> str | os.PathLike[str] | None:
        """The checkpoint file of calls that name none (ray-map's attribute)."""
        return self._spec.checkpoint_path

    @checkpoint_path.setter
    def checkpoint_path(self, path: str | os.PathLike[str] | None) -> None:
        self._spec = dataclasses.replace(self._spec, checkpoint_path=path)

    def __repr__(self) -> str:
        mode = "sequential" if self._spec.worker.sequential else "ray"
        return f"<RayMap fn={self.fn!r} mode={mode} options={self._spec.options}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RayMap cannot be pickled: create it where it is used")

    def _open(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None,
        safe_exceptions: bool,
        keep_order: bool,
        ret_args: bool,
        checkpoint: Checkpoint = None,
        max_pending: int | None = None,
        limits: StreamLimits | None = None,
    ) -> MapRun:
        spec = self._spec
        options = dataclasses.replace(
            spec.options,
            timeout=timeout,
            safe_exceptions=bool(safe_exceptions),
            keep_order=bool(keep_order),
            ret_args=bool(ret_args),
            max_pending=spec.options.max_pending if max_pending is None else max_pending,
        )
        return open_run(
            self.fn,
            iterable,
            spec,
            options,
            checkpoint=checkpoint,
            limits=limits,
        )

    # -- the seed's API ----------------------------------------------------------------------

    def imap(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> MapIterator:
        """Lazily map ``fn`` over ``iterable``, yielding results as a stream.

        The input is read only as far ahead as the window of batches in flight allows, so
        an endless generator works.

        Args:
            iterable: the items.
            timeout: seconds one item may run; it then ends as a ``TaskTimeoutError`` (also
                a ``TimeoutError``) and its worker moves on to the next item.
            safe_exceptions: yield an item's exception as its result instead of raising
                it. The exception keeps its type; ``__cause__`` holds the worker traceback.
            keep_order: yield in input order (``True``) or as results arrive.
            ret_args: yield ``(item, result)`` pairs.
            checkpoint: this call's checkpoint, instead of the constructor's: ``True``, a
                name or a path (see the constructor); ``False``: none. Recorded items are
                yielded in their place in the input, with their original item for
                ``ret_args``.

        Returns:
            An iterator of results. Closing or dropping it cancels the work in flight.

        Raises:
            TypeError: ``iterable`` is not iterable.
            ValueError: ``timeout`` is not a positive number.
            SerializationError: ``fn`` cannot be serialized.
            CheckpointError: the checkpoint is not a raypool checkpoint, or is not safe to
                load (another user's, or writable by others).
            ClusterUnreachableError: ``address`` cannot be reached.
            Exception: without ``safe_exceptions``, the first failed item's exception
                (in input order when ordered), after which the rest is cancelled.
        """
        run = self._open(
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            checkpoint=checkpoint,
        )
        return MapIterator(run)

    def map(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> list[Any]:
        """``list(self.imap(...))``: same arguments, results in a list."""
        return list(
            self.imap(
                iterable,
                timeout=timeout,
                safe_exceptions=safe_exceptions,
                keep_order=keep_order,
                ret_args=ret_args,
                checkpoint=checkpoint,
            )
        )

    def imap_async(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> AsyncIterator[Any]:
        """``imap`` as an async iterator: waiting for results never blocks the event loop
        (it awaits Ray's futures; no thread). Cancelling the consuming task, or closing
        the iterator, cancels the work in flight. Arguments as ``imap``.

        Not to be confused with ``multiprocessing.Pool.map_async``: this is asyncio.
        """
        run = self._open(
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            checkpoint=checkpoint,
        )
        return _aiterate(run)

    async def map_async(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> list[Any]:
        """Coroutine: the results of ``imap_async`` in a list. Arguments as ``imap``."""
        stream = self.imap_async(
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            checkpoint=checkpoint,
        )
        return [item async for item in stream]

    # -- ray-map 1.0.3 compatibility ------------------------------------------------------

    def _stream_run(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None,
        safe_exceptions: bool,
        ret_args: bool,
        keep_order: bool,
        ordered_window: int | None,
        limit: int | None,
        time_budget: float | None,
        stop: StopCondition | None,
        max_pending: int | None,
        checkpoint: Checkpoint,
    ) -> MapRun:
        limits = StreamLimits(
            limit=limit, ordered_window=ordered_window, time_budget=time_budget, stop=stop
        )
        return self._open(
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            max_pending=max_pending,
            checkpoint=checkpoint,
            limits=limits,
        )

    def imap_stream(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        ret_args: bool = False,
        keep_order: bool = False,
        ordered_window: int | None = None,
        limit: int | None = None,
        time_budget: float | None = None,
        stop: StopCondition | None = None,
        max_pending: int | None = None,
        checkpoint: Checkpoint = None,
    ) -> MapIterator:
        """``imap`` for endless streams, as ray-map has it (as-ready by default).

        Every ``imap`` call already streams with bounded memory; this adds ways to stop.

        Args:
            keep_order: as ``imap``, but ``False`` by default.
            ordered_window: in ordered mode, at most this many finished items wait for a
                slower one before no more input is read.
            limit: read at most this many items (so at most this many results).
            time_budget: seconds; after it no more input is read, and what is in flight is
                still yielded.
            stop: a callable or ``threading.Event``; once true, no more input is read and
                nothing more is yielded (work in flight is cancelled).
            max_pending: overrides the window for this call.
            timeout, safe_exceptions, ret_args, checkpoint: as ``imap``.
        """
        return MapIterator(
            self._stream_run(
                iterable,
                timeout=timeout,
                safe_exceptions=safe_exceptions,
                ret_args=ret_args,
                keep_order=keep_order,
                ordered_window=ordered_window,
                limit=limit,
                time_budget=time_budget,
                stop=stop,
                max_pending=max_pending,
                checkpoint=checkpoint,
            )
        )

    def imap_stream_async(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        ret_args: bool = False,
        keep_order: bool = False,
        ordered_window: int | None = None,
        limit: int | None = None,
        time_budget: float | None = None,
        stop: StopCondition | None = None,
        max_pending: int | None = None,
        queue_maxsize: int | None = None,
        checkpoint: Checkpoint = None,
    ) -> AsyncIterator[Any]:
        """``imap_stream`` as an async iterator. ``queue_maxsize`` is accepted for
        ray-map compatibility and unused: nothing is queued beyond the window."""
        return _aiterate(
            self._stream_run(
                iterable,
                timeout=timeout,
                safe_exceptions=safe_exceptions,
                ret_args=ret_args,
                keep_order=keep_order,
                ordered_window=ordered_window,
                limit=limit,
                time_budget=time_budget,
                stop=stop,
                max_pending=max_pending,
                checkpoint=checkpoint,
            )
        )

    def submit(self, iterable: Iterable[Any]) -> RayMapIterator:
        """ray-map's ``submit``: ``(item, result_or_exception)`` pairs as they finish, with
        ``len()`` when the input has one."""
        return self.submit_safe(iterable)

    def submit_safe(
        self, iterable: Iterable[Any], *, timeout: float | None = None
    ) -> RayMapIterator:
        """``submit`` with a per-item ``timeout``."""
        run = self._open(
            iterable,
            timeout=timeout,
            safe_exceptions=True,
            keep_order=False,
            ret_args=True,
        )
        return RayMapIterator(run)

    @classmethod
    def collect(
        cls,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[Any, Any]]:
        """ray-map's ``collect``: ``[(item, result_or_exception), ...]`` in input order."""
        rmap = cls(fn, batch_size=batch_size, **kwargs)
        return rmap.map(iterable, safe_exceptions=True, keep_order=True, ret_args=True)

    @classmethod
    async def acollect(
        cls,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[Any, Any]]:
        """``collect`` as a coroutine."""
        rmap = cls(fn, batch_size=batch_size, **kwargs)
        return await rmap.map_async(iterable, safe_exceptions=True, keep_order=True, ret_args=True)
