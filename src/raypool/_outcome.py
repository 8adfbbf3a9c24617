"""What one batch produced, in the compact form a worker sends back.

A batch is the unit the engine moves around, not the item: keeping one small record per
batch (rather than one object per item) is what lets tiny items stream at millions per
second.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["BatchResult", "ItemError", "failed_batch"]

#: An item's failure: the exception and the traceback text formatted where it was raised.
ItemError = tuple[BaseException, str]


class BatchResult(NamedTuple):
    """The outcome of one batch.

    Attributes:
        values: one entry per item, in batch order; ``None`` where the item failed.
        errors: ``{position: (exception, traceback text)}`` for the items that failed, or
            ``None`` when none did.
        seconds: worker time spent running the items (the input of automatic batch sizing).
        retry: positions whose error says nothing about the item - a timeout, a lost
            worker, a task that failed as a whole - so a checkpoint must not record it and a
            resume computes the item again; or ``None``.
        lost: the task's worker process (or node) died under it: the engine may run its
            items again.
        too_large: the task ran, but its result could not be stored: the engine may run its
            items again in smaller batches.
    """

    values: list[Any]
    errors: dict[int, ItemError] | None
    seconds: float
    retry: frozenset[int] | None = None
    lost: bool = False
    too_large: bool = False


def failed_batch(
    size: int, exc: BaseException, tb: str = "", *, lost: bool = False, too_large: bool = False
) -> BatchResult:
    """A result in which all ``size`` items failed with ``exc``, a failure of the task
    rather than of its items (never checkpointed)."""
    every = range(size)
    errors = dict.fromkeys(every, (exc, tb))
    return BatchResult([None] * size, errors, 0.0, frozenset(every), lost, too_large)
