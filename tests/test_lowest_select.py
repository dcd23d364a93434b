"""`lowest` (partition-based) selects exactly what a stable argsort selects, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from compress_ir.passes.analysis.sparsity_masks import lowest


def _by_sort(scores: np.ndarray, count: int) -> np.ndarray:
    flat = scores.reshape(-1)
    out = np.zeros(flat.size, dtype=bool)
    out[np.argsort(flat, kind="stable")[:count]] = True
    return out.reshape(scores.shape)


@pytest.mark.parametrize("count", [0, 1, 7, 50, 99, 100, 150])
def test_lowest_equals_stable_sort(count: int) -> None:
    rng = np.random.default_rng(count)
    scores = rng.integers(0, 5, size=(10, 10)).astype(np.float64)  # many ties
    got = lowest(scores, count)
    assert got.sum() == min(count, scores.size)
    assert np.array_equal(got, _by_sort(scores, count))
    floats = rng.standard_normal((7, 13))
    assert np.array_equal(lowest(floats, min(count, 91)), _by_sort(floats, min(count, 91)))
