"""checkpoint_path: a rerun replays recorded items and computes only the rest."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from helpers import fail_on, log_call
from raypool import RayMap


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
    import time

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
