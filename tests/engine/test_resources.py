"""Resources running out under one item: only that item fails, clearly, and the run goes on.

Each test needs a Ray configured for it (a tiny object store, a low memory threshold), so it
runs a driver subprocess that starts its own 1-CPU local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import psutil

from raypool import RayMap

_DRIVER_PREAMBLE = """
    import json, sys, time
    import ray
    from raypool import Pool, RayMap

    ray.init(num_cpus=1, include_dashboard=False, **json.loads(sys.argv[1]))

    def show(outcome):
        if isinstance(outcome, BaseException):
            return f"{type(outcome).__name__}: {outcome}"
        return repr(outcome)
"""


def _run_driver(code: str, init: dict[str, Any] | None = None, **env: str) -> list[str]:
    """Run ``code`` (after the preamble) with its own 1-CPU local Ray (more ``ray.init``
    arguments in ``init``); its output lines."""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ.update(env)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_DRIVER_PREAMBLE) + textwrap.dedent(code),
            json.dumps(init or {}),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_a_memory_error_in_fn_is_that_items_error() -> None:
    def allocate(x: int) -> int:
        if x == 2:
            bytearray(1 << 60)  # 1 EiB: the allocation fails at once
        return x

    outcomes = list(RayMap(allocate, batch_size=4).imap(range(8), safe_exceptions=True))
    assert isinstance(outcomes[2], MemoryError)
    assert outcomes[:2] + outcomes[3:] == [0, 1, 3, 4, 5, 6, 7]


TOO_LARGE = """
    import numpy as np

    def result_of(x):
        return np.full(120 * 2**20 if x == 3 else 10, x, dtype=np.uint8)

    rmap = RayMap(result_of, batch_size=4, adaptive_tail_batching=False)
    for outcome in rmap.imap(range(8), safe_exceptions=True):  # 3 shares a task with 0-2
        if isinstance(outcome, np.ndarray):
            print(outcome.nbytes, int(outcome[0]))
        else:
            print(show(outcome), "| cause:", type(outcome.__cause__).__name__)
    print("after:", [int(r[0]) for r in rmap.map([1, 2])])
"""


def test_a_result_too_large_for_the_object_store_fails_alone() -> None:
    # Objects that do not fit in the 80 MB store would go to disk, and the disk is "full".
    lines = _run_driver(
        TOO_LARGE, {"object_store_memory": 80 * 2**20}, RAY_local_fs_capacity_threshold="0"
    )
    assert lines[:3] + lines[4:8] == [f"10 {x}" for x in (0, 1, 2, 4, 5, 6, 7)], lines
    assert lines[3].startswith(
        "ResultTooLargeError: the result could not be stored: Ray's object store is full"
    ), lines[3]
    assert lines[3].endswith("| cause: OutOfDiskError")
    assert lines[8] == "after: [1, 2]"


OUT_OF_MEMORY = """
    def hog(x):
        if x == 3:
            chunks = []
            for _ in range(48):  # up to 6 GiB, each page touched; the monitor stops it first
                chunks.append(bytearray(128 * 2**20))
                time.sleep(0.05)
            return "survived"
        return x

    with Pool(max_retries=1) as pool:
        for outcome in pool.imap(hog, range(6), chunksize=2, safe_exceptions=True):
            print(show(outcome))
        print("after:", pool.map(abs, [-1, -2]))
"""


def test_an_item_killed_by_rays_memory_monitor_fails_alone() -> None:
    memory = psutil.virtual_memory()
    used = (memory.total - memory.available) / memory.total
    # Ray's memory monitor kills a worker once the node uses this fraction of its memory:
    # 2 GiB above what is in use now.
    threshold = min(0.95, used + 2 * 2**30 / memory.total)
    lines = _run_driver(
        OUT_OF_MEMORY,
        RAY_memory_usage_threshold=f"{threshold:.4f}",
        RAY_memory_monitor_refresh_ms="50",
    )
    assert lines[:3] + lines[4:6] == ["0", "1", "2", "4", "5"], lines
    assert lines[3].startswith(
        "WorkerCrashedError: Ray's memory monitor killed the worker process running this item"
    ), lines[3]
    assert lines[6] == "after: [1, 2]"
