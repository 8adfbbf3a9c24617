"""ray-map 1.0.3's imap_stream, submit and collect, as thin layers over the engine."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from helpers import fail_on, square
from raypool import RayMap, RayMapIterator


def test_imap_stream_as_ready() -> None:
    out = list(RayMap(square, batch_size=4, max_pending=2).imap_stream(range(40)))
    assert sorted(out) == [x * x for x in range(40)]


def test_imap_stream_keep_order_with_window() -> None:
    rmap = RayMap(square, batch_size=4, max_pending=2)
    assert list(rmap.imap_stream(range(30), keep_order=True, ordered_window=8)) == [
        x * x for x in range(30)
    ]


def test_imap_stream_limit_on_an_infinite_input() -> None:
    stream = RayMap(square, batch_size=3, max_pending=2).imap_stream(itertools.count(), limit=25)
    out = list(itertools.islice(stream, 1000))  # without the limit: 1000, not a hang
    assert sorted(out) == [x * x for x in range(25)]


def test_imap_stream_stop_callable() -> None:
    delivered = {"n": 0}
    out = []
    rmap = RayMap(square, batch_size=3, max_pending=2)
    for y in rmap.imap_stream(itertools.count(), stop=lambda: delivered["n"] >= 21):
        out.append(y)
        delivered["n"] += 1
        if len(out) == 1000:  # the stop was ignored: fail rather than run forever
            break
    assert len(out) == 21


def test_imap_stream_stop_event() -> None:
    event = threading.Event()
    out = []
    for y in RayMap(square, batch_size=2).imap_stream(
        itertools.count(), keep_order=True, stop=event
    ):
        out.append(y)
        if len(out) == 10:
            event.set()
        if len(out) == 1000:  # the stop was ignored: fail rather than run forever
            break
    assert out == [x * x for x in range(10)]


def test_imap_stream_time_budget_stops_reading() -> None:
    def slowish(x: int) -> int:
        time.sleep(0.05)
        return x

    stream = RayMap(slowish, batch_size=1).imap_stream(itertools.count(), time_budget=1.0)
    out = list(itertools.islice(stream, 200))  # without the budget: 200 in 5 s, not a hang
    assert 0 < len(out) < 200
    assert sorted(out) == list(range(len(out)))  # what was read was all yielded


def test_imap_stream_ret_args_and_safe_exceptions() -> None:
    rmap = RayMap(fail_on, batch_size=2, max_pending=2)
    out = dict(rmap.imap_stream([1, 3, 5], ret_args=True, safe_exceptions=True))
    assert out[1] == 1
    assert out[5] == 5
    assert isinstance(out[3], ValueError)


def test_imap_stream_async_with_limit() -> None:
    async def main() -> list[int]:
        rmap = RayMap(square, batch_size=3, max_pending=2)
        out = []
        async for x in rmap.imap_stream_async(itertools.count(), limit=17):
            out.append(x)
            if len(out) == 1000:  # the limit was ignored: fail rather than run forever
                break
        return out

    assert sorted(asyncio.run(main())) == [x * x for x in range(17)]


def test_submit_pairs_as_ready_with_len() -> None:
    it = RayMap(fail_on).submit(range(6))
    assert isinstance(it, RayMapIterator)
    assert len(it) == 6
    pairs = dict(it)
    assert pairs[0] == 0
    assert isinstance(pairs[3], ValueError)
    with pytest.raises(TypeError, match="unknown"):
        len(RayMap(square).submit(iter(range(3))))


def test_submit_safe_with_timeout() -> None:
    def nap(x: float) -> float:
        time.sleep(x)
        return x

    pairs = dict(RayMap(nap).submit_safe([0.0, 30.0], timeout=0.5))
    assert pairs[0.0] == 0.0
    assert isinstance(pairs[30.0], TimeoutError)


def test_collect_and_acollect() -> None:
    assert RayMap.collect(square, range(4), batch_size=2) == [(x, x * x) for x in range(4)]
    assert asyncio.run(RayMap.acollect(square, range(4))) == [(x, x * x) for x in range(4)]


def test_imap_stream_reads_lazily_and_keeps_nothing() -> None:
    # ray-map's imap_stream keeps every result; here only the window is ever held
    pulled = 0

    def source():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(10_000):  # reading it all at once fails rather than hangs
            pulled += 1
            yield i
        raise AssertionError("the input was read to its end")

    stream = RayMap(square, batch_size=2, max_pending=3).imap_stream(source(), keep_order=True)
    for consumed, value in enumerate(stream, start=1):
        assert value == (consumed - 1) ** 2
        assert pulled - consumed <= 2 * 3
        if consumed == 60:
            break
    stream.close()
    assert stream.statistics().batches_in_flight == 0
