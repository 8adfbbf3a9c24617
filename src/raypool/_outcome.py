"""What one batch produced, in the compact form a worker sends back, and how it is shaped.

A batch is the unit the engine moves around, not the item: keeping one small record per
batch (rather than one object per item) is what lets tiny items stream at millions per
second. The one place that:

* fails every item of a batch at once (``failed_batch``),
* merges the result of a part of a batch, run again, into the batch's (``merge_part``),
* turns a batch's values and errors into what the caller receives (``output``/``outputs``:
  values, an item's exception raised or - ``safe_exceptions`` - in its place, ``(item,
  value)`` pairs with ``ret_args``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

__all__ = ["BatchResult", "ItemError", "Rerun", "failed_batch", "merge_part", "output", "outputs"]

#: An item's failure: the exception and the traceback text formatted where it was raised.
ItemError = tuple[BaseException, str]


class Rerun(enum.Enum):
    """What a task that failed as a whole asks of the engine (``BatchResult.rerun``)."""

    #: Nothing: the errors are the items' outcomes.
    NO = "no"
    #: The worker process (or node) died under it: run the items again in halves until the
    #: item that kills its worker runs alone, then that one up to ``max_retries`` times.
    LOST = "lost"
    #: One of its items is the cause (its result could not be stored, it could not be
    #: unpickled in the worker): run them again in halves; alone, the error is the item's.
    SPLIT = "split"
    #: Its result could not be pickled or unpickled: run it again once, each value pickled
    #: and unpickled alone (``encoded``), so that the failure is the item's.
    CHECKED = "checked"


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
        rerun: what the task's failure as a whole asks of the engine (``Rerun``).
        encoded: each value is its own pickle (a task run ``checked``), to be unpickled
            one by one in the driver.
    """

    values: list[Any]
    errors: dict[int, ItemError] | None
    seconds: float
    retry: frozenset[int] | None = None
    rerun: Rerun = Rerun.NO
    encoded: bool = False


def failed_batch(
    size: int,
    exc: BaseException,
    tb: str = "",
    *,
    retry: bool = True,
    rerun: Rerun = Rerun.NO,
) -> BatchResult:
    """A result in which all ``size`` items failed with ``exc``. ``retry``: the failure
    says nothing about the items (a failure of the task, a timeout), so it is never
    checkpointed."""
    every = range(size)
    errors = dict.fromkeys(every, (exc, tb))
    return BatchResult([None] * size, errors, 0.0, frozenset(every) if retry else None, rerun)


def merge_part(into: BatchResult | None, size: int, offset: int, part: BatchResult) -> BatchResult:
    """``into`` (a batch of ``size`` items, or ``None`` for none yet) with the result of the
    part of it that starts at ``offset``. ``into``'s values list is updated in place."""
    if into is None:
        into = BatchResult([None] * size, None, 0.0)
    span = range(offset, offset + len(part.values))
    into.values[span.start : span.stop] = part.values
    errors = {i: e for i, e in (into.errors or {}).items() if i not in span}
    errors.update((offset + i, error) for i, error in (part.errors or {}).items())
    retry = {i for i in into.retry or () if i not in span}
    retry.update(offset + i for i in part.retry or ())
    return BatchResult(
        into.values, errors or None, into.seconds + part.seconds, frozenset(retry) or None
    )


def output(
    items: list[Any] | None,
    values: list[Any],
    errors: dict[int, ItemError] | None,
    position: int,
    *,
    safe_exceptions: bool,
    ret_args: bool,
) -> Any:
    """What the caller receives for the item at ``position`` of a batch.

    Raises:
        BaseException: the item's exception, unless ``safe_exceptions``.
    """
    value = values[position]
    if errors and position in errors:
        exc = errors[position][0]
        if not safe_exceptions:
            raise exc
        value = exc
    if ret_args:
        assert items is not None, "ret_args needs the items"
        return items[position], value
    return value


def outputs(
    items: list[Any] | None,
    values: list[Any],
    errors: dict[int, ItemError] | None,
    *,
    safe_exceptions: bool,
    ret_args: bool,
) -> Iterable[Any]:
    """``output`` for every item of a batch, in order; the first exception raised ends it.
    A batch with no error and no ``ret_args`` is its values list as it is."""
    if not errors and not ret_args:
        return values
    return _each(items, values, errors, safe_exceptions, ret_args)


def _each(
    items: list[Any] | None,
    values: list[Any],
    errors: dict[int, ItemError] | None,
    safe_exceptions: bool,
    ret_args: bool,
) -> Iterator[Any]:
    for position in range(len(values)):
        yield output(
            items, values, errors, position, safe_exceptions=safe_exceptions, ret_args=ret_args
        )
