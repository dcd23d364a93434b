"""`reconstruct`: least-squares refit of pruned layers and BN recalibration."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_channel_ops import Net

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import PassError, UsageError
from compress_ir.core.passes import PassContext
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.transform.reconstruct import Reconstruct, _align

PRUNE = "channel-prune{ratio=0.5}"


def _calib(shape: tuple[int, ...], count: int, seed: int = 0) -> CalibrationSet:
    data = np.random.default_rng(seed).standard_normal((count, *shape[1:])).astype(np.float32)
    return CalibrationSet({"x": data}, f"test:{seed}")


def _error(model: onnx.ModelProto, original: onnx.ModelProto, shape, count: int = 8) -> float:
    """Relative L2 error of all outputs on held-out random inputs (one sample per run)."""
    data = _calib(shape, count, seed=99).arrays["x"]
    num = den = 0.0
    for i in range(count):
        feeds = {"x": data[i : i + shape[0]]}
        got, want = numeric.run(model, feeds), numeric.run(original, feeds)
        for k, v in want.items():
            num += float(((got[k] - v) ** 2).sum())
            den += float((v**2).sum())
    return (num / den) ** 0.5


def _duplicated() -> onnx.ModelProto:
    """conv1's filters 4..7 are conv1's filters 0..3 at half scale: relu makes them
    exactly predictable (relu(w x / 2) = relu(w x) / 2), and L2 prunes them."""
    n = Net(seed=3)
    x = n.input([1, 3, 8, 8])
    w = n.rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 5
    b = n.rng.standard_normal(4).astype(np.float32) / 5
    conv = n.op("Conv", [x, n.const(np.concatenate([w, w / 2]), "c1.w"),
                         n.const(np.concatenate([b, b / 2]), "c1.b")], "c1", pads=[1] * 4)
    return n.build(n.conv(n.op("Relu", [conv], "r1"), 8, 4, "c2"))


@pytest.mark.parametrize("ridge", [1e-3, 1e-5])
def test_predictable_channels_are_recovered(ridge: float) -> None:
    proto, shape = _duplicated(), (1, 3, 8, 8)
    calib = _calib(shape, 32)
    pruned = compress(proto, PRUNE, calibration=calib).model
    fixed = compress(proto, [PRUNE, f"reconstruct{{ridge={ridge}}}"], calibration=calib)
    assert _error(pruned, proto, shape) > 0.1
    assert _error(fixed.model, proto, shape) < 1e-3
    (layer,) = fixed.report["passes"][1]["details"]["layers"]
    assert layer["node"] == "c2" and layer["features"] == 4 * 9
    assert layer["rel_error_before"] > 0.1 > 1e-3 > layer["rel_error_after"]
    assert numeric.rel_error(  # also by the max-based metric the pipeline uses
        numeric.run(fixed.model, {"x": calib.arrays["x"][:1]})["c2"],
        numeric.run(proto, {"x": calib.arrays["x"][:1]})["c2"]) < 2e-3


def _random_cnn(bn: bool) -> onnx.ModelProto:
    n = Net(seed=1)
    t = n.input([1, 3, 12, 12])
    for i, (cin, cout) in enumerate([(3, 16), (16, 24), (24, 24)], start=1):
        t = n.conv(t, cin, cout, f"c{i}", strides=[2, 2] if i == 2 else [1, 1])
        if bn:
            t = n.bn(t, cout, f"bn{i}")
        t = n.op("Relu", [t], f"r{i}")
    return n.build(n.head(t, 24, classes=5))


@pytest.mark.parametrize("bn", [False, True])
def test_random_cnn_error_drops(bn: bool) -> None:
    proto, shape = _random_cnn(bn), (1, 3, 12, 12)
    calib = _calib(shape, 48)
    pruned = compress(proto, PRUNE, calibration=calib).model
    fixed = compress(proto, [PRUNE, "reconstruct{samples=2048}"], calibration=calib)
    before, after = _error(pruned, proto, shape), _error(fixed.model, proto, shape)
    assert after < 0.5 * before, (before, after)
    report = fixed.report["passes"][1]
    layers = report["details"]["layers"]
    assert [r["node"] for r in layers] == ["c2", "c3", "fc"]
    assert [r["level"] for r in layers] == sorted(r["level"] for r in layers)
    assert all(r["rel_error_after"] <= r["rel_error_before"] for r in layers)
    assert report["stats"]["layers_refit"] == 3
    assert report["stats"]["bn_recalibrated"] == (3 if bn else 0)
    assert not fixed.report["checks"][1:]  # no numeric reference: numerics change on purpose


def test_bn_recalibration_preserves_unchanged_inputs() -> None:
    """bn1 sees exactly its original (kept) inputs: recalibrating it keeps its function."""
    proto, shape = _random_cnn(bn=True), (1, 3, 12, 12)
    fixed = compress(proto, [PRUNE, "reconstruct"], calibration=_calib(shape, 48)).model

    def affine(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
        node = next(n for n in model.graph.node if n.name == "bn1")
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        gamma, beta, mean, var = (inits[name].astype(np.float64) for name in node.input[1:5])
        scale = gamma / np.sqrt(var + 1e-5)
        return scale, beta - mean * scale

    pruned = compress(proto, PRUNE).model
    (s0, b0), (s1, b1) = affine(pruned), affine(fixed)
    np.testing.assert_allclose(s1, s0, rtol=1e-3)
    np.testing.assert_allclose(b1, b0, rtol=1e-3, atol=1e-4 * np.abs(b0).max())


def test_matmul_gets_a_bias() -> None:
    n = Net(seed=5)
    t = n.op("Relu", [n.op("MatMul", [n.input([1, 16]), n.rand((16, 32), "w1")], "m1")], "r1")
    proto = n.build(n.op("MatMul", [t, n.rand((32, 6), "w2")], "m2"))
    calib = _calib((1, 16), 96)
    pruned = compress(proto, PRUNE, calibration=calib).model
    fixed = compress(proto, [PRUNE, "reconstruct"], calibration=calib).model
    assert any(node.name == "m2__bias" and node.op_type == "Add" for node in fixed.graph.node)
    # independent random hidden units: only their mean (the bias) and correlations help
    assert _error(fixed, proto, (1, 16)) < 0.85 * _error(pruned, proto, (1, 16))


def test_needs_calibration_and_the_original() -> None:
    with pytest.raises(PassError, match="calibration"):
        compress(_duplicated(), [PRUNE, "reconstruct"])
    with pytest.raises(UsageError, match="original"):
        Reconstruct().run(load_onnx(_duplicated()), PassContext(calibration=_calib((1, 3), 2)))


def test_reconstruct_after_fold_bn_is_refused() -> None:
    proto, shape = _random_cnn(bn=True), (1, 3, 12, 12)
    with pytest.raises(PassError, match="directly after channel-prune"):
        compress(proto, [PRUNE, "fold-bn", "reconstruct"], calibration=_calib(shape, 4))


def test_unpruned_model_is_left_alone() -> None:
    proto = _duplicated()
    result = compress(proto, ["reconstruct"], calibration=_calib((1, 3, 8, 8), 4))
    assert not result.report["passes"][0]["modified"]


def test_align_prefers_exact_rows_over_scaled_copies() -> None:
    rows = np.random.default_rng(0).standard_normal((4, 5))
    original = np.concatenate([rows, rows / 2])
    idx, worst = _align(original, original[[0, 2, 3, 5]])
    assert idx.tolist() == [0, 2, 3, 5] and worst == 0.0
    idx, _ = _align(original, rows)
    assert idx.tolist() == [0, 1, 2, 3]


def _dense_inputs_predict() -> onnx.ModelProto:
    """c1 (random, its pruned filters unpredictable) -> c2 -> c3. c2's filters 4..7 are its
    filters 0..3 at half scale (unit-norm, so L2 prunes exactly 4..7): in the DENSE model
    c3's inputs at the removed channels are half its inputs at the kept ones, so c3's
    output is exactly linear in the dense model's kept channels, but not in the pruned
    model's (c1's loss changes c2's kept outputs)."""
    n = Net(seed=5)
    t = n.op("Relu", [n.conv(n.input([1, 3, 8, 8]), 3, 8, "c1", pads=[1] * 4)], "r1")
    w = n.rng.standard_normal((4, 8, 3, 3))
    w /= np.linalg.norm(w.reshape(4, -1), axis=1)[:, None, None, None]
    b = n.rng.standard_normal(4) / 5
    c2 = n.op("Conv", [t, n.const(np.concatenate([w, w / 2]).astype(np.float32), "c2.w"),
                       n.const(np.concatenate([b, b / 2]).astype(np.float32), "c2.b")],
              "c2", pads=[1] * 4)
    return n.build(n.conv(n.op("Relu", [c2], "r2"), 8, 4, "c3", pads=[1] * 4))


def test_original_inputs_fit_dense_kept_channels_exactly() -> None:
    proto, shape = _dense_inputs_predict(), (1, 3, 8, 8)
    calib = _calib(shape, 32)
    layers = {}
    for inputs in ("current", "original"):
        result = compress(proto, [PRUNE, f"reconstruct{{inputs={inputs},holdout=0,ridge=0}}"],
                          calibration=calib)
        layers[inputs] = {r["node"]: r for r in result.report["passes"][1]["details"]["layers"]}
    # c3 on the dense model's kept channels: an exact linear fit (what 'original' means)
    assert layers["original"]["c3"]["rel_error_after"] < 1e-6
    # on the pruned model's inputs it cannot be exact (c1's pruned filters are random)
    assert layers["current"]["c3"]["rel_error_after"] > 1e-2
    # c2 lost only c1's channels, whose kept values are the same in both models
    assert layers["original"]["c2"]["rel_error_after"] == pytest.approx(
        layers["current"]["c2"]["rel_error_after"], rel=1e-6)
    assert layers["original"]["c2"]["rel_error_after"] > 1e-2


def test_inputs_option_is_checked() -> None:
    with pytest.raises((UsageError, PassError, ValueError)):
        compress(_dense_inputs_predict(), [PRUNE, "reconstruct{inputs=dense}"],
                 calibration=_calib((1, 3, 8, 8), 8))
