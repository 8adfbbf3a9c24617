"""The options of one map call, validated in one place.

``MapOptions`` is frozen: the engine builds one from its constructor arguments and derives a
per-call copy with ``dataclasses.replace`` (which validates again). Nothing here imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["UNPACK_MODES", "MapOptions", "Unpack", "exception_types"]

#: How an item becomes the arguments of the mapped function:
#: ``"auto"`` (the ray-map convention): a tuple is ``fn(*item)``, a dict ``fn(**item)``,
#: anything else ``fn(item)``; ``"none"``: always ``fn(item)`` (``Pool.map``);
#: ``"args"``: always ``fn(*item)`` (``Pool.starmap``); ``"kwargs"``: always ``fn(**item)``;
#: ``"call"``: the item is an ``(args, kwargs)`` pair, ``fn(*args, **kwargs)`` (``submit``).
Unpack = Literal["auto", "none", "args", "kwargs", "call"]
UNPACK_MODES: tuple[str, ...] = ("auto", "none", "args", "kwargs", "call")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def exception_types(retry: object) -> tuple[type[BaseException], ...]:
    """``retry_exceptions`` as ``MapOptions`` keeps it: ``True`` is any ``Exception``."""
    if retry is True:
        return (Exception,)
    if retry is False or retry is None:
        return ()
    if isinstance(retry, type):
        return (retry,)
    try:
        return tuple(retry)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"retry_exceptions must be True, False or exception classes, got {retry!r}"
        ) from None


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
        if self.batch_size is not None and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise ValueError(
                f"batch_size must be an int >= 1 or None (automatic), got {self.batch_size!r}"
            )
        if not _is_int(self.max_pending) or not (self.max_pending == -1 or self.max_pending >= 1):
            raise ValueError(
                f"max_pending must be an int >= 1, or -1 to size it from the cluster's CPUs, "
                f"got {self.max_pending!r}"
            )
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not math.isfinite(self.timeout)
            or self.timeout <= 0
        ):
            raise ValueError(
                f"timeout must be a positive number of seconds or None, got {self.timeout!r}"
            )
        if (
            isinstance(self.checkpoint_interval, bool)
            or not isinstance(self.checkpoint_interval, (int, float))
            or not math.isfinite(self.checkpoint_interval)
            or self.checkpoint_interval <= 0
        ):
            raise ValueError(
                "checkpoint_interval must be a positive number of seconds, "
                f"got {self.checkpoint_interval!r}"
            )
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not isinstance(self.retry_exceptions, tuple) or not all(
            isinstance(cls, type) and issubclass(cls, BaseException)
            for cls in self.retry_exceptions
        ):
            raise TypeError(
                "retry_exceptions must be True, False or exception classes, "
                f"got {self.retry_exceptions!r}"
            )
        if self.unpack not in UNPACK_MODES:
            raise ValueError(f"unpack must be one of {UNPACK_MODES}, got {self.unpack!r}")
        for name in ("tail_batches_per_core", "tail_min_batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
