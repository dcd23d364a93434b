"""Shared test helpers for the TVM build path: one-input ONNX graphs, their Relax import,
and a default build compared with onnxruntime.

Why: the schedule and Relax-rewrite tests (`test_schedule`, `test_pad_channels`,
`test_broadcast_rank`, `test_fast_sigmoid`) each built, imported and checked their small
models the same way with their own copy of this plumbing.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from compress_ir.backend.schedule import compile_relax
from compress_ir.backend.schedule.pipeline import BuildStats


def one_input_model(nodes: list, inits: list, in_shape: list[int], out_shape: list[int] | None,
                    name: str = "g", opset: int = 13, ir_version: int = 8) -> onnx.ModelProto:
    """A checked model with float input `x` and output `y` (`out_shape` None: unspecified)."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def import_model(model: onnx.ModelProto) -> tvm.IRModule:
    """Relax import at the static shape of the model's input `x`."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return from_onnx(model, shape_dict={"x": shape}, keep_params_in_input=False)


def build_vs_onnxruntime(model: onnx.ModelProto, x: np.ndarray, target: tvm.target.Target
                         ) -> tuple[np.ndarray, float, BuildStats]:
    """Default build of `model` run on `x`: (output, max relative error vs onnxruntime, stats)."""
    executable, stats = compile_relax(import_model(model), target)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape, (got.shape, want.shape)
    rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    return got, rel, stats
