"""`distill`: gradient steps on the kept weights toward the original model's output.

Oracles: the compiled gradient equals onnxruntime finite differences of the same loss;
on a magnitude-pruned two-block model the pass lowers the output error on *fresh* inputs
(never seen in calibration) measured by onnxruntime, keeps every pruned zero, and leaves a
model that already equals the original unchanged.
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
from compress_ir.core.model import Model
from compress_ir.core.passes import PassContext

pytest.importorskip("tvm")

from compress_ir.passes.analysis.output_gradients import OutputGradients  # noqa: E402
from compress_ir.passes.transform.distill import Distill, DistillOptions, trainable  # noqa: E402

H, F, S = 8, 16, 4


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """x [n, S, H] -> MatMul -> +b -> Erf-GELU -> MatMul -> + x -> LayerNorm (BERT's FFN)."""
    w1 = (rng.standard_normal((H, F)) / np.sqrt(H)).astype(np.float32)
    w2 = (rng.standard_normal((F, H)) / np.sqrt(F)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array((0.1 * rng.standard_normal(F)).astype(np.float32), "b1"),
             numpy_helper.from_array(np.full(H, 1.2, np.float32), "g"),
             numpy_helper.from_array(np.full(H, 0.1, np.float32), "beta"),
             numpy_helper.from_array(np.float32(1 / np.sqrt(2)), "r2"),
             numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.float32(0.5), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="up"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="up_bias"),
             helper.make_node("Mul", ["a1", "r2"], ["s"], name="gelu_scale"),
             helper.make_node("Erf", ["s"], ["e"], name="gelu_erf"),
             helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
             helper.make_node("Mul", ["a1", "e1"], ["p"], name="gelu_mul"),
             helper.make_node("Mul", ["p", "half"], ["h"], name="gelu_half"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="down"),
             helper.make_node("Add", ["m2", "x"], ["r"], name="residual"),
             helper.make_node("LayerNormalization", ["r", "g", "beta"], ["y"], name="ln",
                              axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", S, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", S, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return out


def test_gradient_matches_onnxruntime_finite_differences() -> None:
    rng = np.random.default_rng(0)
    model = _model(rng)
    x = rng.standard_normal((4, S, H)).astype(np.float32)
    y = rng.standard_normal((4, S, H)).astype(np.float32)
    k = (rng.random((4, S, 1)) > 0.3).astype(np.float32)
    names = trainable(model, "all")
    assert names == ["w1", "w2", "b1", "g", "beta"]  # never the scalar constants
    runner = OutputGradients(model, names, {"x": x.shape}, {"y": y.shape}, {"y": k.shape})
    values = [_weights(model)[n] for n in names]
    loss, grads = runner({"x": x}, values, [y], [k])

    def ort_loss(m: onnx.ModelProto) -> float:
        return float((k * (_run(m, x).astype(np.float64) - y) ** 2).sum())

    assert loss == pytest.approx(ort_loss(model), rel=1e-4)
    eps = 1e-2
    for name, grad in zip(names, grads, strict=True):
        w = _weights(model)[name].astype(np.float64)
        for flat in rng.choice(w.size, size=3, replace=False):
            idx = np.unravel_index(flat, w.shape)
            up, down = w.copy(), w.copy()
            up[idx] += eps
            down[idx] -= eps
            fd = (ort_loss(_set(model, name, up)) - ort_loss(_set(model, name, down))) / (2 * eps)
            assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=2e-3), (name, idx)


def _pruned(original: onnx.ModelProto) -> onnx.ModelProto:
    """Half of every weight's entries zeroed by magnitude: what `sparsify` writes."""
    return compress(original, "sparsify{sparsity=0.5,criterion=magnitude,skip-first=false,"
                              "skip-last=false}").model


def _calib(rng: np.random.Generator, n: int) -> CalibrationSet:
    return CalibrationSet({"x": rng.standard_normal((n, S, H)).astype(np.float32)}, "test")


def test_distill_lowers_the_error_on_fresh_inputs_and_keeps_the_zeros() -> None:
    rng = np.random.default_rng(1)
    original = _model(rng)
    pruned = _pruned(original)
    zeros = {n: w == 0 for n, w in _weights(pruned).items() if n in ("w1", "w2")}
    assert all(z.mean() == pytest.approx(0.5, abs=0.02) for z in zeros.values())
    ctx = PassContext(original=original, calibration=_calib(rng, 64), seed=0)
    p = Distill(DistillOptions(epochs=30, lr=3e-3, batch=8, params="all"))
    result = p.run(Model.from_proto(pruned), ctx)
    assert result.modified
    out = result.model.to_proto()
    onnx.checker.check_model(out)
    stats = result.stats
    assert stats["heldout_rel_error_after"] < 0.8 * stats["heldout_rel_error_before"]
    for name, zero in zeros.items():
        after = _weights(out)[name]
        assert (after[zero] == 0).all()  # the pattern survives
        assert (after[~zero] != _weights(pruned)[name][~zero]).any()  # and weights moved
    fresh = rng.standard_normal((256, S, H)).astype(np.float32)
    ref = _run(original, fresh)

    def err(m: onnx.ModelProto) -> float:
        return float(np.linalg.norm(_run(m, fresh) - ref) / np.linalg.norm(ref))

    assert err(out) < 0.8 * err(pruned)
    # the reported held-out error is onnxruntime's on the held-out calibration samples
    held = ctx.calibration.arrays["x"][3::4]
    ref_held = _run(original, held)
    measured = np.linalg.norm(_run(out, held) - ref_held) / np.linalg.norm(ref_held)
    assert stats["heldout_rel_error_after"] == pytest.approx(measured, rel=1e-3)


def test_distill_leaves_a_model_equal_to_the_original_unchanged() -> None:
    rng = np.random.default_rng(2)
    original = _model(rng)
    ctx = PassContext(original=original, calibration=_calib(rng, 16), seed=0)
    result = Distill(DistillOptions(epochs=2, lr=1e-2)).run(Model.from_proto(original), ctx)
    assert not result.modified and result.details["kept"]
    after = _weights(result.model.to_proto())
    for name, w in _weights(original).items():
        np.testing.assert_array_equal(after[name], w)


def test_distill_needs_the_original_and_calibration() -> None:
    from compress_ir.core.errors import UsageError

    model = _model(np.random.default_rng(3))
    with pytest.raises(UsageError, match="calibration"):
        Distill().run(Model.from_proto(model), PassContext(original=model))
    with pytest.raises(ValueError, match="params"):
        DistillOptions(params="everything")
