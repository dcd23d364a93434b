"""Kernels that write into their slice of a concatenation (`schedule/concat_slices.py`).

Removing a concat is only right when every input is a fresh kernel output read by nothing
else and the kernel is a plain concatenation; each negative case would give a wrong
result (checked against onnxruntime or numpy) if the rewrite fired.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax, te  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule.concat_slices import concat_into_slices  # noqa: E402
from compress_ir.backend.schedule.pipeline import BuildStats, prepare, schedule_cpu  # noqa: E402

X86 = {"kind": "llvm"}
C, S = 16, 8


def _w(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _conv(rng, inits: list, src: str, out: str, cout: int, k: int) -> list:
    inits += [_w(rng, f"{out}_w", (cout, C, k, k)), _w(rng, f"{out}_b", (cout,))]
    return [helper.make_node("Conv", [src, f"{out}_w", f"{out}_b"], [f"{out}_c"],
                             kernel_shape=[k, k], pads=[k // 2] * 4),
            helper.make_node("Relu", [f"{out}_c"], [out])]


def _inception(tail: str) -> onnx.ModelProto:
    """stem -> [1x1 conv, 3x3 conv, 3x3 max pool -> 1x1 conv] -> concat -> `tail`:
    'conv' (a 1x1 conv), 'relu' (a ReLU fused into the concat kernel) or 'reuse' (a 1x1
    conv plus the first branch again: that branch has a second reader)."""
    rng = np.random.default_rng(0)
    inits: list = []
    nodes = _conv(rng, inits, "x", "c0", C, 3)
    nodes += _conv(rng, inits, "c0", "b1", 8, 1) + _conv(rng, inits, "c0", "b2", 16, 3)
    nodes.append(helper.make_node("MaxPool", ["c0"], ["p"], kernel_shape=[3, 3],
                                  pads=[1] * 4))
    nodes += _conv(rng, inits, "p", "b3", 8, 1)
    nodes.append(helper.make_node("Concat", ["b1", "b2", "b3"], ["cat"], axis=1))
    width = 32
    if tail == "relu":
        nodes.append(helper.make_node("Relu", ["cat"], ["y"]))
    else:
        inits += [_w(rng, "wt", (8, width, 1, 1))]
        nodes.append(helper.make_node("Conv", ["cat", "wt"], ["t" if tail == "reuse" else "y"],
                                      kernel_shape=[1, 1]))
        width = 8
        if tail == "reuse":
            nodes.append(helper.make_node("Add", ["t", "b1"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, S, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, S, S])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _concats_left(model: onnx.ModelProto) -> tuple[int, int]:
    """(concat kernels still called, kernels rewritten to write a slice)."""
    target = tvm.target.Target(X86)
    mod = from_onnx(model, shape_dict={"x": [1, C, S, S]}, keep_params_in_input=False)
    stats = BuildStats()
    scheduled = schedule_cpu(prepare(mod, target), target, stats)
    return scheduled["main"].script().count("concatenate"), len(stats.concat_slices)


def _check(model: onnx.ModelProto) -> None:
    x = np.random.default_rng(1).standard_normal((1, C, S, S)).astype(np.float32)
    mod = from_onnx(model, shape_dict={"x": [1, C, S, S]}, keep_params_in_input=False)
    vm = relax.VirtualMachine(compile_relax(mod, tvm.target.Target(X86))[0], tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_branches_write_their_slices_and_the_concat_is_gone() -> None:
    model = _inception("conv")
    assert _concats_left(model) == (0, 3)
    _check(model)


def test_a_branch_read_elsewhere_keeps_the_concat() -> None:
    model = _inception("reuse")
    assert _concats_left(model) == (1, 0)
    _check(model)


def test_a_concat_fused_with_an_activation_stays() -> None:
    model = _inception("relu")
    assert _concats_left(model)[1] == 0
    _check(model)


def _te_concat(order: str) -> tvm.IRModule:
    """a (8 wide) and b (16 wide) from x; out = a then b along the last axis ('ab': a plain
    concatenation), b then a ('ba': same inputs, another layout) or a then b, doubled
    ('ab*2': the loads of a concatenation, but a value computed from them)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 24), "float32"))

    def cat(p: te.Tensor, q: te.Tensor) -> te.Tensor:
        if order.startswith("ab"):
            scale = 2.0 if order == "ab*2" else 1.0
            return te.compute((4, 24), lambda i, j: te.if_then_else(j >= 8, q[i, j - 8],
                                                                     p[i, j]) * scale)
        return te.compute((4, 24), lambda i, j: te.if_then_else(j >= 16, p[i, j - 16],
                                                                q[i, j]))

    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit_te(lambda t: te.compute((4, 8), lambda i, j: t[i, j] * 2.0), x)
            b = bb.emit_te(lambda t: te.compute((4, 16), lambda i, j: t[i, j + 8] * 3.0), x)
            gv = bb.emit_output(bb.emit_te(cat, a, b))
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("order,rewritten", [("ab", 2), ("ba", 0), ("ab*2", 0)])
def test_only_a_plain_concatenation_is_removed(order: str, rewritten: int) -> None:
    mod, renamed = concat_into_slices(_te_concat(order))
    assert len(renamed) == rewritten
    x = np.random.default_rng(2).standard_normal((4, 24)).astype(np.float32)
    a, b = 2 * x[:, :8], 3 * x[:, 8:]
    expect = np.concatenate([b, a] if order == "ba" else [a, b], axis=1)
    expect = expect * (2.0 if order == "ab*2" else 1.0)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expect, rtol=1e-6)
