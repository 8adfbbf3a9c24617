"""RayPool: ``multiprocessing.Pool`` and ``concurrent.futures.Executor`` on the RayMap engine.

Every map-family method opens one engine call (``_engine.open_run``) of the method's
function under the pool's ``RunSpec`` - built once per pool, and once per ``options()``
view - which the pool's ``Dispatcher`` drives, with a sink (``_results``) that delivers its
outputs the way the stdlib method does. Submitted calls join a lane instead (``_lanes``):
one open-ended engine call per set of task options packs them into shared tasks:

=====================================================  ============  ======================
method                                                 unpack        outputs go to
=====================================================  ============  ======================
``submit``, ``apply``, ``apply_async``                 ``"call"``    a ``Future``
``map``, ``map_async``, ``starmap``, ``starmap_async`` none / args   a list in a ``Future``
``imap``, ``imap_unordered``, ``Executor.map``         ``"none"``    ``IMapIterator``
=====================================================  ============  ======================

The stdlib names are translated here and only here (``processes`` caps tasks in flight,
``chunksize`` is ``batch_size``, ``maxtasksperchild`` is ``max_tasks_per_worker``); the
engine knows nothing of them. The pool's state is a ``PoolState`` behind the core's lock;
the check that the pool runs and the start of a call happen under that lock, so a call
never starts on a pool that ``close()`` or ``terminate()`` already ended.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import math
import multiprocessing
import operator
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

from . import _lifecycle
from ._config import (
    CallDefaults,
    Checkpoint,
    MapOptions,
    Unpack,
    WorkerOptions,
    retry_types,
)
from ._dispatch import Call, Dispatcher
from ._engine import Initializer, RunSpec, connect, open_run
from ._errors import ForkedProcessError, PoolClosedError, ResultPicklingError
from ._lanes import Lanes
from ._results import (
    AsyncResult,
    FutureSink,
    IMapIterator,
    ListSink,
    MapResult,
    Outputs,
    PoolFuture,
    StreamSink,
    executor_error,
)
from ._runtime import cluster_cpus, in_task, lend_cpu, ray_up
from ._worker import CallItem

__all__ = [
    "AsyncResult",
    "IMapIterator",
    "MapResult",
    "Pool",
    "PoolState",
    "ProcessPoolExecutor",
    "RayPool",
    "pool_size",
]

R = TypeVar("R")

#: With ``processes=None``, the most tasks of all the pool's calls in flight, per cluster
#: CPU (Ray runs one per CPU; the rest wait in Ray's queue). More keeps Ray busy with many
#: small submitted calls (2,000 tiny ``submit``s on 2 CPUs: about 540 calls/s with 100 in
#: flight, 440 with 10); work beyond it waits on the driver, where ``Future.cancel()``
#: still succeeds.
QUEUED_TASKS_PER_CPU = 16

#: The smallest share of a CPU a task asks Ray for (Ray counts in ten-thousandths).
MIN_CPU_SHARE = 0.0001

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class PoolState(enum.Enum):
    """Where a pool is in its life."""

    #: Takes new work.
    RUN = "run"
    #: ``close()`` or ``shutdown()``: takes no new work; what was submitted completes.
    CLOSE = "close"
    #: ``terminate()``: takes no new work; what was running is cancelled.
    TERMINATE = "terminate"


def _either(name: str, value: Any, alias: str, other: Any) -> Any:
    """``value``, or ``other`` - its name in ``concurrent.futures`` or Ray's Pool."""
    if value is not None and other is not None:
        raise TypeError(f"pass {name} or {alias}, not both")
    return value if value is not None else other


#: What the stdlib says of a count below 1, per argument name.
_COUNT_ERRORS = {
    "processes": "Number of processes must be at least 1",
    "max_workers": "max_workers must be greater than 0",
    "maxtasksperchild": "maxtasksperchild must be a positive int or None",
    "max_tasks_per_child": "max_tasks_per_child must be >= 1",
    "chunksize": "Chunksize must be 1+, not {value!r}",
}


def _check_count(name: str, value: object) -> int | None:
    """``value`` as an int (``None`` stays ``None``), checked as the stdlib checks it:
    ``ValueError`` for a number below 1 (``maxtasksperchild``: for anything but a positive
    integer), ``TypeError`` for what is not a number (``max_tasks_per_child``: not an
    integer). Integers of other types (numpy's) are accepted, as the stdlib does."""
    if value is None:
        return None
    message = _COUNT_ERRORS[name].format(value=value)
    try:
        count: int | None = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        count = None
    if count is None and name == "maxtasksperchild":
        raise ValueError(message)
    if count is None and name == "max_tasks_per_child":
        raise TypeError("max_tasks_per_child must be an integer")
    try:
        below_one = value < 1  # type: ignore[operator]
    except TypeError:
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}") from None
    if below_one:
        raise ValueError(message)
    if count is None:  # the stdlib fails later, on the first use; here at the call
        raise (ValueError if name == "chunksize" else TypeError)(
            f"{name} must be an int or None, got {value!r}"
        )
    return count


class _PoolCore:
    """The state one pool and all its ``options()`` views share: the state, the dispatcher
    (made on first use, sized from the cluster), the futures and streams to end."""

    def __init__(self, processes: int | None, actors: bool = False) -> None:
        self.processes = processes
        #: Submitted calls run in kept actors (``_runners``): twice the size in flight.
        self.actors = actors
        self.state = PoolState.RUN
        self.lock = threading.Lock()
        self.futures: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self.dispatcher: Dispatcher | None = None
        self.pid = os.getpid()
        #: A ``ProcessPoolExecutor``'s: its work completes before the interpreter exits.
        self.finishes_at_exit = False
        self.lanes = Lanes()

    def inherited(self) -> bool:
        """Whether this is a forked child's copy of the pool: its dispatcher thread and
        Ray connection are not here. Closing it then does nothing (it is the parent's)."""
        return os.getpid() != self.pid

    def check_running(self, executor: bool) -> None:
        """Raise unless the pool takes new work (here)."""
        if self.inherited():
            raise ForkedProcessError.inherited("this pool", self.pid)
        if _lifecycle.exiting():  # Ray may be going away; the stdlib's executors say so
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        state = self.state
        if state is not PoolState.RUN:
            if executor:
                raise PoolClosedError("cannot schedule new futures after shutdown")
            raise PoolClosedError(f"Pool not running (state={state.name})")

    def get_dispatcher(self) -> Dispatcher:
        """The pool's dispatcher (Ray must be connected: it is sized from the cluster)."""
        with self.lock:
            if self.dispatcher is None:
                if self.actors:  # a task on each runner, and one queued behind a short one
                    limit = 2 * (self.processes or cluster_cpus())
                else:
                    limit = self.processes or QUEUED_TASKS_PER_CPU * cluster_cpus()
                # A pool opened in a Ray task waits in Ray, lending the task's CPU to its own
                # tasks: nested pools do not deadlock on a small cluster.
                self.dispatcher = Dispatcher(
                    limit,
                    lend=lend_cpu if in_task() else None,
                    finishes_at_exit=self.finishes_at_exit,
                    alive=ray_up,
                )
            return self.dispatcher

    def size(self) -> int:
        """How many of the pool's tasks run at once: ``processes``, or the cluster's CPUs
        (Ray must be connected)."""
        return self.processes or cluster_cpus()

    def sized(self, spec: RunSpec) -> RunSpec:
        """``spec`` with each task asking Ray for a share of a CPU when ``processes`` is more
        than the cluster's CPUs, so that ``processes`` tasks run at once, as ``processes``
        processes would (I/O-bound code relies on it). Ray options that name ``num_cpus``
        win, and a pool's actors ask for none. Ray must be connected."""
        processes = self.processes
        if processes is None or spec.worker.actors or "num_cpus" in spec.worker.remote_options:
            return spec
        cpus = cluster_cpus()
        if processes <= cpus:
            return spec
        share = max(MIN_CPU_SHARE, round(math.floor(cpus / processes * 10_000) / 10_000, 4))
        remote_options = {**spec.worker.remote_options, "num_cpus": share}
        worker = dataclasses.replace(spec.worker, remote_options=remote_options)
        return dataclasses.replace(spec, worker=worker)

    def start(self, call: Call, executor: bool, future: Future[Any] | None = None) -> None:
        """Start ``call`` (and track its ``future``) if the pool still runs; otherwise close
        its run and raise."""
        try:
            with self.lock:
                self.check_running(executor)
                if future is not None:
                    self.futures.add(future)  # before a shutdown(cancel_futures) can look
                call.dispatcher.start(call)
        except BaseException:
            call.run.close()  # not under the lock: it may wait for a checkpoint's writer
            raise

    def add_call(
        self,
        spec: RunSpec,
        options: MapOptions,
        prepared: tuple[CallItem, bool],
        sink: FutureSink,
        executor: bool,
        future: Future[Any],
    ) -> Call:
        """Queue a submitted call in its lane (``_lanes``) if the pool still runs."""
        dispatcher = self.get_dispatcher()
        with self.lock:
            self.check_running(executor)
            self.futures.add(future)
            return self.lanes.add(dispatcher, spec, options, prepared, sink, self.size())

    def close(self) -> None:
        if self.inherited():  # only this copy closes (its lock may be held by the parent's)
            if self.state is PoolState.RUN:
                self.state = PoolState.CLOSE
            return
        with self.lock:
            if self.state is PoolState.RUN:
                self.state = PoolState.CLOSE
            dispatcher = self.dispatcher
        self.lanes.functions.clear()  # calls already queued carry their own copies
        if dispatcher is not None:
            dispatcher.close()

    def sync(self) -> None:
        """Return once the dispatcher has handled what was queued before and started the
        tasks there is room for."""
        if self.inherited():
            return
        with self.lock:
            dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.sync()

    def join(self) -> None:
        if self.inherited():
            return
        with self.lock:
            dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.wait_idle()
            dispatcher.stop()

    def cancel_streams(self) -> None:
        if self.inherited():
            return
        with self.lock:
            dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.cancel_streams(CancelledError("the pool was shut down"))

    def stop_workers(self, error: BaseException, *, kill: bool) -> None:
        """Shut down now: cancel the futures not started, stop the calls running (their
        outcome is ``error``) - with ``kill``, the processes running them end at once."""
        with self.lock:
            if self.state is PoolState.RUN:
                self.state = PoolState.CLOSE
            dispatcher = self.dispatcher
        for future in list(self.futures):
            future.cancel()  # refused by the running ones: ``error`` ends them
        if dispatcher is not None and not self.inherited():
            # Before close(): its release lets calls start tasks for what they hold.
            dispatcher.cancel_all(error, kill=kill)
        self.close()

    def terminate(self) -> None:
        if self.inherited():
            self.state = PoolState.TERMINATE
            return
        with self.lock:
            self.state = PoolState.TERMINATE
            dispatcher = self.dispatcher
        self.lanes.functions.clear()
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
        actors: submitted calls (``submit``, ``apply``, ``apply_async``) run in worker
            processes kept as Ray actors - shared with this process's other pools that
            ask for them, started as needed, ended a minute after the last such pool
            closes - instead of a Ray task per batch: about half Ray's cost per call, for
            many short calls (the joblib backend's pools use them). A task goes to an idle
            actor while the pool's calls (of one set of options) run fewer tasks than its
            size, or, once they are measured short, queues behind one that will end soon
            (``_runners``). The actors hold no Ray CPU, as those of Ray's own Pool. The
            map methods, and calls given their own ``remote_options=``, still run tasks
            (at most twice the pool's size in flight). Not with ``maxtasksperchild``, nor
            with pool ``remote_options`` other than ``runtime_env``.

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
        actors: bool = False,
    ) -> None:
        processes = _check_count("processes", processes)
        max_workers = _check_count("max_workers", max_workers)
        maxtasksperchild = _check_count("maxtasksperchild", maxtasksperchild)
        max_tasks_per_child = _check_count("max_tasks_per_child", max_tasks_per_child)
        chunksize = _check_count("chunksize", chunksize)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._defaults = CallDefaults(
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            ret_args=ret_args,
            checkpoint=checkpoint,
            chunksize=chunksize,
            remote_options=_either(
                "remote_options", remote_options, "ray_remote_args", ray_remote_args
            ),
            progress=progress,
        )
        self._spec = RunSpec(
            MapOptions(
                max_pending=max_pending,
                checkpoint_every=checkpoint_every,
                checkpoint_interval=checkpoint_interval,
                checkpoint_errors=bool(checkpoint_errors),
                max_retries=max_retries,
                retry_exceptions=retry_types(retry_exceptions),
            ),
            WorkerOptions(
                address=_either("address", address, "ray_address", ray_address),
                runtime_env=runtime_env,
                remote_options=self._defaults.remote_options or {},
                max_tasks_per_worker=_either(
                    "maxtasksperchild", maxtasksperchild, "max_tasks_per_child", max_tasks_per_child
                ),
                actors=bool(actors),
            ),
            initializer=None if initializer is None else Initializer(initializer, initargs),
        )
        self._core = _PoolCore(
            _either("processes", processes, "max_workers", max_workers), actors=bool(actors)
        )
        self._owner = True
        self._parent: RayPool | None = None
        self._lane: tuple[RunSpec, MapOptions] | None = None  # see _lane_options

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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
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
            max_retries=max_retries,
            retry_exceptions=retry_exceptions,
        )
        view._spec = self._spec_for(view._defaults)
        view._owner = False
        view._parent = self  # the pool lives as long as its views: dropping it terminates
        view._lane = None
        return view

    @property
    def state(self) -> PoolState:
        """``RUN``, ``CLOSE`` or ``TERMINATE``."""
        return self._core.state

    @property
    def _processes(self) -> int:
        """The pool's size as an int: ``processes``/``max_workers``, or the Ray cluster's
        CPUs (reading it then connects to Ray). A compatibility attribute: some libraries
        that accept a user's ``multiprocessing`` pool read it."""
        if self._core.processes is None:
            connect(self._spec)
        return self._core.size()

    @property
    def _max_workers(self) -> int:
        """``_processes`` under ``ProcessPoolExecutor``'s name: dask's local scheduler reads
        it from any ``Executor`` it is given."""
        return self._processes

    def _check_not_in_callback(self, method: str) -> None:
        dispatcher = self._core.dispatcher
        if dispatcher is not None and dispatcher.is_current_thread():
            raise RuntimeError(
                f"{method}() would wait for a result in the thread that delivers results "
                "(a callback of this pool): use the _async variant there"
            )

    def _check_running(self, executor: bool = False) -> None:
        self._core.check_running(executor)

    def __repr__(self) -> str:
        core = self._core
        processes = core.processes if core.processes is not None else "auto"
        dispatcher = core.dispatcher
        active = dispatcher.active if dispatcher is not None else 0
        return (
            f"<{type(self).__name__} state={core.state.name} processes={processes} "
            f"active_calls={active}>"
        )

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self) -> None:
        # Module globals may be gone at the interpreter's exit: everything is guarded.
        try:
            core = self._core
            if not self._owner or core.state is not PoolState.RUN or core.inherited():
                return  # a view, closed, or a forked child's copy (the parent's pool)
            warnings.warn(
                f"unclosed running multiprocessing pool {self!r}",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
            core.terminate()
        except Exception:
            pass

    # -- running calls -----------------------------------------------------------------------

    def _spec_for(self, defaults: CallDefaults) -> RunSpec:
        """The run spec of calls with ``defaults``: this view's, or one with other Ray
        options (``remote_options=`` of the call: in tasks, not in the pool's actors)."""
        if defaults.remote_options == self._defaults.remote_options:
            return self._spec
        remote_options = defaults.remote_options or {}
        worker = dataclasses.replace(self._spec.worker, remote_options=remote_options, actors=False)
        return dataclasses.replace(self._spec, worker=worker)

    def _start(
        self,
        method: str,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        unpack: Unpack,
        defaults: CallDefaults,
        sink: FutureSink | ListSink | StreamSink,
        *,
        keep_order: bool = True,
        executor: bool = False,
        future: Future[Any] | None = None,
        window: int | None = None,
    ) -> Call:
        """Open the call and hand it to the dispatcher, if the pool still runs then.
        ``window``: the most batches in flight or finished and not yet taken (default: the
        pool's ``max_pending``)."""
        spec = self._spec_for(defaults)
        chunksize = defaults.chunksize
        options = dataclasses.replace(
            spec.options,
            max_pending=spec.options.max_pending if window is None else window,
            batch_size=chunksize,
            adaptive_tail_batching=chunksize is None,  # a chunksize is exact
            unpack=unpack,
            timeout=defaults.timeout,
            safe_exceptions=True,  # the sink shapes the outputs
            keep_order=keep_order,
            ret_args=defaults.ret_args,
            **defaults.retries(),
        )
        connect(spec)  # before the dispatcher, which is sized from the cluster
        spec = self._core.sized(spec)
        call = self._core.get_dispatcher().call(
            sink,
            lambda throttle: open_run(
                fn,
                iterable,
                spec,
                options,
                checkpoint=defaults.checkpoint,
                throttle=throttle,
            ),
        )
        self._core.start(call, executor, future)
        return call

    def _outputs(self, defaults: CallDefaults, iterable: Iterable[Any], method: str) -> Outputs:
        if not defaults.progress:
            return Outputs(safe_exceptions=defaults.safe_exceptions, ret_args=defaults.ret_args)
        total = _length(iterable)
        return Outputs.with_progress(
            safe_exceptions=defaults.safe_exceptions,
            ret_args=defaults.ret_args,
            total=total,
            description=method,
        )

    def _call_future(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, *, executor: bool
    ) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        future: PoolFuture[Any] = PoolFuture()
        defaults = self._defaults
        sink = FutureSink(future, defaults.safe_exceptions, executor)
        args, kwargs = tuple(args), dict(kwargs)
        if defaults.checkpoint is not None or defaults.progress:
            # A call of its own: its checkpoint row, its progress bar.
            call_item = [(args, kwargs)]
            call = self._start(
                "submit", fn, call_item, "call", defaults, sink, executor=executor, future=future
            )
        else:
            spec, options = self._lane_options()
            prepared = self._core.lanes.prepare(fn, args, kwargs)
            call = self._core.add_call(spec, options, prepared, sink, executor, future)
        future.wait_through(call.dispatcher)
        return future

    def _lane_options(self) -> tuple[RunSpec, MapOptions]:
        """The spec and options of this view's submitted calls (made once per view; Ray
        connected). ``options(chunksize=n)`` packs at most ``n`` calls in a task; a pool
        that recycles workers runs each call as a task of its own, as ``maxtasksperchild``
        counts them."""
        lane = self._lane
        if lane is None:
            defaults = self._defaults
            spec = self._spec_for(defaults)
            connect(spec)
            spec = self._core.sized(spec)
            most = 1 if spec.worker.max_tasks_per_worker is not None else defaults.chunksize
            options = dataclasses.replace(
                spec.options,
                batch_size=most,
                unpack="call",
                timeout=defaults.timeout,
                safe_exceptions=True,  # the sink shapes the outputs
                keep_order=False,
                **defaults.retries(),
            )
            lane = self._lane = spec, options
        return lane

    def _map_future(
        self,
        method: str,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        unpack: Unpack,
        chunksize: int | None,
        overrides: dict[str, Any],
    ) -> tuple[PoolFuture[list[Any]], ListSink]:
        chunksize = _check_count("chunksize", chunksize)
        defaults = self._defaults.merged(chunksize=chunksize, **overrides)
        if defaults.chunksize is None and self._spec.worker.max_tasks_per_worker is not None:
            defaults = defaults.merged(chunksize=self._recycling_chunksize(iterable))
        future: PoolFuture[list[Any]] = PoolFuture()
        outputs = self._outputs(defaults, iterable, method)
        sink = ListSink(future, outputs, _length(iterable))
        try:
            call = self._start(method, fn, iterable, unpack, defaults, sink)
        except BaseException:
            outputs.close()
            raise
        future.wait_through(call.dispatcher)
        return future, sink

    def _recycling_chunksize(self, iterable: Iterable[Any]) -> int | None:
        """``map``'s chunks under ``maxtasksperchild``: the stdlib's rule (a quarter of the
        items per process, rounded up), so a worker is replaced as often as it would be
        under ``multiprocessing``; ``None`` when the input has no length."""
        length = _length(iterable)
        if length is None:
            return None
        connect(self._spec)
        chunksize, extra = divmod(length, 4 * self._core.size())
        return max(1, chunksize + bool(extra))

    def _imap(
        self,
        method: str,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        keep_order: bool,
        overrides: dict[str, Any],
        unpack: Unpack = "none",
        executor: bool = False,
        buffersize: int | None = None,
        released: threading.Event | None = None,
    ) -> IMapIterator:
        chunksize = _check_count("chunksize", chunksize)
        defaults = self._defaults.merged(chunksize=chunksize, **overrides)
        if defaults.chunksize is None and self._spec.worker.max_tasks_per_worker is not None:
            defaults = defaults.merged(chunksize=1)  # the stdlib's: a worker recycles as often
        outputs = self._outputs(defaults, iterable, method)
        # With a buffersize, a batch reaches the iterator only when a reader asks: the
        # window then bounds everything read ahead of the consumer.
        sink = StreamSink(
            outputs, stream=not executor, on_demand=buffersize is not None, released=released
        )
        try:
            call = self._start(
                method,
                fn,
                iterable,
                unpack,
                defaults,
                sink,
                keep_order=keep_order,
                executor=executor,
                window=buffersize,
            )
        except BaseException:
            outputs.close()
            raise
        return IMapIterator(sink, call, keeps_work=executor)

    # -- concurrent.futures.Executor ---------------------------------------------------------

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``.

        The future works with ``as_completed``, ``wait`` and ``add_done_callback``. Calls
        are packed into shared Ray tasks (each future resolves when its own call ends);
        ``cancel()`` succeeds until the call is packed - when the future turns
        ``running()`` - and calls wait unpacked while the pool has ``processes`` tasks in
        flight. Per-call options: ``pool.options(...)``; calls with other options run in
        other tasks.

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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
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
            max_retries, retry_exceptions: this call's retries (see the constructor);
                ``None`` keeps the pool's.

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
            timeout,
            safe_exceptions,
            ret_args,
            checkpoint,
            remote_options,
            progress,
            max_retries,
            retry_exceptions,
        )
        self._check_not_in_callback("map")
        future, _ = self._map_future("map", func, iterable, unpack, chunksize, overrides)
        return future.result()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new work; with ``wait``, return when all submitted work is done.

        ``cancel_futures`` cancels the futures not yet started. With ``wait``, the pool
        first hands Ray the calls it would hand it now, up to its task cap (as
        ``ProcessPoolExecutor`` first fills its workers' queue): those run to their end.
        Without, every call not yet in a task is cancelled before this returns (as
        ``ThreadPoolExecutor`` does). Idempotent.
        """
        self._core.close()
        if cancel_futures:
            if wait:
                self._core.sync()
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
        call completes. Calls are packed into shared Ray tasks, as ``submit``'s are.
        Per-call options: ``pool.options(...)``.
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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
    ) -> MapResult[R]:
        """``map`` without blocking: a ``MapResult`` whose ``get()`` is the list and whose
        ``callback`` receives it (in input order). Keyword extensions as ``map``."""
        self._check_running()
        overrides = _overrides(
            timeout,
            safe_exceptions,
            ret_args,
            checkpoint,
            remote_options,
            progress,
            max_retries,
            retry_exceptions,
        )
        future, sink = self._map_future("map_async", func, iterable, "none", chunksize, overrides)
        return MapResult(future, callback, error_callback, sink)

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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
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
            max_retries=max_retries,
            retry_exceptions=retry_exceptions,
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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
    ) -> MapResult[R]:
        """``starmap`` without blocking, as ``map_async``."""
        self._check_running()
        overrides = _overrides(
            timeout,
            safe_exceptions,
            ret_args,
            checkpoint,
            remote_options,
            progress,
            max_retries,
            retry_exceptions,
        )
        future, sink = self._map_future(
            "starmap_async", func, iterable, "args", chunksize, overrides
        )
        return MapResult(future, callback, error_callback, sink)

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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
    ) -> IMapIterator:
        """A lazy ``map``: results in input order, as they become available.

        The input is read only as far ahead as the call's window, so an endless generator
        works. An item's exception is raised when iteration reaches it (unless
        ``safe_exceptions``) and iteration may go on after it. ``chunksize=None`` (the
        default; the stdlib's is 1) sizes tasks automatically. Keyword extensions as
        ``map``.
        """
        overrides = _overrides(
            timeout,
            safe_exceptions,
            ret_args,
            checkpoint,
            remote_options,
            progress,
            max_retries,
            retry_exceptions,
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
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
    ) -> IMapIterator:
        """``imap`` with results in the order they finish."""
        overrides = _overrides(
            timeout,
            safe_exceptions,
            ret_args,
            checkpoint,
            remote_options,
            progress,
            max_retries,
            retry_exceptions,
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

    At the interpreter's exit, as the stdlib's: the work submitted and not cancelled
    completes first (a ``RayPool`` cancels it, as ``multiprocessing.Pool`` does).
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
        self._core.finishes_at_exit = True

    def __del__(self) -> None:
        # As the stdlib's executor: dropped, it takes no new work and what was submitted
        # completes (no warning; ``Pool`` warns and terminates). No module globals here.
        try:
            core = self._core
            if self._owner and core.state is PoolState.RUN and not core.inherited():
                core.close()
        except Exception:
            pass

    def terminate_workers(self) -> None:
        """Python 3.14's, on every Python here: shut down now. The futures not started are
        cancelled; the calls running are stopped - an exception raised inside each once
        its worker sees the stop (within about a second) - and their futures raise
        ``BrokenProcessPool``. The executor takes no new work (``RuntimeError``);
        ``imap``/``map`` iterators end with the same error. Ray's worker processes, shared
        by the whole Ray job, survive for other work: a call that catches the exception,
        or sits in C code that never returns to Python, runs on - for those, call
        ``kill_workers()`` instead (after ``terminate_workers()`` no call is left to it)."""
        self._core.stop_workers(
            BrokenProcessPool("the call was stopped by the executor's terminate_workers()"),
            kill=False,
        )

    def kill_workers(self) -> None:
        """Python 3.14's, on every Python here: ``terminate_workers()``, but each worker
        process running one of the executor's calls ends at once (``SIGKILL``, sent by
        the worker's own watcher thread when it sees the flag, within about a second):
        no ``finally`` block or exit handler of the call runs. Tasks of the executor that
        start after it stop as cancelled ones; Ray starts new workers for later work. A
        call in C code that holds the GIL is out of reach (the watcher needs the GIL)."""
        self._core.stop_workers(
            BrokenProcessPool("the call was stopped by the executor's kill_workers()"),
            kill=True,
        )

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        safe_exceptions: bool | None = None,
        ret_args: bool | None = None,
        checkpoint: Checkpoint = None,
        remote_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
        max_retries: int | None = None,
        retry_exceptions: bool | Iterable[type[BaseException]] | None = None,
    ) -> Iterator[Any]:
        """``Executor.map``: an iterator of ``fn(*args)`` over the zipped ``iterables``.

        As ``concurrent.futures``: an item's exception is raised when the iteration
        reaches it, and the rest is cancelled; ``timeout`` bounds the whole wait, from this
        call (``TimeoutError``). Work starts at once and the input is read as results are
        taken; an iterator dropped unread, or the executor shut down (also at the
        interpreter's exit), lets all of it run, as the stdlib's submitted calls do. For a
        per-item timeout use ``options(timeout=...)``. ``chunksize=None`` (default; the
        stdlib's is 1) sizes tasks automatically - one item each with ``buffersize``, unless
        the executor's or its view's ``chunksize`` says otherwise. Extensions as
        ``RayPool.map``.

        ``buffersize`` (Python 3.14's, on every Python here): at most this many chunks (Ray
        tasks of ``chunksize`` items - one item unless given, as the stdlib's, so that at
        most ``buffersize`` items are read ahead) run or wait finished ahead of the
        consumer, and no more input is read until the consumer takes a result - for
        infinite or huge inputs. Once the executor is shut down (or the iterator dropped
        unread) no more input is read: what was read still arrives, then the iterator ends
        if the input had nothing left, or raises ``RuntimeError`` (``PoolClosedError``) if
        it had - the stdlib's raises on the next ``next()``, before the results it holds.
        The iterator keeps the executor alive.

        Raises:
            PoolClosedError: (a ``RuntimeError``) the executor was shut down.
            TypeError: ``buffersize`` is not an integer.
            ValueError: ``buffersize`` is below 1.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        self._check_running(executor=True)
        # No iterable: nothing to map, as the stdlib's (``Pool.map`` needs one).
        iterable, unpack = _zip(iterables, "map") if iterables else ((), "none")
        released = None
        if buffersize is not None:
            # The stdlib's chunks: automatic ones grow with measured timings (thousands of
            # tiny items), and the buffer bounds chunks - the input read ahead would not stay
            # within ``buffersize`` items.
            chunksize = _check_count("chunksize", chunksize) or self._defaults.chunksize or 1
            released = threading.Event()
            first = buffersize * chunksize  # what the stdlib submits in the call
            iterable = _while_running(self._core, iter(iterable), first, released)
        overrides = _overrides(
            None,
            safe_exceptions,
            ret_args,
            checkpoint,
            remote_options,
            progress,
            max_retries,
            retry_exceptions,
        )
        results = self._imap(
            "map",
            fn,
            iterable,
            chunksize,
            True,
            overrides,
            unpack,
            executor=True,
            buffersize=buffersize,
            released=released,
        )
        return _until(results, deadline, self)


class _Unread(Exception):
    """The executor was shut down while a ``buffersize`` map's input was being read: the
    rest of ``iterator`` is left unread (the run ends with this as its input's error)."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        super().__init__("the executor was shut down")
        self.iterator = iterator


def _while_running(
    core: _PoolCore, iterator: Iterator[Any], first: int, released: threading.Event
) -> Iterator[Any]:
    """``iterator``'s items while the pool runs and the call's results are wanted (not
    ``released``: the pool closed, the iterator dropped unread) - the ``first`` ones in
    any case (the stdlib submits them in the call) - then not one more."""
    for read, item in enumerate(iterator, 1):
        yield item
        if read >= first and (core.state is not PoolState.RUN or released.is_set()):
            raise _Unread(iterator)


def pool_size(pool: RayPool) -> int:
    """How many of ``pool``'s tasks run at once: its ``processes``, or the Ray cluster's
    CPUs (asking connects to Ray)."""
    return pool._processes  # noqa: SLF001 - the class of this module


_NO_ITEM = object()


def _until(results: IMapIterator, deadline: float | None, executor: RayPool) -> Iterator[Any]:
    """``results`` as ``Executor.map`` yields them: waiting at most until ``deadline``; a
    failure or an early exit cancels the rest. Holds ``executor``: dropping it while its
    map is read does not shut it down."""
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield results.next(remaining)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                raise concurrent.futures.TimeoutError from None
            except ResultPicklingError as exc:
                raise executor_error(exc) from None
            except _Unread as cut:
                # As the stdlib's, which submits the next item before each result: input
                # left after a shutdown is an error, found by reading one more item.
                if next(cut.iterator, _NO_ITEM) is _NO_ITEM:
                    return
                raise PoolClosedError("cannot schedule new futures after shutdown") from None
    finally:
        results.close()
        del executor


def _overrides(
    timeout: float | None,
    safe_exceptions: bool | None,
    ret_args: bool | None,
    checkpoint: Checkpoint,
    remote_options: Mapping[str, Any] | None,
    progress: bool | None,
    max_retries: int | None,
    retry_exceptions: bool | Iterable[type[BaseException]] | None,
) -> dict[str, Any]:
    """A call's keyword extensions, ``None`` meaning "the pool's default"."""
    return {
        "timeout": timeout,
        "safe_exceptions": safe_exceptions,
        "ret_args": ret_args,
        "checkpoint": checkpoint,
        "remote_options": remote_options,
        "progress": progress,
        "max_retries": max_retries,
        "retry_exceptions": retry_exceptions,
    }


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _zip(iterables: tuple[Any, ...], method: str) -> tuple[Iterable[Any], Unpack]:
    if not iterables:
        raise TypeError(f"{method}() needs at least one iterable")
    if len(iterables) == 1:
        return iterables[0], "none"
    return zip(*iterables, strict=False), "args"  # as the stdlib: the shortest wins
