"""``callable_state``: when a pool may reuse a function's serialized copy (no Ray)."""

from __future__ import annotations

import functools
import math
from typing import Any

from raypool._serialization import callable_state, same_state

FACTOR = 2


def scaled(x: int) -> int:
    return x * FACTOR


def test_a_function_keeps_its_state_until_a_global_it_reads_is_rebound() -> None:
    global FACTOR
    before = callable_state(scaled)
    assert before is not None
    assert same_state(before, callable_state(scaled) or ())
    FACTOR = 3
    try:
        assert not same_state(before, callable_state(scaled) or ())
    finally:
        FACTOR = 2


def test_closure_values_and_defaults_are_part_of_the_state() -> None:
    factor = 1

    def fn(x: int, offset: int = 0) -> int:
        return x * factor + offset

    before = callable_state(fn)
    assert before is not None
    factor = 4
    assert not same_state(before, callable_state(fn) or ())
    after = callable_state(fn)
    assert after is not None
    fn.__defaults__ = (1,)
    assert not same_state(after, callable_state(fn) or ())


def test_builtins_have_no_state_and_objects_with_state_are_not_reused() -> None:
    class Scale:
        def __call__(self, x: Any) -> Any:
            return x

        def method(self, x: Any) -> Any:
            return x

    assert callable_state(math.sqrt) == ()
    assert callable_state(len) == ()
    assert callable_state([].append) is None  # a bound builtin method: its list
    assert callable_state(Scale()) is None
    assert callable_state(Scale().method) is None
    assert callable_state(functools.partial(scaled)) is None


def test_a_nested_helper_it_calls_is_part_of_the_state() -> None:
    scale = 2

    def helper(x: int) -> int:
        return x * scale

    def fn(x: int) -> int:
        return helper(x)

    before = callable_state(fn)
    assert before is not None
    scale = 3
    assert not same_state(before, callable_state(fn) or ())
