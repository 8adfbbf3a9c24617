"""RayMap on a local Ray: ordered and as-ready streams, timeouts, exceptions as values.

Run: python examples/03_raymap_stream.py   (Ray starts lazily on first use)
"""

from __future__ import annotations

import time

import ray

from raypool import RayMap


def work(x: int) -> int:
    if x == 13:
        raise ValueError("unlucky item")
    if x == 21:
        time.sleep(3600)  # a runaway item: the timeout stops it
    return x * x


def main() -> None:
    rmap = RayMap(work)

    # 1) ordered stream, first 10 items (the rest of the input is never read)
    for y in rmap.imap(range(10)):
        print("ordered:", y)

    # 2) as-ready, exceptions as values, (item, result) pairs, 1 s per-item timeout
    failures = {}
    for arg, res in rmap.imap(
        range(30), keep_order=False, safe_exceptions=True, ret_args=True, timeout=1.0
    ):
        if isinstance(res, BaseException):
            failures[arg] = f"{type(res).__name__}: {res}"
    print("failures:", failures)

    # 3) a million tiny items, batched automatically
    started = time.perf_counter()
    total = sum(RayMap(abs).imap(range(-500_000, 500_000)))
    print(f"sum of 1M abs() values: {total} in {time.perf_counter() - started:.2f} s")

    ray.shutdown()


if __name__ == "__main__":
    main()
