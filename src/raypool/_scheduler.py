"""The scheduler of one map call: ``MapRun``. Pure logic: it drives a ``Backend``, never Ray.

Data flow of one call, and the thread each step runs in::

     the driving thread: the engine iterator's consumer, or the pool's dispatcher thread
    ┌──────────────────────────────────────────────────────────────────────┐
    │ iterable                                                             │
    │   │ _Source.take: a chunk sized by BatchSizer                        │
    │   v                                                                  │
    │ _Lookup (with a checkpoint): keys, store.lookup ──recorded──┐        │
    │   │ new items                                               │        │
    │   v                                                         │        │
    │ _Batch(seq) ─> _Part(batch, 0) ─> Backend.submit ───────────┼────────┼──> a Ray task
    │                                                             │        │       │
    │ complete(handle) <── Backend.wait (iterator) or .notify <───┼────────┼─ BatchResult
    │   │                  (dispatcher; from Ray's threads)       │        │
    │   ├─ the worker died, or the result is too large:           │        │
    │   │  _Retries.plan ─> halves, then the item alone, up to    │        │
    │   │  max_retries; retry_exceptions: the item alone          │        │
    │   │  ─> Backend.submit again                                │        │
    │   v every part of the batch in                              │        │
    │ record: checkpoint rows (to the store's writer thread),     │        │
    │   │     on_error(item, exc)                                 │        │
    │   v                                                         v        │
    │ window: reorder buffer by seq (ordered) / ready queue <── replayed   │
    │   v                                                                  │
    │ take / emit ─> the iterator's consumer, or the pool's sink           │
    └──────────────────────────────────────────────────────────────────────┘
     In the Ray worker process (``_worker.execute_batch``): the initializer once per
     process, ``fn`` per item under the per-item timeout and the call's cancel flag, every
     item's error caught and sent back with its traceback.

* **Filling** (``fill``): while the window has room - batches in flight plus finished ones
  not yet taken stay under ``window`` - and the ``Throttle`` admits one more task, read the
  next chunk of input (sized by ``BatchSizer``) and submit it as one task. With a
  checkpoint that holds results, input is looked up in blocks first: a run of recorded
  items becomes a batch that is finished at once (replayed).
* **Completing** (``complete``): a finished task is one ``_Part`` of a batch - the whole
  batch, or a slice of it run again after its worker died. Once every part of a batch is
  in, the batch is recorded and joins the window's output side.
* **Taking** (``pop_ready``/``take``): in input order (``keep_order``) or as ready.
* **Open input, streamed results** (the pool's submitted calls, ``_lanes``): the input may
  be a ``Feed`` - having nothing now does not end it; the next batch is then sized from
  the items waiting, spread over the CPUs - and a streaming backend's task reports its
  items' results in pieces while it runs. Each piece is output at once as a batch of its
  own (unordered only, no checkpoint); a task lost midway runs again only the items it had
  not reported.
* **States** (``RunState``): ``FILLING`` while input is read; ``DRAINING`` once it ended
  (or was stopped) and what is in flight finishes; ``CLOSED`` after ``close()``, which
  cancels the tasks still in flight and closes the checkpoint. ``_move`` is the one place
  the state changes, and it refuses moves that are not in ``_MOVES``.

One thread at a time drives a run: the engine's iterator, or the dispatcher thread that
owns it. Nothing here is locked.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from ._batching import BatchSizer
from ._config import MapOptions, StreamLimits
from ._errors import ForkedProcessError, attach_remote_traceback, user_stacklevel
from ._keys import item_key, key_salt
from ._outcome import BatchResult, ItemError, Rerun, merge_part, outputs
from ._store import CheckpointStore, Recorded

__all__ = [
    "MAX_LOOKAHEAD",
    "WINDOW_EXTRA",
    "WINDOW_PER_CPU",
    "Backend",
    "Feed",
    "MapRun",
    "MapStatistics",
    "OnError",
    "RunState",
    "Throttle",
]

#: ``max_pending=-1`` keeps this many batches per cluster CPU in flight (plus
#: ``WINDOW_EXTRA``): enough that every worker has its next task queued while the driver
#: handles a result. More costs driver memory (the window is what the driver holds).
WINDOW_PER_CPU = 4
WINDOW_EXTRA = 2

#: With a checkpoint, input is looked up in blocks. A block is as large as the next batch;
#: while whole blocks turn out to be recorded (a resume), the next one is twice as large, up
#: to this many items: replay costs one query per block, and new items are still read no
#: further ahead than without a checkpoint.
MAX_LOOKAHEAD = 1024

OnError = Callable[[Any, BaseException], Any]


class Backend(Protocol):
    """What the scheduler needs from an executor of batches (``_backend`` has two)."""

    #: CPUs the work spreads over.
    cpus: int
    #: Whether the items of a task whose worker died can be run again (a Ray task can; a
    #: batch run in the calling process took that process with it).
    rerunnable: bool
    #: Whether a task reports its items' results as they finish, in order, in pieces: then
    #: ``result`` returns the next piece - a prefix of the items still out - and a task
    #: stays in flight until its last item is in (see ``MapRun.complete``).
    streams: bool

    def submit(self, items: list[Any], checked: bool = False) -> Any:
        """Start a batch; returns its handle. ``checked``: each value is pickled and
        unpickled alone, so that one that cannot be is that item's error (a rerun)."""

    def wait(self, handles: Sequence[Any]) -> Any:
        """Block until one of ``handles`` (oldest first) is done; return it."""

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        """``wait`` without blocking the event loop."""

    def result(self, handle: Any, items: list[Any] | None, size: int) -> BatchResult:
        """The outcome of a finished batch of ``size`` items (``items``, when kept: an
        error about one item may name it). A failure of the whole task becomes a failure
        of each of its items; this never raises. A streaming backend returns the next
        piece (``notify`` told that it is there): results of the first items out."""

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        """Those of ``handles`` that are done, without waiting."""

    def notify(self, handle: Any, callback: Callable[[Any], None]) -> None:
        """Call ``callback(handle)`` once ``handle`` is done (streaming: once its next
        piece is there), from any thread."""

    def cancel(self, handles: Sequence[Any], *, kill: bool = False) -> None:
        """Stop the batches of ``handles``; their results are no longer wanted. With
        ``kill``, the processes running them end at once."""

    def close(self) -> None:
        """Release what this backend holds (idempotent)."""


class Feed(Protocol):
    """An open input: items arrive while the run goes on (the pool's submitted calls).

    Unlike an iterator, having nothing now does not end it: ``take`` returns what waits
    (possibly nothing) and ``ended`` turns true once no more items will come.
    """

    #: Items taken so far.
    read: int
    #: Always ``None``: a feed does not fail (kept for the run's ``input_error``).
    error: BaseException | None

    @property
    def ended(self) -> bool:
        """No more items will come, and none waits."""

    @property
    def waiting(self) -> int:
        """How many items wait now."""

    def take(self, size: int) -> list[Any]:
        """At most ``size`` of the waiting items (taking them packs them into a task)."""


class Throttle(Protocol):
    """A limit shared with other runs (the pool's cap on tasks in flight)."""

    def admit(self) -> bool:
        """Whether one more task may start now."""

    def submitted(self, handle: Any) -> None:
        """A task was started (also a task run again); ``handle`` is its backend handle."""


class RunState(enum.Enum):
    """Where a ``MapRun`` is in its life."""

    #: Input is read and submitted as the window allows.
    FILLING = "filling"
    #: The input ended (or was stopped): what is in flight finishes, nothing new starts.
    DRAINING = "draining"
    #: ``close()``: tasks in flight were cancelled; nothing more happens.
    CLOSED = "closed"


_MOVES: dict[RunState, frozenset[RunState]] = {
    RunState.FILLING: frozenset({RunState.DRAINING, RunState.CLOSED}),
    RunState.DRAINING: frozenset({RunState.CLOSED}),
    RunState.CLOSED: frozenset(),
}


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


@dataclasses.dataclass
class _Counters:
    """What a run has done so far; ``MapStatistics`` is a snapshot of it."""

    taken: int = 0  # items put into batches (read minus looked ahead)
    submitted: int = 0  # items sent to tasks the first time
    batches_submitted: int = 0
    done: int = 0
    replayed: int = 0
    buffered: int = 0  # finished batches not yet taken
    buffered_items: int = 0


class _Batch:
    """Consecutive input items: the unit of output order, of the window and of checkpoint
    rows. Computed by one or more parts, or replayed from the checkpoint."""

    __slots__ = ("items", "keys", "parts", "result", "seq", "size")

    def __init__(
        self, seq: int, size: int, items: list[Any] | None, keys: list[bytes | None] | None
    ) -> None:
        self.seq = seq
        self.size = size
        self.items = items  # kept only when ret_args, on_error or a rerun need them
        self.keys = keys  # checkpoint keys of the items, with a checkpoint
        self.parts = 0  # parts in flight
        self.result: BatchResult | None = None

    def fill(self, offset: int, result: BatchResult) -> None:
        """Take in the result of the part that starts at ``offset``."""
        if self.result is None and offset == 0 and len(result.values) == self.size:
            self.result = result  # the whole batch at once: the common case, no copy
        else:
            self.result = merge_part(self.result, self.size, offset, result)


class _Part:
    """Items of a batch sent to one task: the whole batch, or - after a lost worker, an
    exception listed in ``retry_exceptions``, a result that could not be sent back - a
    slice of it run again. A part run again is ``checked`` (``Backend.submit``)."""

    __slots__ = ("attempts", "batch", "checked", "items", "offset")

    def __init__(
        self,
        batch: _Batch,
        offset: int,
        items: list[Any] | None,
        attempts: int = 0,
        checked: bool = False,
    ) -> None:
        self.batch = batch
        self.offset = offset
        self.items = items  # None when items are not kept: it cannot run again
        self.attempts = attempts  # runs after the first of a one-item part
        self.checked = checked

    @property
    def size(self) -> int:
        return self.batch.size if self.items is None else len(self.items)


class _Retries:
    """The retry/split tree: what follows a finished part.

    A part whose worker died (``Rerun.LOST``) runs again as two halves - which do not
    count as retries - until the item that kills its worker runs alone; a one-item part
    runs again up to ``max_retries`` times. A part one of whose items failed it
    (``Rerun.SPLIT``: a result Ray could not store, an item the worker could not unpickle)
    is halved the same way, and alone the error is the item's. A part whose result could
    not be pickled or unpickled (``Rerun.CHECKED``) runs again once, checked: each value
    then fails alone. Items that raised one of ``retry_exceptions`` run again, each alone,
    up to ``max_retries`` times. Every part run again is checked.
    """

    def __init__(self, options: MapOptions, rerunnable: bool) -> None:
        self._max = options.max_retries
        self._types = options.retry_exceptions
        self._rerunnable = rerunnable  # whether the backend can run a lost task's items

    def plan(self, part: _Part, result: BatchResult) -> tuple[list[_Part], BatchResult | None]:
        """``(parts to run, result to keep)``; the result is ``None`` when the whole part
        runs again."""
        if part.items is None:
            return [], result
        rerun = result.rerun
        if rerun is Rerun.CHECKED and self._rerunnable and not part.checked:
            return [_Part(part.batch, part.offset, part.items, part.attempts, True)], None
        if rerun is Rerun.LOST or (rerun is Rerun.SPLIT and len(part.items) > 1):
            if not self._rerunnable:
                return [], result
            again = self._split(part, part.items)
            return (again, None) if again else ([], result)
        if result.errors and self._types:
            return self._retry_raised(part, part.items, result)
        return [], result

    def _split(self, part: _Part, items: list[Any]) -> list[_Part]:
        if len(items) == 1:
            return self._alone_again(part)
        half = len(items) // 2
        return [
            _Part(part.batch, part.offset, items[:half], checked=True),
            _Part(part.batch, part.offset + half, items[half:], checked=True),
        ]

    def _alone_again(self, part: _Part) -> list[_Part]:
        if part.attempts >= self._max:
            return []
        return [_Part(part.batch, part.offset, part.items, part.attempts + 1, True)]

    def _retry_raised(
        self, part: _Part, items: list[Any], result: BatchResult
    ) -> tuple[list[_Part], BatchResult | None]:
        assert result.errors is not None
        lost = result.retry or frozenset()
        again = [
            index
            for index, (exc, _) in result.errors.items()
            if isinstance(exc, self._types) and index not in lost
        ]
        if not again:
            return [], result
        if len(items) == 1:
            parts = self._alone_again(part)
            return (parts, None) if parts else ([], result)
        parts = [_Part(part.batch, part.offset + i, [items[i]], 1, True) for i in again]
        errors = {i: error for i, error in result.errors.items() if i not in again}
        return parts, result._replace(errors=errors or None)


class _Source:
    """The input, read in chunks, at most ``limit`` items. An exception raised by the input
    ends it; it is kept for the consumer, after every item read before it."""

    def __init__(self, iterator: Iterator[Any], limit: int | None) -> None:
        self._iterator = iterator
        self._left = limit
        self.read = 0
        self.ended = False
        self.error: BaseException | None = None

    def take(self, size: int) -> list[Any]:
        if self._left is not None:
            size = min(size, self._left)
        chunk: list[Any] = []
        try:
            # extend() keeps what it read before an exception: no item is lost.
            chunk.extend(itertools.islice(self._iterator, size))
        except Exception as exc:
            self.error = exc
            self.ended = True
        if len(chunk) < size or self._left == len(chunk):
            self.ended = True
        if self._left is not None:
            self._left -= len(chunk)
        self.read += len(chunk)
        return chunk


class _Chunk(NamedTuple):
    """What a reader hands the scheduler: items for a task, or recorded ones to replay."""

    items: list[Any]
    keys: list[bytes | None] | None
    recorded: list[Recorded] | None  # set: every item is recorded - replay them


class _Plain:
    """Input straight into batches: no checkpoint."""

    def __init__(self, source: _Source | Feed) -> None:
        self._source = source

    @property
    def exhausted(self) -> bool:
        return self._source.ended

    def next(self, size: int) -> _Chunk:
        return _Chunk(self._source.take(size), None, None)

    def discard(self) -> None:
        pass


class _Lookup:
    """Input keyed for the checkpoint and, when the checkpoint holds results, looked up in
    blocks ahead of the batches (see ``MAX_LOOKAHEAD``)."""

    def __init__(self, source: _Source, store: CheckpointStore, salt: bytes) -> None:
        self._source = source
        self._store = store
        self._salt = salt  # keys separate calling conventions: fn(item) is not fn(*item)
        self._ahead: deque[tuple[Any, bytes | None, Recorded | None]] = deque()
        self._lookahead = 1
        self._unkeyed = False

    @property
    def exhausted(self) -> bool:
        return self._source.ended and not self._ahead

    def next(self, size: int) -> _Chunk:
        if self._store.empty:  # a fresh checkpoint: nothing to look up
            items = self._source.take(size)
            return _Chunk(items, self._keys(items), None)
        ahead = self._ahead
        while len(ahead) < size and not self._source.ended:
            self._look_up(max(size, self._lookahead))
        entries = []
        if ahead and ahead[0][2] is not None:
            while ahead and ahead[0][2] is not None:
                entries.append(ahead.popleft())
            recorded: list[Recorded] | None = [entry[2] for entry in entries]  # type: ignore[misc]
        else:
            while ahead and len(entries) < size and ahead[0][2] is None:
                entries.append(ahead.popleft())
            recorded = None
        return _Chunk([entry[0] for entry in entries], [entry[1] for entry in entries], recorded)

    def discard(self) -> None:
        self._ahead.clear()

    def _keys(self, chunk: list[Any]) -> list[bytes | None]:
        salt = self._salt
        keys = [item_key(item, salt) for item in chunk]
        if not self._unkeyed and None in keys:
            self._unkeyed = True
            warnings.warn(
                "an item cannot be keyed for the checkpoint (it cannot be pickled); such "
                "items are computed on every run",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
        return keys

    def _look_up(self, size: int) -> None:
        chunk = self._source.take(size)
        keys = self._keys(chunk)
        known = [key for key in keys if key is not None]
        found = self._store.lookup(known) if known else {}
        self._ahead.extend(
            (item, key, None if key is None else found.get(key))
            for item, key in zip(chunk, keys, strict=True)
        )
        whole = bool(chunk) and len(found) == len(chunk)
        self._lookahead = min(2 * size, MAX_LOOKAHEAD) if whole else 1


class MapRun:
    """The state of one map call, driven by one thread at a time.

    Args:
        iterator: the input.
        total: its length, when known (for the adaptive tail).
        options: the call's options.
        backend: where tasks run.
        store: the call's checkpoint, or ``None``; closed with the run.
        on_error: ``on_error(item, exception)`` for each failed item, as its batch completes.
        limits: ways the input stops early.
        throttle: a limit on tasks shared with other runs, or ``None``.
        feed: an open input, read instead of ``iterator`` (the pool's submitted calls).
    """

    def __init__(
        self,
        iterator: Iterator[Any],
        total: int | None,
        options: MapOptions,
        backend: Backend,
        *,
        store: CheckpointStore | None = None,
        on_error: OnError | None = None,
        limits: StreamLimits | None = None,
        throttle: Throttle | None = None,
        feed: Feed | None = None,
    ) -> None:
        limits = limits or StreamLimits()
        self.options = options
        self.total = total
        self._backend = backend
        self._store = store
        self._on_error = on_error
        self._throttle = throttle
        self._state = RunState.FILLING
        self._pid = os.getpid()
        cpus = backend.cpus
        max_pending = options.max_pending
        self.window = WINDOW_PER_CPU * cpus + WINDOW_EXTRA if max_pending == -1 else max_pending
        self._max_buffered_items = limits.ordered_window if options.keep_order else None
        self._halt_input, self.halt_output = _halts(limits)
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
        self._feed = feed
        self._streams = backend.streams
        if (feed is not None or self._streams) and (options.keep_order or store is not None):
            raise ValueError("a feed or a streaming backend takes unordered output, no store")
        salt = key_salt(options.unpack, options.batched)
        source = _Source(iterator, limits.limit)
        self._source: _Source | Feed = source if feed is None else feed
        if store is None:
            self._reader: _Plain | _Lookup = _Plain(self._source)
        else:
            self._reader = _Lookup(source, store, salt)
        self._retries = _Retries(options, backend.rerunnable)
        self._in_flight: dict[Any, _Part] = {}
        self._reruns: deque[_Part] = deque()  # parts to run again, as the throttle admits
        self._ordered: dict[int, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._next_seq = 0
        self._seq = 0
        self._counts = _Counters()

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self._state

    def _move(self, to: RunState) -> None:
        if to not in _MOVES[self._state]:
            raise RuntimeError(f"a map run cannot go from {self._state.name} to {to.name}")
        self._state = to

    @property
    def reruns_waiting(self) -> bool:
        """Whether parts of a lost task (or items to retry) wait for the throttle."""
        return bool(self._reruns)

    @property
    def wants_tasks(self) -> bool:
        """Whether it would start tasks if admitted: input is still read, or parts wait to
        run again."""
        return self._state is RunState.FILLING or bool(self._reruns)

    @property
    def drained(self) -> bool:
        """Nothing more will come: input read, nothing in flight or buffered."""
        return (
            self._state is RunState.DRAINING and not self._in_flight and not self._counts.buffered
        )

    @property
    def input_error(self) -> BaseException | None:
        """The exception the input raised, to be raised after the items read before it."""
        return self._source.error

    @property
    def tasks_in_flight(self) -> int:
        return len(self._in_flight)

    def owns(self, handle: Any) -> bool:
        """Whether ``handle`` is a task of this run still wanted (not cancelled)."""
        return handle in self._in_flight

    # -- filling the window ----------------------------------------------------------------

    def _room(self) -> bool:
        # Finished results waiting to be yielded count in batches of the current size, so
        # that the many one-item batches of the start do not stall the window behind a slow
        # head item: what is held stays bounded by window x batch size items either way.
        counts = self._counts
        buffered = -(-counts.buffered_items // self._sizer.base_size())
        if len(self._in_flight) + buffered >= self.window:
            return False
        limit = self._max_buffered_items
        if limit is not None and counts.buffered_items >= limit:
            return False
        return self._throttle is None or self._throttle.admit()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise ForkedProcessError.inherited("this map call", self._pid)

    def fill(self) -> None:
        """Submit the parts waiting to run again, then read and submit input until the
        window is full or the input ends - as far as the throttle admits."""
        self._check_process()
        self._submit_reruns()
        while self._state is RunState.FILLING and not self._reruns and self._room():
            if self._halt_input is not None and self._halt_input():
                self._reader.discard()
                self._move(RunState.DRAINING)
                break
            waiting = None if self._feed is None else self._feed.waiting
            chunk = self._reader.next(self._sizer.next_size(self._counts.taken, waiting))
            if chunk.recorded is not None:
                self._replay(chunk)
            elif chunk.items:
                self._start(chunk)
            if self._reader.exhausted:
                self._move(RunState.DRAINING)
            elif not chunk.items:
                break  # an open feed with nothing waiting: more may come later

    def _new_batch(self, chunk: _Chunk) -> _Batch:
        size = len(chunk.items)
        batch = _Batch(self._seq, size, chunk.items if self._keep_items else None, chunk.keys)
        self._seq += 1
        self._counts.taken += size
        return batch

    def _replay(self, chunk: _Chunk) -> None:
        batch = self._new_batch(chunk)
        assert chunk.recorded is not None
        batch.result = _replayed(chunk.recorded)
        self._counts.replayed += batch.size
        self._finish(batch)

    def _start(self, chunk: _Chunk) -> None:
        batch = self._new_batch(chunk)
        batch.parts = 1
        self._submit(_Part(batch, 0, batch.items), chunk.items)
        self._counts.submitted += batch.size
        self._counts.batches_submitted += 1

    def _submit_reruns(self) -> None:
        # Reruns go first, under the throttle as any task; the window does not hold them
        # back: they take the place of the task they replace.
        reruns = self._reruns
        while reruns and (self._throttle is None or self._throttle.admit()):
            part = reruns.popleft()
            assert part.items is not None
            self._submit(part, part.items)

    def _submit(self, part: _Part, items: list[Any]) -> None:
        handle = self._backend.submit(items, part.checked)
        self._in_flight[handle] = part
        if self._throttle is not None:
            self._throttle.submitted(handle)

    # -- collecting results --------------------------------------------------------------

    def wait(self) -> None:
        """Block until a task finishes, and take it in."""
        self._check_process()
        self.complete(self._backend.wait(list(self._in_flight)))

    async def wait_async(self) -> None:
        """``wait`` without blocking the event loop."""
        self._check_process()
        self.complete(await self._backend.wait_async(list(self._in_flight)))

    def when_done(self, handle: Any, callback: Callable[[Any], None]) -> None:
        """Call ``callback(handle)`` from any thread once the task ``handle`` finishes."""
        self._backend.notify(handle, callback)

    def complete(self, handle: Any) -> bool:
        """Take in the result of the finished task ``handle`` - or, from a streaming
        backend, its next piece. Returns whether the task is still in flight (a piece
        came, more will): its backend must be asked to ``notify`` again."""
        part = self._in_flight.pop(handle)
        result = self._backend.result(handle, part.items, part.size)
        done = len(result.values)
        if result.seconds > 0:
            self._sizer.observe(done, result.seconds)
        more = self._streams and done < part.size
        if more:  # the piece is a part of its own; the rest stays in flight
            items, offset = part.items, part.offset
            assert items is not None
            self._in_flight[handle] = _Part(
                part.batch, offset + done, items[done:], part.attempts, part.checked
            )
            part = _Part(part.batch, offset, items[:done], part.attempts, part.checked)
        again: list[_Part] = []
        kept: BatchResult | None = result
        if self._state is not RunState.CLOSED:  # closing: nothing runs again
            again, kept = self._retries.plan(part, result)
        self._reruns.extend(again)
        self._submit_reruns()
        if self._streams:
            if kept is not None:
                assert part.items is not None
                self._emit_piece(part.items, kept, {p.offset - part.offset for p in again})
            return more
        batch = part.batch
        batch.parts += len(again) - 1
        if kept is not None:
            batch.fill(part.offset, kept)
        if not batch.parts:
            self._record(batch)
            self._finish(batch)
        return False

    def _emit_piece(
        self, items: list[Any], result: BatchResult, skip: set[int] | frozenset[int] = frozenset()
    ) -> None:
        """A streaming backend's results for ``items``: output at once, each piece a batch
        of its own (but the positions in ``skip``, which run again)."""
        if skip:
            keep = [i for i in range(len(items)) if i not in skip]
            errors = result.errors or {}
            new_errors = {n: errors[i] for n, i in enumerate(keep) if i in errors}
            items = [items[i] for i in keep]
            result = result._replace(
                values=[result.values[i] for i in keep], errors=new_errors or None
            )
        if not items:
            return
        batch = _Batch(self._seq, len(items), items, None)
        self._seq += 1
        batch.result = result
        self._record(batch)
        self._finish(batch)

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
        counts = self._counts
        counts.done += batch.size
        counts.buffered += 1
        counts.buffered_items += batch.size
        if self.options.keep_order:
            self._ordered[batch.seq] = batch
        else:
            self._ready.append(batch)

    # -- taking results --------------------------------------------------------------------

    def pop_ready(self) -> _Batch | None:
        """The next batch to take, or ``None`` if it has not finished yet."""
        if self.options.keep_order:
            batch = self._ordered.pop(self._next_seq, None)
            if batch is not None:
                self._next_seq += 1
            return batch
        return self._ready.popleft() if self._ready else None

    def take(
        self, batch: _Batch
    ) -> tuple[list[Any] | None, list[Any], dict[int, ItemError] | None]:
        """``(items, values, errors)`` of ``batch`` (``items`` when kept), with the worker
        tracebacks attached; the batch stops counting against the window."""
        self._counts.buffered -= 1
        self._counts.buffered_items -= batch.size
        result = batch.result
        assert result is not None
        batch.result = None  # the caller holds the values now
        return batch.items, result.values, result.errors

    def emit(self, batch: _Batch) -> Iterator[Any]:
        """The outputs of ``batch`` in its order (raising an error unless safe); the batch
        stops counting against the window once handed out here."""
        items, values, errors = self.take(batch)
        options = self.options
        shaped = outputs(
            items,
            values,
            errors,
            safe_exceptions=options.safe_exceptions,
            ret_args=options.ret_args,
        )
        if self.halt_output is None:
            return iter(shaped)  # the hot path: no per-item work in Python
        return _until(self.halt_output, iter(shaped))

    # -- ending ----------------------------------------------------------------------------

    def close(self, *, kill: bool = False) -> None:
        """Cancel what is still in flight (``kill``: ending the processes that run it)
        and make the checkpoint durable (idempotent)."""
        if self._state is RunState.CLOSED or os.getpid() != self._pid:
            return  # closed, or a forked child's copy: the tasks and store are the parent's
        if sys.is_finalizing():
            return  # dropped at the interpreter's very end: Ray and the stores closed before
        self._move(RunState.CLOSED)
        self._reruns.clear()
        try:
            if self._store is not None and self._in_flight:
                # Results that finished but were never asked for still go to the checkpoint.
                for handle in self._backend.finished(list(self._in_flight)):
                    self.complete(handle)
            if self._in_flight:
                self._backend.cancel(list(self._in_flight), kill=kill)
                self._in_flight.clear()
            self._ordered.clear()  # nobody takes them now: release the results
            self._ready.clear()
        finally:
            try:
                if self._store is not None:
                    self._store.close()
            finally:
                self._backend.close()

    def statistics(self) -> MapStatistics:
        counts = self._counts
        return MapStatistics(
            items_read=self._source.read,
            items_submitted=counts.submitted,
            batches_submitted=counts.batches_submitted,
            items_done=counts.done,
            items_replayed=counts.replayed,
            batches_in_flight=len(self._in_flight),
            batches_buffered=counts.buffered,
            window=self.window,
            seconds_per_item=self._sizer.seconds_per_item,
        )


def _halts(limits: StreamLimits) -> tuple[Callable[[], bool] | None, Callable[[], bool] | None]:
    """``(halt input, halt output)`` predicates of ``limits``: ``stop`` halts both, the
    time budget (counted from now) only the input."""
    stopped = limits.stopped()
    if limits.time_budget is None:
        return stopped, stopped
    deadline = time.monotonic() + limits.time_budget

    def halt_input() -> bool:
        return time.monotonic() >= deadline or (stopped is not None and stopped())

    return halt_input, stopped


def _until(halt: Callable[[], bool], shaped: Iterator[Any]) -> Iterator[Any]:
    """``shaped`` until ``halt()`` is true, checked before each output."""
    while not halt():
        try:
            yield next(shaped)
        except StopIteration:
            return


def _replayed(recorded: list[Recorded]) -> BatchResult:
    """The result of a batch answered from the checkpoint."""
    values: list[Any] = []
    errors: dict[int, ItemError] = {}
    for position, (failed, outcome) in enumerate(recorded):
        if failed:
            errors[position] = (attach_remote_traceback(*outcome), outcome[1])
            values.append(None)
        else:
            values.append(outcome)
    return BatchResult(values, errors or None, 0.0)
