"""Checkpoints of RayMap: a rerun replays recorded items and computes only the rest."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    SayWhenError,
    count_lines,
    driver_past,
    exception_throwing_generator,
    fail_on,
    log_call,
    log_call_power,
    log_call_square,
    settled_line_count,
)
from raypool import RayMap
from raypool._scheduler import MAX_LOOKAHEAD
from raypool._store import checkpoint_dir, summarize


def test_rerun_replays_and_computes_only_the_rest(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    first_log, second_log = tmp_path / "first.txt", tmp_path / "second.txt"
    first = RayMap(
        functools.partial(log_call, str(first_log)), checkpoint_path=str(ckpt), checkpoint_every=5
    )
    it = first.imap(range(30))
    got = [next(it) for _ in range(12)]
    it.close()  # stops early: what finished is flushed
    assert got == list(range(12))

    # the same items under a function that logs elsewhere: the checkpoint is keyed by item
    second = RayMap(functools.partial(log_call, str(second_log)), checkpoint_path=str(ckpt))
    it2 = second.imap(range(30), ret_args=True)
    assert list(it2) == [(x, x) for x in range(30)]
    stats = it2.statistics()
    assert stats.items_replayed >= 12
    assert stats.items_replayed + stats.items_submitted == 30
    text = second_log.read_text() if second_log.exists() else ""
    computed_again = [int(x) for x in text.split()]
    assert len(computed_again) == len(set(computed_again)) == stats.items_submitted
    assert not set(computed_again) & set(got)  # nothing yielded before was computed again


def test_ordered_across_replayed_and_fresh(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    rmap = RayMap(lambda x: x * 3, checkpoint_path=str(ckpt), batch_size=4)
    assert rmap.map(range(0, 40, 2)) == [x * 3 for x in range(0, 40, 2)]
    again = RayMap(lambda x: x * 3, checkpoint_path=str(ckpt), batch_size=4)
    assert again.map(range(40)) == [x * 3 for x in range(40)]


def test_application_errors_are_replayed_timeouts_are_retried(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    out = RayMap(fail_on, checkpoint_path=str(ckpt)).map(range(5), safe_exceptions=True)
    assert isinstance(out[3], ValueError)
    replay = RayMap(fail_on, checkpoint_path=str(ckpt)).imap(range(5), safe_exceptions=True)
    values = list(replay)
    assert isinstance(values[3], ValueError)
    assert str(values[3]) == "bad item 3"
    assert replay.statistics().items_submitted == 0


def test_timeouts_are_not_recorded(tmp_path: Path) -> None:

    ckpt = tmp_path / "run.ckpt"

    def slow_once(x: int) -> int:
        if x == 1 and not (tmp_path / "done").exists():
            (tmp_path / "done").touch()
            time.sleep(3600)
        return x

    out = RayMap(slow_once, checkpoint_path=str(ckpt)).map(
        range(3), timeout=0.5, safe_exceptions=True
    )
    assert isinstance(out[1], TimeoutError)
    again = RayMap(slow_once, checkpoint_path=str(ckpt)).imap(range(3), timeout=5)
    assert list(again) == [0, 1, 2]
    assert again.statistics().items_submitted == 1


def test_checkpoint_survives_an_exception_mid_run(tmp_path: Path) -> None:
    ckpt, log = tmp_path / "run.ckpt", tmp_path / "calls.txt"

    def work(x: int) -> int:
        log_call(str(log), x)
        if x == 7:
            raise RuntimeError("crash")
        return x

    with pytest.raises(RuntimeError):
        RayMap(work, checkpoint_path=str(ckpt), batch_size=1).map(range(10))
    # the part before the crash comes back from the checkpoint alone
    again = RayMap(work, checkpoint_path=str(ckpt), batch_size=1).imap(range(7))
    assert list(again) == list(range(7))
    assert again.statistics().items_submitted == 0


# -- where checkpoints live, and what they hold -------------------------------------------


def test_checkpoint_true_is_named_after_the_function(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    logged = functools.partial(log_call, str(log))
    rmap = RayMap(logged)
    assert rmap.map(range(10), checkpoint=True) == list(range(10))
    files = [p.name for p in Path(checkpoint_dir()).glob("helpers.log_call-*.sqlite")]
    assert len(files) == 1
    assert summarize(Path(checkpoint_dir(), files[0])).items == 10
    it = RayMap(logged, checkpoint=True).imap(range(12))
    assert list(it) == list(range(12))
    assert it.statistics().items_replayed == 10
    assert count_lines(log) == 12


def test_editing_the_function_starts_a_fresh_checkpoint() -> None:
    assert RayMap(lambda x: x + 1).map(range(4), checkpoint=True) == [1, 2, 3, 4]
    assert RayMap(lambda x: x + 2).map(range(4), checkpoint=True) == [2, 3, 4, 5]
    assert RayMap(lambda x: x + 1, checkpoint=True).map(range(4)) == [1, 2, 3, 4]


def test_a_named_checkpoint_is_shared_whatever_the_function() -> None:
    assert RayMap(lambda x: -x).map(range(3), checkpoint="shared-run") == [0, -1, -2]
    again = RayMap(lambda x: x * 100).imap(range(4), checkpoint="shared-run")
    assert list(again) == [0, -1, -2, 300]
    assert Path(checkpoint_dir(), "shared-run.sqlite").exists()


def test_a_call_can_turn_the_checkpoint_off(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.sqlite"
    RayMap(lambda x: x, checkpoint_path=str(ckpt)).map(range(3), checkpoint=False)
    assert not ckpt.exists()
    with pytest.raises(TypeError, match="checkpoint or checkpoint_path"):
        RayMap(lambda x: x, checkpoint=True, checkpoint_path=str(ckpt))
    with pytest.raises(ValueError, match="checkpoint name"):
        RayMap(lambda x: x).map([1], checkpoint="../escape")
    with pytest.raises(ValueError, match="checkpoint_interval"):
        RayMap(lambda x: x, checkpoint_interval=0)


def test_checkpoint_errors_false_retries_failures(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.sqlite"
    first = RayMap(fail_on, checkpoint_path=str(ckpt), checkpoint_errors=False)
    assert isinstance(first.map(range(5), safe_exceptions=True)[3], ValueError)
    fixed = RayMap(lambda x: x, checkpoint_path=str(ckpt), checkpoint_errors=False)
    it = fixed.imap(range(5))
    assert list(it) == [0, 1, 2, 3, 4]
    assert it.statistics().items_submitted == 1  # only the failed item ran again


def test_unordered_replay_returns_the_original_items(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.sqlite"
    items = [(i, str(i)) for i in range(30)]
    RayMap(lambda a, b: f"{a}:{b}", checkpoint_path=str(ckpt)).map(items[::2])
    again = RayMap(lambda a, b: f"{a}:{b}", checkpoint_path=str(ckpt))
    it = again.imap(items, keep_order=False, ret_args=True)
    pairs = list(it)
    assert sorted(pairs) == sorted((item, f"{item[0]}:{item[1]}") for item in items)
    assert it.statistics().items_replayed == 15


def _endless(limit: int = 100_000) -> Iterator[int]:
    """``itertools.count()``, as far as a test goes: reading ``limit`` items fails rather
    than runs forever."""
    yield from range(limit)
    raise AssertionError(f"{limit} items were read: the input is read eagerly")


def test_replay_reads_the_input_lazily(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.sqlite"
    RayMap(lambda x: x * 2, checkpoint_path=str(ckpt)).map(range(2000))
    rmap = RayMap(lambda x: x * 2, checkpoint_path=str(ckpt), batch_size=10, max_pending=4)
    it = rmap.imap(_endless())  # endless: replay must not read it all first
    assert [next(it) for _ in range(2100)] == [x * 2 for x in range(2100)]
    stats = it.statistics()
    it.close()
    assert stats.items_replayed == 2000
    assert stats.items_read <= 2100 + MAX_LOOKAHEAD + 4 * 10


_SETS_IN_ANOTHER_INTERPRETER = textwrap.dedent(
    """
    import sys
    from raypool import RayMap

    items = [frozenset({f"tag{i}", f"tag{i + 1}", "common"}) for i in range(50)]
    items += [{"a": {f"k{i}", "z"}} for i in range(50)]
    RayMap(len, checkpoint_path=sys.argv[1], sequential=True, unpack="none").map(items)
    """
)


def test_set_items_resume_under_another_hash_seed(tmp_path: Path) -> None:
    ckpt = tmp_path / "sets.sqlite"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", _SETS_IN_ANOTHER_INTERPRETER, str(ckpt)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    items = [frozenset({f"tag{i}", f"tag{i + 1}", "common"}) for i in range(50)]
    items += [{"a": {f"k{i}", "z"}} for i in range(50)]  # type: ignore[list-item]
    it = RayMap(len, checkpoint_path=str(ckpt), unpack="none").imap(items)
    assert list(it) == [3] * 50 + [1] * 50
    assert it.statistics().items_submitted == 0


# -- a driver killed mid-run ----------------------------------------------------------------

_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from raypool import RayMap

    address, ckpt, log = sys.argv[1:4]

    def work(x):
        time.sleep(0.01)
        with open(log, "a") as f:
            f.write(f"{x}\\n")
        return x * x

    rmap = RayMap(
        work, address=address, checkpoint_path=ckpt, checkpoint_every=5,
        batch_size=2, max_pending=4,
    )
    for i, _ in enumerate(rmap.imap(range(400))):
        print(i, flush=True)
    """
)


def test_a_killed_driver_loses_only_the_uncommitted_tail(tmp_path: Path) -> None:
    ckpt, first_log, second_log = tmp_path / "run.sqlite", tmp_path / "1.txt", tmp_path / "2.txt"
    driver = driver_past(_KILLED_RUN, [str(ckpt), str(first_log)], 150)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    computed = settled_line_count(first_log)  # its tasks in flight may still finish
    with sqlite3.connect(ckpt) as conn:
        (committed,) = conn.execute("SELECT count(*) FROM results").fetchone()
    assert 100 <= committed <= computed <= 400
    assert computed - committed <= 40  # the uncommitted tail: about checkpoint_every + tasks

    again = RayMap(functools.partial(log_call_square, str(second_log)), checkpoint_path=str(ckpt))
    assert again.map(range(400)) == [x * x for x in range(400)]
    recomputed = [int(x) for x in second_log.read_text().split()]
    assert len(recomputed) == len(set(recomputed)) == 400 - committed


def test_an_input_that_raises_keeps_what_finished(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.sqlite"
    rmap = RayMap(lambda x: x * 10, checkpoint_path=str(ckpt), batch_size=3)
    got = []
    with pytest.raises(SayWhenError):
        for value in rmap.imap(exception_throwing_generator(100, 25)):
            got.append(value)
    assert got == [x * 10 for x in range(25)]  # every item read before the error
    again = RayMap(lambda x: x * 10, checkpoint_path=str(ckpt)).imap(range(25))
    assert list(again) == got
    assert again.statistics().items_replayed == 25


def test_a_ray_map_checkpoint_is_converted_and_resumed(tmp_path: Path) -> None:
    """Switching the import from ray-map keeps what its checkpoint holds: tuples as
    ``fn(*item)`` (its ``unpack`` convention), exceptions included."""
    ckpt, log = tmp_path / "res.pkl", tmp_path / "calls.txt"
    rows = [((1, 2), 30), ((2, 2), ValueError("recorded")), ((3, 2), 50)]
    with open(ckpt, "wb") as f:  # ray-map 1.0's format: a pickled list of (key, arg, res)
        pickle.dump([(repr(arg), arg, res) for arg, res in rows], f)
    items = [(x, 2) for x in range(1, 7)]
    rmap = RayMap(functools.partial(log_call_power, str(log)), checkpoint_path=str(ckpt))
    converted = r"converted ray-map's checkpoint .*res\.pkl \(3 results\)"
    with pytest.warns(UserWarning, match=converted):
        it = rmap.imap(items, safe_exceptions=True)
    first = list(it)
    assert first[:3:2] == [30, 50]  # recorded, not recomputed (1**2 is 1)
    assert isinstance(first[1], ValueError)
    assert str(first[1]) == "recorded"
    assert first[3:] == [16, 25, 36]
    assert sorted(Path(log).read_text().split()) == ["4", "5", "6"]
    assert (tmp_path / "res.pkl.ray-map").exists()
    again = rmap.imap(items, safe_exceptions=True)
    assert [str(r) for r in again] == [str(r) for r in first]
    assert again.statistics().items_replayed == 6
