"""N:M masks in the OBS sweep are chosen per group of M columns, as SparseGPT does."""

from __future__ import annotations

import numpy as np
import pytest

from compress_ir.passes.analysis.sparsegpt import inverse_cholesky, obs_prune, quad
from compress_ir.passes.analysis.sparsity_masks import parse_pattern


def _reference_nm(w: np.ndarray, u: np.ndarray, n: int, m: int) -> np.ndarray:
    """SparseGPT's N:M loop without blocking: column by column, each group's mask from the
    weights updated by all earlier columns (saliency w^2 / U_ii^2)."""
    w = w.copy()
    keep = np.ones(w.shape, dtype=bool)
    for i in range(w.shape[1]):
        if i % m == 0:
            sal = w[:, i:i + m] ** 2 / np.diag(u)[i:i + m] ** 2
            order = np.argsort(-sal, axis=1, kind="stable")
            keep[:, i:i + m] = False
            np.put_along_axis(keep[:, i:i + m], order[:, :n], True, axis=1)
        q = np.where(keep[:, i], w[:, i], 0.0)
        err = (w[:, i] - q) / u[i, i]
        w[:, i:] -= np.outer(err, u[i, i:])
        w[:, i] = q
    return np.where(keep, w, 0.0)


def _problem(seed: int, k: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, 6)) @ rng.standard_normal((6, k)) + \
        0.3 * rng.standard_normal((300, k))  # correlated inputs: updates move the saliencies
    return rng.standard_normal((5, k)), 2.0 * x.T @ x / 300


@pytest.mark.parametrize("nm", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("chunk", [4, 16, 128])
def test_nm_sweep_matches_the_unblocked_sparsegpt_loop(nm: str, chunk: int) -> None:
    pattern = parse_pattern(nm)
    compared = 0
    for seed in range(3):
        w, h = _problem(seed)
        want = _reference_nm(w, inverse_cholesky(h, 0.01), pattern.n, pattern.m)
        got, keep = obs_prune(w, h, pattern, 0, chunk, 0.01)
        if quad(w - got, h) > quad(w - want, h) + 1e-9:
            continue  # obs_prune may only return something better (its magnitude check)
        np.testing.assert_array_equal(keep, want != 0)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        assert ((keep.reshape(5, -1, pattern.m).sum(axis=2)) == pattern.n).all()
        compared += 1
    assert compared >= 2


def test_chunk_size_does_not_change_the_nm_result() -> None:
    """Before, an N:M mask was scored on the weights at its chunk's start (stale)."""
    pattern = parse_pattern("2:4")
    w, h = _problem(7, 64)
    a_w, a_keep = obs_prune(w, h, pattern, 0, 4, 0.01)
    b_w, b_keep = obs_prune(w, h, pattern, 0, 64, 0.01)
    np.testing.assert_array_equal(a_keep, b_keep)
    np.testing.assert_allclose(a_w, b_w, rtol=1e-9, atol=1e-9)
