"""The weight-placeholder convention of the committed fixtures (frontends/placeholders.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress_ir.frontends.placeholders import fill_placeholders, restore_weights, strip_weights


def _model() -> onnx.ModelProto:
    """y = (x @ W) masked by a fill value that an export wrote as ConstantOfShape."""
    w = numpy_helper.from_array(np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 1e3, "W")
    empty = numpy_helper.from_array(np.zeros(0, np.int64), "empty")  # shape [] -> a scalar
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("ConstantOfShape", ["empty"], ["fill"],
                         value=numpy_helper.from_array(np.array([-1e4], np.float32))),
        helper.make_node("Less", ["h", "zero"], ["neg"]),
        helper.make_node("Where", ["neg", "fill", "h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        [w, empty, numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fill_value(proto: onnx.ModelProto) -> float | None:
    node = next((n for n in proto.graph.node if n.output[0] == "fill"), None)
    return None if node is None else float(numpy_helper.to_array(node.attribute[0].t)[0])


def test_only_marked_placeholders_are_filled() -> None:
    """An export's own ConstantOfShape over a constant shape is model, not weight: GPT-2's
    TorchScript mask fill value was replaced by a small random number before."""
    stripped, weights = strip_weights(_model())
    assert set(weights) == {"W"}
    filled = fill_placeholders(stripped, seed=0)
    onnx.checker.check_model(filled, full_check=True)
    assert "W" in {i.name for i in filled.graph.initializer}
    assert _fill_value(filled) == -1e4  # kept as exported
    restored = restore_weights(stripped, weights)
    assert _fill_value(restored) == -1e4
