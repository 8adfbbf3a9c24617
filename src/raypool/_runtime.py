"""Ray's lifecycle and Ray's errors: the one place that decides when ``ray.init`` runs.

* ``ensure_ray`` starts a quiet local Ray (no dashboard) on first use, or connects to
  ``address``; a Ray that is already initialized is used as it is and never re-initialized
  or shut down by raypool. An ``address`` that cannot be reached fails within seconds with
  ``ClusterUnreachableError`` (``ray.init`` itself would retry for minutes) and never falls
  back to a local instance.
* ``classify`` is the one translation of a Ray exception raised for a whole task into what
  each of its items reports, and whether they may run again.
* A process forked while this one was connected to Ray inherits the connection without the
  threads behind it: ``ensure_ray`` refuses it (``ForkedProcessError``), so do Ray's own
  calls there that go through its core worker (``ray.get``, ``ray.put``...), and Ray's exit
  hooks and finalizers are taken out of it, so that its exit and its garbage do not act on
  the parent's connection. Any forked child - of a driver or of a Ray worker - gets
  ``SIGTERM``'s default action back from Ray's handler (``_restore_sigterm``).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

import ray
import ray.exceptions

from . import _lifecycle
from ._errors import (
    BrokenPoolError,
    ClusterUnreachableError,
    EnvironmentSetupError,
    ForkedProcessError,
    ResultTooLargeError,
    ResultUnpicklingError,
    TaskCancelledError,
    WorkerCrashedError,
    WorkerUnpicklingError,
)
from ._outcome import Rerun

__all__ = [
    "check_reachable",
    "cluster_cpus",
    "ensure_ray",
    "in_task",
    "lend_cpu",
    "task_cpus",
    "next_piece",
    "ray_up",
    "set_by_ray",
    "take_piece",
    "job_runtime_env",
    "TaskFailure",
    "classify",
    "unpickling_failure",
]

#: Seconds to wait for a TCP connection to ``address`` before calling it unreachable.
CONNECT_TIMEOUT = 5.0

#: Port of a Ray head's GCS, when ``address`` names a host only.
DEFAULT_GCS_PORT = 6379
#: Port of the Ray Client server, for ``ray://host`` addresses without a port.
DEFAULT_CLIENT_PORT = 10001

_init_lock = threading.Lock()
#: Ray was connected when this process was forked from its parent: the connection is the
#: parent's, and unusable here.
_inherited_ray = False
#: raypool has used Ray in this process: a child forked from it gets Ray's exit hooks
#: detached (``_detach_inherited_ray``).
_used_ray = False
#: ``(job id, runtime env)`` of the Ray job raypool started, when it started one.
_started_job: tuple[str, dict[str, Any] | None] | None = None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of an explicit address, or ``None`` for ``"auto"``/``"local"``."""
    if address in ("auto", "local"):
        return None
    if "://" in address:
        parts = urlsplit(address)
        default = DEFAULT_CLIENT_PORT if parts.scheme == "ray" else DEFAULT_GCS_PORT
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname:
            return None
        return parts.hostname, port or default
    host, sep, port_text = address.rpartition(":")
    if not sep:
        return address, DEFAULT_GCS_PORT
    try:
        return host.strip("[]"), int(port_text)
    except ValueError:
        raise ClusterUnreachableError(f"cannot read a port in Ray address {address!r}") from None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise ``ClusterUnreachableError`` unless a TCP connection to ``address`` opens.

    ``"auto"`` and ``"local"`` are left to Ray, which fails fast for them.
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        host, port = target
        raise ClusterUnreachableError(
            f"no Ray cluster answers at {address!r} ({host}:{port}: {exc}); start one with "
            "`ray start --head`, or pass address=None for a local instance"
        ) from exc


def ensure_ray(
    address: str | None = None,
    *,
    password: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> bool:
    """Make sure this process is connected to Ray.

    Args:
        address: cluster to connect to; ``None`` starts a local instance (or uses the one
            ``RAY_ADDRESS`` names, as ``ray.init`` does).
        password: the legacy Redis password of that cluster (never logged).
        runtime_env: the job's runtime environment, used only if this call starts Ray.

    Returns:
        ``True`` if this call initialized Ray, ``False`` if it was already initialized.

    Raises:
        ClusterUnreachableError: ``address`` cannot be reached.
        ForkedProcessError: this process was forked from one connected to Ray.
    """
    global _started_job, _used_ray, _inherited_ray
    with _init_lock:
        if _inherited_ray:  # for good: ray.shutdown() cannot complete in a forked child
            raise _forked_error("raypool")
        _used_ray = True
        if ray.is_initialized():
            return False
        target = address or os.environ.get("RAY_ADDRESS")
        if target:
            check_reachable(target)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
        }
        if address:
            kwargs["address"] = address
        if password:
            kwargs["_redis_password"] = password
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            if target and _refused_token(exc):
                raise ClusterUnreachableError(
                    f"the Ray cluster at {target!r} refused this process's authentication "
                    "token: it uses Ray's token authentication, and Ray sends a token to an "
                    "explicit address only when told to. Set RAY_AUTH_MODE=token and give "
                    "the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                    "~/.ray/auth_token"
                ) from exc
            raise
        job = ray.get_runtime_context().get_job_id()
        _started_job = job, dict(runtime_env) if runtime_env else None
        return True


def ray_up() -> bool:
    """Whether this process is connected to Ray (a user's ``ray.shutdown()`` ends it)."""
    return ray.is_initialized()


def in_task() -> bool:
    """Whether this process is a Ray worker (a pool opened inside a function a pool runs).
    Asked without ``get_task_id()``, which logs a warning in a driver."""
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def task_cpus() -> float:
    """The CPUs Ray gave the task running in this worker (0 for an actor or a driver)."""
    resources = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("CPU", 0.0))


def lend_cpu(handles: list[Any], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for one of the tasks ``handles`` in ``ray.wait``:
    while this task waits there, Ray lends its CPU to other tasks - the ones it waits for.
    Handles that are not Ray's (a call Ray refused to start) are not waited on."""
    refs = [handle for handle in handles if isinstance(handle, _RAY_HANDLES)]
    if refs:
        ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)


_RAY_HANDLES = (ray.ObjectRef, ray.ObjectRefGenerator)


def next_piece(stream: Any) -> Any:
    """The ref of the next object a streaming task (``ObjectRefGenerator``) will yield,
    whether it is there yet or not - so that a callback can wait for it. It holds the
    task's error if the task fails first; past the end, ``ObjectRefStreamEndOfStreamError``.
    (Ray's public API only blocks or polls for it: ``next(gen)``, ``gen.next_ready()``.)"""
    core_worker = ray._private.worker.global_worker.core_worker  # type: ignore[attr-defined]  # noqa: SLF001
    ref, _ = core_worker.peek_object_ref_stream(stream._generator_ref)  # noqa: SLF001
    return ref


def take_piece(stream: Any) -> None:
    """Move ``stream`` past the piece ``next_piece`` named, once it is there."""
    stream._next_sync(timeout_s=0)  # noqa: SLF001


def job_runtime_env() -> dict[str, Any] | None:
    """The runtime environment of the current Ray job when raypool started it (its tasks
    inherit it), else ``None``."""
    if _started_job is None or not ray.is_initialized():
        return None
    job, runtime_env = _started_job
    return runtime_env if ray.get_runtime_context().get_job_id() == job else None


def _refused_token(exc: BaseException) -> bool:
    """Whether ``ray.init`` failed because the cluster refused the (missing) token. Ray
    chains the failure as text, so the text is what can be read."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return any(
        isinstance(link, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(link)
        for link in chain
    )


#: How long ``cluster_cpus`` trusts its last answer. Longer saves a GCS request per map
#: call; shorter follows an autoscaling cluster sooner.
CPU_COUNT_SECONDS = 5.0
_cpus: tuple[float, int] | None = None


def cluster_cpus() -> int:
    """CPUs of the whole Ray cluster (at least 1), re-read every ``CPU_COUNT_SECONDS``."""
    global _cpus
    now = time.monotonic()
    if _cpus is None or now - _cpus[0] > CPU_COUNT_SECONDS:
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        _cpus = now, max(1, int(resources.get("CPU", 1)))
    return _cpus[1]


#: What Ray raises when an object cannot be created, here a task's return value.
_STORE_FULL = (ray.exceptions.ObjectStoreFullError, ray.exceptions.OutOfDiskError)


class TaskFailure(NamedTuple):
    """What a Ray error raised for a whole task means for its items.

    Attributes:
        error: the exception each item reports.
        traceback: the worker-side traceback text, or ``""``.
        rerun: what the engine may do about it (``_outcome.Rerun``).
    """

    error: BaseException
    traceback: str
    rerun: Rerun


def classify(exc: BaseException) -> TaskFailure:
    """The one translation of a Ray exception raised for a whole task (``ray.get`` of its
    result) into what each of its items reports, as a raypool error (``__cause__``: Ray's).

    A function's own exceptions never reach here: the worker reports them per item, and
    raypool's task returns every failure of its own. So a ``RayTaskError`` is Ray's
    machinery around the task failing: unpickling its arguments, or pickling its result.
    """
    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
    if isinstance(cause, _STORE_FULL):
        return _failure(
            ResultTooLargeError(
                "the result could not be stored: Ray's object store is full and so is the "
                f"disk it spills to ({type(cause).__name__}: {_first_line(cause)})"
            ),
            cause,
            Rerun.SPLIT,
        )
    if isinstance(cause, ray.exceptions.TaskCancelledError):
        # raypool never asks Ray to cancel: someone else did. Not a death, not rerun.
        return _failure(
            TaskCancelledError(f"Ray cancelled the task running this item: {_first_line(cause)}"),
            cause,
            Rerun.NO,
        )
    if isinstance(exc, ray.exceptions.RayTaskError):
        if isinstance(cause, ray.exceptions.RaySystemError):
            error: BaseException = WorkerUnpicklingError(
                f"this item could not be unpickled in the worker: {_ray_message(cause)}"
            )
            return _failure(error, cause, Rerun.SPLIT)
        if isinstance(cause, ray.exceptions.RayError) and cause is not exc:
            return classify(cause)  # e.g. an argument's owner died
        # raypool's task returns every failure of the items and of their results: this is
        # Ray's machinery around it, or a bug.
        error = BrokenPoolError(f"the task failed in Ray: {type(cause).__name__}: {cause}")
        return _failure(error, cause, Rerun.NO, str(exc))
    if isinstance(exc, ray.exceptions.RaySystemError):
        return unpickling_failure(exc)
    if not isinstance(exc, ray.exceptions.RayError):
        return TaskFailure(exc, "", Rerun.NO)
    if isinstance(exc, ray.exceptions.RuntimeEnvSetupError):
        error = EnvironmentSetupError(
            f"Ray could not set up the runtime_env of the task: {str(exc).strip()}"
        )
        return _failure(error, exc, Rerun.NO)
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        error = WorkerCrashedError(
            "Ray's memory monitor killed the worker process running this item: its node "
            f"ran low on memory ({_first_line(exc)})"
        )
    else:
        error = WorkerCrashedError(f"the worker process running this item died: {exc}")
    return _failure(error, exc, Rerun.LOST)


def unpickling_failure(exc: BaseException) -> TaskFailure:
    """What an exception raised by unpickling a task's result here (``SystemExit`` too)
    means for its items: a ``ResultUnpicklingError``, after a run that checks each value."""
    error = ResultUnpicklingError(
        f"a result could not be unpickled here: {type(exc).__name__}: {_ray_message(exc)}",
        repr(exc),
    )
    return _failure(error, exc, Rerun.CHECKED)


def _failure(
    error: BaseException, cause: BaseException, rerun: Rerun, traceback: str = ""
) -> TaskFailure:
    error.__cause__ = cause
    return TaskFailure(error, traceback, rerun)


def _ray_message(exc: BaseException) -> str:
    """Ray's message without its "System error:" prefix and the traceback it appends."""
    text = _first_line(exc)
    return text.removeprefix("System error:").strip() or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "")


def _forked_error(what: str) -> ForkedProcessError:
    return ForkedProcessError(
        f"{what} cannot run in this process: it was forked from process "
        f"{_lifecycle.forked_from()} while that one was connected to Ray, and a forked "
        "child cannot use its parent's Ray connection. Start it with the 'spawn' or "
        "'forkserver' start method (multiprocessing.get_context('spawn'), or "
        "mp_context= for ProcessPoolExecutor) instead of 'fork'"
    )


class _InheritedCoreWorker:
    """Stands in, in a forked child, for the Ray core worker the parent's connection runs on.

    The child's copy of the real one shares the parent's sockets, and its locks may have
    been held by a parent thread at the fork. Ray's finalizers call into it whenever an
    ``ObjectRef``, an actor handle or a task's stream the child inherited is dropped - a
    release that, on the copy, could wait forever on such a lock. Here a release does
    nothing (the parent still holds its own references); who the process is to Ray - which
    Ray's log filter (``ray.init(logging_config=...)``) asks on every record - is no one
    (nil ids); anything else - a user's ``ray.get`` in the child - raises
    ``ForkedProcessError`` instead of hanging.
    """

    _ANSWERS: ClassVar[Mapping[str, Callable[[], Any]]] = {
        "remove_object_ref_reference": lambda: None,
        "remove_actor_handle_reference": lambda: None,
        "async_delete_object_ref_stream": lambda: None,
        "get_current_job_id": ray.JobID.nil,
        "get_current_node_id": ray.NodeID.nil,
        "get_worker_id": ray.WorkerID.nil,
        "get_actor_id": ray.ActorID.nil,
        "get_current_task_id": ray.TaskID.nil,
        "get_current_task_name": str,
        "get_current_task_function_name": str,
        "get_actor_name": bytes,
    }

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # introspection (copy, inspect): no such attribute
            raise AttributeError(name)
        answer = self._ANSWERS.get(name)
        if answer is None:
            raise _forked_error("Ray")
        return lambda *_, **__: answer()


def _after_fork() -> None:
    """In a forked child: forget the parent's lock and CPU count; give ``SIGTERM`` back its
    default action if Ray set it; a Ray connection, if the parent had one, is the parent's -
    refuse it, and detach Ray's exit machinery from it."""
    global _init_lock, _cpus, _inherited_ray, _used_ray
    _init_lock = threading.Lock()
    _cpus = None
    if _used_ray and ray.is_initialized():
        _inherited_ray = True
        _detach_inherited_ray()
    _used_ray = False
    _restore_sigterm()


def _restore_sigterm() -> None:
    """A forked child ends on ``SIGTERM``, as one forked from a process without Ray does.

    ``ray.init`` (in a driver) and Ray's worker loop (in a task or an actor) set a Python
    handler for ``SIGTERM``, which a forked child - a ``multiprocessing`` worker - inherits.
    A Python handler can miss the signal: one that lands before the interpreter's own
    after-fork work is dropped, one that lands while the child starts raises ``SystemExit``
    in an after-fork hook, which Python only prints, and one that lands just before the
    child blocks in C waits for a bytecode that never comes. ``Pool.terminate()``, which
    ``SIGTERM``s its workers and joins them, then waits forever: seen in a
    ``Parallel(backend="multiprocessing")`` call inside a task (about once in 30 calls on a
    loaded 2-CPU machine; in a plain Ray actor too). The kernel's default action cannot be
    missed, and it makes the child's ``exitcode`` ``-SIGTERM``, as the stdlib documents.
    ``_lifecycle`` holds ``SIGTERM`` until this has run. A handler of the user's stays.
    """
    if set_by_ray(signal.getsignal(signal.SIGTERM)):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def set_by_ray(handler: Any) -> bool:
    """Whether a signal handler is one of Ray's (``ray.init``'s, its worker loop's, a local
    node's - which would end the parent's cluster)."""
    module = getattr(handler, "__module__", None) or ""
    return module == "ray" or module.startswith("ray.")


def _detach_inherited_ray() -> None:
    """Keep a child forked from a Ray driver - its exit, its garbage - from touching the
    parent's Ray.

    Five things of Ray's act on its connection when an object is dropped or the process
    ends, and a forked child inherits them all, with the connection but without the
    threads that serve it (each seen here):

    * ``atexit``: ``ray.shutdown()`` - it ends the parent's connection, and kills the
      cluster processes a local ``ray.init`` started: the parent dies with them.
    * ``sys.excepthook``: reports an uncaught exception to Ray's GCS - it hangs.
    * the core worker, which Ray's finalizers call when the child drops an ``ObjectRef`` it
      inherited: it may wait on a lock a parent thread held at the fork - the child hangs
      (seen at random, in a ``multiprocessing`` worker forked while the parent released
      the references of a cancelled call). ``_InheritedCoreWorker`` takes its place.
    * the native objects behind the connection, collected at the interpreter's exit:
      their destructors wait for threads only the parent has - a segfault. They are kept
      alive instead (their memory goes with the process).
    * a C ``atexit`` handler that destroys Ray's core worker - it waits forever on a lock a
      parent thread held at the fork. The child ends with ``_exit`` (keeping its exit
      status) once Python has finished its own exit, before C handlers run (glibc's
      ``on_exit``; Linux, where ``fork`` is the default start method). That skips every C
      exit handler registered before the fork, not only Ray's.

    Only in children of a process where raypool used Ray; Ray's native objects kept alive
    keep what they reference too (no finalizer of theirs runs in the child).
    """
    atexit.unregister(ray.shutdown)
    worker = sys.modules.get("ray._private.worker")
    state = sys.modules.get("ray._private.state")
    if worker is not None and sys.excepthook is getattr(worker, "custom_excepthook", None):
        sys.excepthook = getattr(worker, "normal_excepthook", sys.__excepthook__)
    global_worker = getattr(worker, "global_worker", None)
    core_worker = getattr(global_worker, "core_worker", None)
    for native in (global_worker, core_worker, getattr(state, "state", None)):
        if native is not None:
            _INCREF(ctypes.py_object(native))
    if global_worker is not None and core_worker is not None:
        global_worker.core_worker = _InheritedCoreWorker()
    if _EXIT_FUNCTIONS is not None:
        on_exit, exit_now = _EXIT_FUNCTIONS
        on_exit(exit_now, None)


def _exit_functions() -> tuple[Any, Any] | None:
    """glibc's ``on_exit`` and ``_exit``, or ``None`` elsewhere. Looked up at import: a
    forked child must not load symbols (the loader's lock may be held by a parent thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc.on_exit, libc._exit  # noqa: SLF001 - libc's _exit(2), not a private member
    except (AttributeError, OSError):  # not glibc (musl has no on_exit)
        return None


_EXIT_FUNCTIONS = _exit_functions()
_INCREF = ctypes.pythonapi.Py_IncRef


_lifecycle.on_fork(_after_fork)
