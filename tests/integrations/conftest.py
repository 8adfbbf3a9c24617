"""Tests of raypool under the libraries that drive a pool: dask, joblib, scikit-learn."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _ray(ray_cluster: None) -> None:
    """Every integration test runs against the session's real Ray."""
