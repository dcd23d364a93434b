"""Shared test helper: prune a model and check it against the masked-model oracle.

The oracle model (original with removed channels' input weights zeroed in every
consumer that sums over them) is built by `masked_reference` on the *original*
proto, independently of the slicing code; both run in onnxruntime on the same
random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import compress_ir.passes  # noqa: F401
from compress_ir.core import numeric
from compress_ir.core.passes import PassContext, PassResult
from compress_ir.core.pipeline import build_passes
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx

TOLERANCE = 1e-4


@dataclass
class OracleOutcome:
    result: PassResult
    original: onnx.ModelProto
    pruned: onnx.ModelProto
    rel_error: float


def prune_and_check(
    proto: onnx.ModelProto, pipeline: str = "channel-prune{ratio=0.5}", seed: int = 0,
    expect_modified: bool = True,
) -> OracleOutcome:
    """Run one channel-prune pass; assert validity, output shapes and oracle equality."""
    model = load_onnx(proto)
    original = model.to_proto()
    (p,) = build_passes(pipeline)
    result = p.run(model, PassContext(seed=seed))
    assert result.modified == expect_modified, result.details
    if not result.modified:
        return OracleOutcome(result, original, original, 0.0)
    verify_model(result.model, output_shapes(original))
    pruned = result.model.to_proto()
    err = numeric.compare(pruned, result.reference, seed=seed)
    assert err <= TOLERANCE, f"pruned vs masked oracle: rel. error {err:.3g}"
    return OracleOutcome(result, original, pruned, err)


def param_count(proto: onnx.ModelProto) -> int:
    return int(sum(np.prod(i.dims) for i in proto.graph.initializer))


def tiny_net(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> conv1(8) -> relu1 -> conv2(4) -> y."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv1.w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv1.b"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "conv2.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h"], name="conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", "conv2.w"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
