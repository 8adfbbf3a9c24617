"""Leaving an imap early cancels its work; cancellation races cannot hurt the driver."""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import log_then_hang, wait_for_lines, wait_until_idle
from raypool import RayMap


def first_fast_then_hang(x: int) -> int:
    if x:
        time.sleep(3600)
    return x


def first_once_another_runs(started: str, x: int) -> int:
    """Item 0 returns once another item has started; the others log, then sleep an hour."""
    if x == 0:
        if not wait_for_lines(started, 1):
            raise RuntimeError("no other item started")
        return 0
    return log_then_hang(started, x)


def _in_flight(tmp_path: Path) -> RayMap[int]:
    """A map whose first result comes while another item runs (and would for an hour)."""
    fn = functools.partial(first_once_another_runs, str(tmp_path / "started"))
    return RayMap(fn, batch_size=1, max_pending=4)


def test_break_cancels_in_flight_tasks(tmp_path: Path) -> None:
    for value in _in_flight(tmp_path).imap(range(10)):
        assert value == 0
        break
    assert wait_until_idle()


def test_close_cancels_in_flight_tasks(tmp_path: Path) -> None:
    it = _in_flight(tmp_path).imap(range(10))
    assert next(it) == 0
    it.close()
    assert it.statistics().batches_in_flight == 0
    assert wait_until_idle()


def test_dropping_the_iterator_cancels_in_flight_tasks(tmp_path: Path) -> None:
    it = _in_flight(tmp_path).imap(range(10))
    assert next(it) == 0
    del it
    gc.collect()
    assert wait_until_idle()


def test_cancelling_tasks_that_are_just_finishing_is_safe_under_load() -> None:
    # Many short tasks finishing while the consumer walks away, again and again: each
    # close() cancels tasks in every state (queued, running, finishing, finished).
    def short(x: int) -> int:
        time.sleep(0.002 * (x % 5))
        return x

    rmap = RayMap(short, batch_size=1, max_pending=16)
    for round_ in range(40):
        it = rmap.imap(range(1000))
        for i, value in enumerate(it):
            assert value == i
            if i == round_ % 7:
                break
        it.close()
    assert rmap.map(range(50)) == list(range(50))  # the driver and the pool still work
    assert wait_until_idle()


def test_every_early_exit_frees_the_workers() -> None:
    # With ray.cancel, a cancel sent while a task was being handed to a worker was lost in
    # about one round in five here, leaving a worker sleeping for an hour.
    rmap = RayMap(first_fast_then_hang, batch_size=1, max_pending=4)
    for _ in range(15):
        it = rmap.imap(range(10))
        assert next(it) == 0
        it.close()
        assert wait_until_idle()


def test_cancel_storm_cannot_crash_the_driver() -> None:
    # ray.cancel racing tasks that are just being dispatched or finishing aborted the
    # driver ("Check failed: ... Tried to complete task that was not pending"). raypool does
    # not call it; this storm of early exits runs in its own process, so a crash would show
    # here as a failed exit code rather than take pytest down.
    code = textwrap.dedent(
        """
        import time, ray
        from raypool import RayMap
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")

        def short(x):
            time.sleep(0.001 * (x % 9))
            return x

        rmap = RayMap(short, batch_size=1, max_pending=24)
        for round_ in range(150):
            it = rmap.imap(range(10_000), keep_order=round_ % 2 == 0)
            for i, _ in enumerate(it):
                if i == round_ % 11:
                    break
            it.close()
        assert rmap.map(range(100)) == list(range(100))
        print("survived")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "survived" in proc.stdout


def test_ray_shutdown_right_after_an_early_exit_is_safe() -> None:
    # A raypool thread calling into Ray while ray.shutdown() runs makes Ray end the process
    # with status 1; raypool keeps no such thread once its calls have ended.
    code = textwrap.dedent(
        """
        import time, ray
        from raypool import Pool, RayMap
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")

        def nap(x):
            time.sleep(3600 if x else 0)
            return x

        for _ in RayMap(nap, batch_size=1).imap(range(6)):
            break
        with Pool() as pool:
            for _ in pool.imap(nap, range(6), chunksize=1):
                break
        ray.shutdown()
        print("survived")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "survived" in proc.stdout
