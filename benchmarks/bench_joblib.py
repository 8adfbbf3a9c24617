"""joblib's backends on one machine: loky (joblib's default), Ray's (``ray.util.joblib``)
and raypool's (``raypool.joblib``), interleaved in one process on one local Ray instance.

    pip install -e '.[bench,joblib]' scikit-learn
    python benchmarks/bench_joblib.py --reps 3       # the run in benchmarks/README.md

Workloads:
    k  10,000 tiny ``delayed`` calls (``x*x``): calls/s
    l  scikit-learn ``cross_val_score(RandomForestClassifier(n_estimators=100), digits,
       cv=5, n_jobs=-1)``: wall (s)

With ``--floor``, two more backends written directly on Ray (``floor.py``: a plain Ray task
per batch, and a call to one of ``n_jobs`` long-lived actors per batch) show what a backend
built on Ray tasks, or on actors, pays at the least; and raypool's backend with its batches
in Ray tasks (``actors=False``) instead of its kept actors.

Each backend runs every workload once per repetition, in an order rotated from one
repetition to the next, after one untimed warm-up call; ratios are to raypool's in the same
repetition. The report gives the share of CPU time the host took meanwhile (steal): on a
shared virtual machine it swings the ratios widely (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

import floor
import joblib
import ray
import workloads
from joblib import Parallel, delayed, parallel_config
from machine import StealMeter
from ray.util.joblib import register_ray
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score

import raypool.joblib  # registers the backend "raypool"

CPUS = 2
N_TINY = 10_000
BACKENDS = ["raypool", "ray", "loky"]
FLOORS = ["raypool-tasks", "ray-tasks", "ray-actors"]
NAMES = {
    "raypool": "raypool",
    "ray": "Ray's backend",
    "loky": "loky",
    "raypool-tasks": "raypool, batches in tasks",
    "ray-tasks": "raw Ray tasks (floor)",
    "ray-actors": "raw Ray actors (floor)",
}


def bench_k(backend: str) -> float:
    with parallel_config(backend=backend, n_jobs=-1):
        started = time.perf_counter()
        results = Parallel()(delayed(workloads.square)(i) for i in range(N_TINY))
        wall = time.perf_counter() - started
    assert results[-1] == (N_TINY - 1) ** 2
    return N_TINY / wall


_DIGITS = load_digits(return_X_y=True)


def bench_l(backend: str) -> float:
    X, y = _DIGITS
    model = RandomForestClassifier(n_estimators=100, random_state=0)
    with parallel_config(backend=backend, n_jobs=-1):
        started = time.perf_counter()
        scores = cross_val_score(model, X, y, cv=5, n_jobs=-1)
        wall = time.perf_counter() - started
    assert len(scores) == 5
    return wall


BENCHES: dict[str, tuple[str, str, Callable[[str], float], bool]] = {
    "k": ("10,000 tiny delayed calls", "calls/s", bench_k, True),
    "l": ("cross_val_score, random forest on digits", "wall s", bench_l, False),
}


def _settle() -> None:
    gc.collect()
    time.sleep(1.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < CPUS:
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="kl")
    parser.add_argument("--floor", action="store_true", help="also the raw-Ray backends")
    args = parser.parse_args()
    backends = BACKENDS + FLOORS if args.floor else BACKENDS
    steal = StealMeter()
    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="warning")
    register_ray()
    floor.register()
    tasks = functools.partial(raypool.joblib.RayPoolBackend, actors=False)
    joblib.register_parallel_backend("raypool-tasks", tasks)
    chosen = [key for key in BENCHES if key in args.only]
    for key in chosen:  # warm-up: workers started, imports done, for every backend
        for backend in backends:
            BENCHES[key][2](backend)
    results: dict[str, dict[str, list[float]]] = {}
    for rep in range(args.reps):
        for key in chosen:
            shift = rep % len(backends)
            for backend in backends[shift:] + backends[:shift]:
                _settle()
                value = BENCHES[key][2](backend)
                results.setdefault(key, {}).setdefault(backend, []).append(value)
                print(f"rep {rep + 1} {key} {backend:8} {value:.4g}", file=sys.stderr, flush=True)
    print(report(results, steal.describe()))
    ray.shutdown()


def report(results: dict[str, dict[str, list[float]]], steal: str) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, Ray {ray.__version__}, "
        f"joblib {joblib.__version__}; {steal}. Medians of the repetitions; ratio = "
        "contender / raypool (higher is better for calls/s, lower for wall), the median of "
        "each repetition's ratio (the backends of one repetition run back to back), with the "
        "lowest and highest.",
    ]
    for key, by_backend in results.items():
        title, unit, _, _ = BENCHES[key]
        lines += ["", f"### ({key}) {title} - {unit}", "", f"| backend | {unit} | ratio | range |"]
        lines.append("|---|---|---|---|")
        for backend in by_backend:
            values = by_backend[backend]
            ratios = sorted(v / base for v, base in zip(values, by_backend["raypool"], strict=True))
            lines.append(
                f"| {NAMES[backend]} | {statistics.median(values):.4g} "
                f"| {statistics.median(ratios):.2f} | {ratios[0]:.2f}-{ratios[-1]:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
