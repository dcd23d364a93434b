"""ADMM + CG layer-wise pruning (`passes/analysis/admm_prune.py`, `sparsify{solver=admm}`).

Oracles: the CG solve on a fixed support equals the direct per-row least-squares solve;
ADMM's result keeps the pattern exactly and its layer error, measured on the calibration
rows themselves, is below OBS's on correlated inputs (and never above it by construction);
the pass writes exactly the weights it reports (the pipeline's numeric check).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.api import compress
from compress_ir.core.calibration import CalibrationSet
from compress_ir.passes.analysis.admm_prune import admm_prune, solve_on_support
from compress_ir.passes.analysis.sparsegpt import obs_prune
from compress_ir.passes.analysis.sparsity_masks import parse_pattern


def _correlated(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """Inputs of rank about k/4 plus noise: features a pruned weight can stand in for."""
    return rng.standard_normal((rows, k // 4)) @ rng.standard_normal((k // 4, k)) + \
        0.3 * rng.standard_normal((rows, k))


def test_cg_on_a_fixed_support_is_the_least_squares_solution() -> None:
    rng = np.random.default_rng(0)
    x = _correlated(rng, 512, 24)
    h = x.T @ x / 512 + 1e-3 * np.eye(24)
    w0 = rng.standard_normal((5, 24))
    keep = rng.random((5, 24)) < 0.5
    got = solve_on_support(w0, h, keep, np.zeros_like(w0), iters=200)
    for r in range(5):
        s = keep[r]
        want = np.linalg.solve(h[np.ix_(s, s)], (w0[r] @ h)[s])  # grad = 0 on the support
        np.testing.assert_allclose(got[r, s], want, rtol=1e-6, atol=1e-8)
        assert not got[r, ~s].any()


@pytest.mark.parametrize("spec", ["2:4", "unstructured"])
def test_admm_beats_obs_on_the_calibration_rows_and_keeps_the_pattern(spec: str) -> None:
    rng = np.random.default_rng(1)
    x = _correlated(rng, 2048, 64)
    h = 2 * x.T @ x / x.shape[0]
    w = rng.standard_normal((32, 64))
    pattern = parse_pattern(spec)
    count = w.size // 2  # unstructured: half the weights; N:M ignores it
    obs, _ = obs_prune(w, h, pattern, count)
    new, keep, record = admm_prune(w, h, pattern, count, obs)
    if spec == "2:4":
        assert (keep.reshape(32, -1, 4).sum(-1) == 2).all()
    else:
        assert int((~keep).sum()) == count
    assert not new[~keep].any()

    def rel(m: np.ndarray) -> float:  # on the rows themselves, no damping
        return float(np.linalg.norm(x @ (w - m).T) / np.linalg.norm(x @ w.T))

    assert record["admm"], record
    assert rel(new) < 0.5 * rel(obs), (rel(new), rel(obs))


def test_admm_keeps_obs_when_it_cannot_do_better() -> None:
    """Identity Hessian: magnitude is optimal, OBS finds it, ADMM must not move it."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 16))
    h = np.eye(16)
    pattern = parse_pattern("2:4")
    obs, _ = obs_prune(w, h, pattern, 0)
    new, _, record = admm_prune(w, h, pattern, 0, obs)
    np.testing.assert_allclose(new, obs, atol=1e-9)
    assert record["admm_error"] >= record["obs_error"] - 1e-9 or not record["admm"]


def test_sparsify_admm_in_a_pipeline_writes_what_it_reports() -> None:
    """Two MatMuls (the middle one sparsified: first/last stay dense by default, so three);
    the pipeline's numeric check compares with the reported weights times their masks."""
    rng = np.random.default_rng(3)
    nodes, inits, cur = [], [], "x"
    for i in range(3):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((32, 32)) / np.sqrt(32)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        cur = f"m{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 32])], [helper.make_tensor_value_info(
            cur, TensorProto.FLOAT, ["n", 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calib = CalibrationSet({"x": _correlated(rng, 256, 32).astype(np.float32)}, "test")
    plain = compress(model, "sparsify{pattern=2:4}", calibration=calib)
    admm = compress(model, "sparsify{pattern=2:4,solver=admm}", calibration=calib)
    weights = {t.name: numpy_helper.to_array(t) for t in admm.model.graph.initializer}
    middle = next(v for k, v in weights.items() if "w1" in k)
    assert (middle.T.reshape(32, -1, 4) != 0).sum(-1).max() <= 2
    info = {d["node"]: d for d in admm.report["passes"][-1]["details"]["layers"]}
    plain_info = {d["node"]: d for d in plain.report["passes"][-1]["details"]["layers"]}
    assert info["mm1"]["layer_rel_error"] <= plain_info["mm1"]["layer_rel_error"], (
        info["mm1"], plain_info["mm1"])
