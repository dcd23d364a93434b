"""`weight_layers`: one rule for which nodes are weight layers, what they compute (Gemm
alpha/beta included) checked against onnxruntime, write-back, and the row sampler."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.core.model import Model
from compress_ir.passes.weight_layers import (
    RowSampler,
    initializer_layers,
    linear,
    weight_layers,
    write_linear,
)


def _with_weights(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in arrays.items())
    onnx.checker.check_model(proto)
    return proto


def mixed_net(seed: int = 0) -> onnx.ModelProto:
    """Conv, Gemm (alpha, beta, transB), a 2-D MatMul, and two MatMuls that are not
    weight layers: a batched 3-D constant B and an integer B."""
    rng = np.random.default_rng(seed)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2, 3, 6, 6] x, float[2, 4, 5] s, int64[3, 4] i) => (float[2, 7] y,
         float[2, 4, 3] z, int64[3, 2] k) {
        c = Conv <pads = [1, 1, 1, 1]> (x, conv_w, conv_b)
        r = Relu (c)
        f = Flatten (r)
        g = Gemm <alpha = 0.5, beta = 2.0, transB = 1> (f, fc_w, fc_b)
        y = MatMul (g, mm_w)
        z = MatMul (s, batched_w)
        k = MatMul (i, int_w)
    }
    """
    f32 = np.float32
    proto = _with_weights(
        text,
        conv_w=rng.standard_normal((4, 3, 3, 3)).astype(f32),
        conv_b=rng.standard_normal(4).astype(f32),
        fc_w=rng.standard_normal((9, 144)).astype(f32),
        fc_b=rng.standard_normal(9).astype(f32),
        mm_w=rng.standard_normal((9, 7)).astype(f32),
        batched_w=rng.standard_normal((2, 5, 3)).astype(f32),
        int_w=rng.integers(-3, 3, (4, 2)).astype(np.int64),
    )
    for node in proto.graph.node:
        node.name = f"node_{node.output[0]}"
    return proto


WEIGHT_NODES = ["node_c", "node_g", "node_y"]


def test_every_caller_sees_the_same_weight_layers() -> None:
    proto = mixed_net()
    assert [la.name for la in weight_layers(Model.from_proto(proto))] == WEIGHT_NODES
    assert [la.node.name for la in initializer_layers(proto)] == WEIGHT_NODES
    # ... and so do the passes and the size report that use the module
    sp = compress(proto, "sparsify{skip-first=false,skip-last=false,sparsity=0.5}", sizes=True)
    details = sp.report["passes"][0]["details"]
    seen = sorted([r["node"] for r in details["layers"]] + [r["node"] for r in details["skipped"]])
    assert seen == WEIGHT_NODES
    assert [r["node"] for r in sp.report["sizes"]["layers"]] == WEIGHT_NODES
    sw = compress(proto, "share-weights{bits=2}")
    assert sorted(n for r in sw.report["passes"][0]["details"]["layers"] for n in r["nodes"]) \
        == WEIGHT_NODES


def test_linear_is_what_the_node_computes() -> None:
    """x W^T + b from `linear` (Gemm alpha/beta and transB folded) == onnxruntime."""
    proto = mixed_net(1)
    model = Model.from_proto(proto)
    gemm = next(n for n in model.graph.nodes if n.op == "Gemm")
    w, b = linear(gemm, np.asarray(gemm.inputs[1].values), np.asarray(gemm.inputs[2].values))
    assert w.shape == (9, 144) and b.shape == (9,)
    rng = np.random.default_rng(2)
    f = rng.standard_normal((2, 144)).astype(np.float32)
    sub = _with_weights(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 144] f) => (float[2, 9] g) {
            g = Gemm <alpha = 0.5, beta = 2.0, transB = 1> (f, fc_w, fc_b)
        }""",
        fc_w=np.asarray(gemm.inputs[1].values), fc_b=np.asarray(gemm.inputs[2].values))
    want = numeric.run(sub, {"f": f})["g"]
    np.testing.assert_allclose(f @ w.T + b, want, rtol=1e-5, atol=1e-5)


def test_write_linear_inverts_linear_through_onnxruntime() -> None:
    """A (W, b) written into Gemm (alpha 0.5, beta 2) and MatMul is computed exactly."""
    proto = mixed_net(3)
    model = Model.from_proto(proto)
    rng = np.random.default_rng(4)
    nodes = {n.name: n for n in model.graph.nodes}
    new = {}
    for key in ("node_g", "node_y"):
        node = nodes[key]
        w0, _ = linear(node, np.asarray(node.inputs[1].values), None)
        w, b = rng.standard_normal(w0.shape), rng.standard_normal(w0.shape[0])
        write_linear(model, node, w, b)
        new[key] = (w, b)
    out = model.to_proto()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    feeds = {"x": x, "s": np.zeros((2, 4, 5), np.float32), "i": np.zeros((3, 4), np.int64)}
    got = numeric.run(out, feeds)
    captured = numeric.run(_expose(out, "f"), feeds)["f"]
    (wg, bg), (wm, bm) = new["node_g"], new["node_y"]
    want = (captured @ wg.T + bg) @ wm.T + bm
    np.testing.assert_allclose(got["y"], want, rtol=1e-4, atol=1e-4)


def _expose(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                               None))
    return out


def test_row_sampler_rows_reproduce_gemm_with_trans_a() -> None:
    """Gemm transA: rows of A^T at sampled positions times W^T give those output rows."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    proto = _with_weights(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[6, 5] a) => (float[5, 4] y) {
            y = Gemm <transA = 1> (a, w)
        }""", w=w)
    a = rng.standard_normal((6, 5)).astype(np.float32)
    y = numeric.run(proto, {"a": a})["y"]
    sampler = RowSampler(proto.graph.node[0], w.shape)
    assert sampler.available(a) == 5
    rows, pos = sampler.rows(a, 3, np.random.default_rng(0))
    matrix, _ = linear(proto.graph.node[0], w, None)
    np.testing.assert_allclose(rows @ matrix.T, y[pos], rtol=1e-5, atol=1e-5)
