"""Residual kernels that write over their dead residual input (`schedule/inplace.py`).

The rewrite is only safe when the residual is dead after the call and read at the output's
own index; each negative case here is one that would give a wrong result (checked against
onnxruntime or numpy) if the rewrite fired.
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
from compress_ir.backend.schedule.inplace import residual_in_place  # noqa: E402
from compress_ir.backend.schedule.pipeline import BuildStats, prepare, schedule_cpu  # noqa: E402

X86 = {"kind": "llvm"}
C, S = 16, 8


def _w(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _block(rng: np.random.Generator, src: str, out: str, inits: list) -> list:
    """conv3x3 -> relu -> conv1x1 -> + src -> relu, as in a ResNet basic block."""
    w1, b1, w2, b2 = (f"{out}_{n}" for n in ("w1", "b1", "w2", "b2"))
    inits += [_w(rng, w1, (C, C, 3, 3)), _w(rng, b1, (C,)), _w(rng, w2, (C, C, 1, 1)),
              _w(rng, b2, (C,))]
    return [helper.make_node("Conv", [src, w1, b1], [f"{out}_a"], kernel_shape=[3, 3],
                             pads=[1] * 4),
            helper.make_node("Relu", [f"{out}_a"], [f"{out}_r"]),
            helper.make_node("Conv", [f"{out}_r", w2, b2], [f"{out}_b"], kernel_shape=[1, 1]),
            helper.make_node("Add", [f"{out}_b", src], [f"{out}_s"]),
            helper.make_node("Relu", [f"{out}_s"], [out])]


def _model(tail: str, stem: bool = True) -> onnx.ModelProto:
    """x -> (stem conv) -> two residual blocks -> `tail` ('none', or 'concat': the output
    also concatenates the first block's residual input, read after that block's add)."""
    rng = np.random.default_rng(0)
    inits: list = []
    nodes = []
    src = "x"
    if stem:
        inits += [_w(rng, "ws", (C, C, 3, 3)), _w(rng, "bs", (C,))]
        nodes += [helper.make_node("Conv", ["x", "ws", "bs"], ["c"], kernel_shape=[3, 3],
                                   pads=[1] * 4),
                  helper.make_node("Relu", ["c"], ["c0"])]
        src = "c0"
    nodes += _block(rng, src, "y1", inits) + _block(rng, "y1", "y2", inits)
    out = "y2"
    if tail == "concat":
        nodes.append(helper.make_node("Concat", ["y2", src], ["y"], axis=1))
        out = "y"
    channels = 2 * C if tail == "concat" else C
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, S, S])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, channels, S, S])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _in_place_calls(model: onnx.ModelProto, shape: list[int] | None = None) -> int:
    target = tvm.target.Target(X86)
    mod = from_onnx(model, shape_dict={"x": shape or [1, C, S, S]}, keep_params_in_input=False)
    stats = BuildStats()
    scheduled = schedule_cpu(prepare(mod, target), target, stats)
    calls = scheduled["main"].script().count("R.call_tir_inplace(")
    assert (calls > 0) == bool(stats.in_place), stats.in_place
    return calls


def _run(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TVM's output, and the input tensor as it is after the run."""
    mod = from_onnx(model, shape_dict={"x": list(x.shape)}, keep_params_in_input=False)
    executable, _ = compile_relax(mod, tvm.target.Target(X86))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    arg = tvm.runtime.tensor(x)
    return vm["main"](arg).numpy(), arg.numpy()


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, C, S, S)).astype(np.float32)


def test_residual_blocks_write_over_their_dead_input() -> None:
    model = _model("none")
    assert _in_place_calls(model) == 2  # both residual adds
    x = _x()
    got, x_after = _run(model, x)
    np.testing.assert_allclose(got, _ort(model, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(x_after, x)


def test_residual_read_after_the_add_is_not_overwritten() -> None:
    # the first block's residual c0 is concatenated at the end: its add must not take c0's
    # buffer (the concat would read the block's output instead); the second block's may
    model = _model("concat")
    assert _in_place_calls(model) == 1
    x = _x()
    got, _ = _run(model, x)
    np.testing.assert_allclose(got, _ort(model, x), rtol=1e-4, atol=1e-4)


def _mlp_residual() -> onnx.ModelProto:
    """y = relu(x W1) W2 + x: the model input itself is the residual (no layout copy)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Add", ["m", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
        [_w(rng, "w1", (32, 32)), _w(rng, "w2", (32, 32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_model_input_is_never_a_residual_buffer() -> None:
    model = _mlp_residual()
    assert _in_place_calls(model, [4, 32]) == 0
    x = np.random.default_rng(4).standard_normal((4, 32)).astype(np.float32)
    got, x_after = _run(model, x)
    np.testing.assert_allclose(got, _ort(model, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(x_after, x)


def _te_module(mix: str) -> tvm.IRModule:
    """a = 2x, r = 3x, out = a (at `mix[0]`) + r (at `mix[1]`), 'd' = [i, j], 't' = [j, i]."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 8), "float32"))

    def at(t: te.Tensor, kind: str, i: object, j: object) -> object:
        return t[i, j] if kind == "d" else t[j, i]

    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit_te(lambda t: te.compute((8, 8), lambda i, j: t[i, j] * 2.0), x)
            r = bb.emit_te(lambda t: te.compute((8, 8), lambda i, j: t[i, j] * 3.0), x)
            out = bb.emit_te(lambda p, q: te.compute(
                (8, 8), lambda i, j: at(p, mix[0], i, j) + at(q, mix[1], i, j)), a, r)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("mix,want", [("dd", [0]), ("dt", [0]), ("td", [1]), ("tt", None)])
def test_only_an_input_read_at_the_output_index_takes_the_output(mix: str, want) -> None:
    mod, renamed = residual_in_place(_te_module(mix))
    calls = [b.value for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir_inplace"]
    assert [list(map(int, c.attrs.inplace_indices)) for c in calls] == ([want] if want else [])
    assert bool(renamed) == bool(want)
    x = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    a, r = 2 * x, 3 * x
    expect = (a if mix[0] == "d" else a.T) + (r if mix[1] == "d" else r.T)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expect, rtol=1e-6)
