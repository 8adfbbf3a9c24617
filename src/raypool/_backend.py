"""Where batches run: Ray tasks (``RayBackend``), streaming Ray tasks of submitted calls -
or the same tasks sent to kept actors (``CallBackend``, ``_runners``) - or the calling
thread (``InlineBackend``).

Both implement ``_scheduler.Backend``: the one scheduler drives either through the same
calls - ``submit``, ``wait`` (or ``wait_async``), ``result``, ``cancel``, ``close`` - so
sequential mode has the ordering, error and checkpoint behaviour of the real thing. Ray's
errors for a whole task are translated here, by ``_runtime.classify``, and nowhere else.

Cancelling a call never uses ``ray.cancel``, which can crash the driver (see ``_cancel``):
``cancel`` raises the call's flag, and the workers stop its tasks themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray import cloudpickle

from ._cancel import forget_when_done, new_key, raise_flag
from ._config import Unpack
from ._errors import (
    NotShareableError,
    ResultPicklingError,
    ResultUnpicklingError,
    SerializationError,
    WorkerUnpicklingError,
    item_repr,
)
from ._outcome import BatchResult, Rerun, failed_batch
from ._runners import QUEUE_SECONDS, Runner, Runners, acquire, release
from ._runtime import (
    TaskFailure,
    classify,
    cluster_cpus,
    next_piece,
    take_piece,
    unpickling_failure,
)
from ._serialization import (
    callable_state,
    check_items,
    check_shareable,
    dumps_callable,
    same_state,
    shipping,
)
from ._worker import (
    CallItem,
    CallsSpec,
    Piece,
    Setup,
    TaskSpec,
    execute_batch,
    execute_batch_max_calls,
    execute_call,
    execute_calls,
    execute_calls_max_calls,
    run_batch,
    unseal,
)

__all__ = ["CallBackend", "Functions", "InlineBackend", "RayBackend"]


#: A serialized callable up to this size is sent with every task instead of through the
#: object store: it saves a put and, on each worker's first task, a fetch. Larger pays for
#: itself only once per worker, so it goes through the store.
INLINE_CALLABLE_BYTES = 16 * 1024


def _unserializable(items: list[Any], exc: Exception) -> BaseException:
    """The error that names the item Ray could not send to a worker, and why."""
    if isinstance(exc, NotShareableError):
        return exc
    check_shareable(items, "an item")
    for item in items:
        try:
            cloudpickle.dumps(item)  # type: ignore[no-untyped-call]
        except Exception as cause:
            return SerializationError(
                f"cannot send the item {item_repr(item)} to a worker: "
                f"{type(cause).__name__}: {cause}"
            )
    return exc


def _box(blob: bytes) -> list[Any]:
    """How a task carries a serialized callable: inline when small, else its ObjectRef -
    inside a list, hidden from Ray's argument resolution, so that workers fetch it only
    on a cache miss instead of once per task."""
    return [blob if len(blob) <= INLINE_CALLABLE_BYTES else ray.put(blob)]


class RayBackend:
    """Runs each batch as one Ray task; the callable travels once, by reference.

    Args:
        blob: the dill-serialized callable; put in the object store once, here.
        digest: its identity, under which workers cache the deserialized callable.
        remote_options: passed to ``.options()`` of the task (``num_cpus``, ...).
        setup: what each worker process runs once before its first item (``_worker.Setup``).
        max_calls: a worker process exits after this many tasks, or ``None``.
        ships_proxies: the items or ``setup`` hold ``multiprocessing.Manager()`` proxies:
            pickle them with their authkey (``_serialization.shipping``).
    """

    def __init__(
        self,
        blob: bytes,
        digest: str,
        *,
        unpack: Unpack,
        timeout: float | None,
        batched: bool,
        remote_options: dict[str, Any] | None = None,
        setup: Setup | None = None,
        max_calls: int | None = None,
        ships_proxies: bool = False,
    ) -> None:
        self.cpus = cluster_cpus()
        self._ships_proxies = ships_proxies
        self.rerunnable = True
        self.streams = False
        # A small callable travels inside each task; a large one (a closure over data) goes
        # to the object store once.
        self._box = _box(blob)
        remote = execute_batch if max_calls is None else execute_batch_max_calls(max_calls)
        # A task whose worker dies is not retried whole by Ray: the engine reruns its items
        # in parts, so that one item that kills its worker cannot fail the others.
        self._remote = remote.options(**{"max_retries": 0, **(remote_options or {})})
        self._cancel_key = new_key()
        self._spec: TaskSpec = (
            digest,
            self._box,
            unpack,
            timeout,
            batched,
            self._cancel_key,
            setup,
            False,
        )
        self._checked_spec: TaskSpec = (*self._spec[:-1], True)
        # Futures of refs being awaited (asyncio) or watched (``notify``): they hold the
        # result once it arrives, so ``result`` takes it from there.
        self._futures: dict[Any, asyncio.Future[Any] | concurrent.futures.Future[Any]] = {}

    def submit(self, items: list[Any], checked: bool = False) -> Any:
        spec = self._checked_spec if checked else self._spec
        try:
            if not self._ships_proxies:
                return self._remote.remote(spec, items)
            check_items(items, "an item")  # multiprocessing's guard is lifted meanwhile
            with shipping():  # Manager() proxies in the items and initargs work there
                return self._remote.remote(spec, items)
        except (TypeError, RuntimeError) as exc:  # Ray could not serialize the arguments
            raise _unserializable(items, exc) from exc

    def wait(self, handles: Sequence[Any]) -> Any:
        ready, _ = ray.wait(list(handles), num_returns=1)
        return ready[0]

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        by_future: dict[asyncio.Future[Any], Any] = {}
        for ref in handles:
            future = self._futures.get(ref)
            if not isinstance(future, asyncio.Future):
                future = self._futures[ref] = asyncio.wrap_future(future or ref.future())
            by_future[future] = ref
        done, _ = await asyncio.wait(by_future, return_when=asyncio.FIRST_COMPLETED)
        return by_future[next(iter(done))]

    def result(self, handle: Any, items: list[Any] | None, size: int) -> BatchResult:
        future = self._futures.pop(handle, None)
        try:
            sealed = future.result() if future is not None else ray.get(handle)
        except Exception as exc:
            return _failed(classify(exc), items, size)
        try:
            result = unseal(sealed)
        except (Exception, SystemExit) as exc:  # SystemExit: a result's __reduce__ said so
            return _failed(unpickling_failure(exc), items, size)
        return _decoded(result, items) if result.encoded else result

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        if not handles or not ray.is_initialized():
            return []  # e.g. an iterator closed at interpreter exit, after ray.shutdown()
        done, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0, fetch_local=False)
        return list(done)

    def notify(self, handle: Any, callback: Callable[[Any], None]) -> None:
        future = self._futures[handle] = handle.future()
        future.add_done_callback(lambda _: callback(handle))

    def cancel(self, handles: Sequence[Any], *, kill: bool = False) -> None:
        for ref in handles:
            future = self._futures.pop(ref, None)
            if isinstance(future, asyncio.Future):
                future.cancel()
        if not ray.is_initialized():
            return  # Ray is gone, and its tasks with it
        done = set(self.finished(handles))
        running = [ref for ref in handles if ref not in done]
        if running and raise_flag(self._cancel_key, kill=kill):
            forget_when_done(self._cancel_key, running)

    def close(self) -> None:
        self._box.clear()
        self._futures.clear()


#: How much of its estimate a pool's longest recent task keeps at each new measurement
#: (``CallBackend``, with runners): lower forgets a slow task sooner.
TASK_ESTIMATE_DECAY = 0.9


#: Functions a pool keeps serialized (the most recently submitted, while they live): a
#: function submitted again is not serialized again, and its calls carry the same box.
FUNCTIONS_KEPT = 64


class Functions:
    """The functions one pool's calls were submitted with, each serialized once.

    A function (``def``, ``lambda``, a builtin) is serialized on its first call and the copy
    reused while the function lives, is among the ``FUNCTIONS_KEPT`` most recently
    submitted, and the copy still stands for it: a global it (or a ``__main__`` function it
    calls) reads, a default or a closure value rebound since makes a new copy
    (``_serialization.callable_state``). Bound methods, partials and callable objects are
    serialized for every call, as the stdlib pickles them: their state may change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: id(fn) -> (a weak reference to fn - a builtin's own self, which never dies -,
        #: the state its copy captured, digest, box)
        self._kept: OrderedDict[int, tuple[Any, tuple[Any, ...], str, list[Any]]] = OrderedDict()
        self._dead: list[tuple[int, Any]] = []  # appended by weakref callbacks, any thread

    def ship(self, fn: Callable[..., Any]) -> tuple[str, list[Any]]:
        """``(digest, box)`` of ``fn``, for its ``CallItem``s (Ray must be connected).

        Raises:
            SerializationError, NotShareableError: as ``dumps_callable``.
        """
        state = callable_state(fn)
        if state is None:
            return _shipped(fn)
        key = id(fn)
        with self._lock:
            self._forget_dead()
            kept = self._kept.get(key)
            if kept is not None and _alive(kept[0]) is fn and same_state(kept[1], state):
                self._kept.move_to_end(key)
                return kept[2], kept[3]
        digest, box = _shipped(fn)
        try:
            ref: Any = weakref.ref(fn, lambda dead: self._dead.append((key, dead)))
        except TypeError:  # a builtin: it lives as long as its module
            ref = fn
        with self._lock:
            self._kept[key] = ref, state, digest, box
            self._kept.move_to_end(key)
            while len(self._kept) > FUNCTIONS_KEPT:
                self._kept.popitem(last=False)
        return digest, box

    def _forget_dead(self) -> None:
        while self._dead:
            key, dead = self._dead.pop()
            kept = self._kept.get(key)
            if kept is not None and kept[0] is dead:
                del self._kept[key]

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


def _alive(ref: Any) -> Any:
    return ref() if isinstance(ref, weakref.ref) else ref


def _shipped(fn: Callable[..., Any]) -> tuple[str, list[Any]]:
    blob, digest = dumps_callable(fn)
    return digest, _box(blob)


#: Argument types a runner's one-call task may carry pickled here (``_sent_pickled``).
_PLAIN_TYPES = frozenset({bytes, str, int, float, bool, type(None)})


def _sent_pickled(spec: CallsSpec, item: CallItem) -> bool:
    """Whether a one-call task goes to its runner as one ``bytes`` argument, pickled here
    (``Runner.pickled``): Ray passes one ``bytes`` argument 0.3-0.5 ms faster per task than
    a tuple and a list of objects. Only with no initializer, a function that travels
    inline, and arguments of exactly these types - nothing whose pickling Ray's serializer
    does its own way (an ``ObjectRef``, an array it passes out of band, a subclass)."""
    return (
        spec[2] is None
        and type(item.box[0]) is bytes
        and all(type(value) in _PLAIN_TYPES for value in item.args)
        and all(type(value) in _PLAIN_TYPES for value in item.kwargs.values())
    )


class _Refused:
    """The handle of a batch Ray could not send (an argument that cannot be pickled): it is
    finished at once, and its items split until the call at fault fails alone."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class CallBackend:
    """Runs batches of submitted calls (``_worker.CallItem``, each naming its function) as
    streaming Ray tasks: a task sends its calls' results back in pieces as they finish
    (``_worker.FLUSH_SECONDS``), so each call's future resolves when the call ends, not
    when its task does. A task of one call is a plain Ray task (its one piece, returned).
    With ``actors``, the same tasks are method calls of kept actors (``_runners``): a
    task goes to an idle one while the run has fewer in flight than ``cpus``, or queues
    behind a short task of the run (``can_take``, which the run's throttle asks).

    Args:
        cpus: how many of its tasks run at once (the pool's size): the calls waiting
            spread over that many tasks.
        timeout: each call's timeout, in seconds.
        remote_options: passed to ``.options()`` of the task.
        setup: what each worker process runs once before its first call.
        max_calls: a worker process exits after this many tasks, or ``None``.
        actors: send the tasks to kept actors (``_runners``) instead of Ray's task
            scheduler; ``remote_options`` may then hold a ``runtime_env`` and nothing
            else, and ``max_calls`` must be ``None`` (``WorkerOptions`` checks it).
    """

    rerunnable = True
    streams = True

    def __init__(
        self,
        *,
        cpus: int,
        timeout: float | None,
        remote_options: dict[str, Any] | None = None,
        setup: Setup | None = None,
        max_calls: int | None = None,
        actors: bool = False,
    ) -> None:
        self.cpus = cpus
        #: Calls or initargs hold ``Manager()`` proxies: send them with their authkey.
        self.ships_proxies = False
        options = {"max_retries": 0, **(remote_options or {})}
        remote = execute_calls if max_calls is None else execute_calls_max_calls(max_calls)
        self._remote = remote.options(**options)
        # A task of one call is a plain task, which costs Ray less than a stream - but with
        # ``max_calls``, which Ray counts per remote function, every task is of the one.
        self._remote_one = execute_call.options(**options) if max_calls is None else self._remote
        self._cancel_key = new_key()
        self._spec: CallsSpec = (timeout, self._cancel_key, setup, False)
        self._checked_spec: CallsSpec = (timeout, self._cancel_key, setup, True)
        self._futures: dict[Any, concurrent.futures.Future[Any]] = {}
        runtime_env = (remote_options or {}).get("runtime_env")
        self._runners: Runners | None = acquire(runtime_env) if actors else None
        #: A task sent to a runner -> [the runner, how many of its calls have not reported].
        self._held: dict[Any, list[Any]] = {}
        #: The longest recent task's run, fading, and when the first was measured
        #: (``time.monotonic()``; ``None``: none yet).
        self._longest = 0.0
        self._measured_at: float | None = None

    def submit(self, items: list[Any], checked: bool = False) -> Any:
        spec = self._checked_spec if checked else self._spec
        runner: Runner | None = None
        task: bytes | None = None
        if self._runners is not None:
            runner = self._runner()
            remote = runner.call if len(items) == 1 else runner.calls
            if len(items) == 1 and _sent_pickled(spec, items[0]):
                remote, task = runner.pickled, pickle.dumps((spec, items), protocol=5)
        else:
            remote = self._remote_one if len(items) == 1 else self._remote
        try:
            if task is not None:
                handle = remote.remote(task)
            elif not self.ships_proxies:
                handle = remote.remote(spec, items)
            else:
                with shipping():
                    handle = remote.remote(spec, items)
        except BaseException as exc:
            if self._runners is not None and runner is not None:
                self._runners.done(runner)
            if not isinstance(exc, (TypeError, RuntimeError)):
                raise
            try:  # Ray could not serialize the arguments
                return _Refused(_unserializable(items, exc))
            except NotShareableError as refused:  # a multiprocessing object in a call
                return _Refused(refused)
        if runner is not None:
            self._held[handle] = [runner, len(items)]
        return handle

    def notify(self, handle: Any, callback: Callable[[Any], None]) -> None:
        if isinstance(handle, _Refused):
            callback(handle)
            return
        future = self._futures[handle] = _next_ref(handle).future()
        future.add_done_callback(lambda _: callback(handle))

    def result(self, handle: Any, items: list[Any] | None, size: int) -> BatchResult:
        if isinstance(handle, _Refused):
            rerun = Rerun.SPLIT if size > 1 else Rerun.NO
            return failed_batch(size, handle.error, retry=False, rerun=rerun)
        future = self._futures.pop(handle, None)
        try:
            piece: Piece = future.result() if future is not None else ray.get(_next_ref(handle))
            if not isinstance(handle, ray.ObjectRef):
                take_piece(handle)
        except Exception as exc:  # the task failed: every call not reported yet
            failure = classify(exc)
            self._let_go([handle], lost=failure.rerun is Rerun.LOST)  # its runner died
            return _failed(failure, items, size)
        count, sealed = piece
        if self._held:
            self._reported(handle, count)
        if items is not None:
            items = items[:count]
        try:
            result = unseal(sealed)
        except (Exception, SystemExit) as exc:  # this piece's calls only
            return _failed(unpickling_failure(exc), items, count)
        if self._runners is not None and isinstance(handle, ray.ObjectRef):  # one call
            self._longest = max(result.seconds, self._longest * TASK_ESTIMATE_DECAY)
            if self._measured_at is None:
                self._measured_at = time.monotonic()
        return _decoded(result, items) if result.encoded else result

    def can_take(self) -> bool:
        """Whether a task sent now starts at once, or soon: without runners, always; with
        them, while the pool has fewer tasks in flight than its size, or one can queue
        behind a short one (``_queue_behind``)."""
        if self._runners is None or len(self._held) < self.cpus:
            return True
        return self._queue_behind(take=False) is not None

    def _runner(self) -> Runner:
        """The runner of the next task: an idle one while the pool has fewer tasks in
        flight than its size; else one to queue behind (``can_take`` said there is one, or
        - its moment past - this pool's latest)."""
        assert self._runners is not None
        if len(self._held) < self.cpus:
            return self._runners.pick()
        runner = self._queue_behind()
        if runner is None:
            runner = self._runners.behind(self._held_runners(), float("-inf"), within=None)
        return runner or self._runners.pick()

    def _queue_behind(self, *, take: bool = True) -> Runner | None:
        """A runner of this pool to hold a second task, which it starts the moment its
        first ends (``_runners.Runners.behind``), or ``None``. Only behind a task of one
        call (a plain task: its measured duration is the task's)."""
        measured_at = self._measured_at
        if self._runners is None or measured_at is None or self._longest >= QUEUE_SECONDS:
            return None
        plain = [
            runner
            for handle, (runner, _) in self._held.items()
            if isinstance(handle, ray.ObjectRef)
        ]
        return self._runners.behind(plain, measured_at, take=take)

    def _held_runners(self) -> list[Runner]:
        return [runner for runner, _ in self._held.values()]

    def wait(self, handles: Sequence[Any]) -> Any:
        refused = [handle for handle in handles if isinstance(handle, _Refused)]
        if refused:
            return refused[0]
        by_ref = {_next_ref(handle): handle for handle in handles}
        ready, _ = ray.wait(list(by_ref), num_returns=1, fetch_local=False)
        return by_ref[ready[0]]

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        raise NotImplementedError("submitted calls are driven by the pool's dispatcher")

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        tasks = [handle for handle in handles if not isinstance(handle, _Refused)]
        if not tasks or not ray.is_initialized():
            return [handle for handle in handles if isinstance(handle, _Refused)]
        by_ref = {_end_ref(handle): handle for handle in tasks}
        done, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0, fetch_local=False)
        ended = {id(by_ref[ref]) for ref in done}
        return [h for h in handles if isinstance(h, _Refused) or id(h) in ended]

    def cancel(self, handles: Sequence[Any], *, kill: bool = False) -> None:
        for handle in handles:
            self._futures.pop(handle, None)
        if not ray.is_initialized():
            self._let_go(handles)
            return
        ended = {id(handle) for handle in self.finished(handles)}
        running = [handle for handle in handles if id(handle) not in ended]
        self._let_go(running, lost=True)  # a runner still busy with a cancelled call
        self._let_go(handles)
        refs = [_end_ref(handle) for handle in running]
        if refs and raise_flag(self._cancel_key, kill=kill):
            forget_when_done(self._cancel_key, refs)

    def close(self) -> None:
        self._futures.clear()
        runners, self._runners = self._runners, None
        if runners is not None:
            for runner, _ in self._held.values():  # still running: not to be picked again
                runners.lost(runner)
            self._held.clear()
            release(runners)

    def _reported(self, handle: Any, count: int) -> None:
        """``count`` more of the calls of ``handle`` reported; all have: its runner is free."""
        held = self._held.get(handle)
        if held is not None:
            held[1] -= count
            if held[1] <= 0:
                self._let_go([handle])

    def _let_go(self, handles: Sequence[Any], *, lost: bool = False) -> None:
        """The tasks ``handles`` no longer count on their runners; ``lost``: the runners
        died (or are about to), and are replaced."""
        if self._runners is None:
            return
        for handle in handles:
            held = self._held.pop(handle, None)
            if held is not None:
                (self._runners.lost if lost else self._runners.done)(held[0])


def _next_ref(handle: Any) -> Any:
    """The ref of a task's next result: a stream's next piece, a plain task's return."""
    return handle if isinstance(handle, ray.ObjectRef) else next_piece(handle)


def _end_ref(handle: Any) -> Any:
    """A ref that is ready once the task has ended."""
    return handle if isinstance(handle, ray.ObjectRef) else handle.completed()


#: Errors for a whole task that a one-item task pins on its item, naming it.
_ABOUT_THE_ITEM = (WorkerUnpicklingError, ResultPicklingError, ResultUnpicklingError)


def _failed(failure: TaskFailure, items: list[Any] | None, size: int) -> BatchResult:
    """A batch all of whose items report ``failure``; naming the item, if it is alone."""
    error = failure.error
    if items is not None and len(items) == 1 and isinstance(error, _ABOUT_THE_ITEM):
        error.args = (f"{error.args[0]} (item: {item_repr(items[0])})", *error.args[1:])
    return failed_batch(size, error, failure.traceback, rerun=failure.rerun)


def _decoded(result: BatchResult, items: list[Any] | None) -> BatchResult:
    """A ``checked`` task's result with each value unpickled alone: one that cannot be
    (whatever it raises, ``SystemExit`` too) is that item's ``ResultUnpicklingError``."""
    values = result.values
    errors = dict(result.errors or {})
    for position, data in enumerate(values):
        if position in errors:
            continue
        try:
            values[position] = cloudpickle.loads(data)
        except (Exception, SystemExit) as exc:
            values[position] = None
            named = "" if items is None else f" of item {item_repr(items[position])}"
            error = ResultUnpicklingError(
                f"the result{named} cannot be unpickled here: {type(exc).__name__}: {exc}",
                repr(exc),
            )
            error.__cause__ = exc
            errors[position] = error, ""
    return result._replace(values=values, errors=errors or None, encoded=False)


class _InlineTask:
    __slots__ = ("items", "result")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.result: BatchResult | None = None


class InlineBackend:
    """Runs batches in the calling thread, one at a time, when the scheduler waits.

    Nothing is serialized and Ray is never touched: breakpoints in the mapped function work.
    """

    cpus = 1

    def __init__(
        self, fn: Callable[..., Any], *, unpack: Unpack, timeout: float | None, batched: bool
    ) -> None:
        self._fn = fn
        self._kwargs: dict[str, Any] = {"unpack": unpack, "timeout": timeout, "batched": batched}
        self.rerunnable = False
        self.streams = False

    def submit(self, items: list[Any], checked: bool = False) -> _InlineTask:
        return _InlineTask(items)

    def wait(self, handles: Sequence[Any]) -> Any:
        task: _InlineTask = handles[0]
        if task.result is None:
            task.result = run_batch(self._fn, task.items, **self._kwargs)
        return task

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        return self.wait(handles)

    def result(self, handle: Any, items: list[Any] | None, size: int) -> BatchResult:
        task: _InlineTask = handle
        assert task.result is not None, "result() before wait()"
        return task.result

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        return [task for task in handles if task.result is not None]

    def notify(self, handle: Any, callback: Callable[[Any], None]) -> None:
        self.wait([handle])
        callback(handle)

    def cancel(self, handles: Sequence[Any], *, kill: bool = False) -> None:
        pass

    def close(self) -> None:
        pass
