"""`reconstruct{prior=pruned,bias=keep}`: the ridge shrinks toward the pruned weights and
the layer's bias stays (onnxsim's refit; on MiniLM it beat the zero prior + free bias)."""

from __future__ import annotations

import numpy as np
import pytest
from test_reconstruct_heldout import PRUNE, _calib, _fresh_error, _inits, _linear_mlp

from compress_ir.api import compress
from compress_ir.passes.analysis.heldout import Normal, choose


def _normal(x: np.ndarray, y: np.ndarray) -> Normal:
    n = Normal()
    n.add(x, y)
    return n


def test_huge_ridge_falls_back_to_the_prior_not_to_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 5))
    y = x @ rng.standard_normal((5, 3)) + 1.0
    prior = rng.standard_normal((5, 3))
    toward = _normal(x, y).solve(1e9, prior=prior)
    zero = _normal(x, y).solve(1e9)
    np.testing.assert_allclose(toward[:5], prior, atol=1e-6)
    np.testing.assert_allclose(zero[:5], 0.0, atol=1e-6)


def test_fixed_bias_is_kept_and_weights_solve_the_uncentred_problem() -> None:
    rng = np.random.default_rng(1)
    a, c = rng.standard_normal((4, 2)), np.array([0.5, -2.0])
    x = rng.standard_normal((80, 4)) + 3.0  # far from centred: centring would matter
    y = x @ a + c
    coef = _normal(x, y).solve(0.0, bias=c)
    np.testing.assert_array_equal(coef[4], c)
    np.testing.assert_allclose(coef[:4], a, atol=1e-8)
    # a wrong fixed bias: W is the least-squares answer for y - bias on uncentred x
    wrong = np.zeros(2)
    coef = _normal(x, y).solve(0.0, bias=wrong)
    want = np.linalg.lstsq(x, y - wrong, rcond=None)[0]
    np.testing.assert_allclose(coef[:4], want, atol=1e-8)


def test_choose_keeps_the_current_bias() -> None:
    rng = np.random.default_rng(2)
    a, c = rng.standard_normal((6, 2)), rng.standard_normal(2)
    x = rng.standard_normal((200, 6))
    fit, held = _normal(x[:150], x[:150] @ a + c), _normal(x[150:], x[150:] @ a + c)
    current = np.vstack([np.zeros((6, 2)), c[None, :]])
    choice = choose(fit, held, current, (1e-4, 1.0), 1e-3, toward_current=True,
                    keep_bias=True)
    assert choice.applied
    np.testing.assert_array_equal(choice.coef[6], c)
    np.testing.assert_allclose(choice.coef[:6], a, atol=1e-3)


def test_reconstruct_prior_pruned_bias_keep_on_matmul_add() -> None:
    proto, w2, b2, half = _linear_mlp()
    calib = _calib((8,), 32)
    pruned = compress(proto, PRUNE, calibration=calib).model
    fixed = compress(proto, [PRUNE, "reconstruct{prior=pruned,bias=keep}"], calibration=calib)
    model = fixed.model
    inits = _inits(model)
    a2 = next(n for n in model.graph.node if n.name == "a2")
    m2 = next(n for n in model.graph.node if n.name == "m2")
    np.testing.assert_array_equal(inits[a2.input[1]], b2)  # the bias stays as it was
    # the closed form (relu(w x / 10) = relu(w x) / 10) needs no bias change
    np.testing.assert_allclose(inits[m2.input[1]], w2[:half] + w2[half:] / 10, atol=2e-3)
    feeds = {"x": _calib((8,), 256, seed=9).arrays["x"]}
    assert _fresh_error(model, proto, feeds) < 1e-3 < 0.02 < _fresh_error(pruned, proto, feeds)


@pytest.mark.parametrize("spec", ["reconstruct{prior=one}", "reconstruct{bias=free}"])
def test_bad_values_are_refused(spec: str) -> None:
    proto, *_ = _linear_mlp()
    with pytest.raises(Exception, match="prior|bias"):
        compress(proto, [PRUNE, spec], calibration=_calib((8,), 8))


def test_scale_fit_recovers_unit_scales_and_matches_an_explicit_lstsq() -> None:
    """`fit=scale` (Kwon et al.'s mask tuning): one factor per input unit. Y made by known
    scales is recovered exactly; on noisy Y the factors equal a least squares solved on
    the explicit design matrix (columns x_i w_i^T flattened), with the bias kept."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4))  # [K, O] = W^T
    c = rng.standard_normal(4)
    x = rng.standard_normal((300, 6)) + 1.0
    s_true = rng.uniform(0.5, 1.5, 6)
    y = x @ (w * s_true[:, None]) + c
    coef = _normal(x, y).solve_scale(0.0, w, bias=c)
    np.testing.assert_allclose(coef[:6], w * s_true[:, None], atol=1e-8)
    np.testing.assert_array_equal(coef[6], c)
    # free bias: the same scales, the bias found too
    coef = _normal(x, y).solve_scale(0.0, w)
    np.testing.assert_allclose(coef[:6], w * s_true[:, None], atol=1e-8)
    np.testing.assert_allclose(coef[6], c, atol=1e-8)
    # noisy targets: the oracle solves the K-column design explicitly
    y_noisy = y + rng.standard_normal(y.shape)
    design = np.stack([np.outer(x[:, i], w[i]).ravel() for i in range(6)], axis=1)
    s_want = np.linalg.lstsq(design, (y_noisy - c).ravel(), rcond=None)[0]
    coef = _normal(x, y_noisy).solve_scale(0.0, w, bias=c)
    np.testing.assert_allclose(coef[:6], w * s_want[:, None], atol=1e-8)


def test_scale_fit_huge_ridge_keeps_the_pruned_weights() -> None:
    rng = np.random.default_rng(4)
    w, x = rng.standard_normal((5, 3)), rng.standard_normal((100, 5))
    y = x @ rng.standard_normal((5, 3))
    np.testing.assert_allclose(_normal(x, y).solve_scale(1e9, w)[:5], w, atol=1e-6)
    np.testing.assert_allclose(_normal(x, y).solve_scale(1e9, w, toward_one=False)[:5], 0.0,
                               atol=1e-6)


def test_reconstruct_scale_fit_on_matmul_add() -> None:
    """The pass option end to end: the kept rows of W2 are only rescaled (each new row a
    multiple of the pruned one), the bias kept, and the error on fresh inputs drops."""
    proto, w2, b2, half = _linear_mlp()
    calib = _calib((8,), 32)
    pruned = compress(proto, PRUNE, calibration=calib).model
    model = compress(proto, [PRUNE, "reconstruct{fit=scale,bias=keep}"],
                     calibration=calib).model
    inits = _inits(model)
    a2 = next(n for n in model.graph.node if n.name == "a2")
    m2 = next(n for n in model.graph.node if n.name == "m2")
    np.testing.assert_array_equal(inits[a2.input[1]], b2)
    new, kept = inits[m2.input[1]], w2[:half]
    scale = (new * kept).sum(1) / (kept**2).sum(1)
    np.testing.assert_allclose(new, kept * scale[:, None], rtol=1e-5, atol=1e-6)
    assert not np.allclose(scale, 1.0)  # it did refit
    feeds = {"x": _calib((8,), 256, seed=9).arrays["x"]}
    assert _fresh_error(model, proto, feeds) < _fresh_error(pruned, proto, feeds)
