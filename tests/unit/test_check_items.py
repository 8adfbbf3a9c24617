"""``check_items`` (``_serialization``): what it finds in a call's arguments, without Ray.

It looks at each argument, into tuples, lists, dicts and partials, and at the attributes of
an object that pickles as its ``__dict__``: there it finds ``Manager()`` proxies (pickled with
their manager's authkey, so that they connect from a worker) and refuses ``multiprocessing``
objects that a worker cannot receive.
"""

from __future__ import annotations

import copyreg
import multiprocessing
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from raypool import NotShareableError
from raypool._serialization import check_items


class Plain:
    """Pickled as its ``__dict__``."""

    def __init__(self, held: Any) -> None:
        self.held = held


class ChoosesItsState(Plain):
    """Pickles without what it holds."""

    def __getstate__(self) -> dict[str, Any]:
        return {}


@pytest.fixture(scope="module")
def manager() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Manager() as started:
        yield started


class Namespace(SimpleNamespace):
    pass


class Registered(Plain):
    """Pickled as the reducer registered with ``copyreg`` says: without what it holds."""


copyreg.pickle(Registered, lambda obj: (Registered, (None,)))

#: Ways to hold a value as an attribute that pickle it as it is.
HOLDERS = {
    "instance": Plain,
    "namespace": lambda held: SimpleNamespace(held=held),
    "namespace subclass": lambda held: Namespace(held=held),
}


@pytest.mark.parametrize("hold", HOLDERS.values(), ids=list(HOLDERS))
def test_a_proxy_held_as_an_attribute_is_found(manager: Any, hold: Any) -> None:
    held = hold(manager.Queue())
    assert check_items([((held, 1), {})], "an argument")  # submit's (args, kwargs)
    assert check_items([held], "an item")
    assert not check_items([((hold(1),), {})], "an argument")


def test_a_multiprocessing_lock_held_as_an_attribute_is_refused_by_name() -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    with pytest.raises(NotShareableError, match="an argument of the call holds a multiprocessing"):
        check_items([((Plain(lock),), {})], "an argument of the call")


def test_an_object_that_chooses_its_pickled_state_is_not_looked_into(manager: Any) -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    assert not check_items([ChoosesItsState(lock)], "an item")  # its lock is not pickled
    assert not check_items([ChoosesItsState(manager.Queue())], "an item")
    assert not check_items([Registered(lock)], "an item")
