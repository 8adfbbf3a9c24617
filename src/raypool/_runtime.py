"""Ray's lifecycle and Ray's errors: the one place that decides when ``ray.init`` runs.

* ``ensure_ray`` starts a quiet local Ray (no dashboard) on first use, or connects to
  ``address``; a Ray that is already initialized is used as it is and never re-initialized
  or shut down by raypool. An ``address`` that cannot be reached fails within seconds with
  ``ClusterUnreachableError`` (``ray.init`` itself would retry for minutes) and never falls
  back to a local instance.
* ``translate_ray_error`` maps a Ray exception raised for a whole batch to the exception
  each of its items reports.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import ray
import ray.exceptions

from ._errors import (
    ClusterUnreachableError,
    RemoteError,
    ResultTooLargeError,
    WorkerCrashedError,
)

__all__ = [
    "at_thread_exit",
    "check_reachable",
    "cluster_cpus",
    "ensure_ray",
    "is_lost_task",
    "is_too_large",
    "translate_ray_error",
]

#: Seconds to wait for a TCP connection to ``address`` before calling it unreachable.
CONNECT_TIMEOUT = 5.0

#: Port of a Ray head's GCS, when ``address`` names a host only.
DEFAULT_GCS_PORT = 6379
#: Port of the Ray Client server, for ``ray://host`` addresses without a port.
DEFAULT_CLIENT_PORT = 10001

_init_lock = threading.Lock()


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
    """
    with _init_lock:
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
        return True


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


def translate_ray_error(exc: BaseException) -> tuple[BaseException, str]:
    """The ``(exception, traceback text)`` each item of a batch reports when ``exc`` (raised
    by Ray for the whole batch) ended it."""
    error: BaseException
    if is_too_large(exc):
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        error = ResultTooLargeError(
            "the result could not be stored: Ray's object store is full and so is the disk "
            f"it spills to ({type(cause).__name__}: {_first_line(cause)})"
        )
        error.__cause__ = cause
        return error, ""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        tb = str(exc)
        if isinstance(cause, BaseException) and not isinstance(cause, KeyboardInterrupt):
            return cause, tb
        return RemoteError(type(exc).__name__, "the task failed", tb), tb
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        error = WorkerCrashedError(
            "Ray's memory monitor killed the worker process running this item: its node "
            f"ran low on memory ({_first_line(exc)})"
        )
    elif isinstance(exc, ray.exceptions.RayError):
        error = WorkerCrashedError(f"the worker process running this item died: {exc}")
    else:
        return exc, ""
    error.__cause__ = exc
    return error, ""


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "")


def is_lost_task(exc: BaseException) -> bool:
    """Whether Ray raised ``exc`` because the task's worker process or node died (its items
    may be run again), rather than for what the task did."""
    return isinstance(exc, ray.exceptions.RayError) and not isinstance(
        exc, (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError, *_STORE_FULL)
    )


def is_too_large(exc: BaseException) -> bool:
    """Whether the task ran but its result could not be stored (its items may be run again
    in smaller batches). A function's own exceptions never reach here as the task's: the
    worker reports them per item."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        return isinstance(exc.cause, _STORE_FULL)
    return isinstance(exc, _STORE_FULL)


def at_thread_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the main thread ends, before ``atexit`` handlers run - so
    before the ``ray.shutdown()`` that ``ray.init`` registers there. A thread still calling
    into Ray after that shutdown makes Ray's core worker end the process with status 1.
    (``concurrent.futures`` stops its threads through the same hook.)"""
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(callback)
            return
    except RuntimeError:  # the interpreter is already shutting down
        return
    atexit.register(callback)
