"""The callable is serialized once per call and deserialized once per worker process;
what cannot be shipped is named."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import square
from raypool import RayMap, SerializationError


class LoadCounter:
    """Carries a big array; every unpickling appends a line to ``path``."""

    def __init__(self, path: str, data: np.ndarray) -> None:
        self.path = path
        self.data = data
        self.dumps = 0

    def __reduce__(self) -> Any:
        self.dumps += 1
        return _rebuild, (self.path, self.data)


def _rebuild(path: str, data: np.ndarray) -> LoadCounter:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return LoadCounter(path, data)


def test_closure_over_a_big_array_moves_once_per_worker(tmp_path: Path) -> None:
    log = tmp_path / "loads.txt"
    counter = LoadCounter(str(log), np.ones(50 * 1024 * 1024 // 8))  # 50 MB

    def work(i: int) -> tuple[int, float]:
        return os.getpid(), float(counter.data[i])

    out = RayMap(work, batch_size=1).map(range(200))
    assert [value for _, value in out] == [1.0] * 200
    worker_pids = {pid for pid, _ in out}
    loads = log.read_text().split()
    assert counter.dumps == 1  # serialized once for the whole call
    assert len(loads) == len(set(loads))  # no worker process deserialized it twice
    assert set(map(int, loads)) == worker_pids
    assert len(loads) < 200


def test_an_item_that_cannot_be_sent_is_named() -> None:
    with pytest.raises(SerializationError, match=r"cannot send the item .*_thread.lock") as info:
        RayMap(square).map([1, threading.Lock()])
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    assert isinstance(info.value, TypeError)  # what multiprocessing raises there
