from __future__ import annotations

from raypool._batching import MAX_AUTO_BATCH, TARGET_TASK_SECONDS, BatchSizer


def test_fixed_size_without_known_length_stays_fixed() -> None:
    sizer = BatchSizer(32, cpus=2, total=None)
    assert [sizer.next_size(n) for n in (0, 1000, 10**6)] == [32, 32, 32]


def test_automatic_size_starts_at_one_then_follows_the_measurement() -> None:
    sizer = BatchSizer(None, cpus=2, total=None)
    assert sizer.next_size(0) == 1
    sizer.observe(items=10, seconds=10 * 0.001)  # 1 ms per item
    assert sizer.next_size(10) == round(TARGET_TASK_SECONDS / 0.001)


def test_automatic_size_falls_back_to_one_for_slow_items() -> None:
    sizer = BatchSizer(None, cpus=2, total=None)
    sizer.observe(items=1, seconds=0.5)
    assert sizer.next_size(1) == 1


def test_automatic_size_is_capped_for_tiny_items() -> None:
    sizer = BatchSizer(None, cpus=2, total=None)
    sizer.observe(items=1000, seconds=1e-9)
    assert sizer.next_size(1000) == MAX_AUTO_BATCH
    sizer.observe(items=1000, seconds=0.0)
    assert sizer.next_size(1000) == MAX_AUTO_BATCH


def test_estimate_moves_toward_new_measurements() -> None:
    sizer = BatchSizer(None, cpus=2, total=None)
    sizer.observe(items=1, seconds=0.01)
    sizer.observe(items=100, seconds=0.0001)
    assert sizer.seconds_per_item is not None
    assert 0.000001 < sizer.seconds_per_item < 0.01


def test_one_slow_item_moves_the_estimate_by_its_share() -> None:
    sizer = BatchSizer(None, cpus=2, total=None)
    for _ in range(5):
        sizer.observe(items=20, seconds=20 * 0.002)  # 2 ms items
    sizer.observe(items=1, seconds=0.2)  # a 200 ms straggler
    estimate = sizer.seconds_per_item
    assert estimate is not None
    assert estimate < 0.005  # an item-weighted mean, not half of 200 ms
    assert sizer.next_size(0) > 1


def test_tail_shrinks_geometrically_to_the_minimum() -> None:
    total = 1000
    sizer = BatchSizer(32, cpus=2, total=total, tail_batches_per_core=2, tail_min_batch_size=1)
    sizes = []
    submitted = 0
    while submitted < total:
        size = min(sizer.next_size(submitted), total - submitted)
        sizes.append(size)
        submitted += size
    assert sum(sizes) == total
    assert sizes[0] == 32
    assert sizes[-1] == 1
    tail = sizes[sizes.index(max(s for s in sizes if s < 32)) :]
    assert tail == sorted(tail, reverse=True)  # never grows again once shrinking
    assert len(sizes) > total // 32


def test_tail_respects_minimum_and_can_be_disabled() -> None:
    sizer = BatchSizer(32, cpus=2, total=100, tail_min_batch_size=8)
    assert sizer.next_size(99) == 8
    off = BatchSizer(32, cpus=2, total=100, adaptive_tail=False)
    assert off.next_size(99) == 32


def test_tail_does_not_split_tasks_that_are_already_short() -> None:
    tiny = BatchSizer(8192, cpus=2, total=100_000)
    tiny.observe(items=8192, seconds=8192 * 1e-7)  # 0.1 us per item: a batch is ~1 ms
    assert tiny.next_size(99_000) == 8192  # no split: the last 1000 go as one task
    slow = BatchSizer(32, cpus=2, total=1000)
    slow.observe(items=32, seconds=32 * 0.01)  # 10 ms per item
    assert slow.next_size(990) == 3  # ceil(10 left / 4 tail batches)
