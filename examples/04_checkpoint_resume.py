"""checkpoint_path: stop a run halfway, rerun it, and only the rest is computed.

Run: python examples/04_checkpoint_resume.py
"""

from __future__ import annotations

import os
import tempfile
import time

import ray

from raypool import RayMap


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "squares.ckpt")

    first = RayMap(slow_square, checkpoint_path=path, checkpoint_every=10)
    it = first.imap(range(100))
    done = [next(it) for _ in range(40)]
    it.close()  # e.g. the laptop went to sleep; finished items are on disk
    print(f"first run stopped after {len(done)} results")

    second = RayMap(slow_square, checkpoint_path=path)
    it = second.imap(range(100))
    results = list(it)
    stats = it.statistics()
    print(
        f"rerun: {len(results)} results, {stats.items_replayed} replayed, "
        f"{stats.items_submitted} computed"
    )
    assert results == [x * x for x in range(100)]
    ray.shutdown()


if __name__ == "__main__":
    main()
