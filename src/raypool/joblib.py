"""A joblib backend: ``Parallel`` calls - and scikit-learn's ``n_jobs=`` - run on Ray.

Importing this module registers the backend ``"raypool"`` with joblib::

    import joblib
    import raypool.joblib

    with joblib.parallel_config(backend="raypool", n_jobs=-1):
        results = joblib.Parallel()(joblib.delayed(work)(x) for x in items)

``n_jobs=-1`` is the Ray cluster's CPUs (``-2`` one fewer, as joblib counts); a positive
``n_jobs`` is how many batches run at once. Keyword arguments given to ``parallel_config``
(or to ``Parallel``) go to the ``RayPool`` that runs each ``Parallel`` call: ``address=``,
``runtime_env=``, ``remote_options=``, ``initializer=``/``initargs=``...

Each joblib batch is a task of that pool (joblib sizes batches from their measured
durations), run in a worker process kept as a Ray actor (``RayPool(actors=True)``): kept
between ``Parallel`` calls, as loky keeps its processes, it costs Ray about half what a Ray
task costs per batch. Where actors do not fit - ``remote_options``, ``runtime_env``,
``maxtasksperchild``, a call inside a Ray task, or ``actors=False`` - each batch is one
Ray task (``_actors_fit``). What it adds to joblib's own backends:
``Parallel(timeout=...)``, an exception in a task and a closed ``return_as="generator"``
stop the tasks still running (within about a second) instead of leaving them to burn CPU;
a worker that dies fails its batch with ``WorkerCrashedError`` (after raypool's
``max_retries`` reruns of the batch, 3 by default: pass ``max_retries=0`` for work that
must not run twice) and the next ``Parallel`` call runs as usual; results stream back as
they finish (``return_as="generator"`` and ``"generator_unordered"``).

Nested ``Parallel`` calls inside a task use joblib's default for process backends - threads,
``n_jobs=1`` unless the inner code gives one (``n_jobs=-1`` there counts the machine's
CPUs, as joblib does) - and an inner ``"raypool"`` runs at most as many batches at once as
the task has CPUs (``_nested_options``; none in an actor: the call runs in the batch).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

try:
    import joblib
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("raypool.joblib needs joblib: pip install 'raypool[joblib]'") from exc

from ray import cloudpickle

from ._pool import RayPool, pool_size
from ._runtime import in_task, task_cpus
from ._serialization import check_items, shipping

__all__ = ["NAME", "RayPoolBackend", "register"]

#: The backend's name for ``parallel_config(backend=...)`` and ``Parallel(backend=...)``.
NAME = "raypool"

#: How many times larger a batch may grow from one measurement to the next (10,000 tiny
#: calls on 2 CPUs, medians of 15: 206 ms at 8, 192 ms at 64). Higher reaches the right size
#: in fewer round trips; one short measurement may then overshoot more (joblib's rule
#: still aims at twice the ideal, and shrinks batches that run too long).
BATCH_GROWTH = 64

#: What ``Parallel`` passes to every backend's ``configure`` that a ``RayPool`` does not
#: take (joblib's memmapping settings and ``multiprocessing`` context).
_JOBLIB_ONLY = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context"})


def register() -> None:
    """Register the backend ``"raypool"`` with joblib (importing this module does)."""
    joblib.register_parallel_backend(NAME, RayPoolBackend)


def _run_batch(batch: bytes) -> list[Any]:
    """In a worker: one joblib batch - its calls, in order.

    The function reaches the worker as raypool ships callables (dill): loading it imports
    this module there, so ``"raypool"`` is a registered backend in the workers too, and
    puts the driver's own directories on the worker's ``sys.path``. Only then is the batch
    unpickled (cloudpickle, Ray's copy, as joblib's loky backend pickles it: fast for many
    small calls): the functions of the user's own modules are importable by then.
    """
    calls: Callable[[], list[Any]] = cloudpickle.loads(batch)
    return calls()


def _dumps(batch: Callable[[], list[Any]]) -> bytes:
    """The batch's bytes. As raypool's maps look at their first item: when the first call's
    arguments hold ``Manager()`` proxies, every call's are checked and the proxies pickled
    with their manager's authkey; a ``multiprocessing`` queue or lock is refused by name
    (else by ``multiprocessing`` itself, which refuses to pickle one)."""
    calls = getattr(batch, "items", [])  # a BatchedCalls: [(function, args, kwargs)...]
    where = "an argument of a joblib call"
    proxies = check_items(calls[:1], where) and check_items(calls, where)
    with shipping() if proxies else contextlib.nullcontext():
        blob: bytes = cloudpickle.dumps(batch, protocol=5)  # type: ignore[no-untyped-call]
    return blob


class RayPoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend contract (``ParallelBackendBase``) on a ``RayPool`` per ``Parallel``
    call: one pool task per joblib batch (in a kept actor where they fit), results
    through the futures' callbacks.

    Args:
        nesting_level, inner_max_num_threads: joblib's (set by joblib).
        **pool_options: ``RayPool`` keyword arguments for the pools this backend opens
            (``configure``'s keyword arguments, from ``Parallel(...)``, override them).
    """

    #: ``Parallel()`` with no ``n_jobs``: the whole cluster, as joblib's dask backend.
    default_n_jobs = -1
    #: Results come through ``submit``'s callback: joblib then also offers ``timeout=`` and
    #: ``return_as="generator"``/``"generator_unordered"`` on this backend.
    supports_retrieve_callback = True
    uses_threads = False
    #: Tasks run in other processes: ``require="sharedmem"`` falls back to threads.
    supports_sharedmem = False
    supports_inner_max_num_threads = False
    # ``AutoBatchingMixin``'s state, which ``compute_batch_size`` reads.
    _effective_batch_size: int
    _smoothed_batch_duration: float

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **pool_options: Any,
    ) -> None:
        # No Ray here: joblib makes backends it may never use (and its tests, one per class).
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **pool_options,
        )
        _check_options(pool_options)
        self._pool: RayPool | None = None
        self._submit: Callable[..., concurrent.futures.Future[Any]] | None = None
        self._configured: tuple[int, dict[str, Any]] = (1, {})
        self._in_task = False  # configured inside a Ray task

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs`` as a count: ``None`` is ``default_n_jobs``; a negative ``n`` is the
        cluster's CPUs + 1 + ``n`` (at least 1), which connects to Ray."""
        return self._count(n_jobs, self._configured[1])

    def _count(self, n_jobs: int | None, backend_options: dict[str, Any]) -> int:
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs < 0:
            return max(self._cluster_cpus(backend_options) + 1 + n_jobs, 1)
        return n_jobs

    def _cluster_cpus(self, backend_options: dict[str, Any]) -> int:
        # The cluster the pool would go to (``address=`` may come with the call).
        sizer = RayPool(**self._pool_options(backend_options))  # no I/O until asked
        try:
            return pool_size(sizer)  # no processes given: the cluster's CPUs
        finally:
            sizer.close()

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_options: Any,
    ) -> int:
        """Open this ``Parallel`` call's pool, ``n_jobs`` batches at once; with one job,
        hand over to joblib's sequential backend (no pool, no Ray)."""
        _check_options(backend_options)
        n_jobs = self._count(n_jobs, backend_options)
        self._in_task = in_task()
        if self._in_task:  # see ``_nested_options``
            n_jobs = min(n_jobs, max(1, int(task_cpus())))
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._configured = (n_jobs, backend_options)
        self._open(n_jobs, backend_options)
        return n_jobs

    def _pool_options(self, backend_options: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.backend_kwargs, **backend_options}
        options = {key: value for key, value in merged.items() if key not in _JOBLIB_ONLY}
        return _nested_options(options) if self._in_task else options

    def _open(self, n_jobs: int, backend_options: dict[str, Any]) -> None:
        options = self._pool_options(backend_options)
        options.setdefault("actors", not self._in_task and _actors_fit(options))
        covers = self._covers_cluster(n_jobs, options, backend_options)
        pool = RayPool(processes=None if covers else n_jobs, **options)
        self._pool = pool
        # One batch per task: joblib sized it already, and a fast batch must never wait
        # in a task behind a slow one (``generator_unordered`` yields the fastest first).
        self._submit = pool.options(chunksize=1).submit

    def _covers_cluster(
        self, n_jobs: int, options: dict[str, Any], backend_options: dict[str, Any]
    ) -> bool:
        """Whether Ray itself runs at most ``n_jobs`` of the call's batches at once: its
        ``n_jobs`` are the cluster's CPUs, or its tasks ask for CPUs enough that no more fit
        (not in a task, whose nested calls ask for none). Its pool is then the cluster's
        (``processes=None``): the pool hands Ray every batch joblib dispatched, which Ray
        starts on a worker the moment one is free - not a round trip through the driver
        later. The cost: when the call is aborted, a batch already queued in Ray may start
        and run until it sees the cancel (about a second) instead of being dropped on the
        driver. More ``n_jobs`` than CPUs keeps ``processes=n_jobs``: that many at once."""
        if self._in_task:
            return False
        remote = options.get("remote_options") or options.get("ray_remote_args") or {}
        cpus = self._cluster_cpus(backend_options)
        if "num_cpus" in remote:
            return bool(remote["num_cpus"] and n_jobs * remote["num_cpus"] >= cpus)
        return n_jobs == cpus

    def compute_batch_size(self) -> int:
        """joblib's automatic batch size, but growing up to ``BATCH_GROWTH`` times (joblib:
        2) per measured batch while batches are too short: each measurement waits for a
        Ray task's round trip, longer than a local process pool's."""
        old = self._effective_batch_size
        duration = self._smoothed_batch_duration
        if not 0 < duration < self.MIN_IDEAL_BATCH_DURATION:
            size: int = super().compute_batch_size()  # too slow, or right: joblib's rule
            return size
        ideal = 2 * int(old * self.MIN_IDEAL_BATCH_DURATION / duration)
        size = max(1, min(BATCH_GROWTH * old, ideal))
        if size != old:  # measured again at the new size
            self._effective_batch_size = size
            self._smoothed_batch_duration = self._DEFAULT_SMOOTHED_BATCH_DURATION
        return size

    def submit(
        self, func: Callable[[], list[Any]], callback: Callable[[Any], None] | None = None
    ) -> concurrent.futures.Future[Any]:
        """Run one batch; ``callback(future)`` once it has ended, however it ended.

        Never raises: joblib calls this from the thread that delivers results, where an
        exception would leave ``Parallel`` waiting forever - the future carries it.
        """
        submit = self._submit  # read once: abort_everything() may swap it meanwhile
        try:
            if submit is None:
                raise RuntimeError("the raypool backend is not configured (or terminated)")
            future = submit(_run_batch, _dumps(func))
        except BaseException as exc:
            future = concurrent.futures.Future()
            future.set_exception(exc)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: concurrent.futures.Future[Any]) -> Any:
        """The batch's results, or the exception its call raised (with the worker's
        traceback as its ``__cause__``)."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop the tasks in flight (they stop within about a second) without waiting for
        them; with ``ensure_ready`` (a ``with Parallel(...)`` block goes on), open a new
        pool for the next call."""
        self._close()
        if ensure_ready:
            self._open(*self._configured)

    def terminate(self) -> None:
        """End this call's pool: every result was delivered, or the work was aborted."""
        self._close()
        self.reset_batch_stats()

    def _close(self) -> None:
        pool, self._pool, self._submit = self._pool, None, None
        if pool is not None:
            pool.terminate()


def _nested_options(options: dict[str, Any]) -> dict[str, Any]:
    """Pool options for a ``Parallel`` call inside a Ray task.

    joblib waits for results in a ``time.sleep`` loop, and Ray lends a task's CPU only while
    the task waits inside ``ray.get``/``ray.wait``: tasks that asked Ray for CPUs of their
    own could wait forever for the CPUs that waiting tasks hold. So such a call runs at most
    as many batches at once as its task has CPUs (``configure``), in tasks that ask Ray for
    none: they use the waiting task's. A task with one CPU runs the call itself.
    """
    options = dict(options)
    remote_options = options.pop("ray_remote_args", None) or options.get("remote_options")
    options["remote_options"] = {**(remote_options or {}), "num_cpus": 0}
    return options


def _actors_fit(options: dict[str, Any]) -> bool:
    """Whether a pool with ``options`` can run its calls in kept actors (``actors=True``):
    its workers are not recycled, and it gives Ray no options. Not with a ``runtime_env``
    either: an actor that cannot set it up dies, and its calls would fail as lost workers,
    after reruns, where a task reports ``EnvironmentSetupError``."""
    recycled = options.get("maxtasksperchild") or options.get("max_tasks_per_child")
    ray_options = options.get("remote_options") or options.get("ray_remote_args")
    return not (recycled or ray_options or options.get("runtime_env"))


def _check_options(options: dict[str, Any]) -> None:
    if "timeout" in options:
        raise ValueError(
            "the raypool backend takes no timeout option: use Parallel(timeout=...), which "
            "stops the tasks still running when it expires"
        )


register()
