"""raypool against ray-map, multiprocessing.Pool, ProcessPoolExecutor, Ray's Pool and raw Ray.

Everything runs in one process on one local Ray instance, interleaved: each repetition
runs every workload once with every contender (in a rotated order), so a slow moment of
the machine hits all of them. Reported: medians over the repetitions, and each
contender's ratio to raypool's default settings from the same run.

    pip install -e '.[bench]'
    python benchmarks/bench.py --reps 3            # the run recorded in benchmarks/README.md
    python benchmarks/bench.py --only a,e --reps 1  # a quick look

Workloads (see benchmarks/README.md for the targets):
    a  200,000 tiny items (x*x), ordered imap: items/s
    b  400 items of 10 ms CPU work: parallel efficiency (work / (wall * CPUs))
    c  200 items, every 20th 200 ms and the rest 2 ms of CPU work: wall / ideal wall
    d  2,000,000-item generator, unordered imap: driver RSS growth (MB), items/s
    e  time to the first result of imap over 10,000 items, Ray already up (ms)
    f  functools.partial(f, 50 MB array) over 200 items: wall (s)
    g  2,000 tiny calls, submit + result() in order: calls/s
    h  2,000 tiny calls, apply_async + get() in order: calls/s
    i  400 submitted calls of 5 ms CPU work, collected as completed: parallel efficiency
    j  a trickle, one tiny call every 20 ms for 5 s: latency submit to result (ms)

"raypool" is the engine (RayMap.imap); "RayPool" is the pool facade over it, used as
multiprocessing code uses a Pool (imap, imap_unordered, submit).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import multiprocessing
import os
import queue
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import as_completed
from typing import Any

import numpy as np
import psutil
import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads
from machine import StealMeter

import raypool
from raypool import RayMap

CPUS = 2
N_TINY = 200_000
N_TINY_SLOW = 5_000  # for contenders that move one item per task (they'd take minutes)
N_STREAM = 2_000_000

# -- the raw Ray loop: the practical limit of Ray itself ---------------------------------


@ray.remote
def _raw_chunk(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(x) for x in items]


def raw_imap(
    fn: Callable[[Any], Any], items: Iterable[Any], chunk: int, ordered: bool = True
) -> Iterator[Any]:
    """One task per chunk, the function put once, ``2 * CPUs + 2`` chunks in flight."""
    fn_ref = ray.put(fn)
    source = iter(items)
    pending: deque[Any] = deque()

    def submit() -> None:
        batch = list(itertools.islice(source, chunk))
        if batch:
            pending.append(_raw_chunk.remote(fn_ref, batch))

    for _ in range(2 * CPUS + 2):
        submit()
    while pending:
        if ordered:
            ref = pending.popleft()
        else:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            pending.remove(ref)
        results = ray.get(ref)
        submit()
        yield from results


# -- contenders: each returns an imap-like iterator and a cleanup -------------------------


def make_imap(name: str, fn: Any, items: Iterable[Any], *, ordered: bool, chunk: int) -> Any:
    """(iterator, close) for contender ``name``; ``chunk`` tunes the loops that need one.

    Pools are started and warm before this returns; the ``imap`` (or ``map``) call itself
    happens at the first ``next()``, so that the clock includes it for every contender.
    """
    close: Callable[[], Any] = lambda: None  # noqa: E731
    if name == "raypool":
        rmap = RayMap(fn)
        start = functools.partial(rmap.imap, items, keep_order=ordered)
    elif name == "raypool tuned":
        rmap = RayMap(fn, batch_size=chunk)
        start = functools.partial(rmap.imap, items, keep_order=ordered)
    elif name == "raw Ray":
        start = functools.partial(raw_imap, fn, items, chunk, ordered)
    elif name == "ray-map":
        import ray_map

        # its defaults (batch_size=1, max_pending=CPUs+16), or the chunk the others get
        rm = ray_map.RayMap(fn, batch_size=chunk)
        start = functools.partial(rm.imap, items, keep_order=ordered)
    elif name == "RayPool":
        rpool = raypool.Pool()
        rpool.map(abs, range(4 * CPUS))
        start = functools.partial(rpool.imap if ordered else rpool.imap_unordered, fn, items)
        close = rpool.terminate
    elif name == "PPE":
        executor = _executor()
        # Executor.map is ordered only; it reads its whole input at once
        start = functools.partial(executor.map, fn, items, chunksize=max(1, chunk))
        close = _shutdown(executor)
    elif name in ("mp.Pool", "Ray's Pool"):
        if name == "mp.Pool":
            # forkserver: fork()ing this Ray driver would copy Ray's threads and handlers
            pool: Any = multiprocessing.get_context("forkserver").Pool(CPUS)
        else:
            from ray.util.multiprocessing import Pool

            pool = Pool(CPUS)
        pool.map(abs, range(4 * CPUS))  # started and warm: not part of any measurement
        imap = pool.imap if ordered else pool.imap_unordered
        start = functools.partial(imap, fn, items, chunksize=max(1, chunk))
        close = pool.terminate
    else:
        raise ValueError(name)
    return _on_first_next(start), close


def _on_first_next(start: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    yield from start()


def _executor() -> Any:
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(CPUS, mp_context=multiprocessing.get_context("forkserver"))
    list(executor.map(abs, range(4 * CPUS)))  # started and warm
    return executor


def _shutdown(executor: Any) -> Callable[[], None]:
    return lambda: executor.shutdown(wait=True, cancel_futures=True)


ALL = ["raypool", "RayPool", "raw Ray", "mp.Pool", "PPE", "Ray's Pool", "ray-map"]


def consume(it: Iterable[Any]) -> int:
    n = 0
    for _ in it:
        n += 1
    return n


def timed(name: str, fn: Any, items: Any, *, ordered: bool = True, chunk: int = 1) -> float:
    it, close = make_imap(name, fn, items, ordered=ordered, chunk=chunk)
    try:
        started = time.perf_counter()
        consume(it)
        return time.perf_counter() - started
    finally:
        close()


# -- workloads ------------------------------------------------------------------------------


def bench_a(name: str) -> dict[str, float]:
    """Tiny items: items/s. mp.Pool and Ray's Pool use their default chunksize (1)."""
    slow = name in ("ray-map", "Ray's Pool", "PPE")
    n = N_TINY_SLOW if slow else N_TINY
    chunk = 8192 if name in ("raw Ray", "raypool tuned") else 1
    wall = timed(name, workloads.square, range(n), chunk=chunk)
    return {"items/s": n / wall}


#: The raw loop's chunk for workloads of slow items (its best of 1, 2 and 4 here).
RAW_CHUNK_SLOW = 4


def bench_b(name: str) -> dict[str, float]:
    n = 400
    wall = timed(name, workloads.ten_ms, range(n), chunk=RAW_CHUNK_SLOW if name == "raw Ray" else 1)
    return {"efficiency": n * 0.01 / (wall * CPUS)}


def bench_c(name: str) -> dict[str, float]:
    n = 200
    work = sum(0.2 if i % 20 == 0 else 0.002 for i in range(n))
    chunk = RAW_CHUNK_SLOW if name == "raw Ray" else 1
    wall = timed(name, workloads.straggler, range(n), chunk=chunk)
    return {"wall/ideal": wall / (work / CPUS)}


def _rss_growth(run: Callable[[], Any]) -> tuple[float, float]:
    """(peak RSS growth in MB while ``run`` runs, seconds it took)."""
    process = psutil.Process()
    gc.collect()
    base = process.memory_info().rss
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        run()
    finally:
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    return (peak - base) / 2**20, wall


def bench_d(name: str) -> dict[str, float]:
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in range(N_STREAM):
            pulled += 1
            yield i

    chunk = 8192 if name == "raw Ray" else 1000
    it, close = make_imap(name, workloads.square, source(), ordered=False, chunk=chunk)
    try:
        growth, wall = _rss_growth(lambda: consume(it))
    finally:
        close()
    return {"RSS growth MB": growth, "items/s": N_STREAM / wall}


def bench_e(name: str) -> dict[str, float]:
    it, close = make_imap(name, workloads.square, range(10_000), ordered=True, chunk=1)
    try:
        started = time.perf_counter()
        next(iter(it))
        first = time.perf_counter() - started
    finally:
        if hasattr(it, "close"):
            it.close()
        close()
    return {"first result ms": first * 1000}


_BIG = np.ones(50 * 2**20 // 8)


def bench_f(name: str) -> dict[str, float]:
    fn = functools.partial(workloads.touch_big, _BIG)
    wall = timed(name, fn, range(200), chunk=1)
    return {"wall s": wall}


N_CALLS = 2_000


def _call_pool(name: str) -> Any:
    """A started, warm pool of contender ``name`` for submitted calls ("raypool": a
    ``raypool.Pool``, which is also its ``ProcessPoolExecutor``)."""
    if name == "raypool":
        pool: Any = raypool.Pool()
    elif name == "PPE":
        return _executor()
    elif name == "mp.Pool":
        pool = multiprocessing.get_context("forkserver").Pool(CPUS)
    else:
        from ray.util.multiprocessing import Pool

        pool = Pool(CPUS)
    pool.map(abs, range(4 * CPUS))
    return pool


def _close(pool: Any) -> None:
    if hasattr(pool, "terminate"):
        pool.terminate()
    else:
        pool.shutdown(wait=True, cancel_futures=True)


def _submitted(name: str, fn: Callable[..., Any], args: list[Any], how: str) -> float:
    """Seconds to run ``fn(x)`` for each ``x`` as submitted calls, results read in order:
    ``how`` is "submit" or "apply_async" (the contender's nearest API when it lacks it:
    ``ProcessPoolExecutor`` has no ``apply_async``, ``multiprocessing`` pools no
    ``submit``); raw Ray: one task per call."""
    if name == "raw Ray":
        remote = ray.remote(fn)
        started = time.perf_counter()
        ray.get([remote.remote(x) for x in args])
        return time.perf_counter() - started
    pool = _call_pool(name)
    try:
        started = time.perf_counter()
        if how == "submit" and hasattr(pool, "submit"):
            futures = [pool.submit(fn, x) for x in args]
            for future in futures:
                future.result()
        elif hasattr(pool, "apply_async"):
            results = [pool.apply_async(fn, (x,)) for x in args]
            for result in results:
                result.get()
        else:
            for future in [pool.submit(fn, x) for x in args]:
                future.result()
        return time.perf_counter() - started
    finally:
        _close(pool)


def bench_g(name: str) -> dict[str, float]:
    """2,000 tiny calls: ``submit`` + ``result()`` in order."""
    return {"calls/s": N_CALLS / _submitted(name, workloads.square, list(range(N_CALLS)), "submit")}


def bench_h(name: str) -> dict[str, float]:
    """2,000 tiny calls: ``apply_async`` + ``get()`` in order."""
    wall = _submitted(name, workloads.square, list(range(N_CALLS)), "apply_async")
    return {"calls/s": N_CALLS / wall}


N_FIVE_MS = 400


def bench_i(name: str) -> dict[str, float]:
    """400 submitted calls of 5 ms CPU work, collected as they complete."""
    work = N_FIVE_MS * 0.005
    if name == "raw Ray":
        remote = ray.remote(workloads.busy)
        started = time.perf_counter()
        pending = [remote.remote(0.005) for _ in range(N_FIVE_MS)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        wall = time.perf_counter() - started
        return {"efficiency": work / (wall * CPUS)}
    pool = _call_pool(name)
    try:
        started = time.perf_counter()
        if hasattr(pool, "submit"):
            futures = [pool.submit(workloads.busy, 0.005) for _ in range(N_FIVE_MS)]
            for future in as_completed(futures):
                future.result()
        else:  # multiprocessing's pools: each result as it arrives, through a callback
            arrived: queue.SimpleQueue[Any] = queue.SimpleQueue()
            for _ in range(N_FIVE_MS):
                pool.apply_async(workloads.busy, (0.005,), callback=arrived.put)
            for _ in range(N_FIVE_MS):
                arrived.get()
        wall = time.perf_counter() - started
    finally:
        _close(pool)
    return {"efficiency": work / (wall * CPUS)}


TRICKLE_EVERY = 0.02
TRICKLE_SECONDS = 5.0


def bench_j(name: str) -> dict[str, float]:
    """A trickle: one tiny call every 20 ms for 5 s; each call's latency, submit to result."""
    latencies: list[float] = []
    if name == "raw Ray":
        remote = ray.remote(workloads.square)
        ray.get(remote.remote(0))

        def call(x: int) -> Any:
            return ray.get(remote.remote(x))

        pool = None
    else:
        pool = _call_pool(name)
        if hasattr(pool, "submit"):

            def call(x: int) -> Any:
                return pool.submit(workloads.square, x).result()

        else:

            def call(x: int) -> Any:
                return pool.apply_async(workloads.square, (x,)).get()

    try:
        begin = time.perf_counter()
        for i in range(int(TRICKLE_SECONDS / TRICKLE_EVERY)):
            due = begin + i * TRICKLE_EVERY
            time.sleep(max(0.0, due - time.perf_counter()))
            started = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - started)
    finally:
        if pool is not None:
            _close(pool)
    latencies.sort()
    return {
        "median ms": statistics.median(latencies) * 1000,
        "p90 ms": latencies[int(0.9 * len(latencies))] * 1000,
    }


CALLERS = ["raypool", "raw Ray", "mp.Pool", "PPE", "Ray's Pool"]

BENCHES: dict[str, tuple[str, Callable[[str], dict[str, float]], list[str]]] = {
    "a": ("200k tiny items, ordered imap", bench_a, [*ALL[:1], "raypool tuned", *ALL[1:]]),
    "b": ("400 x 10 ms CPU items", bench_b, ALL),
    "c": ("stragglers: 5 % of 200 ms, rest 2 ms", bench_c, ALL),
    "d": ("2M-item generator, unordered imap", bench_d, ALL),
    "e": ("first result of imap over 10k items", bench_e, ALL),
    "f": ("partial(f, 50 MB array) over 200 items", bench_f, ALL),
    "g": ("2,000 tiny calls, submit + result() in order", bench_g, CALLERS),
    "h": ("2,000 tiny calls, apply_async + get() in order", bench_h, CALLERS),
    "i": ("400 submitted calls of 5 ms CPU, as completed", bench_i, CALLERS),
    "j": ("a trickle: one call every 20 ms for 5 s", bench_j, CALLERS),
}

# Which metric is compared to raypool, and whether higher is better.
HEADLINE = {
    "a": ("items/s", True),
    "b": ("efficiency", True),
    "c": ("wall/ideal", False),
    "d": ("RSS growth MB", False),
    "e": ("first result ms", False),
    "f": ("wall s", False),
    "g": ("calls/s", True),
    "h": ("calls/s", True),
    "i": ("efficiency", True),
    "j": ("median ms", False),
}


def _settle(timeout: float = 60.0) -> None:
    """Let the previous contender's leftovers end - tasks still running (ray-map does not
    cancel when its iterator is closed), garbage, background threads - so that they do not
    slow the next contender down: collect garbage, pause, wait for every CPU to be free."""
    gc.collect()
    time.sleep(1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= CPUS:
            return
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="abcdefghij", help="workloads to run, e.g. a,c")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma separated")
    args = parser.parse_args()
    chosen = [k for k in BENCHES if k in args.only]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    steal = StealMeter()
    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="warning")
    consume(RayMap(workloads.square).imap(range(1000)))  # warm the workers up
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for rep in range(args.reps):
        for key in chosen:
            _, bench, contenders = BENCHES[key]
            # Rotate the order each repetition: whoever runs first meets the previous
            # contender's teardown (pool processes and actors still exiting).
            shift = rep % len(contenders)
            for name in contenders[shift:] + contenders[:shift]:
                if name in skip:
                    continue
                _settle()
                value = bench(name)
                results.setdefault(key, {}).setdefault(name, []).append(value)
                print(f"rep {rep + 1} {key} {name:14} {value}", file=sys.stderr, flush=True)
    print(report(results, steal.describe()))
    ray.shutdown()


def report(results: dict[str, dict[str, list[dict[str, float]]]], steal: str) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, Ray {ray.__version__}, "
        f"numpy {np.__version__}; {steal}. Medians of the repetitions; ratio = contender / "
        "raypool.",
        "",
    ]
    for key, by_name in results.items():
        title = BENCHES[key][0]
        metric, higher = HEADLINE[key]
        metrics = list(next(iter(by_name.values()))[0])
        better = "higher" if higher else "lower"
        lines += [f"### ({key}) {title} — {metric}: {better} is better", ""]
        lines.append("| contender | " + " | ".join(metrics) + f" | ratio ({metric}) |")
        lines.append("|---" * (len(metrics) + 2) + "|")
        base = statistics.median(v[metric] for v in by_name["raypool"])
        for name, values in by_name.items():
            cells = [f"{statistics.median(v[m] for v in values):,.3g}" for m in metrics]
            ratio = statistics.median(v[metric] for v in values) / base
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
