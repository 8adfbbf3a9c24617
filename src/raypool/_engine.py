"""RayMap: a streaming, batched, back-pressured map over Ray tasks.

Data flow of one ``imap`` call::

    iterable --(lazy, in chunks)--> checkpoint lookup --> batches --> Backend.submit
                                         |                               |  window: at most
                                    replayed items                       |  ``max_pending``
                                         |                               v  batches in flight
    caller <-- emit (order / as ready) <-- reorder buffer <-- Backend.wait + result
                                               (counts against the window too)

1. ``RayMap.imap()`` validates everything, opens the input with ``iter()``, connects to
   Ray and ships the callable once (dill, one ``ray.put``); nothing runs yet.
2. Each step of the iterator first *fills* the window: it reads the next chunk of input
   (sized by ``BatchSizer``) and submits it as one task - until ``max_pending`` batches are
   in flight or waiting to be yielded. With a checkpoint that holds results, input is read
   in blocks that are looked up first: a run of recorded items becomes a batch that is
   finished at once (replayed), new items go to tasks as above.
3. It then yields a finished batch if one is next (input order) or any is done (as ready);
   otherwise it blocks in ``ray.wait`` - never polls - for one batch to finish, records it
   (checkpoint rows to the store's writer thread, ``on_error``, the per-item duration for
   batch sizing) and loops.
4. Leaving early - ``break``, ``close()``, an exception, dropping the iterator, cancelling
   the consuming asyncio task - cancels the call's tasks still in flight.

The input is never materialized and a result is dropped once yielded: memory is bounded by
the window. This module knows nothing of the ``multiprocessing`` vocabulary; the pool facade
translates into ``MapOptions``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, TypeVar

import ray

from ._backend import Backend, InlineBackend, RayBackend
from ._batching import BatchSizer
from ._config import MapOptions, Unpack, exception_types
from ._errors import attach_remote_traceback
from ._keys import fingerprint, item_key, key_salt
from ._outcome import BatchResult, ItemError
from ._runtime import ensure_ray
from ._serialization import dumps_callable
from ._store import (
    RAY_MAP_SUFFIX,
    Checkpoint,
    CheckpointStore,
    Recorded,
    SqliteStore,
    check_checkpoint,
    checkpoint_file,
    import_ray_map,
)
from ._worker import Setup

__all__ = ["MapIterator", "MapStatistics", "RayMap", "RayMapIterator", "make_setup"]

R = TypeVar("R")

#: ``max_pending=-1`` keeps this many batches per cluster CPU in flight (plus
#: ``WINDOW_EXTRA``): enough that every worker has its next task queued while the driver
#: handles a result. More costs driver memory (the window is what the driver holds).
WINDOW_PER_CPU = 4
WINDOW_EXTRA = 2

OnError = Callable[[Any, BaseException], Any]
StopCondition = Callable[[], bool] | threading.Event


@dataclasses.dataclass(frozen=True)
class MapStatistics:
    """A snapshot of one map call, from ``MapIterator.statistics()``.

    Attributes:
        items_read: items taken from the input so far.
        items_submitted: items sent to workers (read minus replayed).
        batches_submitted: tasks sent to workers.
        items_done: items whose outcome is known (computed or replayed).
        items_replayed: items answered from the checkpoint.
        batches_in_flight: tasks running or queued now.
        batches_buffered: finished batches not yet fully yielded.
        window: the most batches in flight plus buffered.
        seconds_per_item: the running estimate of an item's duration, or ``None``.
    """

    items_read: int
    items_submitted: int
    batches_submitted: int
    items_done: int
    items_replayed: int
    batches_in_flight: int
    batches_buffered: int
    window: int
    seconds_per_item: float | None


#: With a checkpoint, input is looked up in blocks. A block is as large as the next batch;
#: while whole blocks turn out to be recorded (a resume), the next one is twice as large, up
#: to this many items: replay costs one query per block, and new items are still read no
#: further ahead than without a checkpoint.
MAX_LOOKAHEAD = 1024


class _Batch:
    """Items that go to one task - or, all recorded, come from the checkpoint instead.

    When the task's worker dies, its items run again as parts: child batches whose results
    fill the parent's, which then finishes as one batch.
    """

    __slots__ = (
        "attempts",
        "items",
        "keys",
        "parent",
        "parts",
        "recorded",
        "result",
        "seq",
        "size",
        "start",
    )

    def __init__(self, seq: int, size: int, items: list[Any] | None) -> None:
        self.seq = seq
        self.size = size
        self.items = items  # kept only when ret_args, on_error or a rerun need them
        self.keys: list[bytes | None] | None = None  # checkpoint keys of the items
        self.recorded: list[Recorded] | None = None  # a batch replayed from the checkpoint
        self.result: BatchResult | None = None
        self.parent: _Batch | None = None  # a part: the batch it belongs to, from ``start``
        self.start = 0
        self.parts = 0  # parts of this batch still running
        self.attempts = 0  # times a one-item batch's worker died under it


class _MapRun:
    """The state of one map call. Driven by ``_iterate`` or ``_aiterate``."""

    def __init__(
        self,
        iterator: Iterator[Any],
        total: int | None,
        options: MapOptions,
        backend: Backend,
        *,
        store: CheckpointStore | None,
        on_error: OnError | None,
        halt_input: Callable[[], bool] | None = None,
        halt_output: Callable[[], bool] | None = None,
        max_buffered_items: int | None = None,
    ) -> None:
        self.options = options
        self.total = total
        # Set by a driver that shares workers between calls (the pool's dispatcher):
        # ``admit()`` says whether one more task may start, ``on_submit(handle)`` is told
        # of each task started.
        self.admit: Callable[[], bool] | None = None
        self.on_submit: Callable[[Any], None] | None = None
        self.backend = backend
        self._input = iterator
        self._store = store
        self._on_error = on_error
        self._halt_input = halt_input
        self.halt_output = halt_output
        self._max_buffered_items = max_buffered_items
        cpus = backend.cpus
        if options.max_pending == -1:
            self.window = WINDOW_PER_CPU * cpus + WINDOW_EXTRA
        else:
            self.window = options.max_pending
        self._sizer = BatchSizer(
            options.batch_size,
            cpus=cpus,
            total=total,
            adaptive_tail=options.adaptive_tail_batching,
            tail_batches_per_core=options.tail_batches_per_core,
            tail_min_batch_size=options.tail_min_batch_size,
        )
        # Items stay with their batch until it finishes: to pair them with results, to
        # report them, or to run them again if their worker dies.
        self._keep_items = bool(
            options.ret_args or on_error or options.retry_exceptions or backend.rerunnable
        )
        # Checkpoint keys separate calling conventions: fn(item) is not fn(*item).
        self._salt = key_salt(options.unpack, options.batched)
        self._ahead: deque[tuple[Any, bytes | None, Recorded | None]] = deque()
        self._lookahead = 1
        self._unkeyed = False
        self.in_flight: dict[Any, _Batch] = {}
        self._ordered: dict[int, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._next_seq = 0
        self._buffered = 0
        self._buffered_items = 0
        self._seq = 0
        self._read = 0
        self._taken = 0  # items put into batches (read minus looked ahead)
        self._submitted = 0
        self._batches_submitted = 0
        self._done = 0
        self._replayed = 0
        self._input_ended = False
        self._exhausted = False  # the input ended and everything read is in a batch
        self.input_error: BaseException | None = None
        self._closed = False

    # -- filling the window ----------------------------------------------------------------

    def _room(self) -> bool:
        # Finished results waiting to be yielded count in batches of the current size, so
        # that the many one-item batches of the start do not stall the window behind a slow
        # head item: what is held stays bounded by window x batch size items either way.
        buffered = -(-self._buffered_items // self._sizer.base_size())
        if len(self.in_flight) + buffered >= self.window:
            return False
        limit = self._max_buffered_items
        if limit is not None and self._buffered_items >= limit:
            return False
        return self.admit is None or self.admit()

    def fill(self) -> None:
        """Read and submit input until the window is full or the input ends."""
        while not self._exhausted and self._room():
            if self._halt_input is not None and self._halt_input():
                self._exhausted = True
                self._ahead.clear()
                break
            size = self._sizer.next_size(self._taken)
            if self._store is None or self._store.empty:
                chunk = self._read_input(size)
                if chunk:
                    keys = None if self._store is None else self._keys(chunk)
                    self._start(chunk, keys)
                self._exhausted = self._input_ended
            else:
                self._fill_checkpointed(size)

    def _read_input(self, size: int) -> list[Any]:
        chunk: list[Any] = []
        try:
            # extend() keeps what it read before an exception: no item is lost.
            chunk.extend(itertools.islice(self._input, size))
        except Exception as exc:
            self.input_error = exc
            self._input_ended = True
        if len(chunk) < size:
            self._input_ended = True
        self._read += len(chunk)
        return chunk

    def _fill_checkpointed(self, size: int) -> None:
        """Start one batch: the recorded items at the head of the looked-up input, replayed
        at once, or up to ``size`` new items, sent to a worker."""
        ahead = self._ahead
        while len(ahead) < size and not self._input_ended:
            self._look_up(max(size, self._lookahead))
        if ahead and ahead[0][2] is not None:
            run = 1
            while run < len(ahead) and ahead[run][2] is not None:
                run += 1
            entries = [ahead.popleft() for _ in range(run)]
            self._replay(entries)
        elif ahead:
            entries = []
            while ahead and len(entries) < size and ahead[0][2] is None:
                entries.append(ahead.popleft())
            self._start([entry[0] for entry in entries], [entry[1] for entry in entries])
        self._exhausted = self._input_ended and not ahead

    def _keys(self, chunk: list[Any]) -> list[bytes | None]:
        salt = self._salt
        keys = [item_key(item, salt) for item in chunk]
        if not self._unkeyed and None in keys:
            self._unkeyed = True
            warnings.warn(
                "an item cannot be keyed for the checkpoint (it cannot be pickled); such "
                "items are computed on every run",
                RuntimeWarning,
                stacklevel=2,
            )
        return keys

    def _look_up(self, size: int) -> None:
        assert self._store is not None
        chunk = self._read_input(size)
        keys = self._keys(chunk)
        known = [key for key in keys if key is not None]
        found = self._store.lookup(known) if known else {}
        self._ahead.extend(
            (item, key, None if key is None else found.get(key))
            for item, key in zip(chunk, keys, strict=True)
        )
        whole = bool(chunk) and len(found) == len(chunk)
        self._lookahead = min(2 * size, MAX_LOOKAHEAD) if whole else 1

    def _replay(self, entries: list[tuple[Any, bytes | None, Recorded | None]]) -> None:
        items = [entry[0] for entry in entries] if self._keep_items else None
        batch = _Batch(self._seq, len(entries), items)
        self._seq += 1
        batch.recorded = [entry[2] for entry in entries]  # type: ignore[misc]
        self._replayed += batch.size
        self._taken += batch.size
        self._finish(batch)

    def _start(self, chunk: list[Any], keys: list[bytes | None] | None = None) -> None:
        batch = _Batch(self._seq, len(chunk), chunk if self._keep_items else None)
        batch.keys = keys
        self._seq += 1
        self._taken += len(chunk)
        self._submit(batch, chunk)
        self._submitted += len(chunk)
        self._batches_submitted += 1

    def _submit(self, batch: _Batch, items: list[Any]) -> None:
        handle = self.backend.submit(items)
        self.in_flight[handle] = batch
        if self.on_submit is not None:
            self.on_submit(handle)

    # -- collecting results --------------------------------------------------------------

    def complete(self, handle: Any) -> None:
        """Take in the result of the finished task ``handle``."""
        batch = self.in_flight.pop(handle)
        result = self.backend.result(handle, batch.size)
        if (result.lost or (result.too_large and batch.size > 1)) and self._rerun(batch):
            return
        if result.seconds > 0:
            self._sizer.observe(batch.size, result.seconds)
        if result.errors and self.options.retry_exceptions and not self._closed:
            kept = self._retry_failed(batch, result)
            if kept is None:
                return  # the item runs again
            result = kept
        parent = batch.parent
        if parent is None and batch.parts:
            batch.result = result  # its failed items run again: it finishes with them
            return
        if parent is not None:
            self._fill_part(parent, batch.start, result)
            if parent.parts:
                return
            batch = parent
        else:
            batch.result = result
        self._record(batch)
        self._finish(batch)

    def _rerun(self, batch: _Batch) -> bool:
        """Run the items of a batch whose worker died (or whose result was too large)
        again, if allowed: a batch of several items as two halves (which do not count as
        retries), so that an item that kills its worker ends up alone; a single item up to
        ``max_retries`` times."""
        items = batch.items
        if items is None or self._closed:
            return False
        if batch.size == 1:
            return self._run_alone_again(batch)
        parent = batch if batch.parent is None else batch.parent
        offset = 0 if batch.parent is None else batch.start
        if parent is batch:
            batch.result = BatchResult([None] * batch.size, {}, 0.0, frozenset())
        else:
            parent.parts -= 1  # replaced by its halves
        half = batch.size // 2
        for start, stop in ((0, half), (half, batch.size)):
            part = _Batch(batch.seq, stop - start, items[start:stop])
            part.parent, part.start = parent, offset + start
            parent.parts += 1
            self._submit_part(part)
        return True

    def _retry_failed(self, batch: _Batch, result: BatchResult) -> BatchResult | None:
        """Run the items that raised one of ``retry_exceptions`` again, each alone, up to
        ``max_retries`` times; returns ``result`` without them, or ``None`` when ``batch``
        itself (a single item) runs again."""
        assert result.errors is not None
        if batch.items is None:
            return result
        retry_types = self.options.retry_exceptions
        lost = result.retry or frozenset()
        again = [
            index
            for index, (exc, _) in result.errors.items()
            if isinstance(exc, retry_types) and index not in lost
        ]
        if not again:
            return result
        if batch.size == 1:
            return None if self._run_alone_again(batch) else result
        parent = batch if batch.parent is None else batch.parent
        for index in again:
            part = _Batch(batch.seq, 1, [batch.items[index]])
            part.parent, part.start, part.attempts = parent, batch.start + index, 1
            parent.parts += 1
            self._submit_part(part)
        errors = {i: error for i, error in result.errors.items() if i not in again}
        return result._replace(errors=errors)

    def _run_alone_again(self, batch: _Batch) -> bool:
        """Submit a one-item batch once more, unless it has had its ``max_retries``."""
        if batch.attempts >= self.options.max_retries:
            return False
        batch.attempts += 1
        self._submit_part(batch)
        return True

    def _submit_part(self, batch: _Batch) -> None:
        assert batch.items is not None
        self._submit(batch, batch.items)

    @staticmethod
    def _fill_part(parent: _Batch, start: int, result: BatchResult) -> None:
        merged = parent.result
        assert merged is not None
        assert merged.errors is not None
        merged.values[start : start + len(result.values)] = result.values
        for index, error in (result.errors or {}).items():
            merged.errors[start + index] = error
        retry = {start + index for index in result.retry or ()}
        parent.result = merged._replace(
            seconds=merged.seconds + result.seconds,
            retry=merged.retry | retry if merged.retry is not None else frozenset(retry),
        )
        parent.parts -= 1
        if not parent.parts and not merged.errors:
            parent.result = parent.result._replace(errors=None)

    def _record(self, batch: _Batch) -> None:
        result = batch.result
        assert result is not None
        errors = result.errors or {}
        for error in errors.values():
            attach_remote_traceback(*error)
        if self._on_error is not None and errors:
            items = batch.items
            assert items is not None
            for index, (exc, _) in errors.items():
                self._on_error(items[index], exc)
        if self._store is not None:
            assert batch.keys is not None
            retry = result.retry or frozenset()  # a resume retries timeouts and lost workers
            values = result.values
            rows = [
                (key, True, errors[index]) if index in errors else (key, False, values[index])
                for index, key in enumerate(batch.keys)
                if key is not None and index not in retry
            ]
            self._store.record(rows)

    def _finish(self, batch: _Batch) -> None:
        self._done += batch.size
        self._buffered += 1
        self._buffered_items += batch.size
        if self.options.keep_order:
            self._ordered[batch.seq] = batch
        else:
            self._ready.append(batch)

    def pop_ready(self) -> _Batch | None:
        """The next batch to yield, or ``None`` if it has not finished yet."""
        if self.options.keep_order:
            batch = self._ordered.pop(self._next_seq, None)
            if batch is not None:
                self._next_seq += 1
            return batch
        return self._ready.popleft() if self._ready else None

    @property
    def input_done(self) -> bool:
        """The input is read to its end (or stopped): no more tasks will start."""
        return self._exhausted

    @property
    def drained(self) -> bool:
        """Nothing more will come: input read, nothing in flight or buffered."""
        return self._exhausted and not self.in_flight and not self._buffered

    # -- yielding ------------------------------------------------------------------------

    def take(
        self, batch: _Batch
    ) -> tuple[list[Any] | None, list[Any], dict[int, ItemError] | None]:
        """``(items, values, errors)`` of ``batch`` (``items`` when kept), with the worker
        tracebacks attached; the batch stops counting against the window."""
        self._buffered -= 1
        self._buffered_items -= batch.size
        values, errors = self._merge(batch)
        return batch.items, values, errors

    def emit(self, batch: _Batch) -> Iterator[Any]:
        """The outputs of ``batch`` in its order (raising errors unless safe).

        The batch stops counting against the window once handed out here.
        """
        _, values, errors = self.take(batch)
        if not errors and not self.options.ret_args and self.halt_output is None:
            return iter(values)  # the hot path: no per-item work in Python
        return self._emit_items(batch.items, values, errors)

    def _emit_items(
        self, items: list[Any] | None, values: list[Any], errors: dict[int, ItemError] | None
    ) -> Iterator[Any]:
        options = self.options
        for position, value in enumerate(values):
            if self.halt_output is not None and self.halt_output():
                return
            if errors and position in errors:
                exc = errors[position][0]
                if not options.safe_exceptions:
                    raise exc
                value = exc
            yield (items[position], value) if options.ret_args else value  # type: ignore[index]

    def _merge(self, batch: _Batch) -> tuple[list[Any], dict[int, ItemError] | None]:
        if batch.recorded is None:
            assert batch.result is not None
            return batch.result.values, batch.result.errors
        values: list[Any] = []
        errors: dict[int, ItemError] = {}
        for position, (failed, recorded) in enumerate(batch.recorded):
            if failed:
                errors[position] = (attach_remote_traceback(*recorded), recorded[1])
                values.append(None)
            else:
                values.append(recorded)
        return values, errors or None

    # -- ending ----------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel what is still in flight and make the checkpoint durable (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._store is not None and self.in_flight:
                # Results that finished but were never asked for still go to the checkpoint.
                for handle in self.backend.finished(list(self.in_flight)):
                    self.complete(handle)
            if self.in_flight:
                self.backend.cancel(list(self.in_flight))
                self.in_flight.clear()
        finally:
            try:
                if self._store is not None:
                    self._store.close()
            finally:
                self.backend.close()

    def statistics(self) -> MapStatistics:
        return MapStatistics(
            items_read=self._read,
            items_submitted=self._submitted,
            batches_submitted=self._batches_submitted,
            items_done=self._done,
            items_replayed=self._replayed,
            batches_in_flight=len(self.in_flight),
            batches_buffered=self._buffered,
            window=self.window,
            seconds_per_item=self._sizer.seconds_per_item,
        )


def _iterate(run: _MapRun) -> Generator[Any, None, None]:
    try:
        while True:
            run.fill()
            batch = run.pop_ready()
            if batch is not None:
                yield from run.emit(batch)
                if run.halt_output is not None and run.halt_output():
                    return
                continue
            if run.drained:
                break
            run.complete(run.backend.wait(list(run.in_flight)))
        if run.input_error is not None:
            raise run.input_error
    finally:
        run.close()


async def _aiterate(run: _MapRun) -> AsyncIterator[Any]:
    try:
        while True:
            run.fill()
            batch = run.pop_ready()
            if batch is not None:
                for output in run.emit(batch):
                    yield output
                if run.halt_output is not None and run.halt_output():
                    return
                continue
            if run.drained:
                break
            run.complete(await run.backend.wait_async(list(run.in_flight)))
        if run.input_error is not None:
            raise run.input_error
    finally:
        run.close()


class MapIterator(Iterator[Any]):
    """The iterator ``RayMap.imap`` returns: a generator plus ``statistics()``.

    Closing it (or dropping it, or breaking out of the loop that consumes it) cancels the
    call's tasks still in flight.
    """

    def __init__(self, run: _MapRun) -> None:
        self._run = run
        self._gen = _iterate(run)

    def __iter__(self) -> Iterator[Any]:
        # A for loop runs the generator directly, without a Python-level __next__ per item.
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Stop the call: cancel its tasks in flight and flush its checkpoint."""
        self._gen.close()

    def statistics(self) -> MapStatistics:
        """A snapshot of this call's progress."""
        return self._run.statistics()


class RayMapIterator(MapIterator):
    """``MapIterator`` with ``len()`` when the input had one (for progress bars), as
    ray-map's ``submit`` returns."""

    def __init__(self, run: _MapRun, total: int | None) -> None:
        super().__init__(run)
        self._total = total

    def __len__(self) -> int:
        if self._total is None:
            raise TypeError("the length of this map is unknown: its input has no len()")
        return self._total


def make_setup(initializer: Callable[..., Any], initargs: tuple[Any, ...]) -> Setup:
    """The ``Setup`` that makes workers run ``initializer(*initargs)`` once per process,
    under a fresh key. The initializer goes to the object store once."""
    blob, digest = dumps_callable(initializer)
    return uuid.uuid4().hex, digest, [ray.put(blob)], initargs


def _outside_raypool() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the user's
    code: the first frame outside raypool."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("raypool"):
        level, frame = level + 1, frame.f_back
    return level


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _stop_predicate(stop: StopCondition | None) -> Callable[[], bool] | None:
    if stop is None:
        return None
    if isinstance(stop, threading.Event):
        return stop.is_set
    if callable(stop):
        return stop
    raise TypeError(f"stop must be a callable or a threading.Event, got {type(stop).__name__}")


class RayMap(Generic[R]):
    """Map a function over an iterable on Ray: streaming, batched and back-pressured.

    Keeps the API of the ``ray-map`` package (``from raypool import RayMap`` replaces
    ``from ray_map import RayMap``). Constructing it does no I/O; Ray starts (or is
    connected to) on the first call.

    Args:
        fn: the function. An item is passed as ``unpack`` says (by default a tuple as
            ``fn(*item)``, a dict as ``fn(**item)``, anything else as ``fn(item)``).
            Lambdas and closures are fine: it is serialized with dill.
        batch_size: items per Ray task; ``None`` (default) sizes batches from the measured
            item duration, to about 50 ms of work per task, and 1 for slow items.
        max_pending: batches in flight at once - in ordered mode finished batches waiting
            behind a slower one count too (in batches of the current size), which bounds
            memory; ``-1`` (default): ``4 * CPUs + 2`` of the cluster.
        checkpoint_path: a file recording each finished item (an SQLite database); a rerun
            yields recorded items without computing them again. Timeouts and lost workers
            are not recorded. A ray-map checkpoint found there is converted, with a
            warning, and its file kept as ``PATH.ray-map``. See the README's "Checkpoints".
        checkpoint_every: finished items that make the checkpoint commit: at most about
            this many (or ``checkpoint_interval`` seconds' worth) are lost if the process
            is killed.
        checkpoint: ``True``: a checkpoint in raypool's cache directory named after ``fn``
            (its module, qualified name and a hash of its code, defaults and closure, so
            that editing ``fn`` starts afresh); a name: the checkpoint of that name there;
            a path: that file (as ``checkpoint_path``). Each map call can override it.
        checkpoint_interval: seconds after which finished items are committed even if
            fewer than ``checkpoint_every``.
        checkpoint_errors: record application exceptions and replay them on a rerun (as
            ray-map does); ``False``: keep them out, so that a rerun retries them.
        max_retries: when a worker process dies under a task (``os._exit``, a segfault, a
            kill, the out-of-memory killer, a lost node), its items run again, in halves,
            until the item that killed it runs alone; that item is retried this many times
            before it ends as a ``WorkerCrashedError``. The other items are unaffected.
            Application exceptions are retried only if ``retry_exceptions`` says so. A
            task whose result Ray cannot store is split the same way, and the item whose
            result is too large ends as a ``ResultTooLargeError`` (not retried).
        retry_exceptions: ``True`` (any ``Exception``) or exception classes: an item that
            raises one runs again, alone, up to ``max_retries`` times (as Ray's option of
            that name, but per item); its last outcome is the result.
        address: a Ray cluster to connect to (``"host:port"``, ``"ray://host:port"``,
            ``"auto"``); ``None`` starts a local instance. Unreachable: an error within
            seconds, never a silent local fallback. Ignored if Ray is already initialized.
        password: the cluster's legacy Redis password.
        runtime_env: Ray runtime environment of the tasks (passed to ``ray.init`` when this
            starts Ray, else to each task).
        remote_options: passed to ``.options()`` of each task, e.g. ``{"num_cpus": 0.5}``.
        on_error: ``on_error(item, exception)`` is called in the caller's process for each
            failed item as its batch arrives (replayed items excluded).
        init_if_needed: start or connect to Ray in the constructor instead of lazily.
        adaptive_tail_batching: when the input has a ``len()``, shrink batches near the
            end so the last tasks finish together.
        tail_batches_per_core: the tail starts when fewer than this many batches per CPU
            are left.
        tail_min_batch_size: batches never shrink below this.
        unpack: ``"auto"`` (above), ``"none"`` (``fn(item)``), ``"args"`` (``fn(*item)``)
            or ``"kwargs"`` (``fn(**item)``).
        batched: ``fn`` takes a whole batch (a list of items) and returns a list of as many
            results - vectorized numpy work, model inference. A ``timeout`` then applies to
            each call; a wrong length is a ``BatchLengthError`` for each item of the batch.
        initializer: ``initializer(*initargs)`` runs once in each worker process before
            that process runs its first item of this ``RayMap`` (state it sets up - a
            connection, a model, a global in ``__main__`` - is there for later items).
            If it raises, the items of that task fail with ``BrokenPoolError``.
        initargs: the initializer's arguments (through Ray's serializer).
        max_tasks_per_worker: a worker process exits after running this many tasks
            (batches) and Ray starts a fresh one; ``None``: never.
        sequential: run everything in the calling thread, with no Ray at all: same
            ordering, ``ret_args``, ``safe_exceptions``, ``on_error`` and checkpoint
            behaviour, and ``pdb`` works in ``fn``. A timeout interrupts an item as in a
            worker when called from the main thread (it uses ``SIGALRM`` meanwhile); from
            another thread it can only report, after the item returns, that it overran.

    Raises:
        TypeError: ``fn`` is not callable.
        ValueError: an option is out of range (``batch_size < 1``, ``max_pending == 0``...).
    """

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        batch_size: int | None = None,
        max_pending: int = -1,
        checkpoint_path: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 100,
        address: str | None = None,
        password: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        remote_options: dict[str, Any] | None = None,
        on_error: OnError | None = None,
        init_if_needed: bool = False,
        adaptive_tail_batching: bool = True,
        tail_batches_per_core: int = 2,
        tail_min_batch_size: int = 1,
        unpack: Unpack = "auto",
        batched: bool = False,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        sequential: bool = False,
        checkpoint: Checkpoint = None,
        checkpoint_interval: float = 1.0,
        checkpoint_errors: bool = True,
        max_retries: int = 3,
        retry_exceptions: bool | Iterable[type[BaseException]] = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"RayMap needs a callable, got {type(fn).__name__}: {fn!r}")
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, got {type(on_error).__name__}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
        if max_tasks_per_worker is not None and (
            not isinstance(max_tasks_per_worker, int)
            or isinstance(max_tasks_per_worker, bool)
            or max_tasks_per_worker < 1
        ):
            raise ValueError(
                f"max_tasks_per_worker must be an int >= 1 or None, got {max_tasks_per_worker!r}"
            )
        check_checkpoint(checkpoint)
        if checkpoint is not None and checkpoint_path is not None:
            raise TypeError("pass checkpoint or checkpoint_path, not both")
        for name, value in (("runtime_env", runtime_env), ("remote_options", remote_options)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
        self.fn = fn
        self._options = MapOptions(
            batch_size=batch_size,
            max_pending=max_pending,
            unpack=unpack,
            batched=batched,
            adaptive_tail_batching=adaptive_tail_batching,
            tail_batches_per_core=tail_batches_per_core,
            tail_min_batch_size=tail_min_batch_size,
            checkpoint_every=checkpoint_every,
            checkpoint_interval=checkpoint_interval,
            checkpoint_errors=bool(checkpoint_errors),
            max_retries=max_retries,
            retry_exceptions=exception_types(retry_exceptions),
        )
        self.checkpoint_path = checkpoint_path
        self._checkpoint = checkpoint
        self._address = address
        self._password = password
        self._runtime_env = dict(runtime_env) if runtime_env else None
        self._remote_options = dict(remote_options) if remote_options else {}
        self._on_error = on_error
        self._sequential = sequential
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks_per_worker = max_tasks_per_worker
        # The initializer as workers receive it, made on first use; a pool facade that
        # runs several RayMaps as one pool sets its own, so they share one key.
        self._setup: Setup | None = None
        self._sequential_initialized = False
        self._started_ray = False
        if init_if_needed and not sequential:
            self._ensure_ray()

    @property
    def batch_size(self) -> int | None:
        """The fixed batch size, or ``None`` when batches are sized automatically."""
        return self._options.batch_size

    @property
    def max_pending(self) -> int:
        """The window of batches, or ``-1`` when sized from the cluster."""
        return self._options.max_pending

    def __repr__(self) -> str:
        mode = "sequential" if self._sequential else "ray"
        return f"<RayMap fn={self.fn!r} mode={mode} options={self._options}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RayMap cannot be pickled: create it where it is used")

    # -- internals -------------------------------------------------------------------------

    def _ensure_ray(self) -> None:
        if ensure_ray(self._address, password=self._password, runtime_env=self._runtime_env):
            self._started_ray = True

    def _worker_setup(self) -> Setup | None:
        if self._setup is None and self._initializer is not None:
            self._setup = make_setup(self._initializer, self._initargs)
        return self._setup

    def _backend(self, options: MapOptions) -> Backend:
        if self._sequential:
            if self._initializer is not None and not self._sequential_initialized:
                self._initializer(*self._initargs)
                self._sequential_initialized = True
            return InlineBackend(
                self.fn, unpack=options.unpack, timeout=options.timeout, batched=options.batched
            )
        self._ensure_ray()
        blob, digest = dumps_callable(self.fn)
        remote_options = dict(self._remote_options)
        if self._runtime_env and not self._started_ray:
            remote_options.setdefault("runtime_env", self._runtime_env)
        return RayBackend(
            blob,
            digest,
            unpack=options.unpack,
            timeout=options.timeout,
            batched=options.batched,
            remote_options=remote_options,
            setup=self._worker_setup(),
            max_calls=self._max_tasks_per_worker,
        )

    def _open_checkpoint(self, checkpoint: Checkpoint) -> SqliteStore | None:
        """The store of this call's checkpoint: the call's ``checkpoint``, else the
        constructor's ``checkpoint`` or ``checkpoint_path``; ``None`` for none."""
        check_checkpoint(checkpoint)
        if checkpoint is None:
            checkpoint = self._checkpoint
        if (checkpoint is None and self.checkpoint_path is None) or checkpoint is False:
            return None
        identity = fingerprint(self.fn)
        if checkpoint is None:
            path = os.fspath(self.checkpoint_path)  # type: ignore[arg-type]
        elif checkpoint is True:
            path = checkpoint_file(re.sub(r"[^A-Za-z0-9._-]", "_", identity))
        elif isinstance(checkpoint, str):
            path = checkpoint_file(checkpoint)
        else:
            path = os.fspath(checkpoint)
        options = self._options
        salt = key_salt(options.unpack, options.batched)
        imported = import_ray_map(path, lambda item: item_key(item, salt), function=identity)
        if imported is not None:
            warnings.warn(
                f"converted ray-map's checkpoint {path} ({imported} results) into a raypool "
                f"checkpoint; ray-map's file is kept as {path}{RAY_MAP_SUFFIX}",
                stacklevel=_outside_raypool(),
            )
        return SqliteStore(
            path,
            every=options.checkpoint_every,
            interval=options.checkpoint_interval,
            errors=options.checkpoint_errors,
            function=identity,
        )

    def _run(
        self,
        method: str,
        iterable: Iterable[Any],
        *,
        timeout: float | None,
        safe_exceptions: bool,
        keep_order: bool,
        ret_args: bool,
        checkpoint: Checkpoint = None,
        max_pending: int | None = None,
        **limits: Any,
    ) -> tuple[_MapRun, int | None]:
        options = dataclasses.replace(
            self._options,
            timeout=timeout,
            safe_exceptions=bool(safe_exceptions),
            keep_order=bool(keep_order),
            ret_args=bool(ret_args),
            max_pending=self._options.max_pending if max_pending is None else max_pending,
        )
        try:
            iterator = iter(iterable)
        except TypeError:
            raise TypeError(
                f"RayMap.{method}() needs an iterable of items, got {type(iterable).__name__}"
            ) from None
        total = _length(iterable)
        store = self._open_checkpoint(checkpoint)
        try:
            backend = self._backend(options)
        except BaseException:
            if store is not None:
                store.close()
            raise
        run = _MapRun(
            iterator, total, options, backend, store=store, on_error=self._on_error, **limits
        )
        return run, total

    # -- the seed's API ----------------------------------------------------------------------

    def imap(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> MapIterator:
        """Lazily map ``fn`` over ``iterable``, yielding results as a stream.

        The input is read only as far ahead as the window of batches in flight allows, so
        an endless generator works.

        Args:
            iterable: the items.
            timeout: seconds one item may run; it then ends as a ``TaskTimeoutError`` (also
                a ``TimeoutError``) and its worker moves on to the next item.
            safe_exceptions: yield an item's exception as its result instead of raising
                it. The exception keeps its type; ``__cause__`` holds the worker traceback.
            keep_order: yield in input order (``True``) or as results arrive.
            ret_args: yield ``(item, result)`` pairs.
            checkpoint: this call's checkpoint, instead of the constructor's: ``True``, a
                name or a path (see the constructor); ``False``: none. Recorded items are
                yielded in their place in the input, with their original item for
                ``ret_args``.

        Returns:
            An iterator of results. Closing or dropping it cancels the work in flight.

        Raises:
            TypeError: ``iterable`` is not iterable.
            ValueError: ``timeout`` is not a positive number.
            SerializationError: ``fn`` cannot be serialized.
            CheckpointError: the checkpoint is not a raypool checkpoint, or is not safe to
                load (another user's, or writable by others).
            ClusterUnreachableError: ``address`` cannot be reached.
            Exception: without ``safe_exceptions``, the first failed item's exception
                (in input order when ordered), after which the rest is cancelled.
        """
        run, _ = self._run(
            "imap",
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            checkpoint=checkpoint,
        )
        return MapIterator(run)

    def map(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> list[Any]:
        """``list(self.imap(...))``: same arguments, results in a list."""
        return list(
            self.imap(
                iterable,
                timeout=timeout,
                safe_exceptions=safe_exceptions,
                keep_order=keep_order,
                ret_args=ret_args,
                checkpoint=checkpoint,
            )
        )

    def imap_async(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> AsyncIterator[Any]:
        """``imap`` as an async iterator: waiting for results never blocks the event loop
        (it awaits Ray's futures; no thread). Cancelling the consuming task, or closing
        the iterator, cancels the work in flight. Arguments as ``imap``.

        Not to be confused with ``multiprocessing.Pool.map_async``: this is asyncio.
        """
        run, _ = self._run(
            "imap_async",
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            checkpoint=checkpoint,
        )
        return _aiterate(run)

    async def map_async(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        keep_order: bool = True,
        ret_args: bool = False,
        checkpoint: Checkpoint = None,
    ) -> list[Any]:
        """Coroutine: the results of ``imap_async`` in a list. Arguments as ``imap``."""
        stream = self.imap_async(
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            checkpoint=checkpoint,
        )
        return [item async for item in stream]

    # -- ray-map 1.0.3 compatibility ------------------------------------------------------

    def _stream_run(
        self,
        method: str,
        iterable: Iterable[Any],
        *,
        timeout: float | None,
        safe_exceptions: bool,
        ret_args: bool,
        keep_order: bool,
        ordered_window: int | None,
        limit: int | None,
        time_budget: float | None,
        stop: StopCondition | None,
        max_pending: int | None,
        checkpoint: Checkpoint,
    ) -> _MapRun:
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
            try:
                iterable = itertools.islice(iterable, limit)
            except TypeError:
                raise TypeError(
                    f"RayMap.{method}() needs an iterable of items, got {type(iterable).__name__}"
                ) from None
        if ordered_window is not None and (
            not isinstance(ordered_window, int) or ordered_window < 1
        ):
            raise ValueError(f"ordered_window must be an int >= 1 or None, got {ordered_window!r}")
        stopped = _stop_predicate(stop)
        halt_input = stopped
        if time_budget is not None:
            if not isinstance(time_budget, (int, float)) or time_budget < 0:
                raise ValueError(f"time_budget must be seconds >= 0 or None, got {time_budget!r}")
            deadline = time.monotonic() + time_budget

            def halt_input() -> bool:
                return time.monotonic() >= deadline or (stopped is not None and stopped())

        run, _ = self._run(
            method,
            iterable,
            timeout=timeout,
            safe_exceptions=safe_exceptions,
            keep_order=keep_order,
            ret_args=ret_args,
            max_pending=max_pending,
            checkpoint=checkpoint,
            halt_input=halt_input,
            halt_output=stopped,
            max_buffered_items=ordered_window if keep_order else None,
        )
        return run

    def imap_stream(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        ret_args: bool = False,
        keep_order: bool = False,
        ordered_window: int | None = None,
        limit: int | None = None,
        time_budget: float | None = None,
        stop: StopCondition | None = None,
        max_pending: int | None = None,
        checkpoint: Checkpoint = None,
    ) -> MapIterator:
        """``imap`` for endless streams, as ray-map has it (as-ready by default).

        Every ``imap`` call already streams with bounded memory; this adds ways to stop.

        Args:
            keep_order: as ``imap``, but ``False`` by default.
            ordered_window: in ordered mode, at most this many finished items wait for a
                slower one before no more input is read.
            limit: read at most this many items (so at most this many results).
            time_budget: seconds; after it no more input is read, and what is in flight is
                still yielded.
            stop: a callable or ``threading.Event``; once true, no more input is read and
                nothing more is yielded (work in flight is cancelled).
            max_pending: overrides the window for this call.
            timeout, safe_exceptions, ret_args, checkpoint: as ``imap``.
        """
        return MapIterator(
            self._stream_run(
                "imap_stream",
                iterable,
                timeout=timeout,
                safe_exceptions=safe_exceptions,
                ret_args=ret_args,
                keep_order=keep_order,
                ordered_window=ordered_window,
                limit=limit,
                time_budget=time_budget,
                stop=stop,
                max_pending=max_pending,
                checkpoint=checkpoint,
            )
        )

    def imap_stream_async(
        self,
        iterable: Iterable[Any],
        *,
        timeout: float | None = None,
        safe_exceptions: bool = False,
        ret_args: bool = False,
        keep_order: bool = False,
        ordered_window: int | None = None,
        limit: int | None = None,
        time_budget: float | None = None,
        stop: StopCondition | None = None,
        max_pending: int | None = None,
        queue_maxsize: int | None = None,
        checkpoint: Checkpoint = None,
    ) -> AsyncIterator[Any]:
        """``imap_stream`` as an async iterator. ``queue_maxsize`` is accepted for
        ray-map compatibility and unused: nothing is queued beyond the window."""
        return _aiterate(
            self._stream_run(
                "imap_stream_async",
                iterable,
                timeout=timeout,
                safe_exceptions=safe_exceptions,
                ret_args=ret_args,
                keep_order=keep_order,
                ordered_window=ordered_window,
                limit=limit,
                time_budget=time_budget,
                stop=stop,
                max_pending=max_pending,
                checkpoint=checkpoint,
            )
        )

    def submit(self, iterable: Iterable[Any]) -> RayMapIterator:
        """ray-map's ``submit``: ``(item, result_or_exception)`` pairs as they finish, with
        ``len()`` when the input has one."""
        return self.submit_safe(iterable)

    def submit_safe(
        self, iterable: Iterable[Any], *, timeout: float | None = None
    ) -> RayMapIterator:
        """``submit`` with a per-item ``timeout``."""
        run, total = self._run(
            "submit",
            iterable,
            timeout=timeout,
            safe_exceptions=True,
            keep_order=False,
            ret_args=True,
        )
        return RayMapIterator(run, total)

    @classmethod
    def collect(
        cls,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[Any, Any]]:
        """ray-map's ``collect``: ``[(item, result_or_exception), ...]`` in input order."""
        rmap = cls(fn, batch_size=batch_size, **kwargs)
        return rmap.map(iterable, safe_exceptions=True, keep_order=True, ret_args=True)

    @classmethod
    async def acollect(
        cls,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[Any, Any]]:
        """``collect`` as a coroutine."""
        rmap = cls(fn, batch_size=batch_size, **kwargs)
        return await rmap.map_async(iterable, safe_exceptions=True, keep_order=True, ret_args=True)
