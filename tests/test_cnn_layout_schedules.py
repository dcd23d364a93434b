"""CNN edges on CPU: blocked transposes (`schedule/transpose.py`) and short-axis padding.

The 3-colour stem padding was the largest TVM-vs-onnxruntime gap of pruned MobileNetV2 (a
scalar loop with a div/mod per element), NHWC -> NCHW transposes thrashed L1. Each case
must take the intended schedule (no fallback) and match onnxruntime, also for extents
that no tile divides (primes) and for a permutation that is not a layout change.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from onnx import helper  # noqa: E402
from test_schedule import _check, _import, _model, _w  # noqa: E402
from tvm import s_tir  # noqa: E402
from tvm.target import Target  # noqa: E402

from compress_ir.backend.schedule import transpose  # noqa: E402
from compress_ir.backend.schedule.cpu import CpuParams, schedule_cpu_func  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402


def _transposes(stats) -> dict[str, str]:
    return {n: r for n, r in stats.rules.items() if n.startswith("transpose")}


@pytest.mark.parametrize("perm,shape,rule", [
    ([0, 3, 1, 2], [1, 13, 32, 5], "transpose-tile"),   # NHWC -> NCHW, 5 channels
    ([0, 3, 1, 2], [1, 7, 48, 17], "transpose-tile"),   # prime channel count (tiles of 1)
    ([2, 0, 1], [7, 32, 19], "transpose-tile"),         # not a layout change
    ([0, 2, 3, 1], [1, 3, 20, 24], "injective"),        # NCHW -> NHWC, 3 colours innermost
    ([0, 3, 1, 2], [1, 56, 56, 24], "transpose-tile"),  # 56-wide rows: 8-lane vectors
    ([0, 3, 1, 2], [1, 14, 14, 40], "transpose-tile"),  # 14-wide rows: 2-lane vectors
    ([0, 3, 1, 2], [1, 7, 7, 24], "injective"),         # odd rows: no vector divides
])
def test_transpose_schedule_matches(perm: list[int], shape: list[int], rule: str) -> None:
    rng = np.random.default_rng(0)
    model = _model([helper.make_node("Transpose", ["x"], ["y"], perm=perm)], [], shape)
    stats = _check(model, rng.standard_normal(shape).astype(np.float32))
    rules = _transposes(stats)
    assert rules and set(rules.values()) == {rule}, stats.as_dict()


@pytest.mark.parametrize("width,lanes", [(56, 8), (28, 4), (32, 16), (14, 2)])
def test_transpose_rows_take_the_widest_dividing_vector(width: int, lanes: int) -> None:
    """NHWC -> NCHW of a ResNet feature map: 56-wide rows ran through the injective rule
    (256x56x56: 5.5 ms, 0.55 ms tiled with 8-lane vectors on an AVX-512 host)."""
    shape = [1, 4, width, 32]
    model = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])], [], shape)
    mod = prepare(_import(model)[0], Target({"kind": "llvm"}))
    (func,) = [f for gv, f in mod.functions_items() if gv.name_hint.startswith("transpose")]
    sch = s_tir.Schedule(func)
    assert transpose.rule_transpose(sch, 16) == "transpose-tile"
    assert f"T.vectorized(T.int64({lanes}))" in sch.mod["main"].script()


def test_stem_conv_padding_and_layout_match() -> None:
    """A MobileNet stem: 3 colours, 3x3, stride 2, pad 1, ReLU6 (padding inside the conv)."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [n("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1]),
             n("Clip", ["c", "lo", "hi"], ["y"])]
    inits = [_w(rng, "W", (16, 3, 3, 3)), _w(rng, "B", (16,)),
             helper.make_tensor("lo", 1, [], [0.0]), helper.make_tensor("hi", 1, [], [6.0])]
    model = _model(nodes, inits, [1, 3, 30, 30])
    stats = _check(model, rng.standard_normal((1, 3, 30, 30)).astype(np.float32))
    convs = {r for name, r in stats.rules.items() if "conv2d" in name}
    assert convs == {"contraction-tile"}, stats.as_dict()
    assert "fallback" not in stats.rules.values(), stats.as_dict()


def test_short_axis_padding_has_no_fused_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stem's padding block runs as a parallel row loop over plain inner loops: no loop
    of its nest spans the fused (x, channel) index any more. (At this size the kernel would
    run serial: the threshold is lifted to see the parallel loop structure.)"""
    from tvm import tirx
    from tvm.relax.frontend.onnx import from_onnx

    from compress_ir.backend.schedule import parallel
    from compress_ir.backend.schedule.pipeline import prepare

    monkeypatch.setattr(parallel, "MIN_PARALLEL_WORK", 0)
    rng = np.random.default_rng(2)
    node = helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = _model([node], [_w(rng, "W", (16, 3, 3, 3))], [1, 3, 12, 12])
    target = tvm.target.Target({"kind": "llvm"})
    mod = prepare(from_onnx(model, shape_dict={"x": [1, 3, 12, 12]},
                            keep_params_in_input=False), target)
    conv = next(f for gv, f in mod.functions_items()
                if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    func, rule, _ = schedule_cpu_func(conv, CpuParams(lanes=8, registers=16), target)
    assert rule == "contraction-tile"
    script = func.script()
    # padded input 14x14x3: its 14 rows in parallel, x and channel loops inside (before: one
    # fused parallel loop of 588 with a div/mod per element)
    assert "T.parallel(T.int64(588))" not in script, script
    assert "T.parallel(T.int64(14))" in script, script
