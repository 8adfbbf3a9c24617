from __future__ import annotations

from types import ModuleType

import raypool


def test_all_is_sorted_and_complete() -> None:
    # Submodules imported on their own (``raypool.joblib``, which needs joblib) are not in
    # ``__all__``: ``from raypool import *`` must not import joblib.
    public = {
        name
        for name in dir(raypool)
        if not name.startswith("_") and not isinstance(getattr(raypool, name), ModuleType)
    }
    assert raypool.__all__ == sorted(raypool.__all__)
    assert set(raypool.__all__) == public | {"__version__"}


def test_public_objects_report_the_package_as_their_module() -> None:
    for name in raypool.__all__:
        obj = getattr(raypool, name)
        if isinstance(obj, type) and name != "RemoteTraceback":  # the stdlib's own class
            assert obj.__module__ == "raypool", name
