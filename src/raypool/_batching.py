"""How many items go into the next Ray task. Pure arithmetic: no Ray, no I/O.

Two rules combine:

* **Automatic size** (``batch_size=None``): workers report how long their items took; the
  next batch carries about ``TARGET_TASK_SECONDS`` of work, so Ray's fixed cost per task
  (about a millisecond on a laptop) stays a few percent of the task. Slow items fall back
  to batches of one. Until the first measurement arrives batches hold one item, which also
  gives the caller its first result as early as possible.
* **Adaptive tail** (when the input's length is known): once the items left would fill
  fewer than ``tail_batches_per_core`` batches per CPU, each new batch takes only that
  share of what is left, so batch sizes shrink geometrically toward
  ``tail_min_batch_size`` and the last tasks finish together instead of one long straggler.
"""

from __future__ import annotations

import math

__all__ = ["MAX_AUTO_BATCH", "TARGET_TASK_SECONDS", "BatchSizer"]

#: Work per task the automatic size aims at. Larger hides more per-task overhead but makes
#: each task a bigger unit of latency, cancellation and memory.
TARGET_TASK_SECONDS = 0.02

#: Upper bound of an automatic batch. With tiny items the window of batches in flight is
#: what the driver holds in memory: more items per batch buys little throughput past this.
MAX_AUTO_BATCH = 8192

#: Weight of the newest measurement in the running per-item estimate (0..1]. Higher reacts
#: faster to a change of item cost, lower smooths over noisy batches.
ESTIMATE_WEIGHT = 0.5


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
        self._total = total if adaptive_tail else None
        self._tail_batches = max(1, tail_batches_per_core * max(1, cpus))
        self._tail_min = tail_min_batch_size
        self._seconds_per_item: float | None = None

    @property
    def seconds_per_item(self) -> float | None:
        """The running estimate of one item's duration, or ``None`` before any report."""
        return self._seconds_per_item

    def observe(self, items: int, seconds: float) -> None:
        """Record that a batch of ``items`` items took ``seconds`` of worker time."""
        if items <= 0 or seconds < 0:
            return
        sample = seconds / items
        if self._seconds_per_item is None:
            self._seconds_per_item = sample
        else:
            self._seconds_per_item += ESTIMATE_WEIGHT * (sample - self._seconds_per_item)

    def base_size(self) -> int:
        """The size before the tail rule: fixed, or derived from the estimate."""
        if self._fixed is not None:
            return self._fixed
        if self._seconds_per_item is None:
            return 1
        if self._seconds_per_item <= 0:
            return MAX_AUTO_BATCH
        return max(1, min(MAX_AUTO_BATCH, int(TARGET_TASK_SECONDS / self._seconds_per_item)))

    def next_size(self, submitted_items: int) -> int:
        """Size of the next batch, given how many items were already submitted."""
        size = self.base_size()
        if self._total is None:
            return size
        left = self._total - submitted_items
        if left <= 0:
            return size
        share = math.ceil(left / self._tail_batches)
        return max(1, min(size, max(self._tail_min, share)))
