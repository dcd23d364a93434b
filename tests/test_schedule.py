"""compile_relax: default CPU schedules compute what onnxruntime computes, and are used.

Every op family the default rules claim (conv k1/k3, strided, padded, grouped, depthwise,
gemm, pooling, residual add + relu) is compiled, run in the TVM VM and compared with
onnxruntime; the build stats must show the contraction kernels were scheduled by the rule
(a silent fallback to TVM's unscheduled loops fails). Transformer epilogues (GELU reads
`matmul + bias` twice), a BERT encoder block, and the lowering safety net (a schedule that
does not lower falls back, with its reason) are covered too. Also: hand-scheduled PrimFuncs are
left alone, tuning keeps the faster of default and tuned schedule, records persist and are
reused, cross targets refuse to tune, CUDA builds.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule.cpu import CpuParams, cpu_params, schedule_cpu_func  # noqa: E402
from compress_ir.backend.schedule.pipeline import BuildStats, prepare, schedule_cpu  # noqa: E402
from compress_ir.core.errors import UsageError  # noqa: E402
from compress_ir.targets.registry import spec_of_tvm_target  # noqa: E402

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


def _pool(rng, op, **extra):
    attrs = {} if op == "GlobalAveragePool" else {"kernel_shape": [3, 3], "strides": [2, 2],
                                                   "pads": [1, 1, 1, 1], **extra}
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
    # depthwise kernel: stride 2 with an odd size, channels not a multiple of the lanes,
    # a channel multiplier of 2, a 5x5 window without activation
    "conv_depthwise_stride2_odd": lambda r: _conv(r, 12, 12, 3, stride=2, pad=1, group=12,
                                                  size=13),
    "conv_depthwise_multiplier2": lambda r: _conv(r, 8, 16, 3, pad=1, group=8),
    "conv_depthwise_k5_no_relu": lambda r: _conv(r, 24, 24, 5, pad=2, group=24, relu=False,
                                                 size=10),
    "conv_odd_channels": lambda r: _conv(r, 5, 13, 3, pad=1, size=7),
    # 196 positions tiled by 4: tiles span two image rows (write-back must stay exact)
    "conv_tiles_cross_rows": lambda r: _conv(r, 16, 16, 3, pad=1, size=14),
    # more channels than positions: channel blocks outermost, weights packed
    "conv_deep_small_image": lambda r: _conv(r, 32, 64, 3, pad=1, size=5),
    "residual_add_relu": _residual,
    "gemm": _gemm,
    "maxpool": lambda r: _pool(r, "MaxPool"),
    "avgpool": lambda r: _pool(r, "AveragePool"),
    "avgpool_include_pad": lambda r: _pool(r, "AveragePool", count_include_pad=1),
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


def _scheduled(model: onnx.ModelProto, name: str, cpu: CpuParams | None = None
               ) -> tuple[tirx.PrimFunc, str]:
    """The model's one prepared PrimFunc whose name contains `name`, scheduled by the
    default CPU rules (`cpu`: the bare x86 target's unless given); (function, rule)."""
    target = tvm.target.Target(X86)
    (func,) = [f for gv, f in prepare(_import(model)[0], target).functions_items()
               if isinstance(f, tirx.PrimFunc) and name in gv.name_hint]
    sched, rule, _ = schedule_cpu_func(func, cpu or cpu_params(spec_of_tvm_target(target)),
                                       target)
    return sched, rule


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_build_matches_onnxruntime(case: str) -> None:
    rng = np.random.default_rng(0)
    model = CASES[case](rng)
    mod, shape = _import(model)
    executable, stats = compile_relax(mod, tvm.target.Target(X86))
    x = rng.standard_normal(shape).astype(np.float32)
    got, want = _run_tvm(executable, x), _ort(model, x)
    assert got.shape == want.shape
    rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    assert rel <= RTOL, f"{case}: rel error {rel:.2e}"
    rules = list(stats.rules.values())
    assert "fallback" not in rules, stats.rules
    # every conv / gemm in these models is a multiply-accumulate reduction: a rule must own it
    assert any(r.startswith("contraction-") or r == "depthwise-tile" for r in rules), stats.rules
    if case.startswith("conv_depthwise"):  # its own kernel, not the generic one
        assert "depthwise-tile" in rules, stats.rules
    if "pool" in case:
        assert any(r.startswith("reduction-") for r in rules), stats.rules
    if case == "gemm":  # batch 3 rows: the weight-streaming GEMV kernel
        assert "contraction-gemv" in rules, stats.rules


@pytest.mark.parametrize("outputs,kernel", [(1000, "contraction-gemv"), (12, "contraction-gemv"),
                                            (1001, "contraction-tile")])
def test_batch1_classifier_streams_weights_when_a_narrower_vector_divides(
        outputs: int, kernel: str) -> None:
    """A 1000-class head is no multiple of 16 lanes (or 12 of 8): the GEMV runs on a narrower
    power-of-two vector instead of the row-tiled kernel's 10-wide ones; 1001 has none."""
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)]
    model = _model(nodes, [_w(rng, "W", (outputs, 64)), _w(rng, "B", (outputs,))], [1, 64])
    stats = _check(model, rng.standard_normal((1, 64)).astype(np.float32))
    assert [r for n, r in stats.rules.items() if "matmul" in n or "gemm" in n] == [kernel], \
        stats.rules


@pytest.mark.parametrize("channels,groups", [(64, 4), (64, 8), (32, 8)])
def test_grouped_conv_channel_tile_stays_in_one_group(channels: int, groups: int) -> None:
    """Output channel c reads input channels c // G * G + rc: a vector tile spanning two
    groups makes that read a gather (RegNetX-400MF ran 0.30x onnxruntime); within a group
    it is one broadcast. Group widths 16 (RegNet), 8 and 4 (ResNeXt 32x4d)."""
    rng = np.random.default_rng(12)
    model = _conv(rng, channels, channels, 3, pad=1, group=groups, size=14)
    _check(model, rng.standard_normal((1, channels, 14, 14)).astype(np.float32))
    func, rule = _scheduled(model, "conv2d")
    assert rule == "contraction-tile", rule
    widths = [int(m) for m in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)",
                                         _update_nest(func))]
    width = channels // groups
    assert widths and width % widths[-1] == 0, (widths[-1], width)


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_nchw_pool_pads_in_a_separate_pass(op: str) -> None:
    """A pool left in NCHW (no conv before it to convert the layout) vectorises along a
    padded row: reading the padding through a bounds test there varies per lane (an
    Inception v2 average pool ran 10x onnxruntime); NHWC pools keep the inlined test."""
    rng = np.random.default_rng(13)
    nodes = [helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)]
    model = _model(nodes, [], [1, 24, 14, 14])
    _check(model, rng.standard_normal((1, 24, 14, 14)).astype(np.float32))
    sched, rule = _scheduled(model, "pool")
    assert rule == "reduction-tile", rule
    body = _update_nest(sched, before=0, after=12)
    assert "if_then_else" not in body, body


@pytest.mark.parametrize("mode,coord", [("linear", "half_pixel"), ("nearest", "asymmetric")])
def test_upsample_head_resizes_in_nhwc_then_transposes(mode: str, coord: str) -> None:
    """A segmentation head (conv -> Resize to the input size, output NCHW): the resize reads
    at computed indices; fused into the NHWC -> NCHW transpose it gathered across channels
    per lane (LR-ASPP 0.85 ms vs onnxruntime 0.28). Two passes: resize vectorised over the
    channels, then a tiled transpose."""
    rng = np.random.default_rng(14)
    scales = numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], mode=mode,
                              coordinate_transformation_mode=coord)]
    model = _model(nodes, [_w(rng, "W", (21, 8, 1, 1)), _w(rng, "B", (21,)), scales],
                   [1, 8, 10, 10])
    stats = _check(model, rng.standard_normal((1, 8, 10, 10)).astype(np.float32))
    assert "gather-transpose" in stats.rules.values(), stats.rules


@pytest.mark.parametrize("channels,size,parallel", [(8, 8, False), (64, 56, True)])
def test_only_kernels_worth_a_fork_join_run_parallel(channels: int, size: int,
                                                      parallel: bool) -> None:
    """A parallel loop wakes the thread pool per call: an 8x8 conv (74K MACs, microseconds)
    runs on the calling thread; a 56x56x64 3x3 conv (116M MACs) uses the threads."""
    rng = np.random.default_rng(15)
    model = _conv(rng, channels, channels, 3, pad=1, size=size)
    _check(model, rng.standard_normal((1, channels, size, size)).astype(np.float32))
    func, rule = _scheduled(model, "conv2d")
    assert rule == "contraction-tile", rule
    assert ("T.parallel" in func.script()) is parallel


def test_three_vector_channel_tile_when_two_do_not_divide() -> None:
    """48 output channels on 16 lanes: one tile of three unrolled vectors (three times the
    FMAs per input broadcast of a one-vector tile), exact vs onnxruntime (24 on 8 lanes)."""
    rng = np.random.default_rng(16)
    model = _conv(rng, 8, 24, 3, pad=1, size=10)
    _check(model, rng.standard_normal((1, 8, 10, 10)).astype(np.float32))
    wide = _conv(rng, 8, 48, 3, pad=1, size=10)
    func, rule = _scheduled(wide, "conv2d", CpuParams(lanes=16, registers=32))
    assert rule == "contraction-tile", rule
    nest = _update_nest(func)
    assert "T.unroll(T.int64(3))" in nest and "T.vectorized(T.int64(16))" in nest, nest


def test_two_partial_vectors_share_the_broadcasts() -> None:
    """24 output channels on 16 lanes: one tile of 2 x 12 (unrolled), not two 12-wide tiles
    each re-broadcasting the inputs, nor one 24-wide vector type (1.5x slower)."""
    rng = np.random.default_rng(17)
    func, rule = _scheduled(_conv(rng, 8, 24, 1, size=10), "conv2d",
                            CpuParams(lanes=16, registers=32))
    assert rule == "contraction-tile", rule
    nest = _update_nest(func)
    assert "T.unroll(T.int64(2))" in nest and "T.vectorized(T.int64(12))" in nest, nest


@pytest.mark.parametrize("op", ["conv", "MaxPool"])
def test_odd_window_positions_take_a_full_row_tile_with_a_cut_tail(op: str) -> None:
    """17x17 = 289 positions have no exact divisor from 2 to 14, so exact tiles left one row
    per input broadcast (13x13 in SqueezeNet: 0.43x onnxruntime); the tile takes the most
    rows the register file allows (14 x 32 channels on AVX-512) and a predicate cuts the
    last one short. Exact vs onnxruntime, odd channels and pool too."""
    rng = np.random.default_rng(18)
    if op == "conv":
        model = _conv(rng, 24, 32, 1, size=17)
        odd = _conv(rng, 8, 20, 3, pad=1, size=17)
        x_odd = rng.standard_normal((1, 8, 17, 17)).astype(np.float32)
    else:
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                 helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)]
        model = _model(nodes, [_w(rng, "w", (32, 24, 3, 3))], [1, 24, 17, 17])
        odd, x_odd = None, None
    x = rng.standard_normal((1, 24, 17, 17)).astype(np.float32)
    _check(model, x)
    if odd is not None:
        _check(odd, x_odd)
    sched, rule = _scheduled(model, "conv2d" if op == "conv" else "max_pool2d",
                             CpuParams(lanes=16, registers=32))
    assert rule in ("contraction-tile", "reduction-tile"), rule
    nest = _update_nest(sched, before=4, after=6)
    assert "T.unroll(T.int64(14))" in nest and "T.where(" in nest, nest


def test_register_tile_accumulators_are_a_stack_array(monkeypatch: pytest.MonkeyPatch) -> None:
    """TVM serves a "local" buffer from TVMBackendAllocWorkspace: a call pair per tile, and
    LLVM stored the accumulators and read them back around the epilogue (64-channel 1x1
    convs: 0.894 of the time without). The compiled conv must allocate no workspace at all
    (weight packing, a workspace of its own in a lone function, switched off) and match
    onnxruntime with tiles whose last one is cut short (29x29 = 841 positions, 14 rows: a
    1792-byte tile, kept on the stack by the CPU pipeline's `stack_tiles` pass)."""
    import compress_ir.backend.schedule.cpu as cpu_mod
    from compress_ir.backend.schedule.stack_tiles import PIPELINE

    rng = np.random.default_rng(3)
    model = _conv(rng, 64, 64, 1, size=29)
    _check(model, rng.standard_normal((1, 64, 29, 29)).astype(np.float32))
    monkeypatch.setattr(cpu_mod, "PACK_WEIGHTS", False)
    sched, rule = _scheduled(model, "conv2d", CpuParams(lanes=16, registers=32))
    assert rule == "contraction-tile", rule
    assert "T.unroll(T.int64(14))" in _update_nest(sched), _update_nest(sched)
    mod = tvm.IRModule({"main": sched.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=tvm.target.Target(X86), tir_pipeline=PIPELINE)
    calls = [line for line in lib.mod.inspect_source("ll").splitlines()
             if "TVMBackendAllocWorkspace" in line]
    assert not calls, calls
    # tuning measures candidates built the same way (else this tile would time 2x slower)
    from compress_ir.backend.schedule.tuning import build_without_intrin

    tuned = build_without_intrin(mod, tvm.target.Target(X86), None)
    assert "TVMBackendAllocWorkspace" not in tuned.inspect_source("ll")
    plain = tvm.compile(mod, target=tvm.target.Target(X86))
    assert "TVMBackendAllocWorkspace" in plain.mod.inspect_source("ll")


def test_cross_aarch64_default_build_compiles_scheduled() -> None:
    mod, _ = _import(_conv(np.random.default_rng(1), 8, 16, 3, pad=1))
    counts = compile_relax(mod, tvm.target.Target(AARCH64))[1].counts
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
    executable, stats = compile_relax(mod, target)
    assert list(stats.rules.values()).count("pre-scheduled") == 1
    x = np.arange(-4, 4, dtype=np.float32).reshape(1, 8)
    np.testing.assert_allclose(_run_tvm(executable, x), np.maximum(x + 1, 0) ** 2, rtol=1e-6)


def test_tuning_refused_for_cross_targets(tmp_path: Path) -> None:
    mod, _ = _import(_gemm(np.random.default_rng(2)))
    with pytest.raises(UsageError, match="aarch64"):
        compile_relax(mod, tvm.target.Target(AARCH64), tune_trials=4, tuning_db=str(tmp_path))
    with pytest.raises(UsageError, match="no database_workload.json"):
        compile_relax(mod, tvm.target.Target(X86), tuning_db=str(tmp_path / "missing"))


def _dense_relu(rng: np.random.Generator) -> onnx.ModelProto:
    # 8 rows x 256 -> 128 (> 4 rows: the register-tiled kernel, weights packed)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    return _model(nodes, [_w(rng, "W", (256, 128))], [8, 256])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tuning run (MetaSchedule's import alone takes most of a minute) for several tests."""
    pytest.importorskip("xgboost", reason="MetaSchedule needs xgboost-cpu installed")
    rng = np.random.default_rng(3)
    model = _dense_relu(rng)
    mod, shape = _import(model)
    db = tmp_path_factory.mktemp("tune") / "db"
    t0 = time.perf_counter()
    executable, stats = compile_relax(mod, tvm.target.Target(X86), tune_trials=2,
                                      tuning_db=str(db))
    seconds = time.perf_counter() - t0
    if stats.measured_candidates == 0:
        pytest.skip("MetaSchedule measured nothing on this machine (builder/runner failed)")
    return {"rng": rng, "model": model, "shape": shape, "db": db, "stats": stats,
            "executable": executable, "seconds": seconds}


def test_tuning_never_picks_a_slower_schedule_than_the_default(tuned: dict) -> None:
    stats = tuned["stats"]
    assert stats.tuned_tasks == 1 and stats.measured_defaults == 1, stats.as_dict()
    assert not stats.default_errors, stats.default_errors
    assert set(stats.choices) == set(stats.rules), (stats.choices, stats.rules)
    for name, c in stats.choices.items():
        assert c["default_us"] is not None and c["tuned_us"] is not None, c
        assert c["chosen_us"] == min(c["default_us"], c["tuned_us"]), c
        assert c["chosen_us"] <= c["default_us"], c
        assert c["winner"] == ("database" if c["tuned_us"] < c["default_us"]
                               else "contraction-tile"), c
        # the rules describe the returned executable: the per-function winners, unless
        # the whole default build was timed faster than the whole tuned one
        kept = stats.whole_model["kept"]
        assert stats.rules[name] == (c["winner"] if kept == "tuned" else "contraction-tile"), (
            stats.rules, c, stats.whole_model)
    whole = stats.whole_model
    if "database" in [c["winner"] for c in stats.choices.values()]:  # then timed side by side
        assert whole["kept"] == ("tuned" if whole["tuned_ms"] < whole["default_ms"]
                                 else "default"), whole
    else:
        assert whole["kept"] == "default" and "reason" in whole, whole


def _two_matmuls(rng: np.random.Generator) -> onnx.ModelProto:
    """A big (16 x 512 -> 256) and a small (16 x 256 -> 16) matmul: two tasks whose default
    run times differ by ~30x, so the costlier one must be tuned first."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    return _model(nodes, [_w(rng, "W1", (512, 256)), _w(rng, "W2", (256, 16))], [16, 512])


def _fake_budget_run(monkeypatch, model: onnx.ModelProto, budget: float, cap: int,
                     round_s: float) -> tuple[BuildStats, list[str]]:
    """tune_within_budget with measuring replaced by fakes (a task's default time is its
    output size x 1 us, a tuning round sleeps `round_s`; the real ones run in the
    `tuned` fixture and the 1 ms budget test). What is left is the budget logic: which task
    is tuned when, how many trials, when it stops."""
    from compress_ir.backend.schedule import compete as compete_mod
    from compress_ir.backend.schedule import tuning as tuning_mod

    def default_seconds(db, wl_mod, target, cpu):
        out = wl_mod["main"].params[-1]
        return float(np.prod([int(d) for d in out.shape])) * 1e-6

    calls: list[str] = []

    def fake_round(task, target, trials, db, builder, logs, stats, seed):
        calls.append(task.task_name)
        time.sleep(round_s)

    monkeypatch.setattr(compete_mod, "measure_defaults", lambda *a, **k: {})
    monkeypatch.setattr(compete_mod, "default_seconds", default_seconds)
    monkeypatch.setattr(tuning_mod, "_tune_round", fake_round)
    # its constructor checks a builder worker process (seconds): no builds here
    monkeypatch.setattr(tuning_mod.ms.builder, "LocalBuilder", lambda **_k: None)
    mod, _ = _import(model)
    target = tvm.target.Target(X86)
    prepared = prepare(mod, target)
    tuning_mod.ms.relax_integration.extract_tasks(prepared, target)  # imports: not the budget
    stats = BuildStats()
    with tempfile.TemporaryDirectory() as tmp:
        tuning_mod.tune_within_budget(prepared, target, budget, cap, tmp, None, stats, None)
    return stats, calls


def test_tune_budget_spends_rounds_on_the_costliest_task_first(monkeypatch) -> None:
    stats, calls = _fake_budget_run(monkeypatch, _two_matmuls(np.random.default_rng(5)),
                                    budget=4.0, cap=0, round_s=0.3)
    b = stats.budget
    cost = b["default_ms_per_inference"]
    assert cost[b["order"][0]] > cost[b["order"][1]], b  # 16x256 output before 16x16
    assert len(calls) >= 2 and calls[0] == b["order"][0], (calls, b["used_s"])
    # passes in cost order until the next round would not fit: it never starts a round
    # with less than one round's time left, so it ends within one round of the budget
    assert calls == [b["order"][i % 2] for i in range(len(calls))], calls
    assert 4.0 - 0.3 <= b["used_s"] <= 4.0 + 0.5, b
    assert sum(b["trials"].values()) == len(calls) * 16


def test_tune_budget_trial_cap_ends_early(monkeypatch) -> None:
    stats, calls = _fake_budget_run(monkeypatch, _two_matmuls(np.random.default_rng(5)),
                                    budget=60.0, cap=2, round_s=0.0)
    assert stats.budget["trials"] == {name: 2 for name in stats.budget["order"]}
    assert sorted(calls) == sorted(stats.budget["order"]) and stats.budget["used_s"] < 30


def test_tune_budget_zero_trials_left_when_budget_is_spent(tmp_path: Path) -> None:
    """A budget smaller than the default measurements runs no tuning round at all."""
    pytest.importorskip("xgboost", reason="MetaSchedule needs xgboost-cpu installed")
    mod, _shape = _import(_dense_relu(np.random.default_rng(6)))
    _ex, stats = compile_relax(mod, tvm.target.Target(X86), tune_budget_s=1e-3,
                               tuning_db=str(tmp_path / "db"))
    assert set(stats.budget["trials"].values()) == {0}, stats.budget
    assert stats.measured_candidates == 0 and stats.tuned_tasks == 0
    with pytest.raises(UsageError, match="tune_budget"):
        compile_relax(mod, tvm.target.Target(X86), tune_budget_s=-1.0)


def test_tuned_build_matches_onnxruntime(tuned: dict) -> None:
    x = tuned["rng"].standard_normal(tuned["shape"]).astype(np.float32)
    got, want = _run_tvm(tuned["executable"], x), _ort(tuned["model"], x)
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def _retimed_db(src: Path, dst: Path, default_s: float, slow: str) -> None:
    """Copy a database, setting the default's record (slow='default') or every other record
    (slow='tuned') to 1 s, so which one must win is known without relying on noisy timings."""
    dst.mkdir()
    shutil.copy(src / "database_workload.json", dst / "database_workload.json")
    lines = []
    for line in (src / "database_tuning_record.json").read_text().splitlines():
        workload, (trace, secs, target, args) = json.loads(line)
        is_default = secs is not None and np.isclose(np.mean(secs), default_s, rtol=1e-9)
        if is_default == (slow == "default"):
            secs = [1.0]
        lines.append(json.dumps([workload, [trace, secs, target, args]]))
    (dst / "database_tuning_record.json").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("slow", ["tuned", "default"])
def test_faster_record_wins_and_keeps_its_name(tuned: dict, tmp_path: Path, slow: str) -> None:
    (name, choice), = tuned["stats"].choices.items()
    _retimed_db(tuned["db"], tmp_path / "db", choice["default_us"] * 1e-6, slow)
    executable, stats = compile_relax(_import(tuned["model"])[0], tvm.target.Target(X86),
                                      tuning_db=str(tmp_path / "db"))
    want = "contraction-tile" if slow == "tuned" else "database"
    assert stats.rules[name] == stats.choices[name]["winner"] == want, stats.as_dict()
    assert stats.choices[name]["chosen_us"] < 1e6, stats.choices  # not the slowed record
    x = tuned["rng"].standard_normal(tuned["shape"]).astype(np.float32)
    got, want_y = _run_tvm(executable, x), _ort(tuned["model"], x)
    assert np.abs(got - want_y).max() <= RTOL * np.abs(want_y).max()


def test_tuning_database_is_reused(tuned: dict) -> None:
    db, first, rng = tuned["db"], tuned["stats"], tuned["rng"]
    assert (db / "database_workload.json").stat().st_size > 0
    assert (db / "database_tuning_record.json").stat().st_size > 0
    target = tvm.target.Target(X86)
    # a second model with the same layer shape (different weights) tunes and measures nothing
    other = _dense_relu(rng)
    mod, shape = _import(other)
    second = compile_relax(mod, target, tune_trials=2, tuning_db=str(db))[1]
    # nothing tuned or measured, the task reused (counted, not timed: timing is noise here)
    assert (second.tuned_tasks, second.measured_candidates, second.measured_defaults,
            second.reused_tasks) == (0, 0, 0, 1), second.as_dict()

    # no budget: the database's best record (tuned or default) is applied without measuring
    executable, again = compile_relax(mod, target, tuning_db=str(db))
    assert again.choices == first.choices, again.as_dict()
    # per function, the database's winner (the first build may have kept the whole default)
    assert all(again.rules[n] == c["winner"] for n, c in first.choices.items()), again.as_dict()
    x = rng.standard_normal(shape).astype(np.float32)
    got, want = _run_tvm(executable, x), _ort(other, x)
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def test_cuda_default_build_compiles() -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: CUDA builds need the CUDA toolkit")
    mod, _ = _import(_residual(np.random.default_rng(4)))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    executable, stats = compile_relax(mod, target)
    assert executable is not None
    assert stats.counts.get("dlight", 0) == len(stats.rules) >= 2, stats.rules


# --- transformer epilogues: intermediates read twice (GELU), multi-output, encoder block ---

def _const(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _gelu_nodes(src: str, out: str, kind: str) -> tuple[list, list]:
    """GELU of `src` as ONNX exporters write it: Erf form or the Tanh approximation."""
    p = f"{out}_"
    if kind == "erf":  # 0.5 * x * (1 + erf(x / sqrt(2)))
        nodes = [helper.make_node("Div", [src, p + "sqrt2"], [p + "d"]),
                 helper.make_node("Erf", [p + "d"], [p + "e"]),
                 helper.make_node("Add", [p + "e", p + "one"], [p + "e1"]),
                 helper.make_node("Mul", [src, p + "e1"], [p + "m"]),
                 helper.make_node("Mul", [p + "m", p + "half"], [out])]
        consts = [_const(p + "sqrt2", np.sqrt(2.0)), _const(p + "one", 1.0),
                  _const(p + "half", 0.5)]
    else:  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        nodes = [helper.make_node("Mul", [src, src], [p + "x2"]),
                 helper.make_node("Mul", [p + "x2", src], [p + "x3"]),
                 helper.make_node("Mul", [p + "x3", p + "c"], [p + "cx3"]),
                 helper.make_node("Add", [src, p + "cx3"], [p + "in"]),
                 helper.make_node("Mul", [p + "in", p + "k"], [p + "kin"]),
                 helper.make_node("Tanh", [p + "kin"], [p + "t"]),
                 helper.make_node("Add", [p + "t", p + "one"], [p + "t1"]),
                 helper.make_node("Mul", [src, p + "t1"], [p + "m"]),
                 helper.make_node("Mul", [p + "m", p + "half"], [out])]
        consts = [_const(p + "c", 0.044715), _const(p + "k", np.sqrt(2.0 / np.pi)),
                  _const(p + "one", 1.0), _const(p + "half", 0.5)]
    return nodes, consts


def _dense_gelu(rng, kind: str, rows: int) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["a"])]
    gelu, consts = _gelu_nodes("a", "y", kind)
    return _model(nodes + gelu, [_w(rng, "W", (16, 32)), _w(rng, "B", (32,)), *consts],
                  [rows, 16])


def _update_nest(func: object, before: int = 4, after: int = 0) -> str:
    """TVMScript lines around a scheduled function's reduction update block: the loops
    just above it (tile widths, unrolling) and/or its body below."""
    lines = func.script().splitlines()
    update = next(i for i, line in enumerate(lines) if '_update"' in line)
    return "\n".join(lines[update - before:update + after])


def _check(model: onnx.ModelProto, x: np.ndarray, target: dict = X86) -> BuildStats:
    mod, _ = _import(model)
    executable, stats = compile_relax(mod, tvm.target.Target(target))
    got, want = _run_tvm(executable, x), _ort(model, x)
    assert got.shape == want.shape
    rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    assert rel <= RTOL, f"rel error {rel:.2e}; rules {stats.rules}"
    for name, rule in stats.rules.items():  # a fallback always says why
        if rule == "fallback":
            assert stats.fallback_reasons.get(name), (name, stats.fallback_reasons)
    return stats


def _matmul_rules(stats: BuildStats) -> dict[str, str]:
    return {n: r for n, r in stats.rules.items() if "matmul" in n}


@pytest.mark.parametrize("kind,rows,kernel", [("erf", 8, "contraction-tile"),
                                              ("tanh", 8, "contraction-tile"),
                                              ("erf", 2, "contraction-gemv")])
def test_dense_bias_gelu_scheduled_and_exact(kind: str, rows: int, kernel: str) -> None:
    """GELU reads `x = matmul + bias` twice: the epilogue is a DAG, not a chain."""
    rng = np.random.default_rng(5)
    model = _dense_gelu(rng, kind, rows)
    stats = _check(model, rng.standard_normal((rows, 16)).astype(np.float32))
    matmuls = _matmul_rules(stats)
    assert list(matmuls.values()) == [kernel], stats.as_dict()
    assert stats.counts.get("fallback", 0) == 0, stats.fallback_reasons


def test_epilogue_intermediate_is_also_an_output() -> None:
    """`a = matmul + bias` is both returned and read twice by SiLU (a * sigmoid(a))."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["s"]),
             helper.make_node("Mul", ["a", "s"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [8, 32])],
        [_w(rng, "W", (16, 32)), _w(rng, "B", (32,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    mod, _ = _import(model)
    executable, stats = compile_relax(mod, tvm.target.Target(X86))
    x = rng.standard_normal((8, 16)).astype(np.float32)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, w in zip(got, want, strict=True):
        rel = float(np.abs(g - w).max() / np.abs(w).max())
        assert rel <= RTOL, (rel, stats.rules)
    assert all(r.startswith("contraction-") for r in _matmul_rules(stats).values()), stats.rules
    assert _matmul_rules(stats), stats.rules


def _encoder(rng, seq: int = 8, hidden: int = 16, heads: int = 2, ffn: int = 32
             ) -> onnx.ModelProto:
    """A BERT layer: attention (Q/K/V, heads, softmax), residual + LayerNorm, GELU FFN."""
    dh = hidden // heads
    n = helper.make_node
    nodes, inits = [], []
    for p in "qkv":
        nodes += [n("MatMul", ["x", f"W{p}"], [f"{p}m"]), n("Add", [f"{p}m", f"B{p}"], [p]),
                  n("Reshape", [p, "heads_shape"], [f"{p}r"])]
        inits += [_w(rng, f"W{p}", (hidden, hidden)), _w(rng, f"B{p}", (hidden,))]
    nodes += [n("Transpose", ["qr"], ["qh"], perm=[0, 2, 1, 3]),
              n("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1]),
              n("Transpose", ["vr"], ["vh"], perm=[0, 2, 1, 3]),
              n("MatMul", ["qh", "kt"], ["sc"]), n("Mul", ["sc", "scale"], ["scs"]),
              n("Softmax", ["scs"], ["pr"], axis=-1), n("MatMul", ["pr", "vh"], ["ctx"]),
              n("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              n("Reshape", ["ctxt", "merge_shape"], ["ctxm"]),
              n("MatMul", ["ctxm", "Wo"], ["om"]), n("Add", ["om", "Bo"], ["o"]),
              n("Add", ["o", "x"], ["r1"]),
              n("LayerNormalization", ["r1", "G1", "Z1"], ["h1"], axis=-1, epsilon=1e-5),
              n("MatMul", ["h1", "W1"], ["f1m"]), n("Add", ["f1m", "B1"], ["f1"])]
    gelu, consts = _gelu_nodes("f1", "g", "erf")
    nodes += gelu + [n("MatMul", ["g", "W2"], ["f2m"]), n("Add", ["f2m", "B2"], ["f2"]),
                     n("Add", ["f2", "h1"], ["r2"]),
                     n("LayerNormalization", ["r2", "G2", "Z2"], ["y"], axis=-1, epsilon=1e-5)]
    inits += [numpy_helper.from_array(np.array([1, seq, heads, dh], np.int64), "heads_shape"),
              numpy_helper.from_array(np.array([1, seq, hidden], np.int64), "merge_shape"),
              _const("scale", 1.0 / np.sqrt(dh)),
              _w(rng, "Wo", (hidden, hidden)), _w(rng, "Bo", (hidden,)),
              _w(rng, "G1", (hidden,)), _w(rng, "Z1", (hidden,)),
              _w(rng, "W1", (hidden, ffn)), _w(rng, "B1", (ffn,)),
              _w(rng, "W2", (ffn, hidden)), _w(rng, "B2", (hidden,)),
              _w(rng, "G2", (hidden,)), _w(rng, "Z2", (hidden,)), *consts]
    return _model(nodes, inits, [1, seq, hidden])


def test_bert_encoder_block_matches_onnxruntime() -> None:
    rng = np.random.default_rng(7)
    model = _encoder(rng)
    stats = _check(model, rng.standard_normal((1, 8, 16)).astype(np.float32))
    matmuls = _matmul_rules(stats)
    # Q/K/V, QK^T, PV, output projection, FFN up (+GELU) and down: all on the kernels
    assert len(matmuls) >= 4, stats.rules
    assert all(r.startswith("contraction-") for r in matmuls.values()), stats.as_dict()


def _unguarded_epilogue_rule(sch, cpu):
    """The pre-fix epilogue folding: reverse-inline every block after the matmul, even an
    intermediate with two consumers. TVM accepts it and the function no longer lowers."""
    from compress_ir.backend.schedule.analysis import root_blocks

    blocks = root_blocks(sch)
    mains = [b for b in blocks if b.contraction]
    if len(mains) != 1:
        return None
    sch.cache_write(mains[0].rv, 0, "local")
    for info in root_blocks(sch)[2:]:
        try:
            sch.reverse_compute_inline(info.rv)
        except tvm.s_tir.ScheduleError:
            pass
    return "contraction-broken"


def test_unlowerable_schedule_falls_back_with_reason(monkeypatch) -> None:
    from compress_ir.backend.schedule import cpu

    monkeypatch.setattr(cpu, "CPU_RULES", (_unguarded_epilogue_rule,))
    rng = np.random.default_rng(8)
    model = _dense_gelu(rng, "erf", 8)
    stats = _check(model, rng.standard_normal((8, 16)).astype(np.float32))
    assert "contraction-broken" not in stats.rules.values(), stats.rules
    (name,) = _matmul_rules(stats)
    assert stats.rules[name] == "fallback"
    assert "used before its definition" in stats.fallback_reasons[name], stats.fallback_reasons
    assert "contraction-broken schedule does not lower" in stats.fallback_reasons[name]


def _mobilenet_block(rng: np.random.Generator) -> onnx.ModelProto:
    """MobileNetV2 inverted residual + head: ReLU6 is ONNX Clip(0, 6) with constant bounds."""
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["e"], kernel_shape=[1, 1]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
        helper.make_node("Conv", ["e6", "W2", "B2"], ["d"], kernel_shape=[3, 3], pads=[1] * 4,
                         group=24),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
        helper.make_node("Conv", ["d6", "W3", "B3"], ["p"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["p", "x"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1),
    ]
    inits = [_w(rng, "W1", (24, 8, 1, 1)), _w(rng, "B1", (24,)), _w(rng, "W2", (24, 1, 3, 3)),
             _w(rng, "B2", (24,)), _w(rng, "W3", (8, 24, 1, 1)), _w(rng, "B3", (8,)),
             _w(rng, "Wf", (10, 8)), _w(rng, "Bf", (10,)), _const("lo", 0.0), _const("hi", 6.0)]
    return _model(nodes, inits, [1, 8, 9, 9])


def _count_ops(mod: tvm.IRModule, name: str) -> int:
    found = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: found.append(
        isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name))
    return sum(found)


def test_relu6_block_stays_nhwc_and_matches_onnxruntime() -> None:
    """Clip imports as TE call_tirs that ConvertLayout cannot see through: without lifting
    them, every ReLU6 is wrapped in NHWC->NCHW->NHWC transposes and the pool stays NCHW."""
    from compress_ir.backend.schedule.pipeline import CPU_LAYOUTS, layout_passes

    rng = np.random.default_rng(11)
    model = _mobilenet_block(rng)
    mod, shape = _import(model)
    plain = tvm.transform.Sequential([relax.transform.FoldConstant(),
                                      relax.transform.ConvertLayout(CPU_LAYOUTS)])(mod)
    lifted = tvm.transform.Sequential(layout_passes())(mod)
    assert _count_ops(plain, "relax.permute_dims") >= 6  # the unfixed layout: 2 per clip + ...
    # what is left: input NCHW->NHWC, and the (1, 1, 1, C) pooled tensor back before Flatten
    assert _count_ops(lifted, "relax.permute_dims") <= 2, lifted["main"].script()
    assert _count_ops(lifted, "relax.mean") == 1
    assert _count_ops(lifted, "relax.maximum") == 2 and _count_ops(lifted, "relax.minimum") == 2
    assert _count_ops(lifted, "relax.call_tir") == 0
    executable, _ = compile_relax(mod, tvm.target.Target(X86))
    x = (3 * rng.standard_normal(shape)).astype(np.float32)  # both clip bounds are hit
    got, want = _run_tvm(executable, x), _ort(model, x)
    assert got.shape == want.shape
    rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    assert rel <= RTOL, rel


def test_lift_only_takes_provable_scalar_max_min() -> None:
    """A TE kernel is lifted on what its TIR computes, never on its name."""
    from tvm import te, topi

    from compress_ir.backend.schedule.lift import scalar_binary_op

    x = te.placeholder((1, 4, 3, 3), name="x")
    s = te.placeholder((), name="s")
    full = te.placeholder((1, 4, 3, 3), name="full")
    cases = {
        "maximum": (topi.maximum(x, s), [x, s], relax.op.maximum),
        "minimum": (topi.minimum(x, s), [x, s], relax.op.minimum),
        "add": (topi.add(x, s), [x, s], None),
        "max_full": (topi.maximum(x, full), [x, full], None),
        "max_swapped": (topi.maximum(s, x), [s, x], None),
    }
    for name, (out, ins, want) in cases.items():
        func = te.create_prim_func([*ins, out]).with_attr("global_symbol", "maximum")
        assert scalar_binary_op(func) is want, name


def _bn_relu_conv(rng: np.random.Generator, cout: int) -> onnx.ModelProto:
    """A pruned stem as exports write it: conv, then BatchNorm as Mul + Add, then ReLU."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1] * 4),
             helper.make_node("Mul", ["c", "S"], ["m"]), helper.make_node("Add", ["m", "T"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    inits = [_w(rng, "W", (cout, 3, 3, 3)), _w(rng, "B", (cout,)),
             _w(rng, "S", (1, cout, 1, 1)), _w(rng, "T", (1, cout, 1, 1))]
    return _model(nodes, inits, [1, 3, 16, 16])


@pytest.mark.parametrize("cout,piece,pieces,update_full", [(12, 4, 3, 1), (48, 16, 3, 0)])
def test_tile_writeback_uses_power_of_two_vectors(cout: int, piece: int, pieces: int,
                                                  update_full: int) -> None:
    """The tile's init and write-back run in power-of-two vectors: as one 12- or 48-wide
    vector, a folded `(acc + b) * s + t` write-back ran 5x / 1.8x slower (Intel AVX-512)."""
    rng = np.random.default_rng(cout)
    model = _bn_relu_conv(rng, cout)
    func, rule = _scheduled(model, "conv2d", CpuParams(lanes=16, registers=32))
    assert rule == "contraction-tile", rule
    script = func.script()
    # only the update keeps a 12-wide vector (its FMAs were fine); 48 is three there too
    assert script.count(f"T.vectorized(T.int64({cout}))") == update_full, script
    assert script.count(f"T.unroll(T.int64({pieces}))") >= 2  # init and write-back
    assert f"T.vectorized(T.int64({piece}))" in script
    _check(model, rng.standard_normal((1, 3, 16, 16)).astype(np.float32))


def test_ragged_channel_rows_are_not_vectorised_across_rows() -> None:
    """HardSwish on 14x14x120 NHWC (MobileNetV3): vectorised by 16 over the fused loops, a
    lane could straddle a 120-channel row, so every lane took its own div/mod and a gather
    (39 us; 4 us as rows of plain loops that LLVM vectorises). Exact vs onnxruntime."""
    rng = np.random.default_rng(21)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("HardSwish", ["a"], ["h"]),
             helper.make_node("Conv", ["h", "W2"], ["y"], kernel_shape=[1, 1])]
    model = _model(nodes, [_w(rng, "W1", (120, 8, 1, 1)), _w(rng, "W2", (8, 120, 1, 1))],
                   [1, 8, 14, 14])
    func, rule = _scheduled(model, "clip", CpuParams(lanes=16, registers=32))
    assert rule == "injective", rule
    script = func.script()
    assert "% T.int64(120)" not in script, script  # no lane computes its channel by mod
    lines = script.splitlines()
    block = next(i for i, line in enumerate(lines) if line.strip().startswith("with T.sblock"))
    innermost = lines[block - 1]
    assert innermost.rstrip().endswith("T.int64(120)):"), innermost  # the row, one plain loop
    _check(model, rng.standard_normal((1, 8, 14, 14)).astype(np.float32))


def test_channel_shuffle_runs_as_plain_rows() -> None:
    """An NHWC channel shuffle (ShuffleNet: reshape, transpose, reshape) reads channel
    (c % 4) * 8 + c // 4: vectorised by 16, every lane computed its own 64-bit div/mod and
    gathered (89 us vs 23 us as plain rows, 14x14x272). Exact vs onnxruntime."""
    rng = np.random.default_rng(22)

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["a", "s1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "s2"], ["r2"]),
             helper.make_node("Relu", ["r2"], ["h"]),
             helper.make_node("Conv", ["h", "W2"], ["y"], kernel_shape=[1, 1])]
    inits = [_w(rng, "W1", (32, 8, 1, 1)), _w(rng, "W2", (8, 32, 1, 1)),
             ints("s1", [1, 4, 8, 10, 10]), ints("s2", [1, 32, 10, 10])]
    model = _model(nodes, inits, [1, 8, 10, 10])
    func, rule = _scheduled(model, "relu", CpuParams(lanes=16, registers=32))
    assert rule == "injective", rule
    script = func.script()
    assert "T.vectorized" not in script, script  # 32 channels would be two 16-lane vectors
    lines = script.splitlines()
    block = next(i for i, line in enumerate(lines) if line.strip().startswith("with T.sblock"))
    assert lines[block - 1].rstrip().endswith("T.int64(32)):"), lines[block - 1]
    _check(model, rng.standard_normal((1, 8, 10, 10)).astype(np.float32))
