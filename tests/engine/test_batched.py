"""batched=True: the function takes a list of items and returns a list of results."""

from __future__ import annotations

import numpy as np

from helpers import vector_double, vector_drop_one
from raypool import BatchLengthError, RayMap


def test_batched_function_over_a_stream() -> None:
    assert RayMap(vector_double, batched=True, batch_size=7).map(range(50)) == [
        2 * x for x in range(50)
    ]


def test_batched_numpy_vectorized() -> None:
    def norms(batch: list[np.ndarray]) -> list[float]:
        return list(np.linalg.norm(np.stack(batch), axis=1))

    arrays = [np.full(4, float(i)) for i in range(20)]
    out = RayMap(norms, batched=True, batch_size=5).map(arrays)
    assert np.allclose(out, [2.0 * i for i in range(20)])


def test_length_mismatch_is_a_clear_error_for_that_batch() -> None:
    out = RayMap(vector_drop_one, batched=True, batch_size=4).map(
        iter(range(8)), safe_exceptions=True
    )
    assert all(isinstance(r, BatchLengthError) for r in out)
    assert "3 results for a batch of 4" in str(out[0])
