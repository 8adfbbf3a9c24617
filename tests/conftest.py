"""Test session setup: one real local Ray for the whole session.

Unit tests (``tests/unit``) never start Ray. Engine and pool tests ask for the
``ray_cluster`` fixture (autouse in their ``conftest.py``), which starts a 2-CPU local
instance once and shuts it down at the end. It gives Ray no ``runtime_env``: the workers
find this directory's modules (``helpers``, the test modules) through raypool alone, as a
user's would.
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

    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Checkpoints made with ``checkpoint=True`` go to a temporary cache directory."""
    previous = os.environ.get("RAYPOOL_CACHE_DIR")
    os.environ["RAYPOOL_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ["RAYPOOL_CACHE_DIR"]
    else:
        os.environ["RAYPOOL_CACHE_DIR"] = previous


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-items",
        type=int,
        default=20_000,
        help="items of the soak test (tests/engine/test_soak.py); CI runs the default",
    )
