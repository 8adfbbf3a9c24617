"""The option records of raypool, each validated once, in its own ``__post_init__``.

Public constructors (``RayMap``, ``RayPool``) only translate their keyword names into these
frozen records; per-call options are derived with ``dataclasses.replace``, which validates
again. Nothing here imports Ray or any other raypool module.

==================  ================================================  =====================
record              what                                              built by
==================  ================================================  =====================
``MapOptions``      batching, window, ordering, output shape,         ``RayMap``, ``RayPool``
                    checkpoint commits and retries of one map call    (per call: ``replace``)
``StreamLimits``    ways a streaming call stops reading: ``limit``,   ``RayMap.imap_stream``
                    ``time_budget``, ``stop``, ``ordered_window``
``WorkerOptions``   where and how tasks run: cluster address, Ray     ``RayMap``, ``RayPool``
                    options, runtime env, worker recycling
``CallDefaults``    the pool's keyword extensions (``timeout``,       ``RayPool``, ``options()``
                    ``chunksize``, ``progress``...), merged per call
==================  ================================================  =====================
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "ACTOR_REMOTE_OPTIONS",
    "UNPACK_MODES",
    "CallDefaults",
    "Checkpoint",
    "MapOptions",
    "StopCondition",
    "StreamLimits",
    "Unpack",
    "WorkerOptions",
    "check_batch_size",
    "check_checkpoint",
    "check_checkpoint_name",
    "check_timeout",
    "retry_types",
]

#: How an item becomes the arguments of the mapped function:
#: ``"auto"`` (the ray-map convention): a tuple is ``fn(*item)``, a dict ``fn(**item)``,
#: anything else ``fn(item)``; ``"none"``: always ``fn(item)`` (``Pool.map``);
#: ``"args"``: always ``fn(*item)`` (``Pool.starmap``); ``"kwargs"``: always ``fn(**item)``;
#: ``"call"``: the item is an ``(args, kwargs)`` pair, ``fn(*args, **kwargs)`` (``submit``).
Unpack = Literal["auto", "none", "args", "kwargs", "call"]
UNPACK_MODES: tuple[str, ...] = ("auto", "none", "args", "kwargs", "call")

#: What ``checkpoint=`` takes: ``True`` (a file named after the function), a name (a file
#: in the checkpoint directory), a path, or ``None``/``False`` (no checkpoint).
Checkpoint = bool | str | os.PathLike[str] | None

#: What ``stop=`` takes: a predicate or an event; once true, a stream stops.
StopCondition = Callable[[], bool] | threading.Event

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    """A positive, finite number of seconds."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_timeout(timeout: object) -> None:
    """Raise ``ValueError`` unless ``timeout`` is ``None`` or positive seconds."""
    if timeout is not None and not _is_seconds(timeout):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


def check_batch_size(name: str, size: object, none: str = "") -> None:
    """Raise ``ValueError`` unless ``size`` is ``None`` (which means ``none``) or an int
    >= 1."""
    if size is not None and (not _is_int(size) or size < 1):  # type: ignore[operator]
        meaning = f" ({none})" if none else ""
        raise ValueError(f"{name} must be an int >= 1 or None{meaning}, got {size!r}")


def check_checkpoint_name(name: str) -> str:
    """``name`` if it is a valid checkpoint name, else a ``ValueError`` saying why."""
    if not _CHECKPOINT_NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(
            "a checkpoint name may hold letters, digits, '.', '_' and '-' only (and may not "
            f"start with '.'), got {name!r}; pass a pathlib.Path for a file of your choice"
        )
    return name


def check_checkpoint(checkpoint: object) -> None:
    """Raise ``TypeError``/``ValueError`` if ``checkpoint`` is not a ``Checkpoint``."""
    if checkpoint is not None and not isinstance(checkpoint, (bool, str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be True, a name, a path or None, got {type(checkpoint).__name__}"
        )
    if isinstance(checkpoint, str):
        check_checkpoint_name(checkpoint)


def retry_types(retry: object) -> tuple[type[BaseException], ...]:
    """``retry_exceptions`` as the constructors take it - ``True``, ``False``, a class or
    classes - as ``MapOptions`` keeps it: a tuple of classes (``True``: any ``Exception``).

    Raises:
        TypeError: anything else.
    """
    if retry is True:
        return (Exception,)
    if retry is False or retry is None:
        return ()
    given = (retry,) if isinstance(retry, type) else retry
    types: tuple[Any, ...] = tuple(given) if isinstance(given, Iterable) else (given,)
    if not all(isinstance(cls, type) and issubclass(cls, BaseException) for cls in types):
        raise TypeError(f"retry_exceptions must be True, False or exception classes, got {retry!r}")
    return types


@dataclass(frozen=True)
class MapOptions:
    """Everything that shapes one map call. Invalid values raise at construction.

    Attributes:
        batch_size: items per Ray task, or ``None`` to size batches from the measured
            duration of items.
        max_pending: batches in flight (and, when ordered, finished but not yet yielded);
            ``-1`` sizes it from the cluster's CPUs.
        timeout: seconds one item may run, or ``None``.
        safe_exceptions: yield exceptions as values instead of raising them.
        keep_order: yield in input order (``True``) or as results arrive.
        ret_args: yield ``(item, result)`` pairs.
        unpack: calling convention, see ``Unpack``.
        batched: the function takes a list of items and returns a list of results.
        adaptive_tail_batching: shrink batches near the end when the input has a length.
        tail_batches_per_core: the tail starts when fewer than this many batches per CPU
            are left.
        tail_min_batch_size: batches never shrink below this.
        checkpoint_every: finished items that make the checkpoint commit.
        checkpoint_interval: seconds after which finished items are committed even if
            fewer than ``checkpoint_every``.
        checkpoint_errors: record application exceptions in the checkpoint and replay
            them (``False``: a rerun retries them).
        max_retries: times an item whose worker process died under it is run again (and
            an item that raised one of ``retry_exceptions``).
        retry_exceptions: application exceptions after which an item runs again.
    """

    batch_size: int | None = None
    max_pending: int = -1
    timeout: float | None = None
    safe_exceptions: bool = False
    keep_order: bool = True
    ret_args: bool = False
    unpack: Unpack = "auto"
    batched: bool = False
    adaptive_tail_batching: bool = True
    tail_batches_per_core: int = 2
    tail_min_batch_size: int = 1
    checkpoint_every: int = 100
    checkpoint_interval: float = 1.0
    checkpoint_errors: bool = True
    max_retries: int = 3
    retry_exceptions: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        check_batch_size("batch_size", self.batch_size, "automatic")
        if not _is_int(self.max_pending) or not (self.max_pending == -1 or self.max_pending >= 1):
            raise ValueError(
                f"max_pending must be an int >= 1, or -1 to size it from the cluster's CPUs, "
                f"got {self.max_pending!r}"
            )
        check_timeout(self.timeout)
        if not _is_seconds(self.checkpoint_interval):
            raise ValueError(
                "checkpoint_interval must be a positive number of seconds, "
                f"got {self.checkpoint_interval!r}"
            )
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not isinstance(self.retry_exceptions, tuple):
            raise TypeError(
                "MapOptions.retry_exceptions must be a tuple of exception classes (see "
                f"retry_types), got {self.retry_exceptions!r}"
            )
        retry_types(self.retry_exceptions)
        if self.unpack not in UNPACK_MODES:
            raise ValueError(f"unpack must be one of {UNPACK_MODES}, got {self.unpack!r}")
        for name in ("tail_batches_per_core", "tail_min_batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class StreamLimits:
    """Ways a streaming call stops early (``RayMap.imap_stream``); none by default.

    Attributes:
        limit: read at most this many items.
        ordered_window: in ordered mode, at most this many finished items wait for a slower
            one before no more input is read.
        time_budget: seconds after the call opens; then no more input is read.
        stop: a predicate or ``threading.Event``; once true, no more input is read and
            nothing more is yielded.
    """

    limit: int | None = None
    ordered_window: int | None = None
    time_budget: float | None = None
    stop: StopCondition | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 0):
            raise ValueError(f"limit must be an int >= 0 or None, got {self.limit!r}")
        check_batch_size("ordered_window", self.ordered_window)
        budget = self.time_budget
        if budget is not None and (
            not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget < 0
        ):
            raise ValueError(f"time_budget must be seconds >= 0 or None, got {budget!r}")
        stop = self.stop
        if stop is not None and not isinstance(stop, threading.Event) and not callable(stop):
            raise TypeError(
                f"stop must be a callable or a threading.Event, got {type(stop).__name__}"
            )

    def stopped(self) -> Callable[[], bool] | None:
        """``stop`` as a predicate, or ``None``."""
        if isinstance(self.stop, threading.Event):
            return self.stop.is_set
        return self.stop


#: The ``remote_options`` a pool with ``actors=True`` takes: its actors are Ray's, placed
#: by raypool, holding no resources.
ACTOR_REMOTE_OPTIONS = frozenset({"runtime_env"})


@dataclass(frozen=True)
class WorkerOptions:
    """Where and how a call's tasks run.

    Attributes:
        address: the Ray cluster to connect to, or ``None`` for a local one.
        password: that cluster's legacy Redis password (never shown in ``repr``).
        runtime_env: Ray runtime environment of the job (or of each task).
        remote_options: passed to ``.options()`` of each task.
        max_tasks_per_worker: a worker process exits after this many tasks, or ``None``.
        sequential: run in the calling thread, without Ray.
        actors: submitted calls run in kept Ray actors (``_runners``), not in a task per
            batch; ``remote_options`` may then only name ``ACTOR_REMOTE_OPTIONS``.
    """

    address: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    runtime_env: Mapping[str, Any] | None = None
    remote_options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _EMPTY)
    max_tasks_per_worker: int | None = None
    sequential: bool = False
    actors: bool = False

    def __post_init__(self) -> None:
        if self.remote_options is None:
            object.__setattr__(self, "remote_options", _EMPTY)
        for name in ("runtime_env", "remote_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
            if value is not None:  # a private copy: the caller's dict may change
                object.__setattr__(self, name, MappingProxyType(dict(value)))
        if self.max_tasks_per_worker is not None and (
            not _is_int(self.max_tasks_per_worker) or self.max_tasks_per_worker < 1
        ):
            raise ValueError(
                "max_tasks_per_worker must be an int >= 1 or None, "
                f"got {self.max_tasks_per_worker!r}"
            )
        if self.actors:
            self._check_actors()

    def _check_actors(self) -> None:
        if self.max_tasks_per_worker is not None:
            raise ValueError(
                "actors=True keeps worker processes: it cannot be combined with "
                "maxtasksperchild / max_tasks_per_child"
            )
        other = sorted(set(self.remote_options) - ACTOR_REMOTE_OPTIONS)
        if other:
            raise ValueError(
                f"actors=True runs calls in actors that ask Ray for no resources: "
                f"remote_options {other} apply to tasks only (drop actors=True for them)"
            )


@dataclass(frozen=True)
class CallDefaults:
    """The pool's keyword extensions: pool-wide defaults, overridden per call or by
    ``options()``. ``None`` in an override means "keep the default"."""

    timeout: float | None = None
    safe_exceptions: bool = False
    ret_args: bool = False
    checkpoint: Checkpoint = None
    chunksize: int | None = None
    remote_options: Mapping[str, Any] | None = None
    progress: bool = False
    max_retries: int | None = None  # None: the pool's (its MapOptions')
    retry_exceptions: bool | Iterable[type[BaseException]] | None = None

    def __post_init__(self) -> None:
        check_timeout(self.timeout)
        if self.max_retries is not None and (not _is_int(self.max_retries) or self.max_retries < 0):
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if self.retry_exceptions is not None:
            object.__setattr__(self, "retry_exceptions", retry_types(self.retry_exceptions))
        check_batch_size("chunksize", self.chunksize)
        if self.remote_options is not None and not isinstance(self.remote_options, Mapping):
            raise TypeError(
                f"remote_options must be a dict, got {type(self.remote_options).__name__}"
            )
        remote_options = dict(self.remote_options) if self.remote_options else None
        object.__setattr__(self, "remote_options", remote_options)  # a copy, or None
        check_checkpoint(self.checkpoint)
        for name in ("safe_exceptions", "ret_args", "progress"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    def retries(self) -> dict[str, Any]:
        """The ``MapOptions`` fields these defaults override: the retries given."""
        given = {"max_retries": self.max_retries, "retry_exceptions": self.retry_exceptions}
        return {name: value for name, value in given.items() if value is not None}

    def merged(self, **overrides: Any) -> CallDefaults:
        """These defaults with every override that is not ``None`` (``remote_options``
        are merged key by key)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        options = self.remote_options
        if given.get("remote_options") is not None and options:
            given["remote_options"] = {**options, **given["remote_options"]}
        return dataclasses.replace(self, **given) if given else self
