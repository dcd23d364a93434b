"""Per-channel [C, 1, 1] constants (Caffe2 / TF-era exports) keep the CPU build in NHWC.

Inception v2 (onnx's light zoo) scales and shifts each conv's output with
`Mul(x, Unsqueeze(w, [1, 2]))` / `Add`: without the rank rewrite TVM's ConvertLayout put a
transpose pair around every such op and left the average pools behind them in NCHW.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule.broadcast_rank import expand_broadcast_rank  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402

X86 = tvm.target.Target({"kind": "llvm"})
SHAPE = [1, 8, 10, 10]


def _caffe2_block(seed: int = 0) -> onnx.ModelProto:
    """conv -> x * w[C,1,1] + b[C,1,1] -> relu -> 3x3 average pool (pad 1) -> 1x1 conv."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
             helper.make_node("Unsqueeze", ["t", "axes"], ["t3"]),
             helper.make_node("Mul", ["c", "s3"], ["m"]),
             helper.make_node("Add", ["m", "t3"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Conv", ["p", "W2"], ["y"], kernel_shape=[1, 1])]
    inits = [w("W1", (16, 8, 3, 3)), w("s", (16,)), w("t", (16,)), w("W2", (16, 16, 1, 1)),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    graph = helper.make_graph(
        nodes, "caffe2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _import(model: onnx.ModelProto) -> tvm.IRModule:
    return from_onnx(model, shape_dict={"x": SHAPE}, keep_params_in_input=False)


def test_matches_onnxruntime() -> None:
    model = _caffe2_block()
    executable, stats = compile_relax(_import(model), X86)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-5
    assert "fallback" not in stats.rules.values(), stats.rules


def test_only_the_model_boundary_is_transposed() -> None:
    """NHWC from the first conv to the last: one transpose in (NCHW input), one out; the
    scale/shift/ReLU fuse into the conv and the pool runs on NHWC."""
    mod = relax.transform.FoldConstant()(_import(_caffe2_block()))
    assert expand_broadcast_rank(mod)[1] == 2
    prepared = prepare(_import(_caffe2_block()), X86)
    names = [gv.name_hint for gv, f in prepared.functions_items() if isinstance(f, tirx.PrimFunc)]
    transposes = [n for n in names if "transpose" in n]
    assert len(transposes) == 2, names
    assert any("conv2d" in n and "multiply" in n and "relu" in n for n in names), names


def test_rank_rewrite_is_exact_for_other_operand_orders() -> None:
    """[C,1,1] as the left operand of a subtract / divide broadcasts the same way."""
    c = relax.const(np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1))
    x = relax.Var("x", relax.TensorType([1, 4, 3, 3], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            d = bb.emit(relax.op.divide(c, relax.op.add(x, relax.const(10.0))))
            out = bb.emit_output(relax.op.subtract(c, d))
        bb.emit_func_output(out)
    mod = bb.get()
    new, changed = expand_broadcast_rank(mod)
    assert changed == 2
    data = np.random.default_rng(2).standard_normal((1, 4, 3, 3)).astype(np.float32)
    run = {}
    for label, m in (("old", mod), ("new", new)):
        ex = tvm.compile(m, target=X86)
        run[label] = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_array_equal(run["old"], run["new"])


def _bn_model(seed: int = 3) -> onnx.ModelProto:
    """conv -> BatchNormalization (opset 9, running statistics) -> relu -> conv."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...], positive: bool = False) -> onnx.TensorProto:
        data = rng.standard_normal(shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(data) + 0.1 if positive else data, name)

    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["y"], kernel_shape=[1, 1])]
    inits = [w("W1", (16, 8, 3, 3)), w("g", (16,)), w("b", (16,)), w("m", (16,)),
             w("v", (16,), positive=True), w("W2", (16, 16, 1, 1))]
    graph = helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


def test_batch_norm_folds_into_the_conv_epilogue() -> None:
    """Inference BatchNorm becomes x * scale + shift fused after the conv, exact vs
    onnxruntime; no batch_norm kernel is left."""
    model = _bn_model()
    executable, stats = compile_relax(_import(model), X86)
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-5
    names = list(stats.rules)
    assert not any("batch_norm" in n for n in names), names
    assert any("conv2d" in n and "multiply" in n and "relu" in n for n in names), names
