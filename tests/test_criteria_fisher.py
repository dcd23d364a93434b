"""The `fisher` criterion: label-free Fisher information of unit masks (Kwon et al. 2022).

Oracles, independent of TVM: the projection-loss gradient through a real BERT export
(erf GELU, LayerNorm, attention mask) against central finite differences in onnxruntime;
the score of every FFN neuron of a small token MLP against mean_n (dL_n/dm_i)^2 with
dL_n/dm_i from finite differences of scaling the neuron's outgoing weights in
onnxruntime, v drawn as the criterion documents (seed 0, one draw per batch); a neuron
with zero outgoing weights scores zero and goes first, the pruned model matches its
masked reference.
"""

from __future__ import annotations

import warnings
from pathlib import Path

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
from compress_ir.frontends.placeholders import fill_placeholders  # noqa: E402
from compress_ir.passes.analysis.calibration_stats import CalibrationStats  # noqa: E402
from compress_ir.passes.analysis.channel_groups import analyse_channels  # noqa: E402
from compress_ir.passes.analysis.importance.base import ScoreContext  # noqa: E402
from compress_ir.passes.analysis.importance.fisher import Fisher  # noqa: E402
from compress_ir.passes.analysis.importance.taylor import (  # noqa: E402
    PROBE,
    GradientRunner,
    probe_model,
)

BERT = Path(__file__).parent / "fixtures" / "real" / "bert_ts.onnx"
DEAD = 3  # hidden neuron whose outgoing weights are zero
N, S, D, H = 6, 5, 4, 8


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def token_mlp(dead: int | None = DEAD) -> onnx.ModelProto:
    """x[N,S,4] -> MatMul(8) -> Erf GELU -> MatMul(4) -> + x -> LayerNorm -> y[N,S,4]."""
    rng = np.random.default_rng(11)
    w1, b1 = rng.standard_normal((D, H)), rng.standard_normal(H) * 0.3
    w2 = rng.standard_normal((H, D)) * 0.5
    if dead is not None:
        w2[dead] = 0.0
    arrays = {"w1": w1, "b1": b1, "w2": w2, "g": 1 + 0.1 * rng.standard_normal(D),
              "b": 0.1 * rng.standard_normal(D), "sqrt2": np.array(np.sqrt(2.0)),
              "one": np.array(1.0), "half": np.array(0.5)}
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="up"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="up_bias"),
        helper.make_node("Div", ["h", "sqrt2"], ["hs"], name="gelu_div"),
        helper.make_node("Erf", ["hs"], ["he"], name="gelu_erf"),
        helper.make_node("Add", ["he", "one"], ["h1"], name="gelu_add"),
        helper.make_node("Mul", ["h", "h1"], ["h2"], name="gelu_mul"),
        helper.make_node("Mul", ["h2", "half"], ["a"], name="gelu_half"),
        helper.make_node("MatMul", ["a", "w2"], ["d"], name="down"),
        helper.make_node("Add", ["x", "d"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "g", "b"], ["y"], name="ln", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", S, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", S, D])], inits)
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def calib() -> CalibrationSet:
    x = np.random.default_rng(5).standard_normal((N, S, D)).astype(np.float32)
    return CalibrationSet({"x": x}, "test")


def test_projection_gradient_through_bert_matches_finite_differences() -> None:
    proto = fill_placeholders(onnx.load(str(BERT)), seed=0)
    weights = {t.name: t for t in proto.graph.initializer}
    down = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights
            and weights[n.input[1]].dims[0] > weights[n.input[1]].dims[1]]
    tensor, width = down[0].input[0], weights[down[0].input[1]].dims[0]  # an FFN activation
    b, s = 2, 7
    rng = np.random.default_rng(0)
    mask = np.ones((b, s), np.int64)
    mask[1, -2:] = 0
    feeds = {"input_ids": rng.integers(0, 90, (b, s)).astype(np.int64),
             "attention_mask": mask, "token_type_ids": np.zeros((b, s), np.int64)}
    shapes = {**{k: v.shape for k, v in feeds.items()}, tensor: (b, s, width)}
    runner = GradientRunner(proto, [tensor], shapes, loss="projection")
    out_shape = runner.extra_shape
    v = rng.standard_normal(out_shape).astype(np.float32)
    loss, (grad,) = runner.gradients(feeds, v)
    sess = numeric.session(probe_model(proto, [tensor]))

    def projected(probe: np.ndarray) -> float:
        out = sess.run(None, {**feeds, PROBE.format(0): probe.astype(np.float32)})[0]
        return float((out.astype(np.float64) * v).sum())

    assert loss == pytest.approx(projected(np.zeros(shapes[tensor])), rel=1e-4)
    for _ in range(3):
        d = rng.standard_normal(shapes[tensor])
        eps = 1e-3
        fd = (projected(eps * d) - projected(-eps * d)) / (2 * eps)
        assert float((grad * d).sum()) == pytest.approx(fd, rel=0.02, abs=1e-2)


def test_scores_equal_mean_squared_mask_derivative() -> None:
    proto = infer_proto_shapes(token_mlp())
    work = Model.from_proto(proto, "test")
    analysis = analyse_channels(work)
    ctx = ScoreContext(work, analysis, calibration=CalibrationStats(proto, analysis, calib()))
    group = next(g for g in analysis.groups if any(r.node == "up" for r in g.roots))
    scores = Fisher().score(group, ctx)
    assert scores.shape == (H,)

    # the oracle: v as documented (seed 0, one batch, `draws` projections in order),
    # dL_n/dm_i by scaling row i of w2
    x = calib().arrays["x"]
    rng = np.random.default_rng(0)
    vs = [rng.standard_normal((N, S, D)).astype(np.float32) for _ in range(Fisher.draws)]
    w2 = next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == "w2")

    def per_sample(scale_row: int, eps: float) -> np.ndarray:
        model = token_mlp()
        w = w2.copy()
        w[scale_row] *= 1 + eps
        for t in model.graph.initializer:
            if t.name == "w2":
                t.CopyFrom(numpy_helper.from_array(w, "w2"))
        y = numeric.session(model).run(["y"], {"x": x})[0].astype(np.float64)
        return np.concatenate([(y * v).reshape(N, -1).sum(1) for v in vs])

    eps = 1e-3
    want = np.array([(((per_sample(i, eps) - per_sample(i, -eps)) / (2 * eps)) ** 2).mean()
                     for i in range(H)])
    np.testing.assert_allclose(scores, want, rtol=2e-2, atol=1e-6)
    assert scores[DEAD] == 0.0
    assert (np.delete(scores, DEAD) > 0).all()


def test_prune_removes_the_dead_neuron_and_matches_reference() -> None:
    (p,) = build_passes("channel-prune{ratio=0.125,criterion=fisher}")
    result = p.run(load_onnx(token_mlp()), PassContext(calibration=calib()))
    pruned = result.model.to_proto()
    w1 = {i.name: numpy_helper.to_array(i) for i in token_mlp().graph.initializer}["w1"]
    kept = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}["w1"]
    assert kept.shape == (D, H - 1)
    survivors = [c for c in range(H) if any(np.array_equal(w1[:, c], k) for k in kept.T)]
    assert DEAD not in survivors and len(survivors) == H - 1
    assert numeric.compare(pruned, result.reference) <= 1e-4
