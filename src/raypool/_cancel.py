"""Cancelling a call's tasks without ``ray.cancel``: a flag per call in Ray's GCS store.

``ray.cancel`` is not safe to use here. On Ray 2.60 it crashed this project's test driver
with ``force=False`` too ("Check failed: ... Tried to complete task that was not pending",
the race of ray-project/ray#54846: the cancel reaches a task while it is being pushed to a
worker), and the same race can lose the cancel, leaving a worker running a cancelled item.
So raypool never calls it. Cancellation is cooperative instead:

* **Driver.** Each call has a key (``new_key``). Ending the call early ``raise_flag``s it in
  Ray's internal key-value store (one GCS write); ``forget_when_done`` deletes the key from
  a daemon thread once the call's tasks have all ended.
* **Worker.** While it runs a batch, ``CancelWatcher`` polls that batch's key from a daemon
  thread, at once and then every ``POLL_SECONDS``; once the flag is up it sets an event,
  which the worker's SIGALRM tick (``_worker``) turns into an exception inside the running
  item. A task that starts after its call was cancelled stops within one tick.

Nothing here runs in the user's code path unless a call is cancelled, apart from the
worker's poll (one small GCS read per busy worker per ``POLL_SECONDS``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import ray
from ray.experimental import internal_kv

from ._runtime import at_thread_exit

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
#: Seconds after which the driver stops waiting for a cancelled call's tasks to end before
#: deleting its key (a task stuck where no interrupt reaches, e.g. in C code).
FORGET_AFTER = 600.0
NAMESPACE = "raypool"


def new_key() -> str:
    """A fresh key for one call."""
    return f"cancel:{uuid.uuid4().hex}"


def raise_flag(key: str) -> bool:
    """Tell the workers running ``key``'s tasks to stop. Returns whether it was delivered."""
    try:
        internal_kv._internal_kv_put(key, b"1", namespace=NAMESPACE)
    except Exception:  # Ray is shutting down: its tasks go with it
        return False
    return True


def _is_raised(key: str) -> bool:
    try:
        return internal_kv._internal_kv_get(key, namespace=NAMESPACE) is not None
    except Exception:
        return False


def _delete(key: str) -> None:
    with contextlib.suppress(Exception):  # Ray is gone, and the key with it
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)


class _Janitor:
    """Deletes the keys of cancelled calls once their tasks have ended (one daemon thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, tuple[list[Any], float]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._hooked = False

    def watch(self, key: str, refs: Sequence[Any]) -> None:
        with self._lock:
            if self._stopping:
                return  # the interpreter is exiting: Ray ends the job's tasks itself
            self._calls[key] = (list(refs), time.monotonic() + FORGET_AFTER)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="raypool-janitor", daemon=True
                )
                self._thread.start()
                if not self._hooked:
                    self._hooked = True
                    at_thread_exit(self.stop)

    def stop(self) -> None:
        """Stop the thread (at interpreter exit)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._lock:
                calls = dict(self._calls)
                if not calls or self._stopping or not ray.is_initialized():
                    self._calls.clear()
                    self._thread = None
                    return
            for key, (refs, deadline) in calls.items():
                try:
                    _, running = ray.wait(
                        refs, num_returns=len(refs), timeout=0.2, fetch_local=False
                    )
                except Exception:  # Ray shut down under us: nothing is left to stop
                    running = []
                if self._stopping:
                    break
                if running and time.monotonic() < deadline:
                    with self._lock:
                        self._calls[key] = (list(running), deadline)
                    continue
                _delete(key)
                with self._lock:
                    self._calls.pop(key, None)
            time.sleep(POLL_SECONDS)


_janitor = _Janitor()


def forget_when_done(key: str, refs: Sequence[Any]) -> None:
    """Delete ``key`` once all of ``refs`` (tasks of a cancelled call) have ended."""
    if refs:
        _janitor.watch(key, refs)
    else:
        _delete(key)


class CancelWatcher:
    """In a worker process: watches the flag of the batch being run.

    ``begin(key)`` before the batch, ``end()`` after; ``cancelled`` is set once the flag of
    the current key is seen. A new key is read at once; the same key (the next batch of the
    same call) at most every ``POLL_SECONDS``, so small batches cost no extra reads.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._wake = threading.Condition()
        self._key: str | None = None
        self._raised_key: str | None = None
        self._thread: threading.Thread | None = None

    def begin(self, key: str) -> None:
        with self._wake:
            self._key = key
            if key == self._raised_key:
                self.cancelled.set()
            else:
                self.cancelled.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="raypool-cancel-watcher", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def end(self) -> None:
        with self._wake:
            self._key = None
            self.cancelled.clear()

    def _run(self) -> None:
        polled_key, polled_at = None, 0.0
        while True:
            with self._wake:
                while self._key is None:
                    self._wake.wait()
                key = self._key
                if key == polled_key:
                    pause = polled_at + POLL_SECONDS - time.monotonic()
                    if pause > 0:
                        self._wake.wait(pause)
                        continue  # the batch may have ended or changed meanwhile
            raised = _is_raised(key)
            polled_key, polled_at = key, time.monotonic()
            if raised:
                with self._wake:
                    self._raised_key = key
                    if self._key == key:
                        self.cancelled.set()
