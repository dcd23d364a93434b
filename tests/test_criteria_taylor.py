"""The `taylor` criterion: TVM Relax gradients through probe inputs.

The gradient is checked against central finite differences computed with
onnxruntime on the probed model (independently of TVM); a channel whose downstream
weights are zero has a zero gradient, hence a zero score, and goes first; the
pruned model matches its masked reference.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

import compress_ir.passes  # noqa: E402, F401
from compress_ir.core import numeric  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402
from compress_ir.core.model import Model, infer_proto_shapes  # noqa: E402
from compress_ir.core.passes import PassContext  # noqa: E402
from compress_ir.core.pipeline import build_passes  # noqa: E402
from compress_ir.frontends.onnx import load_onnx  # noqa: E402
from compress_ir.passes.analysis.calibration_stats import CalibrationStats  # noqa: E402
from compress_ir.passes.analysis.channel_groups import analyse_channels  # noqa: E402
from compress_ir.passes.analysis.importance.base import ScoreContext  # noqa: E402
from compress_ir.passes.analysis.importance.taylor import (  # noqa: E402
    PROBE,
    GradientRunner,
    Taylor,
    probe_model,
)

DEAD = 2  # conv1 channel whose conv2 weights are all zero


def tiny_net(dead: int | None = DEAD) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv1(6) -> relu -> conv2(4) -> GAP -> flatten -> gemm(5)."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((6, 3, 3, 3)) * 0.4
    b1 = rng.standard_normal(6) * 0.1
    w2 = rng.standard_normal((4, 6, 3, 3)) * 0.3
    if dead is not None:
        w2[:, dead] = 0.0
    w3 = rng.standard_normal((5, 4))
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             [(w1, "conv1.w"), (b1, "conv1.b"), (w2, "conv2.w"), (w3, "fc.w")]]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", "conv2.w"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def calib(count: int = 20) -> CalibrationSet:
    x = np.random.default_rng(3).standard_normal((count, 3, 8, 8)).astype(np.float32)
    return CalibrationSet({"x": x}, "test")


def _sum_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].sum())


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_gradient_matches_finite_differences():
    proto = tiny_net(dead=None)
    tensors = ["f", "r"]
    x = calib(4).arrays["x"]
    labels = numeric.session(proto).run(["y"], {"x": x})[0].argmax(1)
    probed = probe_model(proto, tensors)
    sess = numeric.session(probed)
    shapes = {"x": x.shape, "r": (4, 6, 8, 8), "f": (4, 4)}
    zeros = {PROBE.format(i): np.zeros(shapes[t], np.float32) for i, t in enumerate(tensors)}

    def loss(probes: dict[str, np.ndarray]) -> float:
        return _sum_ce(sess.run(["y"], {"x": x, **probes})[0], labels)

    runner = GradientRunner(proto, tensors, shapes)
    tvm_loss, grads = runner.gradients({"x": x}, labels)
    assert tvm_loss == pytest.approx(loss(zeros), rel=1e-4)
    rng = np.random.default_rng(0)
    eps = 1e-2
    for i, tensor in enumerate(tensors):
        grad = grads[i]
        assert grad.shape == shapes[tensor]
        scale = np.abs(grad).max()
        assert scale > 0
        for _ in range(4):
            idx = tuple(int(rng.integers(0, d)) for d in shapes[tensor])
            plus, minus = dict(zeros), dict(zeros)
            plus[PROBE.format(i)] = zeros[PROBE.format(i)].copy()
            minus[PROBE.format(i)] = zeros[PROBE.format(i)].copy()
            plus[PROBE.format(i)][idx] = eps
            minus[PROBE.format(i)][idx] = -eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            assert grad[idx] == pytest.approx(fd, abs=2e-3 * max(scale, 1.0)), (tensor, idx)


def test_channel_with_zero_downstream_weights_scores_zero_and_goes_first():
    proto = infer_proto_shapes(tiny_net())
    work = Model.from_proto(proto, "test")
    analysis = analyse_channels(work)
    ctx = ScoreContext(work, analysis, calibration=CalibrationStats(proto, analysis, calib()))
    group = next(g for g in analysis.groups if any(r.node == "conv1" for r in g.roots))
    scores = Taylor().score(group, ctx)
    assert scores.shape == (6,)
    assert scores[DEAD] == 0.0
    assert (np.delete(scores, DEAD) > 0).all()

    (p,) = build_passes("channel-prune{ratio=0.2,criterion=taylor}")
    result = p.run(load_onnx(tiny_net()), PassContext(calibration=calib()))
    pruned = result.model.to_proto()
    w1 = {i.name: numpy_helper.to_array(i) for i in tiny_net().graph.initializer}["conv1.w"]
    kept = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}["conv1.w"]
    assert kept.shape[0] == 5
    survivors = [c for c in range(6) if any(np.array_equal(w1[c], k) for k in kept)]
    assert DEAD not in survivors and len(survivors) == 5
    assert numeric.compare(pruned, result.reference) <= 1e-4
