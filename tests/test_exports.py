from __future__ import annotations

import raypool


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(raypool) if not name.startswith("_")}
    assert raypool.__all__ == sorted(raypool.__all__)
    assert set(raypool.__all__) == public | {"__version__"}


def test_public_objects_report_the_package_as_their_module() -> None:
    for name in raypool.__all__:
        obj = getattr(raypool, name)
        if isinstance(obj, type) and name != "RemoteTraceback":  # the stdlib's own class
            assert obj.__module__ == "raypool", name
