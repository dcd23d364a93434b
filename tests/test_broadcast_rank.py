"""Per-channel [C, 1, 1] constants (Caffe2 / TF-era exports) keep the CPU build in NHWC.

Inception v2 (onnx's light zoo) scales and shifts each conv's output with
`Mul(x, Unsqueeze(w, [1, 2]))` / `Add`: without the rank rewrite TVM's ConvertLayout put a
transpose pair around every such op and left the average pools behind them in NCHW.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm_helpers import build_vs_onnxruntime, import_model, one_input_model  # noqa: E402

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
    return one_input_model(nodes, inits, SHAPE, [1, 16, 10, 10], "caffe2", opset=13, ir_version=8)



def test_matches_onnxruntime() -> None:
    model = _caffe2_block()
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    _, rel, stats = build_vs_onnxruntime(model, x, X86)
    assert rel <= 1e-5, rel
    assert "fallback" not in stats.rules.values(), stats.rules


def test_only_the_model_boundary_is_transposed() -> None:
    """NHWC from the first conv to the last: one transpose in (NCHW input), one out; the
    scale/shift/ReLU fuse into the conv and the pool runs on NHWC."""
    mod = relax.transform.FoldConstant()(import_model(_caffe2_block()))
    assert expand_broadcast_rank(mod)[1] == 2
    prepared = prepare(import_model(_caffe2_block()), X86)
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
    return one_input_model(nodes, inits, SHAPE, [1, 16, 10, 10], "bn", opset=9, ir_version=4)


def test_batch_norm_folds_into_the_conv_epilogue() -> None:
    """Inference BatchNorm becomes x * scale + shift fused after the conv, exact vs
    onnxruntime; no batch_norm kernel is left."""
    model = _bn_model()
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    _, rel, stats = build_vs_onnxruntime(model, x, X86)
    assert rel <= 1e-5, rel
    names = list(stats.rules)
    assert not any("batch_norm" in n for n in names), names
    assert any("conv2d" in n and "multiply" in n and "relu" in n for n in names), names
