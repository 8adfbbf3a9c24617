"""The SQLite checkpoint store, without Ray: round trips, commits, replay order, safety."""

from __future__ import annotations

import os
import pickle
import random
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from raypool import CheckpointError
from raypool._keys import item_key
from raypool._store import (
    PREFETCH_ROWS,
    SqliteStore,
    checkpoint_dir,
    checkpoint_file,
    failures,
    import_ray_map,
    list_checkpoints,
    remove_checkpoint,
    summarize,
)


def key(i: int) -> bytes:
    k = item_key(i)
    assert k is not None
    return k


def committed_rows(path: Path) -> int:
    """Rows another connection sees: what survives if this process dies now."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])


def wait_for(predicate: object, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_round_trip_of_results_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = SqliteStore(path, function="mod.fn-1")
    assert store.empty
    store.record([(key(1), False, {"v": 1}), (key(2), True, (ValueError("x"), "tb text"))])
    store.close()
    store.close()  # idempotent

    again = SqliteStore(path)
    assert not again.empty
    found = again.lookup([key(1), key(2), key(3)])
    assert found[key(1)] == (False, {"v": 1})
    failed, (exc, tb) = found[key(2)]
    assert failed is True
    assert isinstance(exc, ValueError)
    assert str(exc) == "x"
    assert tb == "tb text"
    assert key(3) not in found
    again.close()
    summary = summarize(path)
    assert (summary.items, summary.failures, summary.function) == (2, 1, "mod.fn-1")
    assert failures(path, 10) == [(key(2), "ValueError: x")]


def test_without_errors_they_are_neither_recorded_nor_replayed(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = SqliteStore(path)
    store.record([(key(1), True, (ValueError("old"), "")), (key(2), False, 2)])
    store.close()
    retrying = SqliteStore(path, errors=False)
    assert retrying.lookup([key(1), key(2)]) == {key(2): (False, 2)}
    retrying.record([(key(1), False, 1), (key(3), True, (ValueError("new"), ""))])
    retrying.close()
    # the retried result replaces the recorded error; the new error was not kept
    final = SqliteStore(path)
    assert final.lookup([key(1), key(2), key(3)]) == {key(1): (False, 1), key(2): (False, 2)}
    final.close()


def test_rows_commit_after_every_items_or_the_interval(tmp_path: Path) -> None:
    by_count = tmp_path / "count.sqlite"
    store = SqliteStore(by_count, every=5, interval=3600)
    store.record([(key(i), False, i) for i in range(4)])
    time.sleep(0.3)
    assert committed_rows(by_count) == 0  # fewer than ``every``, long before the interval
    store.record([(key(4), False, 4)])
    wait_for(lambda: committed_rows(by_count) == 5)
    store.close()

    by_time = tmp_path / "time.sqlite"
    store = SqliteStore(by_time, every=10_000, interval=0.2)
    store.record([(key(0), False, 0)])
    wait_for(lambda: committed_rows(by_time) == 1)
    store.close()


def test_replay_finds_rows_recorded_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    n = 6 * PREFETCH_ROWS
    # tasks finish out of order, and the items of one task are recorded together
    tasks = [list(range(start, min(start + 700, n))) for start in range(0, n, 700)]
    random.Random(7).shuffle(tasks)
    store = SqliteStore(path, every=1000)
    for task in tasks:
        store.record([(key(i), False, i * i) for i in task if i % 10])  # every 10th is new
    store.close()

    store = SqliteStore(path)
    replayed = {}
    for start in range(0, n, 256):
        found = store.lookup([key(i) for i in range(start, min(start + 256, n))])
        replayed.update(found)
    store.close()
    expected = {key(i): (False, i * i) for i in range(n) if i % 10}
    assert replayed == expected


def test_a_failed_write_is_reported_not_lost_silently(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = SqliteStore(path, every=1)
    with sqlite3.connect(path) as other:  # the file is damaged under the running store
        other.execute("DROP TABLE results")
    store.record([(key(1), False, 1)])
    with pytest.raises(CheckpointError, match="cannot be written: no such table"):
        for _ in range(600):
            store.record([(key(2), False, 2)])
            time.sleep(0.1)
    with pytest.raises(CheckpointError, match="could not be written"):
        store.close()


def test_a_new_store_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPOOL_CACHE_DIR", str(tmp_path / "cache"))
    path = Path(checkpoint_file("private"))
    store = SqliteStore(path)
    store.record([(key(1), False, 1)])
    store.close()
    assert path.parent == Path(checkpoint_dir())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_store_others_may_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    SqliteStore(path).close()
    path.chmod(0o666)
    with pytest.raises(CheckpointError, match="others may write"):
        SqliteStore(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_store_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    SqliteStore(path).close()
    os.chown(path, 4242, -1)
    with pytest.raises(CheckpointError, match="belongs to user id 4242"):
        SqliteStore(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"my notes, not a checkpoint\n", "not a raypool checkpoint"),
        (pickle.dumps([("key", 1, 1)]), "looks like a pickle"),
    ],
)
def test_a_file_that_is_not_a_store_is_named_and_left_alone(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "res.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        SqliteStore(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_another_sqlite_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="not a raypool checkpoint") as info:
        SqliteStore(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_a_truncated_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = SqliteStore(path)
    store.record([(key(i), False, "x" * 100) for i in range(5000)])
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=str(path)):
        store = SqliteStore(path)
        store.lookup([key(i) for i in range(5000)])


def test_an_empty_file_becomes_a_store_and_a_directory_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    SqliteStore(empty).close()
    assert summarize(empty).items == 0
    with pytest.raises(CheckpointError, match="is a directory"):
        SqliteStore(tmp_path)


_WRITER = textwrap.dedent(
    """
    import sys
    from raypool._keys import item_key
    from raypool._store import SqliteStore

    path, start = sys.argv[1], int(sys.argv[2])
    for round_ in range(20):
        store = SqliteStore(path, every=7)
        for i in range(start, start + 3000, 50):
            block = range(i, i + 50)
            found = store.lookup([item_key(x) for x in block])
            store.record([(item_key(x), False, x * 2) for x in block if item_key(x) not in found])
        store.close()
    print("ok")
    """
)


def test_two_processes_sharing_a_store_do_not_corrupt_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for start in (0, 1500)  # half of their items overlap
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
        assert out.strip() == "ok"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SqliteStore(path)
    found = store.lookup([key(i) for i in range(4500)])
    store.close()
    assert found == {key(i): (False, i * 2) for i in range(4500)}
    assert summarize(path).items == 4500


def test_list_and_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPOOL_CACHE_DIR", str(tmp_path / "cache"))
    assert list_checkpoints() == []
    for name in ("b-run", "a-run"):
        store = SqliteStore(checkpoint_file(name), function=f"m.{name}")
        store.record([(key(1), False, 1)])
        store.close()
    assert [s.name for s in list_checkpoints()] == ["a-run", "b-run"]
    remove_checkpoint(checkpoint_file("a-run"))
    assert [s.name for s in list_checkpoints()] == ["b-run"]
    assert not any(p.name.startswith("a-run") for p in Path(checkpoint_dir()).iterdir())
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(CheckpointError):
        remove_checkpoint(notes)
    assert notes.read_text() == "keep me"


def ray_map_checkpoint(path: Path, rows: list[tuple[Any, Any]]) -> None:
    """A checkpoint as ray-map 1.0 writes it: a pickled list of ``(key, arg, result)``."""
    with open(path, "wb") as f:
        pickle.dump([(f"k{arg!r}", arg, res) for arg, res in rows], f, protocol=5)


def test_a_ray_map_checkpoint_is_converted_in_place(tmp_path: Path) -> None:
    path = tmp_path / "res.pkl"
    error = ValueError("three")
    ray_map_checkpoint(path, [(1, 10), (2, 20), (3, error)])
    original = path.read_bytes()
    assert import_ray_map(path, item_key, function="mod.f") == 3
    assert (tmp_path / "res.pkl.ray-map").read_bytes() == original
    store = SqliteStore(path)
    try:
        found = store.lookup([key(1), key(2), key(3), key(4)])
    finally:
        store.close()
    assert found[key(1)] == (False, 10)
    assert found[key(2)] == (False, 20)
    failed, (exc, _) = found[key(3)]
    assert failed
    assert isinstance(exc, ValueError)
    assert str(exc) == "three"
    assert key(4) not in found
    assert import_ray_map(path, item_key) is None  # now a raypool checkpoint: left alone


@pytest.mark.parametrize(
    "content",
    [pickle.dumps({"not": "rows"}), pickle.dumps([("k", 1)]), b"\x80 truncated", b"text"],
)
def test_other_files_are_not_taken_for_ray_map_checkpoints(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "res.pkl"
    path.write_bytes(content)
    assert import_ray_map(path, item_key) is None
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.pkl"]


def test_a_conversion_never_overwrites_a_kept_ray_map_file(tmp_path: Path) -> None:
    path = tmp_path / "res.pkl"
    ray_map_checkpoint(path, [(1, 10)])
    (tmp_path / "res.pkl.ray-map").write_bytes(b"an older one")
    with pytest.raises(CheckpointError, match=r"res\.pkl\.ray-map .*exists already"):
        import_ray_map(path, item_key)
    assert (tmp_path / "res.pkl.ray-map").read_bytes() == b"an older one"
    assert pickle.loads(path.read_bytes()) == [("k1", 1, 10)]
