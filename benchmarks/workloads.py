"""Functions the benchmarks map. Module level, so every contender can import them."""

from __future__ import annotations

import time
from typing import Any


def square(x: int) -> int:
    return x * x


def busy(seconds: float) -> float:
    """Pure-Python CPU work for ``seconds`` (a spin on the clock, not a sleep)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def straggler(i: int) -> float:
    """200 ms of CPU work for every 20th item, 2 ms for the others."""
    return busy(0.2 if i % 20 == 0 else 0.002)


def ten_ms(i: int) -> float:
    return busy(0.01)


def touch_big(big: Any, i: int) -> float:
    """Reads one element of a big array carried by a ``functools.partial``."""
    return float(big[i])


def light(x: int) -> int:
    """100 us of CPU work: a small real task."""
    busy(0.0001)
    return x * x
