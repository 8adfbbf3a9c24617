"""Exceptions raised by raypool itself.

Every class subclasses the stdlib type a user of ``multiprocessing`` or
``concurrent.futures`` already catches, so that switching the import does not
change which ``except`` clause fires::

    RayPoolError(Exception)                         base for everything raypool raises itself
    ├─ PoolClosedError(RayPoolError, ValueError, RuntimeError)
    │                                               you closed the pool: ``Pool`` code expects
    │                                               a ``ValueError``, ``Executor`` code a
    │                                               ``RuntimeError``
    ├─ BrokenPoolError(RayPoolError, BrokenProcessPool)
    │  │                                            Ray failed under a task (worker or node lost);
    │  │                                            ``__cause__`` is the Ray error
    │  ├─ WorkerCrashedError                        this item's worker process died running it,
    │  │                                            every time it was retried
    │  ├─ EnvironmentSetupError                     Ray could not set up the task's runtime_env
    │  ├─ WorkerUnpicklingError(..., pickle.UnpicklingError)
    │  │                                            the item (or the function) could not be
    │  │                                            unpickled in the worker
    │  └─ ResultUnpicklingError(..., MaybeEncodingError)
    │                                               the item's result could not be unpickled
    │                                               in the driver
    ├─ ResultPicklingError(RayPoolError, MaybeEncodingError)
    │                                               the item's result could not be pickled in
    │                                               the worker
    ├─ TaskTimeoutError(RayPoolError, multiprocessing.TimeoutError,
    │                   concurrent.futures.TimeoutError, TimeoutError)
    │                                               an item ran longer than its ``timeout``
    ├─ SerializationError(RayPoolError, pickle.PicklingError, TypeError)
    │  │                                            the callable or an item cannot be shipped
    │  └─ NotShareableError(..., RuntimeError)      it holds a multiprocessing queue, lock...:
    │                                               use a Manager() one
    ├─ ResultTooLargeError(RayPoolError, MemoryError)
    │                                               this item's result fits neither in Ray's
    │                                               object store nor on its spill disk
    ├─ TaskCancelledError(RayPoolError, concurrent.futures.CancelledError)
    │                                               Ray cancelled the task (raypool never asks
    │                                               it to)
    ├─ CheckpointError(RayPoolError)                the checkpoint store is unusable
    ├─ BatchLengthError(RayPoolError, ValueError)   a batched function returned the wrong count
    ├─ RemoteError(RayPoolError)                    an exception that could not be sent back
    ├─ ClusterUnreachableError(RayPoolError, ConnectionError)
    │                                               ``address=`` names no reachable Ray cluster
    └─ ForkedProcessError(RayPoolError, RuntimeError)
                                                    raypool used in a process forked from one
                                                    connected to Ray
    RemoteTraceback                                 never raised: the worker-side traceback,
                                                    attached as ``__cause__`` of the user's error
                                                    (``multiprocessing.pool.RemoteTraceback``)

This module imports nothing from raypool and nothing outside the standard library.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.pool
import pickle
import reprlib
import sys
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]  # typeshed lacks it
from typing import Any

__all__ = [
    "WorkerUnpicklingError",
    "BatchLengthError",
    "BrokenPoolError",
    "CheckpointError",
    "ClusterUnreachableError",
    "EnvironmentSetupError",
    "ForkedProcessError",
    "NotShareableError",
    "PoolClosedError",
    "RayPoolError",
    "RemoteError",
    "RemoteTraceback",
    "ResultPicklingError",
    "ResultTooLargeError",
    "ResultUnpicklingError",
    "SerializationError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "WorkerCrashedError",
]


class RayPoolError(Exception):
    """Base class of the exceptions raypool raises itself."""


class PoolClosedError(RayPoolError, ValueError, RuntimeError):
    """The pool was closed, shut down or terminated, so it takes no new work.

    ``multiprocessing.Pool`` raises ``ValueError("Pool not running")`` here and
    ``concurrent.futures`` a ``RuntimeError``: this is both.
    """


class BrokenPoolError(RayPoolError, BrokenProcessPool):
    """Ray failed under a task: a worker process or node was lost, or Ray itself broke.

    The Ray exception is the ``__cause__``.
    """


class EnvironmentSetupError(BrokenPoolError):
    """Ray could not set up the task's ``runtime_env`` (a package that does not install, a
    ``working_dir`` that cannot be uploaded...). Ray's error is the ``__cause__``; the items
    are not run again."""


class TaskCancelledError(RayPoolError, concurrent.futures.CancelledError):
    """Ray cancelled the task running this item (raypool cancels its own tasks
    cooperatively and never asks Ray to: someone called ``ray.cancel`` on it). Ray's error
    is the ``__cause__``."""


class WorkerCrashedError(BrokenPoolError):
    """The worker process died while it ran this item - ``os._exit``, a segfault, a kill,
    the out-of-memory killer - on its first run and on each of its ``max_retries`` retries.

    The other items of its task are run again without it and are not affected. The Ray
    exception is the ``__cause__``.
    """


class ResultTooLargeError(RayPoolError, MemoryError):
    """This item's result could not be stored: Ray's object store was full and so was the
    disk it spills objects to. A ``MemoryError``: the cluster's memory for results ran out.

    The other items of its task are run again without it and are not affected; the item is
    not retried (its result would be as large again). Ray's ``ObjectStoreFullError`` or
    ``OutOfDiskError`` is the ``__cause__``.
    """


class WorkerUnpicklingError(BrokenPoolError, pickle.UnpicklingError):
    """An item (or the function, or the initializer) could not be unpickled in the worker,
    which never ran it.

    A ``BrokenProcessPool``, as ``ProcessPoolExecutor`` reports it, and a
    ``pickle.UnpicklingError``. The other items of its task run without it.
    """


class _ResultError(MaybeEncodingError):  # type: ignore[misc]
    """``MaybeEncodingError`` with raypool's message; ``exc`` and ``value`` keep the
    stdlib's meaning (the reprs of the error and of the result)."""

    def __init__(self, message: str, exc: str = "", value: str = "") -> None:
        Exception.__init__(self, message, exc, value)
        self.exc = exc
        self.value = value

    def __str__(self) -> str:
        return str(self.args[0])


class ResultPicklingError(RayPoolError, _ResultError):
    """This item's result could not be pickled in the worker to be sent back.

    The ``multiprocessing.pool.MaybeEncodingError`` that ``multiprocessing.Pool`` raises
    there. ``reason`` is the exception the pickling raised (also a ``BaseException`` such
    as ``SystemExit``): ``Executor`` code receives that exception itself, as
    ``ProcessPoolExecutor`` delivers it.
    """

    def __init__(
        self, message: str, exc: str = "", value: str = "", reason: BaseException | None = None
    ) -> None:
        super().__init__(message, exc, value)
        self.reason = reason

    def __reduce__(self) -> Any:
        return type(self), (*self.args, self.reason)


class ResultUnpicklingError(BrokenPoolError, _ResultError):
    """This item's result arrived but could not be unpickled here, in the driver.

    A ``MaybeEncodingError`` for ``Pool`` code and a ``BrokenProcessPool`` for ``Executor``
    code (what each stdlib pool reports). The exception the unpickling raised is the
    ``__cause__``.
    """

    def __init__(self, message: str, exc: str = "", value: str = "") -> None:
        _ResultError.__init__(self, message, exc, value)  # RuntimeError's would skip it


def _timeout_bases() -> tuple[type[BaseException], ...]:
    # On Python 3.10 concurrent.futures.TimeoutError is its own class; from 3.11 on it is
    # the builtin. Listing a class twice in the bases is an error, so deduplicate.
    bases: list[type[BaseException]] = [RayPoolError, multiprocessing.TimeoutError]
    for cls in (concurrent.futures.TimeoutError, TimeoutError):
        if cls not in bases:
            bases.append(cls)
    return tuple(bases)


class TaskTimeoutError(*_timeout_bases()):  # type: ignore[misc]
    """An item ran longer than the ``timeout`` it was given.

    It is an instance of the builtin ``TimeoutError``, of ``concurrent.futures.TimeoutError``
    and of ``multiprocessing.TimeoutError``, so existing ``except`` clauses keep working.
    """

    def __init__(self, message: str = "item timed out") -> None:
        # OSError (the builtin TimeoutError's base) would read a 2-tuple of args as
        # (errno, strerror): keep exactly one argument so str() and pickling stay plain.
        super().__init__(message)

    def __reduce__(self) -> tuple[type[TaskTimeoutError], tuple[str]]:
        return type(self), (str(self.args[0]) if self.args else "item timed out",)


class SerializationError(RayPoolError, pickle.PicklingError, TypeError):
    """An object could not be serialized to be shipped to the workers.

    Also a ``TypeError``, which ``multiprocessing`` raises for an argument it cannot pickle.
    """


class NotShareableError(SerializationError, RuntimeError):
    """An argument, an initarg or the function holds a ``multiprocessing`` queue, lock,
    event, pipe... - objects that only processes ``multiprocessing`` starts can share (it
    raises a ``RuntimeError`` for them too). The same object from a
    ``multiprocessing.Manager()`` works: its proxies reach the manager from Ray's workers
    on the driver's machine."""


class CheckpointError(RayPoolError):
    """The checkpoint store could not be read or written."""


class BatchLengthError(RayPoolError, ValueError):
    """A function mapped with ``batched=True`` returned a list of the wrong length."""


class RemoteError(RayPoolError):
    """An exception raised in a worker that could not be sent back as itself.

    Raised (or returned under ``safe_exceptions``) in place of the original exception when
    that exception cannot be pickled. It keeps what can be kept.

    Attributes:
        type_name: qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        traceback_text: the worker-side traceback, formatted.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message} (the exception could not be pickled)"


class ClusterUnreachableError(RayPoolError, ConnectionError):
    """``address=`` names a Ray cluster that cannot be reached."""


class ForkedProcessError(RayPoolError, RuntimeError):
    """raypool - or a Ray call that goes through Ray's core worker, once raypool has used
    Ray - was used in a process forked from one connected to Ray (``multiprocessing``'s
    ``fork`` start method, ``os.fork()``). A forked child shares its parent's Ray
    connection without the threads behind it: using it would hang and break the parent's.
    Start such processes with the ``spawn`` or ``forkserver`` method instead.
    """

    @classmethod
    def inherited(cls, what: str, pid: int) -> ForkedProcessError:
        """The error for ``what`` - an object of process ``pid`` - used in a child forked
        from it."""
        return cls(
            f"{what} belongs to process {pid}, from which this process was forked: a forked "
            "child cannot use its parent's raypool objects or Ray connection. Start "
            "processes that use raypool with the 'spawn' or 'forkserver' start method"
        )


#: The traceback of an exception as formatted in the worker. Never raised: raypool sets it
#: as the ``__cause__`` of the user's own exception, so the worker-side frames show up under
#: "The above exception was the direct cause of the following exception". It *is*
#: ``multiprocessing.pool.RemoteTraceback`` (``.tb`` holds the text), so code and tests that
#: check for the stdlib's type keep working; ``submit`` futures carry
#: ``concurrent.futures.process._RemoteTraceback`` instead, as ``ProcessPoolExecutor``'s do.
RemoteTraceback: type[Exception]
RemoteTraceback = multiprocessing.pool.RemoteTraceback  # type: ignore[attr-defined]


_ITEM_REPR = reprlib.Repr()
_ITEM_REPR.maxother = _ITEM_REPR.maxstring = 80


def item_repr(item: object) -> str:
    """How an error names an item: its ``repr``, shortened; never raises."""
    try:
        return _ITEM_REPR.repr(item)
    except Exception:
        return f"<{type(item).__qualname__} object>"


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the user's
    code: the first frame outside raypool."""
    level, frame = 1, sys._getframe(1)  # noqa: SLF001 - as warnings' own stacklevel
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("raypool"):
        level, frame = level + 1, frame.f_back
    return level


def attach_remote_traceback(exc: BaseException, tb: str) -> BaseException:
    """Return ``exc`` with ``tb`` (worker-side traceback text) attached as its cause."""
    if tb:
        exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc
