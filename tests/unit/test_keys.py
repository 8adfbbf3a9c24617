"""Checkpoint keys: content keys of items and identities of functions, stable across runs."""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import subprocess
import sys
import textwrap
import threading
from collections import namedtuple
from pathlib import Path

import numpy as np

from raypool._keys import fingerprint, item_key

Point = namedtuple("Point", "x y")


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Job:
    name: str
    tags: frozenset[str]


_KEYS_IN_A_FRESH_INTERPRETER = textwrap.dedent(
    """
    import dataclasses, sys
    from raypool._keys import item_key

    @dataclasses.dataclass
    class Job:
        name: str
        tags: frozenset

    items = [
        frozenset({"alpha", "beta", "gamma", "delta"}),
        {"x", "y", "z"},
        {"b": {"q", "r"}, "a": [1, 2.5, None]},
        (frozenset({"k1", "k2"}), "tail"),
        Job("j", frozenset({"red", "green", "blue"})),
    ]
    print(" ".join(item_key(item).hex() for item in items))
    print(" ".join(str(list(item)) for item in items[:2]))  # the iteration order
    """
)


def _keys_under(seed: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", _KEYS_IN_A_FRESH_INTERPRETER],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    return out[0], out[1]


def test_sets_of_strings_key_the_same_under_any_hash_seed() -> None:
    runs = [_keys_under(seed) for seed in ("1", "2", "3", "4")]
    assert len({keys for keys, _ in runs}) == 1
    # the check means something: the sets really iterate in different orders
    assert len({order for _, order in runs}) > 1


def test_equal_items_have_equal_keys_and_different_ones_do_not() -> None:
    assert item_key({"a": 1, "b": 2}) == item_key({"b": 2, "a": 1})
    assert item_key({3, 1, 2}) == item_key({1, 2, 3})
    assert item_key(np.arange(4)) == item_key(np.arange(4))
    assert item_key(Job("a", frozenset("xy"))) == item_key(Job("a", frozenset("yx")))
    distinct = [
        1,
        1.0,
        True,
        "1",
        b"1",
        (1,),
        [1],
        {1},
        frozenset({1}),
        {1: None},
        None,
        Point(1, 2),
        (1, 2),
        Colour.RED,
        Colour.BLUE,
        np.arange(4),
        np.arange(4, dtype=np.int32),
        np.arange(5),
        Path("a/b"),
        "a/b",
        0.0,
        -0.0,
        int,
        float,
    ]
    keys = [item_key(item) for item in distinct]
    assert None not in keys
    assert len(set(keys)) == len(distinct)


def test_the_salt_separates_calling_conventions() -> None:
    assert item_key((1, 2), b"none:") != item_key((1, 2), b"args:")


def test_what_cannot_be_encoded_has_no_key() -> None:
    assert item_key(threading.Lock()) is None
    assert item_key([1, threading.Lock()]) is None
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    assert item_key(cyclic) is not None  # pickled below the depth limit


def _compile(source: str, name: str = "work") -> object:
    namespace: dict[str, object] = {"__name__": "jobs"}
    exec(compile(textwrap.dedent(source), "jobs.py", "exec"), namespace)
    return namespace[name]


def test_fingerprint_names_the_function_and_changes_with_its_code() -> None:
    original = _compile("def work(x):\n    return x + 1\n")
    same = _compile("\n\n\ndef work(x):\n    return x + 1\n")  # moved down the file
    edited = _compile("def work(x):\n    return x + 2\n")
    defaults = _compile("def work(x, k=1):\n    return x + k\n")
    other_defaults = _compile("def work(x, k=2):\n    return x + k\n")
    assert fingerprint(original).startswith("jobs.work-")  # type: ignore[arg-type]
    assert fingerprint(original) == fingerprint(same)  # type: ignore[arg-type]
    assert fingerprint(original) != fingerprint(edited)  # type: ignore[arg-type]
    assert fingerprint(defaults) != fingerprint(other_defaults)  # type: ignore[arg-type]


def test_fingerprint_covers_closures_partials_and_methods() -> None:
    def make(k: int) -> object:
        def scaled(x: int) -> int:
            return x * k

        return scaled

    assert fingerprint(make(2)) == fingerprint(make(2))  # type: ignore[arg-type]
    assert fingerprint(make(2)) != fingerprint(make(3))  # type: ignore[arg-type]
    assert fingerprint(functools.partial(pow, 2)) != fingerprint(functools.partial(pow, 3))
    assert fingerprint(functools.partial(pow, 2)).startswith("builtins.pow-")
    assert fingerprint(str.upper).startswith("builtins.str.upper-")
    assert fingerprint(Job("a", frozenset()).__repr__).startswith(f"{__name__}.Job.__repr__-")
    # a closure over something that cannot be encoded still has a stable identity
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    assert fingerprint(locked) == fingerprint(locked)
