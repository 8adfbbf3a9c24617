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
        timeouts: positions whose error is a timeout (never checkpointed: a resume retries
            them), or ``None``.
    """

    values: list[Any]
    errors: dict[int, ItemError] | None
    seconds: float
    timeouts: frozenset[int] | None = None


def failed_batch(size: int, exc: BaseException, tb: str = "") -> BatchResult:
    """A result in which all ``size`` items failed with ``exc``."""
    return BatchResult([None] * size, dict.fromkeys(range(size), (exc, tb)), 0.0)
