"""Bad input is a clear error at call time, before anything is submitted."""

from __future__ import annotations

import pytest

from helpers import square
from raypool import RayMap, SerializationError


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_pending": 0}, "max_pending"),
        ({"tail_min_batch_size": 0}, "tail_min_batch_size"),
        ({"unpack": "splat"}, "unpack"),
    ],
)
def test_bad_constructor_options(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RayMap(square, **kwargs)  # type: ignore[arg-type]


def test_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        RayMap(42)  # type: ignore[arg-type]


def test_non_iterable_input_fails_at_call_time() -> None:
    with pytest.raises(TypeError, match="iterable"):
        RayMap(square).imap(5)  # type: ignore[arg-type]


def test_negative_timeout_fails_at_call_time() -> None:
    source_read = []

    def source():  # type: ignore[no-untyped-def]
        source_read.append(1)
        yield 1

    with pytest.raises(ValueError, match="timeout"):
        RayMap(square).imap(source(), timeout=-1)
    assert source_read == []


def test_unserializable_callable_names_the_object() -> None:
    import threading

    lock = threading.Lock()

    class Holder:
        def __call__(self, x: int) -> int:
            with lock:
                return x

    holder = Holder()
    holder.gen = (i for i in range(3))  # type: ignore[attr-defined]
    with pytest.raises(SerializationError, match="Holder"):
        RayMap(holder).imap([1])


def test_a_raymap_cannot_be_pickled() -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(RayMap(square))
