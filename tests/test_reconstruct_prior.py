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
