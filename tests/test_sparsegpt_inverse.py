"""inverse_cholesky / upper_inverse (passes/analysis/sparsegpt.py) against their
definitions: U upper triangular with U^T U (H + lam I) = I, the factor numpy's
cholesky(inv(H + lam I)) gives."""

from __future__ import annotations

import numpy as np
import pytest

from compress_ir.passes.analysis.sparsegpt import inverse_cholesky, upper_inverse


@pytest.mark.parametrize("k", [1, 7, 300, 700])
def test_inverse_cholesky_is_the_factor_of_the_inverse(k: int) -> None:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((max(2, k // 2), k))  # rank-deficient: damping matters
    h = x.T @ x / x.shape[0]
    h[0, :] = h[:, 0] = 0.0  # a dead input
    u = inverse_cholesky(h, 0.01)
    fixed = h.copy()
    fixed[0, 0] = 1.0
    a = fixed + 0.01 * np.mean(np.diag(fixed)) * np.eye(k)
    assert np.array_equal(u, np.triu(u)) and (np.diag(u) > 0).all()
    np.testing.assert_allclose(u.T @ u @ a, np.eye(k), atol=1e-8)
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(a)).T, rtol=1e-7,
                               atol=1e-10)


def test_upper_inverse_blocks() -> None:
    rng = np.random.default_rng(0)
    n = np.triu(rng.standard_normal((600, 600))) + 30 * np.eye(600)
    got = upper_inverse(n, leaf=64)  # several levels of 2x2 blocks
    np.testing.assert_allclose(got @ n, np.eye(600), atol=1e-10)
    assert np.array_equal(got, np.triu(got))


def test_not_positive_definite_raises() -> None:
    with pytest.raises(np.linalg.LinAlgError):
        inverse_cholesky(np.array([[1.0, 2.0], [2.0, 1.0]]), 1e-12)  # eigenvalue -1
