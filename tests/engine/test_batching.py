"""Automatic batch sizes and the adaptive tail, observed through statistics()."""

from __future__ import annotations

import time

from helpers import square
from raypool import RayMap


def test_tiny_items_are_batched_automatically() -> None:
    it = RayMap(square).imap(range(20_000))
    assert sum(1 for _ in it) == 20_000
    stats = it.statistics()
    assert stats.batches_submitted < 20_000 / 50
    assert stats.seconds_per_item is not None


def test_slow_items_fall_back_to_batches_of_one() -> None:
    def slow(x: int) -> int:
        time.sleep(0.1)
        return x

    it = RayMap(slow).imap(range(12))
    assert list(it) == list(range(12))
    assert it.statistics().batches_submitted == 12


def test_adaptive_tail_splits_the_last_batches() -> None:
    def two_ms(x: int) -> int:
        time.sleep(0.002)
        return x

    with_tail = RayMap(two_ms, batch_size=32).imap(range(320))
    assert list(with_tail) == list(range(320))
    without = RayMap(two_ms, batch_size=32, adaptive_tail_batching=False).imap(range(320))
    assert list(without) == list(range(320))
    assert without.statistics().batches_submitted == 10  # 320 / 32
    assert with_tail.statistics().batches_submitted > 10


def test_no_tail_for_inputs_without_length() -> None:
    it = RayMap(square, batch_size=32).imap(iter(range(1000)))
    assert list(it) == [x * x for x in range(1000)]
    assert it.statistics().batches_submitted == 32
