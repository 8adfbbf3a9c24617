"""A concurrent.futures script moved to Ray by its import line, asyncio included.

Run: python examples/02_executor_dropin.py
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import as_completed

from raypool import ProcessPoolExecutor  # was: from concurrent.futures import ...


def fetch(n: int) -> str:
    time.sleep(0.1 * (n % 3))  # pretend I/O or CPU work
    return f"page {n}"


def area(w: float, h: float) -> float:
    return w * h


async def main_async(executor: ProcessPoolExecutor) -> None:
    # futures are real concurrent.futures.Future objects: asyncio can await them
    pages = await asyncio.gather(*(asyncio.wrap_future(executor.submit(fetch, n)) for n in [1, 2]))
    print("awaited:", pages)
    # and map-family iterators are async iterators too
    async for page in executor.imap_unordered(fetch, range(3)):
        print("async for:", page)


def main() -> None:
    # --- the unchanged concurrent.futures code ------------------------------------------------
    with ProcessPoolExecutor(max_workers=4) as executor:
        futures = {executor.submit(fetch, n): n for n in range(6)}
        for future in as_completed(futures):
            print(f"{futures[future]} -> {future.result()}")
        print("map:", list(executor.map(area, [1, 2, 3], [10, 20, 30])))

        # a per-call timeout for submit, without touching fn's own keyword arguments
        slow = executor.options(timeout=0.5).submit(time.sleep, 60)
        print("timed out:", type(slow.exception()).__name__)

        asyncio.run(main_async(executor))


if __name__ == "__main__":
    main()
