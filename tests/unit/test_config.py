from __future__ import annotations

import dataclasses

import pytest

from raypool import MapOptions


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("batch_size", 0, "batch_size"),
        ("batch_size", -3, "batch_size"),
        ("batch_size", 2.5, "batch_size"),
        ("batch_size", True, "batch_size"),
        ("max_pending", 0, "max_pending"),
        ("max_pending", -2, "max_pending"),
        ("timeout", -1, "timeout"),
        ("timeout", 0, "timeout"),
        ("timeout", float("nan"), "timeout"),
        ("timeout", "5", "timeout"),
        ("unpack", "star", "unpack"),
        ("tail_batches_per_core", 0, "tail_batches_per_core"),
        ("tail_min_batch_size", 0, "tail_min_batch_size"),
        ("checkpoint_every", 0, "checkpoint_every"),
    ],
)
def test_bad_option_names_the_problem(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        MapOptions(**{field: value})  # type: ignore[arg-type]


def test_replace_validates_again() -> None:
    options = MapOptions(batch_size=4)
    assert dataclasses.replace(options, timeout=1.5).timeout == 1.5
    with pytest.raises(ValueError, match="timeout"):
        dataclasses.replace(options, timeout=-1)


def test_defaults_are_valid_and_frozen() -> None:
    options = MapOptions()
    assert options.batch_size is None
    assert options.max_pending == -1
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 3  # type: ignore[misc]
