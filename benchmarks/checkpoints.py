"""What checkpoints cost: raypool's SQLite store against running without one, and against
ray-map's pickle file, in one run on one local Ray instance (2 CPUs).

    pip install -e '.[bench]'
    python benchmarks/checkpoints.py --reps 3      # the run recorded in benchmarks/README.md

1. Writing: 100,000 items mapped with and without a checkpoint, for two item costs: none
   (``x*x``: the store's own cost per item, nothing to hide it behind) and 100 us of CPU
   work. raypool: ``Pool().map(fn, items, checkpoint=path)``; ray-map 1.0.3:
   ``RayMap(fn, batch_size=1000, checkpoint_path=path)`` (it rewrites its whole file every
   ``checkpoint_every=100`` items). Interleaved, rotated order, fresh files each time.
2. Resuming: a checkpoint of N recorded items (N = 100,000 and 1,000,000, written by a real
   run), then a resume over the same input in a fresh driver process: replay rate, with and
   without the one-time key index pass that follows a run that never reopened its store,
   and how much the driver's memory grows (peak RSS minus RSS before the call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads

import raypool
from raypool import RayMap

CPUS = 2
N_WRITE = 100_000

_RESUME = """
import gc, sys, threading, time
import psutil, ray
sys.path.insert(0, {bench!r})
import workloads
from raypool import RayMap

ray.init(address={address!r}, logging_level="warning")
RayMap(workloads.square, checkpoint=False).map(range(100))  # warm up: the driver's baseline
gc.collect()
process = psutil.Process()
before = peak = process.memory_info().rss
done = threading.Event()

def sample():
    global peak
    while not done.wait(0.01):
        peak = max(peak, process.memory_info().rss)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.perf_counter()
try:
    it = RayMap(workloads.square, checkpoint_path={path!r}).imap(range({n}))
    count = sum(1 for _ in it)
    seconds = time.perf_counter() - started
finally:
    done.set()
    sampler.join()
stats = it.statistics()
assert count == {n} and stats.items_replayed == {n}, stats
print(seconds, peak - before)
"""


def write_bench(contender: str, fn: Callable[[int], int], folder: Path) -> float:
    """Seconds to map ``fn`` over N_WRITE items."""
    items = range(N_WRITE)
    path = folder / f"{contender}-{time.monotonic_ns()}.ckpt"
    started = time.perf_counter()
    if contender.startswith("raypool"):
        with raypool.Pool() as pool:
            if contender.endswith("checkpoint"):
                out = pool.map(fn, items, checkpoint=path)
            else:
                out = pool.map(fn, items)
    else:
        import ray_map

        options: dict[str, Any] = {"batch_size": 1000}
        if contender.endswith("checkpoint"):
            options["checkpoint_path"] = str(path)
        out = ray_map.RayMap(fn, **options).map(items)
    seconds = time.perf_counter() - started
    assert out[-1] == (N_WRITE - 1) ** 2
    return seconds


def settle() -> None:
    time.sleep(1.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < CPUS:
        time.sleep(0.05)


def resume_bench(n: int, folder: Path, address: str) -> dict[str, float]:
    path = folder / f"resume-{n}.ckpt"
    started = time.perf_counter()
    RayMap(workloads.square, checkpoint_path=str(path)).map(range(n))
    written = time.perf_counter() - started
    runs = []
    for _ in range(2):  # the first reopening indexes the keys the run appended
        code = _RESUME.format(
            bench=os.path.dirname(os.path.abspath(__file__)), address=address, path=str(path), n=n
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the resume failed:\n{done.stderr[-3000:]}")
        out = done.stdout.split()
        runs.append((float(out[0]), int(out[1])))
    (first, first_rss), (second, second_rss) = runs
    return {
        "written items/s": n / written,
        "file MB": path.stat().st_size / 2**20,
        "1st resume items/s (with index pass)": n / first,
        "1st resume RSS growth MB": first_rss / 2**20,
        "2nd resume items/s": n / second,
        "2nd resume RSS growth MB": second_rss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--resume", default="100000,1000000", help="store sizes to resume")
    args = parser.parse_args()
    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="warning")
    address = ray.get_runtime_context().gcs_address
    RayMap(workloads.square).map(range(1000))  # warm the workers up
    folder = Path(tempfile.mkdtemp(prefix="raypool-bench-"))
    contenders = ["raypool", "raypool checkpoint", "ray-map", "ray-map checkpoint"]
    costs = {"none (x*x)": workloads.square, "100 us": workloads.light}
    times: dict[str, dict[str, list[float]]] = {}
    for rep in range(args.reps):
        for cost, fn in costs.items():
            shift = rep % len(contenders)
            for name in contenders[shift:] + contenders[:shift]:
                settle()
                seconds = write_bench(name, fn, folder)
                times.setdefault(cost, {}).setdefault(name, []).append(seconds)
                print(f"rep {rep + 1} {cost:10} {name:20} {seconds:.2f} s", file=sys.stderr)
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, Ray {ray.__version__}, "
        f"SQLite {__import__('sqlite3').sqlite_version}. Medians of {args.reps} repetitions.",
        "",
        f"### Writing: {N_WRITE:,} items, wall time (s) and checkpoint / no checkpoint",
        "",
        "| item cost | raypool | raypool + checkpoint | ratio | ray-map | "
        "ray-map + checkpoint | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for cost, by_name in times.items():
        m = {name: statistics.median(values) for name, values in by_name.items()}
        lines.append(
            f"| {cost} | {m['raypool']:.2f} | {m['raypool checkpoint']:.2f} | "
            f"{m['raypool checkpoint'] / m['raypool']:.2f} | {m['ray-map']:.2f} | "
            f"{m['ray-map checkpoint']:.2f} | {m['ray-map checkpoint'] / m['ray-map']:.2f} |"
        )
    sizes = [int(s) for s in args.resume.split(",") if s]
    lines += ["", "### Resuming over N recorded items", ""]
    rows = [resume_bench(n, folder, address) for n in sizes]
    lines.append("| N | " + " | ".join(rows[0]) + " |")
    lines.append("|---" * (len(rows[0]) + 1) + "|")
    for n, row in zip(sizes, rows, strict=True):
        lines.append(f"| {n:,} | " + " | ".join(f"{v:,.1f}" for v in row.values()) + " |")
    print("\n".join(lines))
    ray.shutdown()


if __name__ == "__main__":
    main()
