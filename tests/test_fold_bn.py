"""fold-bn: BatchNormalization disappears and the outputs do not change."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import compress_ir.passes  # noqa: F401
from compress_ir.core import numeric
from compress_ir.core.passes import PassContext
from compress_ir.core.pipeline import build_passes
from compress_ir.core.verify import verify_model
from compress_ir.frontends.onnx import load_onnx
from compress_ir.frontends.placeholders import fill_placeholders

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


def _run(proto: onnx.ModelProto):
    model = load_onnx(proto)
    original = model.to_proto()
    result = build_passes("fold-bn")[0].run(model, PassContext())
    return original, result


def test_fold_bn_resnet50_exact() -> None:
    original, result = _run(fill_placeholders(onnx.load(LIGHT / "light_resnet50.onnx")))
    assert result.stats["folded"] == 53
    verify_model(result.model)
    folded = result.model.to_proto()
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    assert numeric.compare(folded, original) <= 1e-5


def _conv_bn(shared: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "m"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "v"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 5, 5])]
    if shared:  # the conv output is also a graph output: folding would change it
        outputs.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 4, 5, 5]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 5, 5])],
        outputs, inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_bn_small_exact() -> None:
    original, result = _run(_conv_bn(shared=False))
    assert result.modified and result.stats["folded"] == 1
    assert numeric.compare(result.model.to_proto(), original) <= 1e-5


def test_fold_bn_skips_shared_conv_output() -> None:
    _, result = _run(_conv_bn(shared=True))
    assert not result.modified and result.stats["folded"] == 0
