"""`reconstruct` on transformer-style layers (MatMul + bias Add, attention heads) and the
held-out ridge choice that keeps a refit from overfitting (passes/analysis/heldout.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_channel_ops import Net

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet
from compress_ir.frontends.placeholders import fill_placeholders
from compress_ir.passes.analysis.heldout import Normal, choose, held_out, period_for

PRUNE = "channel-prune{ratio=0.5}"
REAL = Path(__file__).parent / "fixtures" / "real"


def _linear_mlp(hidden: int = 16, features: int = 8, outputs: int = 5) -> tuple:
    """x -> MatMul+Add -> Relu -> MatMul+Add (torch Linear as exported). Hidden units
    hidden/2.. are a tenth of units 0..hidden/2 (relu(w x / 10) = relu(w x) / 10): L2
    prunes them, and the answer is known in closed form: W2'[j] = W2[j] + W2[j + h/2] / 10."""
    n = Net(seed=7)
    half = hidden // 2
    w1 = n.rng.standard_normal((features, half)).astype(np.float32) / 3
    b1 = n.rng.standard_normal(half).astype(np.float32) / 3
    w2 = n.rng.standard_normal((hidden, outputs)).astype(np.float32) / 4
    b2 = n.rng.standard_normal(outputs).astype(np.float32)
    x = n.input(["N", features])
    h = n.op("Add", [n.op("MatMul", [x, n.const(np.concatenate([w1, w1 / 10], 1), "w1")], "m1"),
                     n.const(np.concatenate([b1, b1 / 10]), "b1")], "a1")
    r = n.op("Relu", [h], "r1")
    y = n.op("Add", [n.op("MatMul", [r, n.const(w2, "w2")], "m2"), n.const(b2, "b2")], "a2")
    return n.build(y), w2, b2, half


def _calib(shape: tuple[int, ...], count: int, seed: int = 0) -> CalibrationSet:
    data = np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
    return CalibrationSet({"x": data}, f"test:{seed}")


def _fresh_error(model: onnx.ModelProto, original: onnx.ModelProto, feeds: dict) -> float:
    got, want = numeric.run(model, feeds), numeric.run(original, feeds)
    num = sum(float(((got[k] - v) ** 2).sum()) for k, v in want.items())
    den = sum(float((v**2).sum()) for v in want.values())
    return (num / den) ** 0.5


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def test_matmul_add_bias_is_refit_in_place_and_exact() -> None:
    proto, w2, b2, half = _linear_mlp()
    calib = _calib((8,), 32)
    pruned = compress(proto, PRUNE, calibration=calib).model
    fixed = compress(proto, [PRUNE, "reconstruct"], calibration=calib)
    model = fixed.model
    # the bias went into the exporter's Add: no extra node
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in pruned.graph.node]
    (layer,) = fixed.report["passes"][1]["details"]["layers"]
    assert layer["node"] == "m2" and layer["refit"] and layer["features"] == half
    assert layer["heldout_rows"] > 0
    assert layer["heldout_rel_error_after"] < 1e-3 < 0.02 < layer["heldout_rel_error_before"]
    m2 = next(n for n in model.graph.node if n.name == "m2")
    a2 = next(n for n in model.graph.node if n.name == "a2")
    inits = _inits(model)
    want = w2[:half] + w2[half:] / 10  # closed form, not computed by the code under test
    np.testing.assert_allclose(inits[m2.input[1]], want, rtol=0, atol=2e-3)
    np.testing.assert_allclose(inits[a2.input[1]], b2, rtol=0, atol=2e-3)
    feeds = {"x": _calib((8,), 256, seed=9).arrays["x"]}
    assert _fresh_error(model, proto, feeds) < 1e-3 < 0.02 < _fresh_error(pruned, proto, feeds)


def test_overfitting_refit_is_skipped() -> None:
    """Pruned hidden units independent of the kept ones, few rows, many features: an
    unregularised refit interpolates noise and is worse on new data than no refit.
    The held-out check must keep the layer (or pick a ridge that does not hurt)."""
    n = Net(seed=3)
    x = n.input(["N", 48])
    h = n.op("Relu", [n.op("MatMul", [x, n.rand((48, 64), "w1")], "m1")], "r1")
    proto = n.build(n.op("MatMul", [h, n.rand((64, 6), "w2")], "m2"))
    calib = _calib((48,), 24)
    fresh = {"x": _calib((48,), 256, seed=5).arrays["x"]}
    pruned = compress(proto, PRUNE, calibration=calib).model
    blind = compress(proto, [PRUNE, "reconstruct{holdout=0,ridge=0}"], calibration=calib)
    guarded = compress(proto, [PRUNE, "reconstruct"], calibration=calib)
    e_pruned = _fresh_error(pruned, proto, fresh)
    assert _fresh_error(blind.model, proto, fresh) > 1.3 * e_pruned  # overfits
    assert _fresh_error(guarded.model, proto, fresh) < 1.05 * e_pruned
    (layer,) = guarded.report["passes"][1]["details"]["layers"]
    assert layer["heldout_rel_error_after"] <= layer["heldout_rel_error_before"]
    (blind_layer,) = blind.report["passes"][1]["details"]["layers"]
    # the calibration error alone would have said "better": that is the trap
    assert blind_layer["rel_error_after"] < blind_layer["rel_error_before"]


def test_choose_keeps_a_layer_no_refit_improves() -> None:
    rng = np.random.default_rng(0)
    fit, held = Normal(), Normal()
    x = rng.standard_normal((40, 10))
    y = rng.standard_normal((40, 3))  # unrelated to x: nothing to learn
    fit.add(x[:30], y[:30])
    held.add(x[30:], y[30:])
    current = np.zeros((11, 3))
    current[10] = y[:30].mean(0)  # already the best constant
    choice = choose(fit, held, current, (1e-4, 1e-2, 1.0), 1e-3)
    assert not choice.applied and choice.coef is None
    assert choice.heldout_after == choice.heldout_before


def test_choose_recovers_a_linear_map_and_prefers_small_ridge() -> None:
    rng = np.random.default_rng(1)
    a, c = rng.standard_normal((6, 2)), rng.standard_normal(2)
    x = rng.standard_normal((200, 6))
    fit, held = Normal(), Normal()
    mask = held_out(np.arange(200), period_for(0.25, 200))
    assert mask.sum() == 50 and mask[3] and not mask[0]
    fit.add(x[~mask], x[~mask] @ a + c)
    held.add(x[mask], x[mask] @ a + c)
    choice = choose(fit, held, np.zeros((7, 2)), (1e-4, 1e-1, 1.0), 1e-3)
    assert choice.applied and choice.ridge == 1e-4
    np.testing.assert_allclose(choice.coef[:6], a, atol=1e-3)
    np.testing.assert_allclose(choice.coef[6], c, atol=1e-3)
    assert choice.calib_after < 1e-3 and choice.heldout_after < 1e-3


def test_no_holdout_below_two_samples() -> None:
    assert period_for(0.25, 1) == 0 and period_for(0.0, 100) == 0
    assert period_for(0.25, 8) == 4 and period_for(0.5, 8) == 2
    assert not held_out(np.arange(5), 0).any()


def _bert_calib(count: int, seq: int, seed: int) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 96, (count, seq)).astype(np.int64)  # vocab 96
    return CalibrationSet({"input_ids": ids, "attention_mask": np.ones_like(ids),
                           "token_type_ids": np.zeros_like(ids)}, f"tokens:{seed}")


def test_attention_heads_and_ffn_refit_beat_pruned_on_new_tokens() -> None:
    """A real `transformers` BERT export (TorchScript exporter; random weights): heads
    and FFN neurons pruned, then the attention output projection (the heads' rows)
    and the FFN down projection refit, each a MatMul + bias Add."""
    proto = fill_placeholders(onnx.load(REAL / "bert_ts.onnx"), seed=0)
    calib = _bert_calib(48, 16, seed=0)
    pruned = compress(proto, PRUNE, calibration=calib, check=False).model
    fixed = compress(proto, [PRUNE, "reconstruct"], calibration=calib, check=False)
    layers = fixed.report["passes"][1]["details"]["layers"]
    names = {r["node"] for r in layers}
    assert any("attention/output/dense" in n for n in names), names
    assert any("output/dense" in n and "attention" not in n for n in names), names
    for r in layers:
        assert r["heldout_rel_error_after"] <= r["heldout_rel_error_before"]
    assert len(fixed.model.graph.node) == len(pruned.graph.node)  # biases stay in their Adds
    new = _bert_calib(16, 16, seed=1).arrays
    errors = []
    for model in (pruned, fixed.model):
        errors.append(_fresh_error(model, proto, new))
    assert errors[1] < 0.9 * errors[0], errors


@pytest.mark.parametrize("holdout", [0.0, 0.25])
def test_report_has_calibration_and_heldout_errors(holdout: float) -> None:
    proto, *_ = _linear_mlp()
    result = compress(proto, [PRUNE, f"reconstruct{{holdout={holdout}}}"],
                      calibration=_calib((8,), 16))
    (layer,) = result.report["passes"][1]["details"]["layers"]
    assert {"rel_error_before", "rel_error_after", "refit", "ridge"} <= set(layer)
    assert ("heldout_rel_error_after" in layer) == (holdout > 0)


def test_wanda_scores_are_weight_times_input_rms() -> None:
    """Structured Wanda on x -> MatMul -> Relu -> MatMul: neuron j scores
    RMS(h_j) * sum_i |W2[j, i]| (computed here with numpy from the model's tensors)."""
    from compress_ir.core.model import Model, infer_proto_shapes
    from compress_ir.passes.analysis.calibration_stats import CalibrationStats
    from compress_ir.passes.analysis.channel_groups import analyse_channels
    from compress_ir.passes.analysis.importance import CRITERIA, ScoreContext

    n = Net(seed=4)
    x = n.input(["N", 6])
    h = n.op("Relu", [n.op("MatMul", [x, n.rand((6, 10), "w1")], "m1")], "r1")
    proto = infer_proto_shapes(n.build(n.op("MatMul", [h, n.rand((10, 3), "w2")], "m2")))
    calib = _calib((6,), 64)
    model = Model.from_proto(proto, "test")
    analysis = analyse_channels(model)
    stats = CalibrationStats(proto, analysis, calib)
    (group,) = [g for g in analysis.groups if any(r.node == "m1" for r in g.roots)]
    scores = CRITERIA.get("wanda")().score(group, ScoreContext(model, analysis, stats))
    inits = _inits(proto)
    hidden = np.maximum(calib.arrays["x"].astype(np.float64) @ inits["w1"], 0.0)
    want = np.sqrt((hidden**2).mean(0)) * np.abs(inits["w2"]).sum(1)
    np.testing.assert_allclose(scores, want, rtol=1e-4)


def test_downstream_refits_the_layers_after_a_change_too() -> None:
    """`downstream`: Q/K/V and FFN up projections of later blocks see a changed residual
    stream though they lost no input; refitting them too lowers the error on new tokens."""
    proto = fill_placeholders(onnx.load(REAL / "bert_ts.onnx"), seed=0)
    calib = _bert_calib(48, 16, seed=0)
    base = compress(proto, [PRUNE, "reconstruct"], calibration=calib, check=False)
    more = compress(proto, [PRUNE, "reconstruct{downstream=true}"], calibration=calib,
                    check=False)
    names = {r["node"] for r in more.report["passes"][1]["details"]["layers"]}
    base_names = {r["node"] for r in base.report["passes"][1]["details"]["layers"]}
    assert base_names < names
    assert any("layer.1/attention/self/query" in n for n in names - base_names), names
    assert not any("layer.0/attention/self" in n for n in names)  # inputs unchanged there
    new = _bert_calib(16, 16, seed=1).arrays
    assert _fresh_error(more.model, proto, new) < _fresh_error(base.model, proto, new)
