"""Code that runs a batch of items: inside a Ray task, or in the caller's process.

``run_batch`` is plain Python (sequential mode calls it directly); ``execute_batch`` is the
Ray task around it. User code runs in the process's main thread, one item at a time, as it
does under ``multiprocessing``.

Per-item timeouts and cancellation share one mechanism, ``_Watchdog``: while a batch runs,
``SIGALRM`` fires at the running item's deadline and then every ``TICK_SECONDS``.

* At the deadline the handler raises ``_ItemTimeout`` (a ``BaseException``, so a user's
  ``except Exception`` cannot swallow it) inside the user's code, wherever it is - in pure
  Python or in a blocking call such as ``time.sleep`` - the item becomes a
  ``TaskTimeoutError`` and the rest of the batch runs. The worker is never left busy.
* When the call was cancelled (``_cancel``: the driver raised the call's flag, and this
  process's ``CancelWatcher`` saw it), the next tick raises ``_Cancelled`` and the task
  returns at once; the driver no longer wants its result.

Limits: C code that neither returns nor checks for signals (a long BLAS call) is stopped
when it returns; user code must not use ``SIGALRM``/``ITIMER_REAL`` itself. Off the main
thread (sequential mode called from a thread) no signal can be used: an item that overran
its timeout is then reported as timed out when it returns.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from types import CodeType, FrameType, FunctionType, ModuleType, TracebackType
from typing import Any, NamedTuple

import ray
import ray.cloudpickle

from ._cancel import CancelWatcher
from ._config import Unpack
from ._errors import (
    BatchLengthError,
    BrokenPoolError,
    RemoteError,
    ResultPicklingError,
    TaskTimeoutError,
    WorkerUnpicklingError,
    item_repr,
)
from ._outcome import BatchResult, ItemError, failed_batch
from ._serialization import loads_callable

__all__ = [
    "FLUSH_SECONDS",
    "TICK_SECONDS",
    "CallItem",
    "CallRunner",
    "CallsSpec",
    "Piece",
    "Sealed",
    "Setup",
    "TaskSpec",
    "execute_batch",
    "execute_batch_max_calls",
    "execute_call",
    "execute_calls",
    "execute_calls_max_calls",
    "run_batch",
    "unseal",
]

#: While a batch runs, SIGALRM fires this often. Lower makes a cancelled task stop sooner;
#: each tick interrupts the user's code briefly.
TICK_SECONDS = 0.2

#: Deserialized callables a worker process keeps, most recently used last. A callable is
#: shipped once per map call; this cache makes it deserialized once per worker process.
CALLABLE_CACHE_SIZE = 16


class _ItemTimeout(BaseException):
    """Raised by the SIGALRM handler inside the item that passed its deadline."""


class _Cancelled(BaseException):
    """Raised by the SIGALRM handler once the batch's call has been cancelled."""


class _Watchdog:
    """The SIGALRM deadline and tick of one batch (a no-op off the main thread).

    Its user sets ``settled`` once the batch's outcome is known - as the last statement of
    the ``try`` whose ``except`` catches the tick's exceptions, and as the first of that
    ``except`` - with a plain assignment (a call could let the tick in first): from then on
    a tick raises nothing, so none escapes between there and the timer being turned off.
    """

    def __init__(self, cancelled: threading.Event | None = None) -> None:
        self.deadline: float | None = None
        self.active = False
        self.settled = False
        self._cancelled = cancelled
        self._previous: Any = None

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.settled:
            return
        if self._cancelled is not None and self._cancelled.is_set():
            raise _Cancelled
        deadline = self.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise _ItemTimeout

    def __enter__(self) -> _Watchdog:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
            # Restart interrupted read()/write() in C libraries; sleeps and waits are
            # interrupted regardless (signal(7)), which is what the tick is for.
            signal.siginterrupt(signal.SIGALRM, False)
            signal.setitimer(signal.ITIMER_REAL, TICK_SECONDS, TICK_SECONDS)
            self.active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.settled = True  # if the user has not: the timer is still on for a moment
        self.deadline = None
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
            self.active = False

    def arm(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, timeout, TICK_SECONDS)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _timeout_error(exc: BaseException, timeout: float) -> ItemError:
    error = TaskTimeoutError(f"item did not finish within its timeout of {timeout:g} s")
    return error, _format(exc)


def _caller(fn: Callable[..., Any], unpack: Unpack, items: Sequence[Any]) -> Callable[[Any], Any]:
    if unpack == "none":
        return fn
    if unpack == "args":
        return lambda item: fn(*item)
    if unpack == "kwargs":
        return lambda item: fn(**item)
    if unpack == "call":
        return lambda item: fn(*item[0], **item[1])
    # "auto": when no item of the batch is a tuple or a dict (the usual case), call fn
    # directly instead of testing every item; set(map(type, ...)) runs at C speed.
    if not any(issubclass(kind, (tuple, dict)) for kind in set(map(type, items))):
        return fn

    def auto(item: Any) -> Any:
        if isinstance(item, tuple):
            return fn(*item)
        if isinstance(item, dict):
            return fn(**item)
        return fn(item)

    return auto


#: What an item's function may raise that becomes that item's outcome, in a worker process:
#: anything - ``sys.exit()``, ``KeyboardInterrupt`` too - as ``ProcessPoolExecutor``'s
#: workers report it (but ``_passes``). In the caller's process (sequential mode) a
#: ``KeyboardInterrupt`` is the user's Ctrl-C: it goes through.
IN_WORKER: tuple[type[BaseException], ...] = (BaseException,)
IN_CALLER: tuple[type[BaseException], ...] = (Exception, SystemExit)


def _passes(exc: BaseException) -> bool:
    """Whether ``exc``, caught around an item, is not the item's: the watchdog's cancel, or
    Ray ending this worker (its ``SystemExit`` on ``SIGTERM``, when a node is drained or
    preempted, says so in ``ray_terminate_msg``): the worker must go, and its items run
    again elsewhere."""
    return isinstance(exc, _Cancelled) or hasattr(exc, "ray_terminate_msg")


def run_batch(
    fn: Callable[..., Any],
    items: Sequence[Any],
    *,
    unpack: Unpack = "auto",
    timeout: float | None = None,
    batched: bool = False,
    cancelled: threading.Event | None = None,
    caught: tuple[type[BaseException], ...] = IN_CALLER,
) -> BatchResult:
    """Run ``fn`` over ``items`` in this thread, one item at a time.

    An item's exception (or timeout) is recorded against that item and the batch goes on;
    ``caught`` are the exceptions that count as an item's (``IN_WORKER``, ``IN_CALLER``).
    With ``batched=True`` the whole list is one call, ``fn(list(items))``, which must return
    a list of the same length; a timeout or exception then applies to every item. Once
    ``cancelled`` is set the batch stops within a tick; the items it did not finish then
    report ``CancelledError``.

    Returns:
        A ``BatchResult`` with one entry per item.
    """
    with _Watchdog(cancelled) as watchdog:
        started = time.perf_counter()
        try:
            if batched:
                result = _run_batched(fn, items, timeout, watchdog, caught)
            elif timeout is None:
                result = _run_plain(_caller(fn, unpack, items), items, caught)
            else:
                call = _caller(fn, unpack, items)
                result = _run_timed(call, items, timeout, watchdog, caught)
            watchdog.settled = True
        except _Cancelled:
            watchdog.settled = True
            result = failed_batch(len(items), CancelledError("the map call was cancelled"))
        seconds = time.perf_counter() - started
    return result._replace(seconds=seconds)


def _run_plain(
    call: Callable[[Any], Any], items: Sequence[Any], caught: tuple[type[BaseException], ...]
) -> BatchResult:
    # The hot path for tiny items: map() runs the loop in C, and the try is entered once
    # per failure rather than once per item. extend() keeps what it appended before an
    # exception, and ``remaining`` resumes after the failed item.
    values: list[Any] = []
    errors: dict[int, ItemError] = {}
    remaining = iter(items)
    while True:
        try:
            values.extend(map(call, remaining))
            return BatchResult(values, errors or None, 0.0)
        except caught as exc:
            if _passes(exc):
                raise
            errors[len(values)] = (exc, _format(exc))
            values.append(None)


def _run_timed(
    call: Callable[[Any], Any],
    items: Sequence[Any],
    timeout: float,
    watchdog: _Watchdog,
    caught: tuple[type[BaseException], ...],
) -> BatchResult:
    values: list[Any] = []
    errors: dict[int, ItemError] = {}
    timeouts: set[int] = set()
    for position, item in enumerate(items):
        item_started = time.monotonic()
        try:
            try:
                watchdog.arm(timeout)
                value = call(item)
            finally:
                watchdog.deadline = None
            if not watchdog.active and time.monotonic() - item_started > timeout:
                raise _ItemTimeout
            values.append(value)
        except _ItemTimeout as exc:
            watchdog.deadline = None
            values.append(None)
            errors[position] = _timeout_error(exc, timeout)
            timeouts.add(position)
        except caught as exc:
            watchdog.deadline = None
            if _passes(exc):
                raise
            values.append(None)
            errors[position] = (exc, _format(exc))
    return BatchResult(values, errors or None, 0.0, frozenset(timeouts) or None)


def _run_batched(
    fn: Callable[..., Any],
    items: Sequence[Any],
    timeout: float | None,
    watchdog: _Watchdog,
    caught: tuple[type[BaseException], ...],
) -> BatchResult:
    size = len(items)
    started = time.monotonic()
    try:
        try:
            if timeout is not None:
                watchdog.arm(timeout)
            values = fn(list(items))
        finally:
            watchdog.deadline = None
        overran = timeout is not None and time.monotonic() - started > timeout
        if overran and not watchdog.active:
            raise _ItemTimeout
    except _ItemTimeout as exc:
        assert timeout is not None
        return failed_batch(size, *_timeout_error(exc, timeout))
    except caught as exc:
        if _passes(exc):
            raise
        return failed_batch(size, exc, _format(exc), retry=False)
    try:
        values = list(values)
    except TypeError as exc:
        error = BatchLengthError(f"a batched function must return a list, got {exc}")
        return failed_batch(size, error, retry=False)
    if len(values) != size:
        message = f"the batched function returned {len(values)} results for a batch of {size} items"
        return failed_batch(size, BatchLengthError(message), retry=False)
    return BatchResult(values, None, 0.0)


#: ``(pool key, digest)`` -> the deserialized callable (``pool key`` is ``None`` outside a
#: pool with an initializer, where callables need no shared namespace).
_callables: OrderedDict[tuple[str | None, str], Callable[..., Any]] = OrderedDict()


def _resolve(
    digest: str, box: list[Any], namespace: _Namespace | None = None
) -> Callable[..., Any]:
    """The callable ``digest`` names, from this process's cache or from ``box``.

    ``box`` holds the serialized callable, or the ObjectRef of it inside a list, so that Ray
    does not fetch it for every task: only a cache miss reads it. With a ``namespace``, the
    callable's ``__main__`` functions are adopted into it (see ``_Namespace``).
    """
    cache_key = (namespace.key if namespace is not None else None, digest)
    fn = _callables.get(cache_key)
    if fn is None:
        try:
            payload = box[0]
            fn = loads_callable(payload if isinstance(payload, bytes) else ray.get(payload))
        except Exception as exc:
            raise WorkerUnpicklingError(
                f"a Ray worker cannot load the function to run ({type(exc).__name__}: {exc}); "
                "its module must be importable on the workers: define it in __main__, or "
                "ship your code with runtime_env={'working_dir': ...} or 'py_modules'"
            ) from exc
        if namespace is not None:
            fn = namespace.adopt(fn)
        _callables[cache_key] = fn
        while len(_callables) > CALLABLE_CACHE_SIZE:
            _callables.popitem(last=False)
    else:
        _callables.move_to_end(cache_key)
    return fn


#: What a pool with an initializer sends with each task: ``(pool key, digest, box,
#: initargs)``; the worker runs ``initializer(*initargs)`` before the pool's first item in
#: this process. ``digest`` and ``box`` carry the initializer as ``_resolve`` reads them.
Setup = tuple[str, str, list[Any], tuple[Any, ...]]

#: Pools whose namespace a worker process keeps (least recently used dropped first; a
#: dropped pool would run its initializer again).
NAMESPACES_KEPT = 64
_MISSING = object()


class _Namespace:
    """The module globals that one pool's ``__main__`` functions share in this process.

    dill ships a ``__main__`` function with a private copy of the globals it reads, so an
    initializer that sets a global would set it where the mapped function never looks
    (ray-project/ray#37705). Instead, every ``__main__`` function of the pool - the
    initializer, the mapped and submitted functions, and the ``__main__`` functions their
    globals reach - is rebound to this one dict, as they would share their module under
    ``multiprocessing``. A newly loaded function brings the driver's current values of the
    globals it reads, except the data globals the initializer names or sets: those stay as
    the initializer left them (assigned, or mutated like ``CACHE.update(...)``).
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.globals: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.pinned: set[str] = set()
        self.ready = False

    def adopt(self, fn: Any) -> Any:
        if isinstance(fn, functools.partial):
            return functools.partial(self.adopt(fn.func), *fn.args, **fn.keywords)
        return self._rebind(fn, {})

    def _rebind(self, fn: Any, done: dict[int, Any]) -> Any:
        if (
            not isinstance(fn, FunctionType)
            or fn.__module__ != "__main__"
            or fn.__globals__ is self.globals
            or fn.__globals__ is getattr(sys.modules.get("__main__"), "__dict__", None)
        ):
            return fn
        if id(fn) in done:
            return done[id(fn)]
        new = FunctionType(fn.__code__, self.globals, fn.__name__, fn.__defaults__, fn.__closure__)
        new.__kwdefaults__ = fn.__kwdefaults__
        new.__qualname__ = fn.__qualname__
        new.__doc__ = fn.__doc__
        new.__dict__.update(fn.__dict__)
        done[id(fn)] = new
        for name, value in fn.__globals__.items():
            if name in self.pinned and name in self.globals:
                continue
            self.globals[name] = self._rebind(value, done)
        return new

    def initialize(self, digest: str, box: list[Any], initargs: tuple[Any, ...]) -> None:
        """Run the pool's initializer here; pin the data globals it names or sets."""
        initializer = _resolve(digest, box, self)
        before = dict(self.globals)
        initializer(*initargs)
        named = _global_names(getattr(initializer, "__code__", None))
        for name, value in self.globals.items():
            changed = before.get(name, _MISSING) is not value
            code = isinstance(value, (FunctionType, type, ModuleType))
            if changed or (name in named and not code):
                self.pinned.add(name)
        self.ready = True


def _global_names(code: CodeType | None) -> set[str]:
    """The names ``code`` (and the code nested in it) may read or write as globals."""
    if code is None:
        return set()
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names


_namespaces: OrderedDict[str, _Namespace] = OrderedDict()


def _set_up(setup: Setup) -> tuple[_Namespace, ItemError | None]:
    """This process's namespace of the pool, its initializer run once; or the error the
    initializer raised (it runs again on the pool's next task here)."""
    key, digest, box, initargs = setup
    namespace = _namespaces.get(key)
    if namespace is None:
        namespace = _namespaces[key] = _Namespace(key)
        while len(_namespaces) > NAMESPACES_KEPT:
            _namespaces.popitem(last=False)
    else:
        _namespaces.move_to_end(key)
    if not namespace.ready:
        try:
            namespace.initialize(digest, box, initargs)
        except Exception as exc:
            error = BrokenPoolError(
                f"the pool's initializer failed in worker process {os.getpid()}: "
                f"{type(exc).__name__}: {exc}"
            )
            return namespace, (error, _format(exc))
    return namespace, None


def _portable(error: ItemError) -> ItemError:
    """``error`` itself if it survives a pickle round trip, else a ``RemoteError``."""
    exc, tb = error
    try:
        ray.cloudpickle.loads(ray.cloudpickle.dumps(exc))  # type: ignore[no-untyped-call]
    except Exception:
        try:
            message = str(exc)
        except Exception:
            message = "<str() failed>"
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return RemoteError(name, message, tb), tb
    return error


_watcher = CancelWatcher()


#: What every task of one call shares: ``(digest, box, unpack, timeout, batched, cancel
#: key, setup, checked)``. One argument rather than eight: Ray's cost to submit a task
#: grows with its number of arguments. ``checked``: pickle each value here (``_encoded``).
TaskSpec = tuple[str, list[Any], Unpack, float | None, bool, str, Setup | None, bool]


def _execute_batch(spec: TaskSpec, items: list[Any]) -> Sealed:
    return _seal(_run_task(spec, items), items, spec[-1])


def _run_task(spec: TaskSpec, items: list[Any]) -> BatchResult:
    digest, box, unpack, timeout, batched, cancel_key, setup, _ = spec
    _watcher.begin(cancel_key)
    try:
        namespace = None
        if setup is not None:
            namespace, failure = _set_up(setup)
            if failure is not None:
                return failed_batch(len(items), *failure)
        try:
            fn = _resolve(digest, box, namespace)
        except WorkerUnpicklingError as exc:
            return failed_batch(len(items), exc, _format(exc))
        result = run_batch(
            fn,
            items,
            unpack=unpack,
            timeout=timeout,
            batched=batched,
            cancelled=_watcher.cancelled,
            caught=IN_WORKER,
        )
    finally:
        _watcher.end()
    return _with_portable_errors(result)


def _with_portable_errors(result: BatchResult) -> BatchResult:
    """``result`` with each error one the driver can unpickle (``_portable``)."""
    if not result.errors:
        return result
    portable = {position: _portable(error) for position, error in result.errors.items()}
    return result._replace(errors=portable)


#: What a task returns: its ``BatchResult`` pickled here, and the out-of-band buffers of
#: that pickle (large arrays: Ray stores them without a copy). Ray then never unpickles a
#: user's object in its own threads (where a ``SystemExit`` would end the driver): the
#: driver does, in ``unseal``, where any failure is caught.
Sealed = tuple[bytes | pickle.PickleBuffer, list[pickle.PickleBuffer]]

#: A sealed pickle this large travels as a buffer, out of Ray's own pickle (one copy less
#: on each side); smaller, a buffer costs Ray more than the copy.
OUT_OF_BAND_BYTES = 64 * 1024


def _seal(result: BatchResult, items: list[Any], checked: bool) -> Sealed:
    """``result`` sealed; ``checked``: each value pickled alone first (``_encoded``)."""
    return _sealed(_encoded(result, items) if checked else result, items)


def _sealed(result: BatchResult, items: list[Any]) -> Sealed:
    """``result`` pickled; if a value cannot be (whatever its ``__reduce__`` raises,
    ``SystemExit`` too), pickled value by value so that only that item fails."""
    try:
        return _pickle(result)
    except BaseException:
        if result.encoded:
            raise  # bytes and portable errors: cannot fail; a bug if it does
    return _pickle(_encoded(result, items))


def _pickle(result: BatchResult) -> Sealed:
    buffers: list[pickle.PickleBuffer] = []
    data = ray.cloudpickle.dumps(result, protocol=5, buffer_callback=buffers.append)  # type: ignore[no-untyped-call]
    if len(data) >= OUT_OF_BAND_BYTES:  # Ray stores it as it stores a buffer: no copy
        return pickle.PickleBuffer(data), buffers
    return data, buffers


def unseal(sealed: Sealed) -> BatchResult:
    """The ``BatchResult`` a task sealed (in the driver). Raises what unpickling raises."""
    data, buffers = sealed
    result: BatchResult = ray.cloudpickle.loads(data, buffers=buffers)
    return result


def _encoded(result: BatchResult, items: list[Any]) -> BatchResult:
    """``result`` with each value pickled here, one by one: a value that cannot be pickled
    becomes that item's ``ResultPicklingError`` instead of failing - or killing - the whole
    task. The driver unpickles each value alone in the same way (``_backend``)."""
    values = list(result.values)
    errors = dict(result.errors or {})
    for position, value in enumerate(values):
        if position in errors:
            continue
        try:
            values[position] = ray.cloudpickle.dumps(value)  # type: ignore[no-untyped-call]
        except BaseException as exc:
            values[position] = None
            error = ResultPicklingError(
                f"the result of item {item_repr(items[position])} cannot be pickled to be "
                f"sent back: {type(exc).__name__}: {exc}",
                repr(exc),
                item_repr(value),
                _portable((exc, ""))[0],
            )
            errors[position] = error, _format(exc)
    return result._replace(values=values, errors=errors or None, encoded=True)


#: The Ray task that runs one batch. Defined at import; Ray needs no ``init`` for that.
execute_batch = ray.remote(_execute_batch)


# -- submitted calls: many functions in one task, results streamed ---------------------------


class CallItem(NamedTuple):
    """One submitted call as a task carries it. The calls of one function share its
    ``box`` object, which Ray's pickle then writes once per task, not once per call."""

    digest: str
    box: list[Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __repr__(self) -> str:  # how errors name the call (item_repr): its arguments
        return repr((self.args, self.kwargs))


#: What every task of submitted calls carries: ``(timeout, cancel key, setup, checked)``.
CallsSpec = tuple[float | None, str, Setup | None, bool]

#: Results travel back in pieces: a piece is sent before the next call unless that call is
#: expected to end within this long of the piece's first call's start. So a result waits
#: at most about this long for the results after it - tiny and short calls go back
#: together (each piece costs a Ray object: about half a millisecond of the driver's CPU
#: here), a call before a slow or unknown one goes back at once. Lower resolves futures
#: sooner; higher costs the driver less.
FLUSH_SECONDS = 0.02

#: Measured seconds of a call, per function (digest), in this process: what the next
#: call is expected to take - the longest recent one; the estimate keeps this share of
#: itself at each call (lower forgets a slow call sooner):
CALL_ESTIMATE_DECAY = 0.9
#: Functions whose estimate a process keeps (all are forgotten past this many).
CALL_ESTIMATES_KEPT = 1024
_call_seconds: dict[str, float] = {}


#: What a task of calls yields for each piece: how many calls it reports (so that the
#: driver knows, even if it cannot unpickle them) and their sealed ``BatchResult``.
Piece = tuple[int, Sealed]


def _execute_calls(spec: CallsSpec, items: list[CallItem]) -> Iterator[Piece]:
    timeout, cancel_key, setup, checked = spec
    _watcher.begin(cancel_key)
    try:
        namespace = None
        if setup is not None:
            namespace, failure = _set_up(setup)
            if failure is not None:
                yield len(items), _seal(failed_batch(len(items), *failure), items, checked)
                return
        for start, result in _run_calls(items, namespace, timeout):
            piece = items[start : start + len(result.values)]
            yield len(piece), _seal(_with_portable_errors(result), piece, checked)
    finally:
        _watcher.end()


def _run_calls(
    items: list[CallItem], namespace: _Namespace | None, timeout: float | None
) -> Iterator[tuple[int, BatchResult]]:
    """Run the calls in order; yield ``(first position, result)`` of each piece."""
    functions: dict[str, Callable[..., Any]] = {}

    def call(item: CallItem) -> Any:
        fn = functions.get(item.digest)
        if fn is None:  # a function that cannot be loaded fails its own calls only
            fn = functions[item.digest] = _resolve(item.digest, item.box, namespace)
        return fn(*item.args, **item.kwargs)

    start = 0
    while start < len(items):
        result = _run_piece(call, items, start, timeout)
        yield start, result
        start += len(result.values)


def _run_piece(
    call: Callable[[CallItem], Any], items: list[CallItem], start: int, timeout: float | None
) -> BatchResult:
    """Run calls from ``start`` on until the next one is not expected to end within
    ``FLUSH_SECONDS`` of the first. The watchdog is off between pieces: its signal never
    fires inside Ray's code while the piece is sent."""
    values: list[Any] = []
    errors: dict[int, ItemError] = {}
    retry: set[int] = set()
    began = time.perf_counter()
    with _Watchdog(_watcher.cancelled) as watchdog:
        try:
            for item in itertools.islice(items, start, None):
                if values:
                    expected = _call_seconds.get(item.digest)
                    if expected is None or time.perf_counter() - began + expected >= FLUSH_SECONDS:
                        break
                called = time.perf_counter()
                if timeout is None:
                    one = _run_plain(call, (item,), IN_WORKER)
                else:
                    one = _run_timed(call, (item,), timeout, watchdog, IN_WORKER)
                seconds = time.perf_counter() - called
                # The longest recent call, fading: one slow call makes the next ones of
                # its function go back at once for a while.
                old = _call_seconds.get(item.digest, 0.0)
                _call_seconds[item.digest] = max(seconds, old * CALL_ESTIMATE_DECAY)
                if one.errors:
                    errors[len(values)] = one.errors[0]
                if one.retry:
                    retry.add(len(values))
                values.append(one.values[0])
            watchdog.settled = True
        except _Cancelled:
            watchdog.settled = True
            return failed_batch(len(items) - start, CancelledError("the call was cancelled"))
    if len(_call_seconds) > CALL_ESTIMATES_KEPT:
        _call_seconds.clear()
    return BatchResult(
        values, errors or None, time.perf_counter() - began, frozenset(retry) or None
    )


def _execute_call(spec: CallsSpec, items: list[CallItem]) -> Piece:
    """``_execute_calls`` for one call: its one piece, returned."""
    (piece,) = _execute_calls(spec, items)
    return piece


#: The Ray task that runs a batch of submitted calls, sending results back as they finish.
execute_calls = ray.remote(num_returns="streaming")(_execute_calls)
#: The Ray task that runs one submitted call: a plain task, which costs Ray about half a
#: millisecond less of CPU, on each side, than a streaming one.
execute_call = ray.remote(_execute_call)


class _CallRunner:
    """A worker process kept for many tasks of submitted calls (``_runners``): an actor
    whose methods run them as ``execute_call`` and ``execute_calls`` do, in its main
    thread (an actor's, with Ray's default concurrency of one), where the watchdog's
    signal reaches them."""

    def call(self, spec: CallsSpec, items: list[CallItem]) -> Piece:
        return _execute_call(spec, items)

    def calls(self, spec: CallsSpec, items: list[CallItem]) -> Iterator[Piece]:
        yield from _execute_calls(spec, items)

    def pickled(self, task: bytes) -> Piece:
        """``call`` of a task the driver pickled itself as ``(spec, items)`` (one call whose
        arguments are plain values, which the driver chose)."""
        spec, items = pickle.loads(task)
        return _execute_call(spec, items)


#: The actor class of ``_runners``; no resources of its own (they are given per actor).
CallRunner = ray.remote(_CallRunner)


@functools.cache
def execute_batch_max_calls(max_calls: int) -> Any:
    """``execute_batch`` in a worker process that exits after ``max_calls`` tasks of it
    (Ray accepts ``max_calls`` only here, not in ``.options()``)."""
    return ray.remote(max_calls=max_calls)(_execute_batch)


@functools.cache
def execute_calls_max_calls(max_calls: int) -> Any:
    """``execute_calls`` in a worker process that exits after ``max_calls`` tasks of it."""
    return ray.remote(max_calls=max_calls, num_returns="streaming")(_execute_calls)
