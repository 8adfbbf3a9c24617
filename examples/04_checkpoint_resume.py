"""Checkpoints: stop a run halfway, rerun it, and only the rest is computed.

The checkpoint lives in raypool's user cache directory under the name given here (with
``checkpoint=True`` it would be named after the function instead); the ``raypool
checkpoints`` command lists, shows and clears them.

Run: python examples/04_checkpoint_resume.py
"""

from __future__ import annotations

import subprocess
import sys
import time

import ray

from raypool import Pool


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def main() -> None:
    cli = [sys.executable, "-m", "raypool", "checkpoints"]
    subprocess.run([*cli, "clear", "squares-demo"], capture_output=True)  # a fresh start

    with Pool() as pool:
        it = pool.imap(slow_square, range(100), checkpoint="squares-demo")
        done = [next(it) for _ in range(40)]
        # The laptop goes to sleep, the job is preempted, the driver is killed...
    print(f"first run stopped after {len(done)} results")

    with Pool() as pool:
        started = time.perf_counter()
        results = pool.map(slow_square, range(100), checkpoint="squares-demo")
        print(f"rerun: {len(results)} results in {time.perf_counter() - started:.1f} s")
    assert results == [x * x for x in range(100)]

    subprocess.run([*cli, "show", "squares-demo"], check=True)
    subprocess.run([*cli, "clear", "squares-demo"], check=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
