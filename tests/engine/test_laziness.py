"""Lazy input and back-pressure: the driver reads only as far as the window allows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from helpers import sleep_then, square
from raypool import RayMap


class Counted:
    """An endless generator that counts how many items were pulled from it.

    Endless as far as the tests go: it raises once ``limit`` items were pulled, so that a map
    reading its input eagerly fails instead of running forever.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.pulled = 0
        self.limit = limit

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            if i == self.limit:
                raise AssertionError(f"{self.limit} items were read: the input is read eagerly")
            self.pulled += 1
            yield i


def test_infinite_generator_is_read_lazily() -> None:
    source = Counted()
    it = RayMap(square, batch_size=1, max_pending=3).imap(source)
    for consumed, value in enumerate(it, start=1):
        assert value == (consumed - 1) ** 2
        # what has been read but not yet yielded is what the window holds
        assert source.pulled - consumed <= 3
        if consumed == 50:
            break
    it.close()
    assert source.pulled <= 53


def test_window_bounds_unordered_reads_too() -> None:
    source = Counted()
    it = RayMap(square, batch_size=2, max_pending=2).imap(source, keep_order=False)
    for seen, _ in enumerate(it, start=1):
        assert source.pulled - seen <= 2 * 2
        if seen == 40:
            break
    it.close()


def test_results_waiting_behind_a_slow_head_count_against_the_window() -> None:
    source = Counted()

    def items() -> Iterator[tuple[int, float]]:
        for i in source:
            yield i, (2.0 if i == 0 else 0.0)

    it = RayMap(sleep_then, batch_size=1, max_pending=3).imap(items())
    first = next(it)
    # item 0 takes 2 s; the others finish at once but may not run ahead of the window
    assert first == 0
    assert source.pulled <= 3 + 1
    it.close()


def test_nothing_is_read_before_iteration_starts() -> None:
    source = Counted()
    it = RayMap(square).imap(source)
    assert source.pulled == 0
    assert next(it) == 0
    it.close()
