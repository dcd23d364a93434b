"""`quad` (the OBS error's quadratic form) against an explicit double loop."""

from __future__ import annotations

import numpy as np

from compress_ir.passes.analysis.sparsegpt import output_error, quad


def test_quad_matches_loops() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    h = rng.standard_normal((7, 7))
    want = sum(a[o, k] * h[k, j] * b[o, j] for o in range(5) for k in range(7)
               for j in range(7))
    assert np.isclose(quad(a, h, b), want, rtol=1e-12)


def test_output_error_is_relative_output_norm() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 6))
    w = rng.standard_normal((4, 6))
    new = np.where(np.abs(w) > 0.5, w, 0.0)
    want = np.linalg.norm(x @ w.T - x @ new.T) / np.linalg.norm(x @ w.T)
    assert np.isclose(output_error(w, new, x.T @ x), want, rtol=1e-9)
