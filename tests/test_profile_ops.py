"""Per-op profile: kernels are classified by structure and every kernel call is timed.

The op classes are what `tools/profile_ops.py` compares with onnxruntime's profiler, so a
depthwise conv counted as a 3x3 conv (or a kernel missing from the timings) would point
the schedule work at the wrong operator.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402
from compress_ir.backend.schedule.profile import (  # noqa: E402
    VMCallTimer,
    classify_module,
    group,
    kernel_name,
    ort_node_class,
    ort_workload,
    workload_module,
)

X86 = {"kind": "llvm"}


def _net() -> onnx.ModelProto:
    """stem 3x3 -> depthwise 3x3 -> 1x1 -> grouped 3x3 -> max pool -> global pool -> gemm."""
    rng = np.random.default_rng(0)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "W0"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["a1"]),
        helper.make_node("Conv", ["a1", "W1"], ["b"], kernel_shape=[3, 3], pads=[1] * 4,
                         group=16),
        helper.make_node("Conv", ["b", "W2"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["c", "W3"], ["d"], kernel_shape=[3, 3], pads=[1] * 4,
                         group=4),
        helper.make_node("MaxPool", ["d"], ["e"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["e"], ["f"]),
        helper.make_node("Flatten", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "W4"], ["y"], transB=1),
    ]
    inits = [w("W0", (16, 3, 3, 3)), w("W1", (16, 1, 3, 3)), w("W2", (32, 16, 1, 1)),
             w("W3", (32, 8, 3, 3)), w("W4", (10, 32))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def built() -> dict:
    mod = from_onnx(_net(), shape_dict={"x": [1, 3, 8, 8]}, keep_params_in_input=False)
    target = tvm.target.Target(X86)
    classes = classify_module(prepare(mod, target))
    executable, _stats = compile_relax(mod, target)
    return {"classes": classes, "vm": relax.VirtualMachine(executable, tvm.cpu())}


def test_kernels_are_classified_by_structure(built: dict) -> None:
    found = sorted(c for c in built["classes"].values() if c != "layout (transpose/reshape)")
    assert found.count("conv 3x3") == 1, built["classes"]
    for cls in ("depthwise conv", "conv 1x1", "grouped conv", "gemm/matmul"):
        assert found.count(cls) == 1, (cls, built["classes"])
    assert found.count("pooling/reduce") == 2, built["classes"]


def test_every_kernel_call_is_timed(built: dict) -> None:
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal((1, 3, 8, 8))
                           .astype(np.float32))
    timer = VMCallTimer(built["vm"], [x])
    for _ in range(3):
        timer.run()
    per_call, total = timer.medians()
    kernels = {kernel_name(n): ms for n, ms in per_call.items()
               if kernel_name(n) in built["classes"]}
    # every called kernel has a class (a renamed one would be lost as overhead); functions
    # the VM turned into builtins (a no-op transpose + reshape) are simply not called
    assert {n for n in map(kernel_name, per_call) if not n.startswith("vm.")} == set(kernels)
    assert {"conv 1x1", "depthwise conv", "gemm/matmul"} <= {built["classes"][k]
                                                             for k in kernels}
    assert all(ms > 0 for ms in kernels.values())
    assert sum(kernels.values()) <= total
    counts = {kernel_name(n): c for n, c in timer.calls.items()}
    grouped = group(kernels, built["classes"], counts)
    assert grouped["depthwise conv"]["count"] == 1
    assert sum(g["count"] for g in grouped.values()) == sum(counts[k] for k in kernels)


@pytest.mark.parametrize(("kernel", "group_", "data", "weight", "want"), [
    ([3, 3], 1, [1, 64, 56, 56], [64, 64, 3, 3], "conv 3x3"),
    ([1, 1], 1, [1, 4, 56, 56, 16], [64, 64, 1, 1], "conv 1x1"),  # NCHWc data: 4 x 16 ch
    ([3, 3], 144, [1, 9, 56, 56, 16], [144, 1, 3, 3], "depthwise conv"),
    ([3, 3], 32, [1, 64, 28, 28], [128, 2, 3, 3], "grouped conv"),
    ([7, 7], 1, [1, 3, 224, 224], [64, 3, 7, 7], "conv 7x7"),
])
def test_onnxruntime_conv_nodes_get_the_same_classes(kernel, group_, data, weight, want) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=kernel, group=group_,
                            domain="com.microsoft.nchwc")
    assert ort_node_class(node, [data, weight]) == want


def test_onnxruntime_layout_and_pool_nodes() -> None:
    assert ort_node_class(helper.make_node("ReorderInput", ["x"], ["y"]), []) \
        == "layout (transpose/reshape)"
    assert ort_node_class(helper.make_node("GlobalAveragePool", ["x"], ["y"]), []) \
        == "pooling/reduce"
    assert ort_node_class(helper.make_node("Gemm", ["a", "b"], ["y"]), []) == "gemm/matmul"


def test_layer_shapes_meet_across_runtimes(tmp_path) -> None:  # noqa: ANN001
    """Every conv and the gemm of the net get one (outputs, MACs per output) key in TVM's
    prepared module and in onnxruntime's own profile of its optimised (NCHWc) graph, so the
    per-shape table compares the same layers."""
    import sys
    from collections import Counter
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from profile_ops import OrtProfile

    model = _net()
    mod = from_onnx(model, shape_dict={"x": [1, 3, 8, 8]}, keep_params_in_input=False)
    tvm_keys = Counter(workload_module(prepare(mod, tvm.target.Target(X86))).values())
    # stem, depthwise, 1x1, grouped (8 inputs x 3x3 per output), gemm (32 inputs)
    want = Counter([(1024, 27), (1024, 9), (2048, 16), (2048, 72), (10, 32)])
    assert tvm_keys == want, tvm_keys
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    prof = OrtProfile(model, feeds, 1, str(tmp_path))
    prof.run()
    assert Counter(prof.result(0)["workloads"].values()) == want


def test_onnxruntime_workload_of_blocked_and_matmul_nodes() -> None:
    conv = helper.make_node("Conv", ["x", "w"], ["y"], domain="com.microsoft.nchwc")
    # NCHWc output [1, 64/16, 28, 28, 16]; 64 x 128 x 3 x 3 weight: 1152 MACs per output
    assert ort_workload(conv, [[1, 8, 28, 28, 16], [64, 128, 3, 3]],
                        [[1, 4, 28, 28, 16]]) == (64 * 28 * 28, 1152)
    gemm = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)
    assert ort_workload(gemm, [[1, 2048]], [[1, 1000]]) == (1000, 2048)  # B prepacked
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"])
    assert ort_workload(matmul, [[12, 197, 64], [12, 64, 197]], [[12, 197, 197]]) \
        == (12 * 197 * 197, 64)
