"""Models with a symbolic batch dim (as exported for batched inference) still prune."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import prune_and_check


def _net(head: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = rng.standard_normal(shape) / np.sqrt(fan_in)
        return numpy_helper.from_array(values.astype(np.float32), name)

    inits = [init("w1", (8, 1, 3, 3)), init("w2", (6, 8, 3, 3)), init("fc", (10, 6 * 4 * 4))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    if head == "flatten":
        nodes.append(helper.make_node("Flatten", ["c2"], ["f"], name="flatten", axis=1))
    else:
        inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["c2", "shape"], ["f"], name="reshape"))
    nodes.append(helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("head", ["flatten", "reshape"])
def test_symbolic_batch_flatten_into_gemm(head: str) -> None:
    out = prune_and_check(_net(head))
    fc = {i.name: i for i in out.pruned.graph.initializer}
    gemm = next(n for n in out.pruned.graph.node if n.op_type == "Gemm")
    assert list(fc[gemm.input[1]].dims) == [10, 3 * 16]  # half of conv2's 6 channels x 4x4
    assert out.result.stats["groups_pruned"] == 2
