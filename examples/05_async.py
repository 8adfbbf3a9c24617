"""RayMap from asyncio: results stream in while the event loop stays free.

Run: python examples/05_async.py
"""

from __future__ import annotations

import asyncio
import time

import ray

from raypool import RayMap


def fetch(x: int) -> str:
    time.sleep(0.2)  # stands for I/O or CPU work in a worker
    return f"page-{x}"


async def main() -> None:
    rmap = RayMap(fetch)
    heartbeat = asyncio.create_task(beat())
    async for page in rmap.imap_async(range(8), keep_order=False):
        print("got", page)
    heartbeat.cancel()
    print("all:", await rmap.map_async(range(3)))
    ray.shutdown()


async def beat() -> None:
    while True:
        print("  (event loop is free)")
        await asyncio.sleep(0.25)


if __name__ == "__main__":
    asyncio.run(main())
