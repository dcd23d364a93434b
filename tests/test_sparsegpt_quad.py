"""`quad`: the OBS quadratic forms (x^T H x summed over rows) that replaced 3-index einsums."""

from __future__ import annotations

import numpy as np
import pytest

from compress_ir.passes.analysis.sparsegpt import output_error, quad


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 16)])
def test_quad_equals_the_sum_of_per_row_quadratic_forms(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    h = rng.standard_normal((shape[1], shape[1]))  # not symmetric: order of a, b matters
    want_ab = sum(float(a[o] @ h @ b[o]) for o in range(shape[0]))
    want_aa = sum(float(a[o] @ h @ a[o]) for o in range(shape[0]))
    assert quad(a, h, b) == pytest.approx(want_ab, rel=1e-12, abs=1e-12)
    assert quad(a, h) == pytest.approx(want_aa, rel=1e-12, abs=1e-12)


def test_output_error_is_the_relative_output_error_of_the_rows() -> None:
    """From the accumulated products it equals ||D W^T - X W'^T|| / ||D W^T|| on the rows."""
    rng = np.random.default_rng(0)
    d = rng.standard_normal((50, 8))
    x = d + 0.1 * rng.standard_normal((50, 8))
    w, w_new = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    want = np.linalg.norm(d @ w.T - x @ w_new.T) / np.linalg.norm(d @ w.T)
    got = output_error(w, w_new, x.T @ x, x.T @ d, d.T @ d)
    assert got == pytest.approx(want, rel=1e-9)


def test_obs_prune_with_a_precomputed_inverse_is_identical() -> None:
    """Sharing one `inverse_cholesky` across candidates (sparsify's held-out choice) is exact."""
    from compress_ir.passes.analysis.sparsegpt import inverse_cholesky, obs_prune
    from compress_ir.passes.analysis.sparsity_masks import parse_pattern

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 16))
    h = 2.0 * x.T @ x / 64
    w = rng.standard_normal((6, 16))
    for pattern, count in ((parse_pattern("2:4"), 0), (parse_pattern("unstructured"), 48)):
        a_w, a_keep = obs_prune(w, h, pattern, count, 8, 0.01)
        b_w, b_keep = obs_prune(w, h, pattern, count, 8, 0.01, inverse_cholesky(h, 0.01))
        assert np.array_equal(a_keep, b_keep) and np.array_equal(a_w, b_w)
        assert int((~a_keep).sum()) == 48  # half of 6 x 16 either way


def test_dense_targets_match_one_solve_per_ridge() -> None:
    """The eigh-based ridge sweep gives the same refits as `dense_target`'s direct solve."""
    from compress_ir.passes.analysis.sparsegpt import dense_target, dense_targets

    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 12))
    x[:, 3] = x[:, 2]  # rank-deficient: the ridge matters
    d = x + 0.2 * rng.standard_normal((40, 12))
    h, cross = 2.0 * x.T @ x / 40, 2.0 * x.T @ d / 40
    w = rng.standard_normal((5, 12))
    got = dense_targets(w, h, cross, (1e-4, 1e-2, 1.0))
    for ridge, refit in got.items():
        np.testing.assert_allclose(refit, dense_target(w, h, cross, ridge), rtol=1e-7, atol=1e-9)
