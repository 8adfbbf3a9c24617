from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _ray(ray_cluster: None) -> None:
    """Every pool test runs against the session's real Ray."""
