"""``raypool checkpoints list/show/clear``, also as ``python -m raypool`` and the console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raypool._cli import main
from raypool._keys import item_key
from raypool._store import SqliteStore, checkpoint_file


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAYPOOL_CACHE_DIR", str(tmp_path))
    return tmp_path / "checkpoints"


def make(path: str | Path, items: int, failed: int = 0, function: str = "jobs.work-1") -> None:
    store = SqliteStore(path, function=function)
    rows = [(item_key(i), False, i) for i in range(items)]
    rows += [(item_key(-i - 1), True, (KeyError(f"missing {i}"), "tb")) for i in range(failed)]
    store.record(rows)  # type: ignore[arg-type]
    store.close()


def test_list_show_and_clear(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "list"]) == 0
    assert "no checkpoints in" in capsys.readouterr().out
    make(checkpoint_file("nightly"), 40, failed=2, function="etl.load-abc")
    make(checkpoint_file("other"), 3)

    assert main(["checkpoints", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "FUNCTION", "ITEMS", "FAILURES", "SIZE", "UPDATED"]
    nightly = next(line for line in lines if line.startswith("nightly")).split()
    assert nightly[1:4] == ["etl.load-abc", "42", "2"]

    assert main(["checkpoints", "show", "nightly"]) == 0
    shown = capsys.readouterr().out
    assert "items:    42" in shown
    assert "KeyError: 'missing 0'" in shown
    assert str(cache / "nightly.sqlite") in shown

    assert main(["checkpoints", "clear", "nightly"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not (cache / "nightly.sqlite").exists()
    assert main(["checkpoints", "clear", "--all"]) == 0
    assert not list(cache.iterdir())


def test_a_file_given_by_path(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.ckpt"
    make(path, 5)
    assert main(["checkpoints", "show", str(path)]) == 0
    assert "items:    5" in capsys.readouterr().out
    assert main(["checkpoints", "clear", str(path)]) == 0
    assert not path.exists()


def test_errors_are_clear(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "show", "nope"]) == 1
    assert "no checkpoint called 'nope'" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["checkpoints", "clear", str(notes)]) == 1
    assert "not a raypool checkpoint" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    assert main(["checkpoints", "clear"]) == 2


def _run(command: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAYPOOL_CACHE_DIR": str(cache.parent)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_python_dash_m_and_the_console_script(cache: Path) -> None:
    make(checkpoint_file("scripted"), 2)
    module = _run([sys.executable, "-m", "raypool", "checkpoints", "list"], cache)
    assert module.returncode == 0, module.stderr
    assert "scripted" in module.stdout
    script = shutil.which("raypool", path=os.path.dirname(sys.executable)) or shutil.which(
        "raypool"
    )
    assert script is not None, "the raypool console script is not installed"
    listed = _run([script, "checkpoints", "list"], cache)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == module.stdout
