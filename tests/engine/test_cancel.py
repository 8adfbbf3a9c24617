"""The per-call cancel flag that replaces ray.cancel, exercised directly in the driver."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from ray.experimental import internal_kv

from raypool import _cancel
from raypool._cancel import NAMESPACE, CancelWatcher, forget_when_done, new_key, raise_flag


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times the watchers of this process have read each key's flag.

    A watcher reads a key, then acts on what it read, then waits before its next read: once
    a key has been read twice, what the watcher made of the first read is settled.
    """
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    read = _cancel._flag

    def counted(key: str) -> bytes | None:
        raised = read(key)
        with lock:
            counts[key] += 1
        return raised

    monkeypatch.setattr(_cancel, "_flag", counted)
    return counts


def test_watcher_sees_the_flag_of_its_key_only(polls: Counter[str]) -> None:
    watcher, control = CancelWatcher(), CancelWatcher()
    key, other = new_key(), new_key()
    assert raise_flag(key)
    watcher.begin(other)
    control.begin(key)  # the positive control: the same timing, the raised key
    assert _wait_for(control.cancelled.is_set)
    control.end()
    assert _wait_for(lambda: polls[other] >= 2)  # it read its own flag since it was raised
    assert not watcher.cancelled.is_set()  # another call's flag
    watcher.end()
    watcher.begin(key)
    assert _wait_for(watcher.cancelled.is_set)
    watcher.end()
    assert not watcher.cancelled.is_set()
    watcher.begin(key)  # a later batch of the cancelled call stops at once
    assert watcher.cancelled.is_set()
    watcher.end()
    forget_when_done(key, [])


def test_flag_raised_while_a_batch_runs_is_seen(polls: Counter[str]) -> None:
    watcher = CancelWatcher()
    key = new_key()
    watcher.begin(key)
    assert _wait_for(lambda: polls[key] >= 2)  # the batch has run past reads of no flag
    assert not watcher.cancelled.is_set()
    raise_flag(key)
    assert _wait_for(watcher.cancelled.is_set)
    watcher.end()
    forget_when_done(key, [])


def test_a_watcher_waiting_between_batches_wakes_for_the_next(polls: Counter[str]) -> None:
    # Between batches the watcher waits with no time limit; a batch that begins then must
    # wake it (one that begins while it waits for its next read need not: it wakes anyway).
    watcher = CancelWatcher()
    first, second = new_key(), new_key()
    watcher.begin(first)
    assert _wait_for(lambda: polls[first] >= 1)
    watcher.end()
    assert _wait_for(lambda: watcher._parked)  # the state under test
    assert raise_flag(second)
    watcher.begin(second)
    assert _wait_for(watcher.cancelled.is_set)
    watcher.end()
    forget_when_done(first, [])
    forget_when_done(second, [])


def test_keys_are_deleted_once_the_tasks_end_when_calls_go_on(tmp_path: Path) -> None:
    import ray

    release = str(tmp_path / "release")

    @ray.remote
    def held() -> bool:
        """Runs until the test creates ``release`` (at most a minute)."""
        import os

        deadline = time.monotonic() + 60
        while not os.path.exists(release):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    key = new_key()
    raise_flag(key)
    refs = [held.remote() for _ in range(2)]
    try:
        forget_when_done(key, refs)
        # its tasks are still running: the key stays
        assert internal_kv._internal_kv_get(key, namespace=NAMESPACE) is not None
    finally:
        Path(release).touch()
    assert ray.get(refs) == [True, True]
    # No thread of raypool's deletes it: the next call that starts does (at most every
    # POLL_SECONDS), so the key is gone once its tasks ended and calls go on.
    assert _wait_for(
        lambda: bool(new_key()) and internal_kv._internal_kv_get(key, namespace=NAMESPACE) is None,
        timeout=15,
    )
