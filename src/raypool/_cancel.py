"""Cancelling a call's tasks without ``ray.cancel``: a flag per call in Ray's GCS store.

``ray.cancel`` is not safe to use here. On Ray 2.60 it crashed this project's test driver
with ``force=False`` too ("Check failed: ... Tried to complete task that was not pending",
the race of ray-project/ray#54846: the cancel reaches a task while it is being pushed to a
worker), and the same race can lose the cancel, leaving a worker running a cancelled item.
So raypool never calls it. Cancellation is cooperative instead:

* **Driver.** Each call has a key (``new_key``). Ending the call early ``raise_flag``s it in
  Ray's internal key-value store (one GCS write); ``forget_when_done`` deletes the key once
  the call's tasks have all ended (checked when calls start or are cancelled), and at exit
  in ``_lifecycle``'s last phase - after the exit's own cancellations.
* **Kill** (``ProcessPoolExecutor.kill_workers()``): the flag also carries the time it was
  raised; a worker whose batch of that key began before then ends its own process
  (SIGKILL, from its watcher thread).
* **Worker.** While it runs a batch, ``CancelWatcher`` polls that batch's key from a daemon
  thread, once the call's tasks have run there for ``FIRST_POLL_SECONDS`` and then every
  ``POLL_SECONDS``; once the flag is up it sets an event, which the worker's SIGALRM tick
  (``_worker``) turns into an exception inside the running item. A task that starts after
  its call was cancelled stops within ``FIRST_POLL_SECONDS`` and a tick.

Nothing here runs in the user's code path unless a call is cancelled, apart from the
worker's poll (one small GCS read per busy worker per ``POLL_SECONDS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import ray
from ray.experimental import internal_kv

from . import _lifecycle

__all__ = [
    "POLL_SECONDS",
    "CancelWatcher",
    "forget_when_done",
    "new_key",
    "raise_flag",
]

#: Seconds between two reads of the flag by a busy worker. Lower stops cancelled work
#: sooner; each read is one GCS request.
POLL_SECONDS = 0.5
#: Seconds a call's tasks run in a worker before it first reads the call's flag. A task
#: that starts after its call was cancelled stops within this (plus a tick); shorter
#: tasks never read it, which keeps Ray's GCS out of the path of small tasks.
FIRST_POLL_SECONDS = 0.5
#: Seconds after which the driver stops waiting for a cancelled call's tasks to end before
#: deleting its key (a task stuck where no interrupt reaches, e.g. in C code).
FORGET_AFTER = 600.0
NAMESPACE = "raypool"
# The values of a raised flag: stop, or kill (followed by when, on the driver's clock).
_STOP = b"1"
_KILL = b"kill:"


def new_key() -> str:
    """A fresh key for one call (and a moment to forget the keys of calls that ended)."""
    _forgotten.sweep(now=False)
    return f"cancel:{uuid.uuid4().hex}"


# Ray's key-value store in its GCS has no public API: ``internal_kv`` is what Ray's own
# libraries (Serve, Tune, Train) use for it.


def raise_flag(key: str, *, kill: bool = False) -> bool:
    """Tell the workers running ``key``'s tasks to stop - with ``kill``, the processes that
    were running one of them already to end at once (tasks that start later stop as
    usual). Returns whether it was delivered."""
    try:
        value = _KILL + repr(time.time()).encode() if kill else _STOP
        internal_kv._internal_kv_put(key, value, namespace=NAMESPACE)  # noqa: SLF001
    except Exception:  # Ray is shutting down: its tasks go with it
        return False
    return True


def _flag(key: str) -> bytes | None:
    """The flag of ``key``: ``None`` (not raised), ``_STOP``, or ``_KILL`` and a time."""
    try:
        value: bytes | None = internal_kv._internal_kv_get(key, namespace=NAMESPACE)  # noqa: SLF001
    except Exception:
        return None
    return value


def _delete(key: str) -> None:
    with contextlib.suppress(Exception):  # Ray is gone, and the key with it
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)  # noqa: SLF001


class _Forgotten:
    """Keys of cancelled calls whose tasks may still run: each is deleted once they have
    all ended, or after ``FORGET_AFTER``, or at exit.

    There is no thread of its own: the check runs in the thread that starts or cancels a
    call (``new_key``, ``forget_when_done``), and once at exit (``forget_all``). A
    background thread calling into Ray while the user's ``ray.shutdown()`` runs makes Ray
    end the whole process with status 1, so raypool keeps none that does so when idle.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, tuple[list[Any], float]] = {}
        self._swept_at = 0.0

    def add(self, key: str, refs: Sequence[Any]) -> None:
        with self._lock:
            self._calls[key] = (list(refs), time.monotonic() + FORGET_AFTER)
        self.sweep()

    def sweep(self, *, now: bool = True) -> None:
        """Delete the keys whose tasks have all ended (one ``ray.wait`` per key); with
        ``now=False`` at most once per ``POLL_SECONDS``."""
        with self._lock:
            calls = list(self._calls.items())
            if not calls or (not now and time.monotonic() < self._swept_at + POLL_SECONDS):
                return
            self._swept_at = time.monotonic()
        if not ray.is_initialized():
            return
        now_ = time.monotonic()
        for key, (refs, deadline) in calls:
            try:
                _, running = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            except Exception:  # Ray is shutting down: its tasks go with it
                running = []
            with self._lock:
                if running and now_ < deadline:
                    self._calls[key] = (list(running), deadline)
                    continue
                self._calls.pop(key, None)
            _delete(key)

    def forget_all(self) -> None:
        """At exit: Ray ends the job's tasks with the driver, so no flag is needed."""
        with self._lock:
            keys = list(self._calls)
            self._calls.clear()
        if ray.is_initialized():
            for key in keys:
                _delete(key)


_forgotten = _Forgotten()


def _forget_all() -> None:
    _forgotten.forget_all()


#: In a forked child: what the parent was forgetting, kept alive. Dropping it would release
#: the refs of the parent's tasks, which are the parent's to release.
_inherited: list[_Forgotten] = []


def _after_fork() -> None:
    """In a forked child: the parent's keys are the parent's to delete."""
    global _forgotten
    _inherited.append(_forgotten)
    _forgotten = _Forgotten()


_lifecycle.at_exit(_lifecycle.Phase.FORGET_KEYS, _forget_all)
_lifecycle.on_fork(_after_fork)


def forget_when_done(key: str, refs: Sequence[Any]) -> None:
    """Delete ``key`` once all of ``refs`` (tasks of a cancelled call) have ended."""
    if refs:
        _forgotten.add(key, refs)
    else:
        _delete(key)


class CancelWatcher:
    """In a worker process: watches the flag of the batch being run.

    ``begin(key)`` before the batch, ``end()`` after; ``cancelled`` is set once the flag of
    the current key is seen. A call's key is first read once its batches have run here for
    ``FIRST_POLL_SECONDS``, then at most every ``POLL_SECONDS``: short tasks - most of
    them - cost no read at all.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._wake = threading.Condition()
        self._key: str | None = None
        self._begun_key: str | None = None
        self._begun_at = 0.0
        self._batch_began = 0.0  # time.time() at the current batch's begin()
        self._raised_key: str | None = None
        self._thread: threading.Thread | None = None
        self._parked = False  # the thread waits for a batch, with no time limit

    def begin(self, key: str) -> None:
        with self._wake:
            self._key = key
            self._batch_began = time.time()
            new_key = key != self._begun_key
            if new_key:
                self._begun_key, self._begun_at = key, time.monotonic()
            if key == self._raised_key:
                self.cancelled.set()
            else:
                self.cancelled.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="raypool-cancel-watcher", daemon=True
                )
                self._thread.start()
            elif self._parked or new_key:  # else its next read is due as planned: no
                self._wake.notify()  # thread switch per batch of the same call

    def end(self) -> None:
        with self._wake:
            self._key = None
            self.cancelled.clear()

    def _kill_if_running(self, key: str, raised_at: float) -> None:
        """``kill_workers()``: end this process at once, as SIGKILL does, if it still runs
        a batch of ``key`` that began before the kill was asked (one that began later
        stops as any cancelled batch). Under the lock: the next batch cannot begin."""
        with self._wake:
            if self._key == key and self._batch_began <= raised_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def _run(self) -> None:
        polled_key, polled_at = None, 0.0
        while True:
            with self._wake:
                while self._key is None:
                    self._parked = True
                    self._wake.wait()
                self._parked = False
                key = self._key
                if key == polled_key:
                    due = polled_at + POLL_SECONDS
                else:
                    due = self._begun_at + FIRST_POLL_SECONDS
                pause = due - time.monotonic()
                if pause > 0:
                    self._wake.wait(pause)
                    continue  # the batch may have ended or changed meanwhile
            raised = _flag(key)
            polled_key, polled_at = key, time.monotonic()
            if raised and raised.startswith(_KILL):
                self._kill_if_running(key, float(raised[len(_KILL) :]))
            if raised:
                with self._wake:
                    self._raised_key = key
                    if self._key == key:
                        self.cancelled.set()
