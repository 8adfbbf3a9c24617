"""How many items go into the next Ray task. Pure arithmetic: no Ray, no I/O.

Two rules combine:

* **Automatic size** (``batch_size=None``): workers report how long their items took; the
  next batch carries about ``TARGET_TASK_SECONDS`` of work, so Ray's fixed cost per task
  (one to a few milliseconds on a 2-core machine) stays a few percent of the task. Slow
  items fall back to batches of one. Until the first measurement arrives batches hold one
  item, which also gives the caller its first result as early as possible.
* **Open input** (the pool's submitted calls): the items waiting now go in at least as many
  tasks as there are CPUs.
* **Adaptive tail** (when the input's length is known): once the items left would fill
  fewer than ``tail_batches_per_core`` batches per CPU, each new batch takes only that
  share of what is left, so batch sizes shrink geometrically toward
  ``tail_min_batch_size`` and the last tasks finish together instead of one long straggler.
  The tail never cuts a task below ``TAIL_MIN_TASK_SECONDS`` of measured work: splitting
  tasks that are already that short only adds Ray's per-task cost.
"""

from __future__ import annotations

import math

__all__ = ["MAX_AUTO_BATCH", "TARGET_TASK_SECONDS", "BatchSizer"]

#: Work per task the automatic size aims at. Larger hides more per-task overhead but makes
#: each task a bigger unit of latency, cancellation and memory.
TARGET_TASK_SECONDS = 0.05

#: Upper bound of an automatic batch. With tiny items the window of batches in flight is
#: what the driver holds in memory: more items per batch buys little throughput past this.
MAX_AUTO_BATCH = 8192

#: The adaptive tail does not shrink a batch below this much measured work. Lower lets the
#: last tasks of cheap items split finer, at Ray's per-task cost for each split.
TAIL_MIN_TASK_SECONDS = 0.01

#: How much of the past the per-item estimate keeps at each new batch (0..1). The estimate
#: is decayed total seconds over decayed total items, so each batch weighs by its items and
#: one slow item moves it by its share, not by half. Lower forgets faster.
ESTIMATE_DECAY = 0.9


class BatchSizer:
    """Chooses the size of each batch for one map call.

    Args:
        batch_size: a fixed size, or ``None`` for automatic sizing.
        cpus: CPUs the work spreads over (at least 1).
        total: number of items in the input, or ``None`` when unknown.
        adaptive_tail: whether to shrink batches near the end (needs ``total``).
        tail_batches_per_core: the tail threshold, in batches per CPU.
        tail_min_batch_size: smallest batch the tail shrinks to.
    """

    def __init__(
        self,
        batch_size: int | None,
        *,
        cpus: int,
        total: int | None,
        adaptive_tail: bool = True,
        tail_batches_per_core: int = 2,
        tail_min_batch_size: int = 1,
    ) -> None:
        self._fixed = batch_size
        self._cpus = max(1, cpus)
        self._adaptive = adaptive_tail
        self._total = total if adaptive_tail else None
        self._tail_batches = max(1, tail_batches_per_core * max(1, cpus))
        self._tail_min = tail_min_batch_size
        self._seconds = 0.0
        self._items = 0.0

    @property
    def seconds_per_item(self) -> float | None:
        """The running estimate of one item's duration, or ``None`` before any report."""
        return self._seconds / self._items if self._items else None

    def observe(self, items: int, seconds: float) -> None:
        """Record that a batch of ``items`` items took ``seconds`` of worker time."""
        if items <= 0 or seconds < 0:
            return
        self._seconds = ESTIMATE_DECAY * self._seconds + seconds
        self._items = ESTIMATE_DECAY * self._items + items

    def base_size(self) -> int:
        """The size before the tail rule: fixed, or derived from the estimate."""
        if self._fixed is not None:
            return self._fixed
        estimate = self.seconds_per_item
        if estimate is None:
            return 1
        if estimate <= 0:
            return MAX_AUTO_BATCH
        return max(1, min(MAX_AUTO_BATCH, round(TARGET_TASK_SECONDS / estimate)))

    def next_size(self, submitted_items: int, waiting: int | None = None) -> int:
        """Size of the next batch, given how many items were already submitted - or, for
        an open input (submitted calls), how many are ``waiting`` now: those then go in at
        least as many tasks as there are CPUs (down to one item per task for a trickle),
        however short the items measured so far: a slow call may follow tiny ones, and
        calls that wait together run at once, as on the stdlib's processes."""
        size = self.base_size()
        if waiting is not None and self._adaptive:
            return max(1, min(size, math.ceil(waiting / self._cpus)))
        if self._total is None:
            return size
        left = self._total - submitted_items
        if left <= 0:
            return size
        share = math.ceil(left / self._tail_batches)
        floor = self._tail_min
        estimate = self.seconds_per_item
        if estimate:
            floor = max(floor, math.ceil(TAIL_MIN_TASK_SECONDS / estimate))
        return max(1, min(size, max(floor, share)))
