"""Where batches run: Ray tasks (``RayBackend``) or the calling thread (``InlineBackend``).

The engine's one scheduler drives either through the same five calls - ``submit``,
``wait`` (or ``wait_async``), ``result``, ``cancel``, ``close`` - so sequential mode has
the ordering, error and checkpoint behaviour of the real thing.

Cancellation never uses ``ray.cancel(force=True)``: force-cancelling a task that is just
finishing has crashed the *driver* (ray-project/ray#54846). A plain ``ray.cancel`` drops a
queued task, and in a running one raises ``KeyboardInterrupt``, which the worker's tick
(see ``_worker``) delivers within a fraction of a second even in a blocking call. Tasks
already finished are not cancelled at all. A cancel that reaches a worker while a task is
being handed to it can be lost (seen with Ray 2.60 in about one round in five of
``test_early_exit``), which would leave that worker busy for as long as the item runs: the
``_Reaper`` thread sends the cancel again every ``RECANCEL_INTERVAL`` seconds until the task
has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ray

from ._config import Unpack
from ._outcome import BatchResult, failed_batch
from ._runtime import cluster_cpus, translate_ray_error
from ._worker import execute_batch, run_batch

__all__ = ["Backend", "InlineBackend", "RayBackend"]

#: Seconds between two cancels of a task that has not ended yet. Lower frees a worker
#: sooner after a lost cancel; each round is one ray.wait and one cancel per task.
RECANCEL_INTERVAL = 1.0
#: Seconds after which a cancelled task that never ends is left alone (it is stuck where
#: no interrupt reaches, e.g. in C code).
RECANCEL_GIVE_UP = 120.0


def _cancel(refs: Sequence[Any]) -> None:
    for ref in refs:
        with contextlib.suppress(Exception):  # finished or lost meanwhile: nothing to stop
            ray.cancel(ref, force=False)


class _Reaper:
    """Re-sends ``ray.cancel`` to cancelled tasks, from one daemon thread, until they end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[Any, float] = {}
        self._thread: threading.Thread | None = None

    def watch(self, refs: Sequence[Any]) -> None:
        deadline = time.monotonic() + RECANCEL_GIVE_UP
        with self._lock:
            self._deadlines.update(dict.fromkeys(refs, deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="raypool-reaper", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for ref in [r for r, d in self._deadlines.items() if d < now]:
                    del self._deadlines[ref]
                refs = list(self._deadlines)
                if not refs or not ray.is_initialized():
                    self._deadlines.clear()
                    self._thread = None
                    return
            try:
                done, running = ray.wait(
                    refs, num_returns=len(refs), timeout=RECANCEL_INTERVAL, fetch_local=False
                )
                _cancel(running)
            except Exception:  # Ray shut down under us: its tasks are gone with it
                done = refs
            with self._lock:
                for ref in done:
                    self._deadlines.pop(ref, None)


_reaper = _Reaper()


class Backend(Protocol):
    """What the scheduler needs from an executor of batches."""

    cpus: int

    def submit(self, items: list[Any]) -> Any:
        """Start a batch; returns its handle."""

    def wait(self, handles: Sequence[Any]) -> Any:
        """Block until one of ``handles`` (oldest first) is done; return it."""

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        """``wait`` without blocking the event loop."""

    def result(self, handle: Any, size: int) -> BatchResult:
        """The outcome of a finished batch of ``size`` items. A failure of the whole task
        becomes a failure of each of its items; this never raises."""

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        """Those of ``handles`` that are done, without waiting."""

    def cancel(self, handles: Sequence[Any]) -> None:
        """Stop the batches of ``handles``; their results are no longer wanted."""

    def close(self) -> None:
        """Release what this backend holds (idempotent)."""


class RayBackend:
    """Runs each batch as one Ray task; the callable travels once, by reference.

    Args:
        blob: the dill-serialized callable; put in the object store once, here.
        digest: its identity, under which workers cache the deserialized callable.
        remote_options: passed to ``.options()`` of the task (``num_cpus``, ...).
    """

    def __init__(
        self,
        blob: bytes,
        digest: str,
        *,
        unpack: Unpack,
        timeout: float | None,
        batched: bool,
        remote_options: dict[str, Any] | None = None,
    ) -> None:
        self.cpus = cluster_cpus()
        self._digest = digest
        # A list hides the ref from Ray's argument resolution: workers fetch it only on a
        # cache miss instead of once per task.
        self._box: list[Any] = [ray.put(blob)]
        self._remote = execute_batch.options(**remote_options) if remote_options else execute_batch
        self._static = (unpack, timeout, batched)
        self._futures: dict[Any, asyncio.Future[Any]] = {}

    def submit(self, items: list[Any]) -> Any:
        return self._remote.remote(self._digest, self._box, items, *self._static)

    def wait(self, handles: Sequence[Any]) -> Any:
        ready, _ = ray.wait(list(handles), num_returns=1)
        return ready[0]

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        by_future = {}
        for ref in handles:
            future = self._futures.get(ref)
            if future is None:
                future = self._futures[ref] = asyncio.wrap_future(ref.future())
            by_future[future] = ref
        done, _ = await asyncio.wait(by_future, return_when=asyncio.FIRST_COMPLETED)
        return by_future[next(iter(done))]

    def result(self, handle: Any, size: int) -> BatchResult:
        future = self._futures.pop(handle, None)
        try:
            value = future.result() if future is not None else ray.get(handle)
        except Exception as exc:
            return failed_batch(size, *translate_ray_error(exc))
        result: BatchResult = value
        return result

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        if not handles or not ray.is_initialized():
            return []  # e.g. an iterator closed at interpreter exit, after ray.shutdown()
        done, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0, fetch_local=False)
        return list(done)

    def cancel(self, handles: Sequence[Any]) -> None:
        for ref in handles:
            future = self._futures.pop(ref, None)
            if future is not None:
                future.cancel()
        if not ray.is_initialized():
            return  # Ray is gone, and its tasks with it
        done = set(self.finished(handles))
        running = [ref for ref in handles if ref not in done]
        _cancel(running)
        if running:
            _reaper.watch(running)

    def close(self) -> None:
        self._box.clear()
        self._futures.clear()


class _InlineTask:
    __slots__ = ("items", "result")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.result: BatchResult | None = None


class InlineBackend:
    """Runs batches in the calling thread, one at a time, when the scheduler waits.

    Nothing is serialized and Ray is never touched: breakpoints in the mapped function work.
    """

    cpus = 1

    def __init__(
        self, fn: Callable[..., Any], *, unpack: Unpack, timeout: float | None, batched: bool
    ) -> None:
        self._fn = fn
        self._kwargs: dict[str, Any] = {"unpack": unpack, "timeout": timeout, "batched": batched}

    def submit(self, items: list[Any]) -> _InlineTask:
        return _InlineTask(items)

    def wait(self, handles: Sequence[Any]) -> Any:
        task: _InlineTask = handles[0]
        if task.result is None:
            task.result = run_batch(self._fn, task.items, **self._kwargs)
        return task

    async def wait_async(self, handles: Sequence[Any]) -> Any:
        return self.wait(handles)

    def result(self, handle: Any, size: int) -> BatchResult:
        task: _InlineTask = handle
        assert task.result is not None, "result() before wait()"
        return task.result

    def finished(self, handles: Sequence[Any]) -> list[Any]:
        return [task for task in handles if task.result is not None]

    def cancel(self, handles: Sequence[Any]) -> None:
        pass

    def close(self) -> None:
        pass
