"""Ordering, calling conventions, ret_args, nothing memoized."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from helpers import add, count_lines, log_call, square
from raypool import RayMap


@pytest.mark.parametrize("batch_size", [None, 1, 7])
def test_ordered_results_match_builtin_map(batch_size: int | None) -> None:
    assert RayMap(square, batch_size=batch_size).map(range(500)) == [x * x for x in range(500)]


def test_unordered_yields_every_result_once() -> None:
    out = RayMap(square, batch_size=3).map(range(100), keep_order=False)
    assert sorted(out) == [x * x for x in range(100)]


def test_ret_args_pairs_items_with_results() -> None:
    out = RayMap(square, batch_size=4).map(range(10), ret_args=True)
    assert out == [(x, x * x) for x in range(10)]


def test_seed_calling_convention_tuple_dict_plain() -> None:
    def f(a: int, b: int = 100) -> int:
        return a + b

    assert RayMap(f).map([(1, 2), {"a": 3, "b": 4}, 5]) == [3, 7, 105]


def test_unpack_none_passes_tuples_whole() -> None:
    assert RayMap(len, unpack="none").map([(1, 2, 3), (4,)]) == [3, 1]


def test_unpack_args_always_stars() -> None:
    assert RayMap(add, unpack="args").map([[1, 2], (3, 4)]) == [3, 7]


def test_lambdas_and_closures_travel() -> None:
    offset = 1000
    assert RayMap(lambda x: x + offset).map([1, 2]) == [1001, 1002]
    assert RayMap(functools.partial(add, 5)).map([1, 2]) == [6, 7]


def test_empty_input() -> None:
    assert RayMap(square).map([]) == []


def test_map_twice_computes_twice(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    rmap = RayMap(functools.partial(log_call, str(log)))
    assert rmap.map(range(20)) == list(range(20))
    assert rmap.map(range(20)) == list(range(20))
    assert count_lines(log) == 40


def test_statistics_count_the_work() -> None:
    it = RayMap(square, batch_size=10).imap(range(95))
    assert list(it) == [x * x for x in range(95)]
    stats = it.statistics()
    assert stats.items_read == stats.items_submitted == stats.items_done == 95
    assert stats.batches_in_flight == 0
    assert stats.batches_buffered == 0
