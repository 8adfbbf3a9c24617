"""The per-call cancel flag that replaces ray.cancel, exercised directly in the driver."""

from __future__ import annotations

import time

from ray.experimental import internal_kv

from raypool._cancel import NAMESPACE, CancelWatcher, forget_when_done, new_key, raise_flag


def _wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_watcher_sees_the_flag_of_its_key_only() -> None:
    watcher = CancelWatcher()
    key, other = new_key(), new_key()
    watcher.begin(other)
    assert raise_flag(key)
    time.sleep(1.0)
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


def test_flag_raised_while_a_batch_runs_is_seen() -> None:
    watcher = CancelWatcher()
    key = new_key()
    watcher.begin(key)
    time.sleep(0.2)
    assert not watcher.cancelled.is_set()
    raise_flag(key)
    assert _wait_for(watcher.cancelled.is_set)
    watcher.end()
    forget_when_done(key, [])


def test_keys_are_deleted_once_the_tasks_end_when_calls_go_on() -> None:
    import ray

    @ray.remote
    def nap() -> None:
        time.sleep(1.0)

    key = new_key()
    raise_flag(key)
    refs = [nap.remote() for _ in range(2)]
    forget_when_done(key, refs)
    assert internal_kv._internal_kv_get(key, namespace=NAMESPACE) is not None
    ray.get(refs)
    # No thread of raypool's deletes it: the next call that starts does (at most every
    # POLL_SECONDS), so the key is gone once its tasks ended and calls go on.
    assert _wait_for(
        lambda: bool(new_key()) and internal_kv._internal_kv_get(key, namespace=NAMESPACE) is None,
        timeout=15,
    )
