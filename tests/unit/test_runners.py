"""Which kept runner takes a pool's next task (``_runners.Runners``), without Ray: the
runners here are records around a stand-in actor."""

from __future__ import annotations

import time
from typing import Any

from raypool._runners import QUEUE_SECONDS, Runner, Runners


class _Method:
    def options(self, **_: Any) -> _Method:
        return self


class _Actor:
    call = _Method()
    calls = _Method()
    pickled = _Method()


def _runner(busy: int, sent_ago: float) -> Runner:
    runner = Runner(_Actor(), None)
    runner.busy = busy
    runner.since = time.monotonic() - sent_ago
    return runner


WITHIN = 60.0  # seconds: the test's own window, so that a slow machine cannot close it


def test_a_second_task_goes_behind_the_latest_short_task_sent_after_the_first_measure() -> None:
    runners = Runners({})
    measured = time.monotonic() - 30
    older = _runner(1, 20)
    latest = _runner(1, 0.0)
    full = _runner(2, 0.0)
    candidates = [older, latest, full]
    assert runners.behind(candidates, measured, within=WITHIN, take=False) is latest
    assert latest.busy == 1  # only looked
    assert runners.behind(candidates, measured, within=WITHIN) is latest
    assert latest.busy == 2


def test_nothing_goes_behind_an_old_task_or_one_sent_before_any_measure() -> None:
    runners = Runners({})
    old = _runner(1, 2 * WITHIN)  # sent long ago: it may be slow
    assert runners.behind([old], 0.0, within=WITHIN) is None
    first = _runner(1, 0.0)  # sent before the pool measured a task: nothing known of it
    assert runners.behind([first], time.monotonic() + 1, within=WITHIN) is None
    idle = _runner(0, 0.0)  # idle runners are picked, not queued behind
    assert runners.behind([idle], 0.0, within=WITHIN) is None
    assert QUEUE_SECONDS < WITHIN  # the default window is the pool's short one
    assert old.busy == first.busy == 1
    assert idle.busy == 0
