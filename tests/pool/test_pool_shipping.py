"""Lambdas, closures, nested and ``__main__`` functions work in every method, no setup."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import raypool


def test_lambdas_and_closures_everywhere() -> None:
    offset = 10

    def shift(x: int) -> int:  # a closure
        return x + offset

    seen: list[Any] = []
    with raypool.Pool(initializer=lambda: None) as pool:
        assert pool.map(lambda x: x * 2, range(3)) == [0, 2, 4]
        assert pool.map(shift, range(3)) == [10, 11, 12]
        assert pool.starmap(lambda a, b: a - b, [(5, 1)]) == [4]
        assert pool.apply(lambda: offset) == 10
        assert pool.submit(functools.partial(shift, 1)).result(60) == 11
        assert list(pool.imap_unordered(shift, [0])) == [10]
        pool.apply_async(shift, (5,), callback=lambda v: seen.append(v)).wait(60)
    assert seen == [15]


def test_an_initializer_closure_sets_what_functions_read() -> None:
    state: dict[str, Any] = {}

    def init(value: str) -> None:
        state["value"] = value

    def read(x: int) -> tuple[Any, int]:
        return state.get("value"), x

    with raypool.Pool(initializer=init, initargs=("closure",)) as pool:
        # a closure captures its own copy of ``state``: what init sets is not shared
        # with ``read``'s copy, as two pickled objects never are; module globals are.
        assert [x for _, x in pool.map(read, range(2))] == [0, 1]


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])  # a directory only this driver knows about
    import sidecar
    from raypool import Pool, ProcessPoolExecutor

    CONNECTION = None
    FACTOR = 3
    CACHE = {}

    def connect(name):
        global CONNECTION
        CONNECTION = f"connected:{name}"
        CACHE.update(warm=name)  # mutated, not assigned

    def cached(x):
        return CACHE.get("warm"), x

    def helper(x):
        return x * FACTOR

    def work(x):
        return CONNECTION, helper(x)

    if __name__ == "__main__":
        with Pool(2, initializer=connect, initargs=("db",)) as pool:
            print(pool.map(work, range(3)))
            print(pool.map(cached, range(2)))
            print(pool.map(sidecar.triple, range(3)))
            print(pool.starmap(lambda a, b: a + b, [(1, 2)]))
        with ProcessPoolExecutor(2, initializer=connect, initargs=("ex",)) as ex:
            print(ex.submit(work, 5).result())
            print(list(ex.map(sidecar.triple, [7])))
    """
)


def test_main_functions_initializer_globals_and_driver_modules(tmp_path: Path) -> None:
    # ray-project/ray#37705: Ray's Pool loses the globals a __main__ initializer sets.
    (tmp_path / "script.py").write_text(SCRIPT)
    side = tmp_path / "side"
    side.mkdir()
    (side / "sidecar.py").write_text("def triple(x):\n    return 3 * x\n")
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(side)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines == [
        "[('connected:db', 0), ('connected:db', 3), ('connected:db', 6)]",
        "[('db', 0), ('db', 1)]",
        "[0, 3, 6]",
        "[3]",
        "('connected:ex', 15)",
        "[21]",
    ]
