"""Conv output channels padded with zero filters to a width the micro-kernel tiles well.

RegNetX's 400 channels (25 vectors of 16), ShuffleNet v1's 68-channel groups and
SqueezeNet's 1000-class conv ran far behind onnxruntime with the tiles that divide them;
the CPU build computes a few zero filters more and cuts the output back. The model must
compute exactly what it did: every case is compared with onnxruntime, and the rewrite is
checked to have happened (or, for widths that tile well and depthwise convs, not).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm_helpers import build_vs_onnxruntime, import_model, one_input_model  # noqa: E402

from compress_ir.backend.schedule.cpu import CpuParams, cpu_params  # noqa: E402
from compress_ir.backend.schedule.pad_channels import (  # noqa: E402
    pad_output_channels,
    padded_width,
)
from compress_ir.backend.schedule.pipeline import layout_passes, prepare  # noqa: E402
from compress_ir.targets.registry import spec_of_tvm_target  # noqa: E402

X86 = tvm.target.Target({"kind": "llvm"})
SIZE = 9


def _block(cin: int, cout: int, groups: int, seed: int = 0) -> onnx.ModelProto:
    """conv(k x k, groups, bias) -> relu -> + a second conv's output (residual) -> 1x1."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], kernel_shape=[3, 3],
                              pads=[1] * 4, group=groups),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["x", "W2"], ["s"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["r", "s"], ["a"]),
             helper.make_node("Conv", ["a", "W3"], ["y"], kernel_shape=[1, 1])]
    inits = [w("W1", (cout, cin // groups, 3, 3)), w("B1", (cout,)), w("W2", (cout, cin, 1, 1)),
             w("W3", (8, cout, 1, 1))]
    return one_input_model(nodes, inits, [1, cin, SIZE, SIZE], [1, 8, SIZE, SIZE], "block")


def _conv_widths(mod: tvm.IRModule) -> list[int]:
    """Output channels (the kernel's O axis) of every conv2d, after the layout passes."""
    widths = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            layout = str(expr.attrs.kernel_layout)
            widths.append(int(expr.args[1].ty.shape[layout.index("O")]))

    relax.analysis.post_order_visit(mod["main"], visit)
    return sorted(widths)


def _padded(model: onnx.ModelProto, cpu: CpuParams) -> tuple[int, list[int]]:
    with X86:
        mod = tvm.transform.Sequential(layout_passes())(import_model(model))
    out, count = pad_output_channels(mod, cpu)
    return count, _conv_widths(out)


def _matches_onnxruntime(model: onnx.ModelProto) -> None:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    _, rel, _ = build_vs_onnxruntime(model, x, X86)
    assert rel < 1e-5


@pytest.mark.parametrize("cin,cout,groups", [(8, 20, 1), (8, 40, 2), (12, 3 * 68, 3)])
def test_padded_conv_matches_onnxruntime(cin: int, cout: int, groups: int) -> None:
    """On the build's own lanes (8 for a bare llvm target) 20 channels per group are padded
    to 24, dense and grouped (2 x 20), and ShuffleNet's 68 to 72 (3 groups); the build
    still equals onnxruntime."""
    model = _block(cin, cout, groups)
    cpu = cpu_params(spec_of_tvm_target(X86))
    width = cout // groups
    assert padded_width(width, cpu) > width
    count, widths = _padded(model, cpu)
    dense_too = groups > 1 and padded_width(cout, cpu) > cout  # the residual 1x1 conv
    assert count == 1 + (groups == 1 or dense_too)
    assert groups * padded_width(width, cpu) in widths
    built = prepare(import_model(model), X86)  # the CPU build pipeline pads them too
    shapes = [[int(d) for d in p.ty.shape] for gv, f in built.functions_items()
              if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint for p in f.params
              if hasattr(p.ty, "shape")]
    assert any(sh and sh[-1] == groups * padded_width(width, cpu) for sh in shapes), shapes
    _matches_onnxruntime(model)


def test_regnet_width_is_padded_to_two_vectors_on_avx512() -> None:
    """400 channels on 16 lanes are 25 vectors: one-vector tiles; 416 tile by two."""
    count, widths = _padded(_block(8, 400, 1), CpuParams(lanes=16, registers=32))
    assert count == 2 and widths == [8, 416, 416]  # both convs into the sum; not the 8


@pytest.mark.parametrize("cin,cout,groups", [(16, 64, 1), (48, 48, 48)])
def test_widths_that_tile_well_and_depthwise_convs_are_left_alone(cin: int, cout: int,
                                                                  groups: int) -> None:
    count, widths = _padded(_block(cin, cout, groups), CpuParams(lanes=16, registers=32))
    assert count == 0 and cout in widths


def _dense(rows: int, width: int, seed: int = 0) -> onnx.ModelProto:
    """x[rows, 32] @ W1[32, width] + b -> relu -> @ W2[width, 8] (a pruned FFN)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (32, width)), ("B1", (width,)), ("W2", (width, 8)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"]),
             helper.make_node("Add", ["m", "B1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    return one_input_model(nodes, inits, [rows, 32], [rows, 8], "ffn")


def test_pruned_ffn_width_is_padded_and_exact() -> None:
    """A pruned FFN's ragged width (20 on the bare llvm target's 8 lanes; 1123 neurons on
    16) is padded for matmuls with enough rows; a batch-1 row stays a GEMV, unpadded."""
    cpu = cpu_params(spec_of_tvm_target(X86))
    assert padded_width(20, cpu) > 20
    count, _ = _padded(_dense(16, 20), cpu)
    assert count == 1
    _matches_onnxruntime(_dense(16, 20))
    count, _ = _padded(_dense(1, 20), cpu)
    assert count == 0
    _matches_onnxruntime(_dense(1, 20))
