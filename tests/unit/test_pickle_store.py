from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest

from raypool import CheckpointError
from raypool._store import PickleFileStore


def test_round_trip_and_flush_every(tmp_path: Path) -> None:
    path = tmp_path / "c.pkl"
    store = PickleFileStore(path, every=2)
    store.record("k1", 1, 10, None)
    assert not path.exists()  # one unsaved item: below ``every``
    store.record("k2", 2, None, (ValueError("x"), "tb"))
    assert path.exists()
    again = PickleFileStore(path)
    assert again.lookup("k1") == (False, 10)
    failed, (exc, tb) = again.lookup("k2")  # type: ignore[misc]
    assert failed is True
    assert isinstance(exc, ValueError)
    assert tb == "tb"
    assert again.lookup("missing") is None


def test_unreadable_file_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"c\.pkl"):
        PickleFileStore(path)
    assert path.read_bytes() == b"not a pickle at all"


def test_reads_ray_map_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps([("a", 1, 2), ("b", 3, RuntimeError("x"))]))
    store = PickleFileStore(path)
    assert store.lookup("a") == (False, 2)
    failed, (exc, _) = store.lookup("b")  # type: ignore[misc]
    assert failed
    assert isinstance(exc, RuntimeError)


def test_unpicklable_outcome_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "c.pkl"
    store = PickleFileStore(path, every=1000)
    store.record("good", 1, 1, None)
    store.record("bad", 2, threading.Lock(), None)
    with pytest.warns(RuntimeWarning, match="cannot be pickled"):
        store.flush()
    again = PickleFileStore(path)
    assert again.lookup("good") == (False, 1)
    assert again.lookup("bad") is None
