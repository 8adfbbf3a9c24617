"""Soak: many items with application errors, worker deaths and timeouts mixed in.

``pytest tests/engine/test_soak.py --soak-items=200000`` runs a larger one.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest

from helpers import soak_kind, soak_work, square
from raypool import Pool, TaskTimeoutError, WorkerCrashedError

pytestmark = pytest.mark.timeout(900)


def test_every_item_has_exactly_one_outcome_of_its_kind(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    total: int = request.config.getoption("--soak-items")
    work = functools.partial(soak_work, str(tmp_path), total)
    outcomes: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    with Pool(max_retries=0) as pool:
        for x, outcome in pool.imap_unordered(
            work, range(total), chunksize=20, timeout=1.0, safe_exceptions=True, ret_args=True
        ):
            outcomes[x] += 1
            kind = soak_kind(x, total)
            kinds[kind] += 1
            if kind == "error":
                assert isinstance(outcome, ValueError), (x, outcome)
                assert str(outcome) == f"bad item {x}"
            elif kind == "crash":
                assert isinstance(outcome, WorkerCrashedError), (x, outcome)
            elif kind == "timeout":
                assert isinstance(outcome, TaskTimeoutError), (x, outcome)
            else:  # "ok", and "crash-once": its item ran again after the crash
                assert outcome == x * x, (x, kind, outcome)
        assert outcomes == Counter(range(total))  # nothing lost, nothing twice
        assert kinds["error"] == total // 100
        assert kinds["crash"] == kinds["crash-once"] == kinds["timeout"] == 10
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # each crashed once
            str(x) for x in range(total) if soak_kind(x, total) == "crash-once"
        )
        assert pool.map(square, range(100)) == [x * x for x in range(100)]
