"""Test session setup: one real local Ray for the whole session (engine tests only).

Unit tests (``tests/unit``) never start Ray. Engine tests ask for the ``ray_cluster``
fixture (autouse in ``tests/engine/conftest.py``), which starts a 2-CPU local instance once
and shuts it down at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    # Workers import this directory's helper modules by name, as the driver does.
    paths = [str(TESTS), str(TESTS / "engine"), str(TESTS / "unit")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    ray.init(
        num_cpus=CPUS,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
    )
    yield
    ray.shutdown()
