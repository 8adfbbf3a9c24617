"""Two joblib backends written directly on Ray, as floors for ``bench_joblib.py --floor``:
what any backend built on Ray tasks, or on Ray actors, pays before doing anything of its own.

* ``"ray-tasks"``: each joblib batch is one plain Ray task (``max_retries=0``), its result
  delivered by the ref's future callback. No cancellation, no crash handling, no timeouts.
* ``"ray-actors"``: each batch is a method call on one of ``n_jobs`` long-lived actors (the
  least busy), created on first use and kept for the whole run, as a process pool keeps its
  processes. They ask Ray for no CPU (``num_cpus=0``), so that the task-based backends
  interleaved with them in one run still get the machine's CPUs from Ray.

Both size batches as raypool's backend does (``RayPoolBackend.compute_batch_size``), so that
the three send the same batches.

Run alone, it measures one trivial call both ways - wall time and each process's CPU per
call, 4 calls in flight (Linux: CPU from ``/proc``) - and how long two new actors take to
answer their first call::

    cd benchmarks && python floor.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import joblib
import ray
from machine import StealMeter
from ray import cloudpickle

from raypool.joblib import RayPoolBackend


@ray.remote(max_retries=0)
def _run_batch(blob: bytes) -> list[Any]:
    calls: Callable[[], list[Any]] = cloudpickle.loads(blob)
    return calls()


@ray.remote(num_cpus=0)
class _Runner:
    """Runs batches, one at a time, for the whole run."""

    def run(self, blob: bytes) -> list[Any]:
        calls: Callable[[], list[Any]] = cloudpickle.loads(blob)
        return calls()


class _RawBackend(RayPoolBackend):  # type: ignore[misc]
    """Only what ``Parallel`` needs: ``n_jobs``, ``submit`` with a callback, results."""

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs is None or n_jobs < 0:  # joblib's count: CPUs + 1 + n_jobs
            return max(int(ray.cluster_resources()["CPU"]) + 1 + (n_jobs or -1), 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, **_: Any) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        pass

    def terminate(self) -> None:
        self.reset_batch_stats()


class RayTasksBackend(_RawBackend):
    """``"ray-tasks"``: one plain Ray task per batch."""

    def submit(
        self, func: Callable[[], list[Any]], callback: Callable[[Any], None] | None = None
    ) -> concurrent.futures.Future[Any]:
        future = _run_batch.remote(cloudpickle.dumps(func)).future()
        if callback is not None:
            future.add_done_callback(callback)
        return future


_runners: list[Any] = []  # for the whole run, as a process pool keeps its processes


class RayActorsBackend(_RawBackend):
    """``"ray-actors"``: each batch a call to the least busy of ``n_jobs`` actors."""

    def configure(self, n_jobs: int = 1, parallel: Any = None, **options: Any) -> int:
        n_jobs = super().configure(n_jobs, parallel, **options)
        while len(_runners) < n_jobs:
            _runners.append(_Runner.remote())  # type: ignore[attr-defined]
        self._busy = [0] * n_jobs
        self._lock = threading.Lock()
        return n_jobs

    def submit(
        self, func: Callable[[], list[Any]], callback: Callable[[Any], None] | None = None
    ) -> concurrent.futures.Future[Any]:
        with self._lock:
            index = min(range(len(self._busy)), key=self._busy.__getitem__)
            self._busy[index] += 1
        future = _runners[index].run.remote(cloudpickle.dumps(func)).future()

        def done(ended: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._busy[index] -= 1
            if callback is not None:
                callback(ended)

        future.add_done_callback(done)
        return future


def register() -> None:
    joblib.register_parallel_backend("ray-tasks", RayTasksBackend)
    joblib.register_parallel_backend("ray-actors", RayActorsBackend)


# -- one trivial call, as a task and as an actor call ------------------------------------------


@ray.remote(max_retries=0)
def _echo(x: int) -> int:
    return x


@ray.remote(num_cpus=0)
class _Echo:
    def echo(self, x: int) -> int:
        return x


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process ("driver"), Ray's workers, raylet and GCS."""
    ticks = os.sysconf("SC_CLK_TCK")
    processes: dict[int, tuple[str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if int(pid) == os.getpid():
            role = "driver"
        elif name.startswith("ray::"):
            role = "workers"
        elif name in ("raylet", "gcs_server"):
            role = name
        else:
            continue
        processes[int(pid)] = role, (int(fields[11]) + int(fields[12])) / ticks
    return processes


def _per_call(submit: Callable[[int], Any], calls: int) -> str:
    for i in range(200):  # warm: workers up, leases held
        ray.get(submit(i))
    before, started = _cpu_by_process(), time.perf_counter()
    in_flight: list[Any] = []
    for i in range(calls):
        in_flight.append(submit(i))
        if len(in_flight) == 4:
            ray.get(in_flight.pop(0))
    ray.get(in_flight)
    wall = time.perf_counter() - started
    cpu: dict[str, float] = {}  # a process that ended meanwhile is not counted
    for pid, (role, seconds) in _cpu_by_process().items():
        spent = seconds - before.get(pid, (role, 0.0))[1]
        cpu[role] = cpu.get(role, 0.0) + spent / calls
    shares = ", ".join(f"{role} {1000 * seconds:.2f}" for role, seconds in sorted(cpu.items()))
    total = 1000 * sum(cpu.values())
    return f"{1000 * wall / calls:.2f} ms wall; CPU ms: {shares} (all {total:.2f})"


def _actor_start(times: int) -> str:
    """Seconds to create two actors and have their first call answered, ``times`` over."""
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        actors = [_Echo.remote() for _ in range(2)]  # type: ignore[attr-defined]
        ray.get([actor.echo.remote(0) for actor in actors])
        seconds.append(time.perf_counter() - started)
        for actor in actors:
            ray.kill(actor)
    return ", ".join(f"{value:.2f}" for value in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description="One trivial call: a Ray task, an actor call.")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    steal = StealMeter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    actors = [_Echo.remote() for _ in range(2)]  # type: ignore[attr-defined]
    for _ in range(args.reps):
        print(f"task        {_per_call(_echo.remote, args.calls)}")
        print(f"actor call  {_per_call(lambda i: actors[i % 2].echo.remote(i), args.calls)}")
    print(f"two new actors and their first call: {_actor_start(3)} s")
    print(steal.describe())
    ray.shutdown()


if __name__ == "__main__":
    main()
