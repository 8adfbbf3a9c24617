"""Which one-call tasks ``_backend.CallBackend`` sends to a runner pickled by the driver
(``_sent_pickled``), without Ray."""

from __future__ import annotations

from enum import IntEnum

from raypool._backend import _sent_pickled
from raypool._worker import CallItem


class _Level(IntEnum):
    LOW = 1


def test_only_tasks_of_plain_values_are_pickled_by_the_driver() -> None:
    # The rest go through Ray's serializer, which treats ObjectRefs and arrays its own way.
    spec = (None, "cancel:key", None, False)
    plain = CallItem("digest", [b"fn"], (b"x", "s", 1, 2.5, True, None), {"k": 3})
    assert _sent_pickled(spec, plain)
    assert _sent_pickled((0.5, "cancel:key", None, True), plain)  # timeout, checked
    assert not _sent_pickled(spec, plain._replace(args=([1, 2],)))
    assert not _sent_pickled(spec, plain._replace(kwargs={"k": {"nested": 1}}))
    assert not _sent_pickled(spec, plain._replace(args=(_Level.LOW,)))  # a subclass
    assert not _sent_pickled(spec, plain._replace(box=[object()]))  # the function's ObjectRef
    setup = ("setup", "digest", [b"init"], ())
    assert not _sent_pickled((None, "cancel:key", setup, False), plain)
