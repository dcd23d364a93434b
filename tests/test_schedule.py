"""compile_relax: default CPU schedules compute what onnxruntime computes, and are used.

Every op family the default rules claim (conv k1/k3, strided, padded, grouped, depthwise,
gemm, pooling, residual add + relu) is compiled, run in the TVM VM and compared with
onnxruntime; the build stats must show the contraction kernels were scheduled by the rule
(a silent fallback to TVM's unscheduled loops fails). Also: hand-scheduled PrimFuncs are
left alone, tuning records persist and are reused, cross targets refuse to tune, CUDA
builds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax, last_build_stats  # noqa: E402
from compress_ir.backend.schedule.pipeline import BuildStats, prepare, schedule_cpu  # noqa: E402
from compress_ir.core.errors import UsageError  # noqa: E402

X86 = {"kind": "llvm"}
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
RTOL = 1e-4


def _w(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _model(nodes: list, inits: list, in_shape: list[int], out_name: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    typed = {vi.name: vi for vi in inferred.graph.value_info}
    model.graph.output[0].CopyFrom(typed.get(out_name, inferred.graph.output[0]))
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv(rng, cin, cout, k, stride=1, pad=0, group=1, relu=True, size=9):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[k, k],
                              strides=[stride, stride], pads=[pad] * 4, group=group)]
    nodes.append(helper.make_node("Relu", ["c"], ["y"]) if relu
                 else helper.make_node("Identity", ["c"], ["y"]))
    inits = [_w(rng, "W", (cout, cin // group, k, k)), _w(rng, "B", (cout,))]
    return _model(nodes, inits, [1, cin, size, size])


def _residual(rng):
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "W2", "B2"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["b", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    inits = [_w(rng, "W1", (16, 16, 3, 3)), _w(rng, "B1", (16,)),
             _w(rng, "W2", (16, 16, 1, 1)), _w(rng, "B2", (16,))]
    return _model(nodes, inits, [1, 16, 8, 8])


def _gemm(rng):
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["y"])]
    return _model(nodes, [_w(rng, "W", (40, 24)), _w(rng, "B", (40,))], [3, 24])


def _pool(rng, op):
    attrs = {} if op == "GlobalAveragePool" else {"kernel_shape": [3, 3], "strides": [2, 2],
                                                   "pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]),
             helper.make_node(op, ["c"], ["y"], **attrs)]
    return _model(nodes, [_w(rng, "W", (16, 8, 1, 1)), _w(rng, "B", (16,))], [1, 8, 10, 10])


CASES = {
    "conv_k1": lambda r: _conv(r, 8, 24, 1),
    "conv_k3_pad": lambda r: _conv(r, 8, 16, 3, pad=1),
    "conv_k3_stride2": lambda r: _conv(r, 8, 16, 3, stride=2, pad=1, size=11),
    "conv_k7_stride2_no_relu": lambda r: _conv(r, 3, 16, 7, stride=2, pad=3, relu=False, size=16),
    "conv_grouped": lambda r: _conv(r, 8, 16, 3, pad=1, group=2),
    "conv_depthwise": lambda r: _conv(r, 16, 16, 3, pad=1, group=16),
    "conv_odd_channels": lambda r: _conv(r, 5, 13, 3, pad=1, size=7),
    # 196 positions tiled by 4: tiles span two image rows (write-back must stay exact)
    "conv_tiles_cross_rows": lambda r: _conv(r, 16, 16, 3, pad=1, size=14),
    # more channels than positions: channel blocks outermost, weights packed
    "conv_deep_small_image": lambda r: _conv(r, 32, 64, 3, pad=1, size=5),
    "residual_add_relu": _residual,
    "gemm": _gemm,
    "maxpool": lambda r: _pool(r, "MaxPool"),
    "avgpool": lambda r: _pool(r, "AveragePool"),
    "global_avgpool": lambda r: _pool(r, "GlobalAveragePool"),
}


def _run_tvm(executable, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return out.numpy()


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _import(model: onnx.ModelProto) -> tvm.IRModule:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return from_onnx(model, shape_dict={"x": shape}, keep_params_in_input=False), shape


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_build_matches_onnxruntime(case: str) -> None:
    rng = np.random.default_rng(0)
    model = CASES[case](rng)
    mod, shape = _import(model)
    executable = compile_relax(mod, tvm.target.Target(X86))
    stats = last_build_stats()
    x = rng.standard_normal(shape).astype(np.float32)
    got, want = _run_tvm(executable, x), _ort(model, x)
    assert got.shape == want.shape
    rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    assert rel <= RTOL, f"{case}: rel error {rel:.2e}"
    rules = list(stats.rules.values())
    assert "fallback" not in rules, stats.rules
    # every conv / gemm in these models is a multiply-accumulate reduction: a rule must own it
    assert any(r.startswith("contraction-") for r in rules), stats.rules
    if "pool" in case:
        assert any(r.startswith("reduction-") for r in rules), stats.rules
    if case == "gemm":  # batch 3 rows: the weight-streaming GEMV kernel
        assert "contraction-gemv" in rules, stats.rules


def test_cross_aarch64_default_build_compiles_scheduled() -> None:
    mod, _ = _import(_conv(np.random.default_rng(1), 8, 16, 3, pad=1))
    compile_relax(mod, tvm.target.Target(AARCH64))
    counts = last_build_stats().counts
    assert counts.get("contraction-tile", 0) == 1 and counts.get("fallback", 0) == 0, counts


def _hand_scheduled_module() -> tvm.IRModule:
    from tvm.script import ir as I  # noqa: N812
    from tvm.script import relax as R  # noqa: N812
    from tvm.script import tirx as T  # noqa: N812

    @I.ir_module
    class Mod:
        @T.prim_func(private=True, s_tir=True)
        def add_one(x: T.Buffer((1, 8), "float32"), y: T.Buffer((1, 8), "float32")):
            T.func_attr({"tir.is_scheduled": True, "tirx.noalias": True})
            for i in T.serial(8):
                with T.sblock("add"):
                    vi = T.axis.spatial(8, i)
                    y[0, vi] = x[0, vi] + T.float32(1)

        @R.function
        def main(x: R.Tensor((1, 8), "float32")) -> R.Tensor((1, 8), "float32"):
            cls = Mod
            with R.dataflow():
                a = R.call_tir(cls.add_one, (x,), out_ty=R.Tensor((1, 8), "float32"))
                b = R.nn.relu(a)
                c = R.multiply(b, b)
                R.output(c)
            return c

    return Mod


def test_prescheduled_functions_are_left_alone() -> None:
    mod = _hand_scheduled_module()
    original = mod["add_one"]
    target = tvm.target.Target(X86)
    stats = BuildStats()
    prepared = schedule_cpu(prepare(mod, target), target, stats)
    kept = [gv.name_hint for gv, f in prepared.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith("add_one")]
    assert len(kept) == 1  # passes may rename functions, never fuse this one into another
    # same loops and buffers; only attributes (fusion barrier, layout-free list) may be added
    func = prepared[kept[0]]
    for key in ("op_pattern", "layout_free_buffers"):
        func = func.without_attr(key)
    tvm.ir.assert_structural_equal(func, original)
    assert stats.rules[kept[0]] == "pre-scheduled"
    executable = compile_relax(mod, target)
    assert list(last_build_stats().rules.values()).count("pre-scheduled") == 1
    x = np.arange(-4, 4, dtype=np.float32).reshape(1, 8)
    np.testing.assert_allclose(_run_tvm(executable, x), np.maximum(x + 1, 0) ** 2, rtol=1e-6)


def test_tuning_refused_for_cross_targets(tmp_path: Path) -> None:
    mod, _ = _import(_gemm(np.random.default_rng(2)))
    with pytest.raises(UsageError, match="aarch64"):
        compile_relax(mod, tvm.target.Target(AARCH64), tune_trials=4, tuning_db=str(tmp_path))
    with pytest.raises(UsageError, match="no database_workload.json"):
        compile_relax(mod, tvm.target.Target(X86), tuning_db=str(tmp_path / "missing"))


def test_tuning_database_is_reused(tmp_path: Path) -> None:
    pytest.importorskip("xgboost", reason="MetaSchedule needs xgboost-cpu installed")
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    model = _model(nodes, [_w(rng, "W", (16, 8))], [4, 16])
    mod, shape = _import(model)
    target = tvm.target.Target(X86)
    db = tmp_path / "db"
    t0 = time.perf_counter()
    compile_relax(mod, target, tune_trials=2, tuning_db=str(db))
    first_s = time.perf_counter() - t0
    first = last_build_stats()
    if first.measured_candidates == 0:
        pytest.skip("MetaSchedule measured nothing on this machine (builder/runner failed)")
    assert first.tuned_tasks == 1 and list(first.rules.values()) == ["database"], first.rules
    assert (db / "database_workload.json").stat().st_size > 0
    assert (db / "database_tuning_record.json").stat().st_size > 0

    # a second model with the same layer shape (different weights) tunes nothing
    other, _ = _import(_model(nodes, [_w(rng, "W", (16, 8))], [4, 16]))
    t0 = time.perf_counter()
    compile_relax(other, target, tune_trials=2, tuning_db=str(db))
    second_s = time.perf_counter() - t0
    second = last_build_stats()
    assert (second.tuned_tasks, second.measured_candidates, second.reused_tasks) == (0, 0, 1)
    assert second_s < first_s / 5, (first_s, second_s)

    # no budget: the database's best record is still applied, and it computes correctly
    executable = compile_relax(mod, target, tuning_db=str(db))
    assert list(last_build_stats().rules.values()) == ["database"]
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(_run_tvm(executable, x), _ort(model, x), rtol=1e-4, atol=1e-5)


def test_cuda_default_build_compiles() -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: CUDA builds need the CUDA toolkit")
    mod, _ = _import(_residual(np.random.default_rng(4)))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    executable = compile_relax(mod, target)
    assert executable is not None
    stats = last_build_stats()
    assert stats.counts.get("dlight", 0) == len(stats.rules) >= 2, stats.rules
