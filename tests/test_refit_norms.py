"""`refit-norms`: LayerNorm scale/shift refit to the original model's LN outputs.

The oracle: when the only difference from the original is each LN's own scale and shift,
the refit must give back the original's exactly (two stacked post-norm blocks: the second
LN is fit on the stream the first one's refit corrected). When the difference lies
elsewhere, the held-out error onnxruntime measures on the LN output must not grow.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.api import compress
from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import PassError
from compress_ir.core.model import Model
from compress_ir.core.passes import PassContext
from compress_ir.passes.transform.refit_norms import RefitNorms, RefitNormsOptions

H, S = 8, 6


def _blocks(rng: np.random.Generator, ln_params: list[tuple[np.ndarray, np.ndarray]] | None = None,
            w_scale: float = 1.0) -> onnx.ModelProto:
    """x -> 2 x (Linear, + residual, LayerNormalization), post-norm as BERT."""
    nodes, inits, cur = [], [], "x"
    for i in range(2):
        w = (rng.standard_normal((H, H)) * w_scale / np.sqrt(H)).astype(np.float32)
        b = (rng.standard_normal(H) * 0.1).astype(np.float32)
        g, beta = 1 + 0.2 * rng.standard_normal(H), 0.1 * rng.standard_normal(H)
        if ln_params:  # the same draws either way: the weights stay those of the same seed
            g, beta = ln_params[i]
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}"),
                  numpy_helper.from_array(np.asarray(g, np.float32), f"g{i}"),
                  numpy_helper.from_array(np.asarray(beta, np.float32), f"beta{i}")]
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"bias{i}"),
                  helper.make_node("Add", [f"a{i}", cur], [f"r{i}"], name=f"res{i}"),
                  helper.make_node("LayerNormalization", [f"r{i}", f"g{i}", f"beta{i}"],
                                   [f"ln{i}"], name=f"ln{i}", axis=-1, epsilon=1e-5)]
        cur = f"ln{i}"
    graph = helper.make_graph(nodes, "blocks",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", S, H])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["n", S, H])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ln_params(model: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray]]:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    return [(init[n.input[1]], init[n.input[2]]) for n in norms]


def _calib(rng: np.random.Generator, n: int = 40) -> CalibrationSet:
    return CalibrationSet({"x": rng.standard_normal((n, S, H)).astype(np.float32)}, "test")


def _run(current: onnx.ModelProto, original: onnx.ModelProto, calib: CalibrationSet,
         holdout: float = 0.25) -> tuple[onnx.ModelProto, dict]:
    ctx = PassContext(calibration=calib, original=original)
    result = RefitNorms(RefitNormsOptions(holdout=holdout)).run(Model.from_proto(current), ctx)
    return result.model.to_proto(), result.details


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_scale_and_shift_moved_away_are_recovered_exactly() -> None:
    rng = np.random.default_rng(0)
    original = _blocks(rng)
    moved = [(g * 1.7 - 0.3, beta + 0.5) for g, beta in _ln_params(original)]
    current = _blocks(np.random.default_rng(0), ln_params=moved)
    x = rng.standard_normal((5, S, H)).astype(np.float32)
    assert np.abs(_outputs(current, x) - _outputs(original, x)).max() > 0.1
    out, details = _run(current, original, _calib(rng))
    assert [r["refit"] for r in details["norms"]] == [True, True], details
    for (g, b), (g0, b0) in zip(_ln_params(out), _ln_params(original), strict=True):
        np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, b0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_outputs(out, x), _outputs(original, x), rtol=1e-4, atol=1e-4)


def test_refit_lowers_the_measured_heldout_error() -> None:
    """The weights differ (a pruned model's situation): the last LN's reported held-out
    error after its refit is what onnxruntime measures on the held-out samples' output,
    and it is below the unrefit model's."""
    rng = np.random.default_rng(1)
    original = _blocks(rng)
    current = _blocks(np.random.default_rng(1), ln_params=_ln_params(original), w_scale=0.6)
    calib = _calib(rng, 40)
    out, details = _run(current, original, calib)
    held = calib.arrays["x"][3::4]  # holdout 0.25: every 4th sample
    want = _outputs(original, held)

    def rel(model: onnx.ModelProto) -> float:
        got = _outputs(model, held)
        return float(np.sqrt(((got - want) ** 2).sum() / (want**2).sum()))

    last = details["norms"][-1]
    assert last["refit"], details
    assert rel(out) == pytest.approx(last["rel_error_after"], rel=1e-3), (rel(out), details)
    assert rel(out) < rel(current), (rel(out), rel(current))


def test_an_unchanged_model_keeps_its_norms() -> None:
    rng = np.random.default_rng(2)
    original = _blocks(rng)
    out, details = _run(original, original, _calib(rng))
    for (g, b), (g0, b0) in zip(_ln_params(out), _ln_params(original), strict=True):
        np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b0, rtol=1e-5, atol=1e-6)


def test_needs_calibration_in_a_pipeline() -> None:
    model = _blocks(np.random.default_rng(3))
    with pytest.raises(PassError, match="refit-norms needs calibration data"):
        compress(model, "refit-norms", check=False)
