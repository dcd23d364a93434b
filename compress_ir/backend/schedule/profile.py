"""Per-operator time of a compiled model, in op classes that onnxruntime's profile also has.

Why: end-to-end ratios say TVM is slower, not where. TVM 0.27's Relax VM has no profiler
any more, but it calls an instrument before and after every call instruction; timing the
kernel calls there (in place, with the real inputs and caches) gives per-PrimFunc times.
onnxruntime's own profiler gives per-node times. Both are grouped into the same op classes
(conv KxK, conv 1x1, depthwise, gemm, pooling, element-wise, layout) so the largest gap can
be attacked first, and so tuning can spend its budget on the functions that cost the most.

PrimFuncs are classified by structure (a contraction block reading a constant HWIO weight,
a reduction without multiply, all-spatial blocks), never by their generated names alone.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from typing import Any

import onnx
import tvm
from tvm import s_tir, tirx

from compress_ir.backend.schedule import inplace
from compress_ir.backend.schedule.analysis import root_blocks

LAYOUT_BLOCKS = ("T_transpose", "T_reshape", "T_layout_trans", "T_squeeze", "T_expand_dims",
                 "T_strided_slice", "T_concat", "concatenate", "PadInput")
OTHER = "other"
OVERHEAD = "run − Σ kernels (framework, preemption)"
PREPACKED = "_prepacked"  # suffix SplitLayoutRewritePreproc gives a function


def _ints(shape: Any) -> list[int] | None:
    try:
        return [int(d) for d in shape]
    except TypeError:
        return None


def conv_class(kh: int, kw: int, in_channels: int, in_per_group: int) -> str:
    """The op class of a 2-D conv from its kernel size and channel grouping."""
    if in_per_group == 1 and in_channels > 1:
        return "depthwise conv"
    if in_per_group != in_channels:
        return "grouped conv"
    return "conv 1x1" if (kh, kw) == (1, 1) else f"conv {kh}x{kw}"


def _weight_of(func: tirx.PrimFunc, reads: list) -> list[int] | None:
    """Shape of the constant (layout-free) weight the contraction reads, if any."""
    free = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    names = {func.params[int(i)].name for i in free} if free else set()  # 0.27: buffers
    for region in reads:
        if region.source.name in names:
            return _ints(region.source.shape)
    return None


def tir_class(func: tirx.PrimFunc) -> str:
    """Op class of an (unscheduled, NHWC) fused PrimFunc, from its block structure."""
    sch = s_tir.Schedule(func)
    infos = root_blocks(sch)
    reductions = [i for i in infos if i.is_reduction]
    if not reductions:
        names = [i.name for i in infos]
        if names and all(n.startswith(LAYOUT_BLOCKS) for n in names):
            return "layout (transpose/reshape)"
        return "element-wise" if infos else OTHER
    main = reductions[0]
    if not main.contraction:
        return "pooling/reduce"
    block = sch.get(main.rv)
    weight = _weight_of(sch.mod["main"], list(block.reads))
    if weight is not None and len(weight) == 4:  # HWIO after the NHWC conversion
        data = _ints(sch.mod["main"].params[0].shape) if sch.mod["main"].params else None
        in_channels = data[-1] if data else weight[2]
        return conv_class(weight[0], weight[1], in_channels, weight[2])
    return "gemm/matmul"


def tir_workload(func: tirx.PrimFunc) -> tuple[int, int] | None:
    """(output elements, multiply-adds per output) of a fused function's contraction.

    Why: op classes pool every 3x3 conv of a model; a gap hides in one shape (a stride-2
    layer, a 56x56 one). These two numbers also come out of onnxruntime's profile
    (`ort_workload`), whatever either runtime's layout, so kernels and nodes of the same
    layer meet under one key.
    """
    sch = s_tir.Schedule(func)
    main = next((i for i in root_blocks(sch) if i.is_reduction and i.contraction), None)
    if main is None:
        return None
    spatial = reduce_ = 1
    for iv in sch.get(main.rv).iter_vars:
        if not isinstance(iv.dom.extent, tirx.IntImm):
            return None
        if iv.iter_type == tirx.IterVar.CommReduce:
            reduce_ *= int(iv.dom.extent)
        else:
            spatial *= int(iv.dom.extent)
    return spatial, reduce_


def workload_module(mod: tvm.IRModule) -> dict[str, tuple[int, int]]:
    """{PrimFunc name: `tir_workload`} for the contractions of a prepared module."""
    keys = _per_function(mod, tir_workload, None)
    return {name: key for name, key in keys.items() if key is not None}


def _per_function(mod: tvm.IRModule, fn: Any, fallback: Any) -> dict[str, Any]:
    """{PrimFunc name: fn(func)}; `fallback` where `fn` fails on an unusual function (it is
    still profiled, just not classified)."""
    out = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            try:
                out[gv.name_hint] = fn(func)
            except Exception:  # noqa: BLE001 - see the docstring
                out[gv.name_hint] = fallback
    return out


def ort_workload(node: onnx.NodeProto, input_shapes: list[list[int]],
                 output_shapes: list[list[int]]) -> tuple[int, int] | None:
    """`tir_workload`'s key for an onnxruntime conv / matmul node, from its profiled shapes
    (NCHW or blocked NCHWc output; the weight's elements per output channel are the
    multiply-adds per output, whatever blocked layout holds them; a matmul's come from its
    first input)."""
    if not output_shapes or not input_shapes:
        return None
    out = output_shapes[0]
    elems = 1
    for d in out:
        elems *= d
    if node.op_type in ("Conv", "FusedConv") and len(out) >= 4 and len(input_shapes) > 1:
        per_weight = 1
        for d in input_shapes[1]:
            per_weight *= d
        channels = _channels(out)
        return (elems, per_weight // channels) if channels and per_weight % channels == 0 \
            else None
    if node.op_type in ("MatMul", "FusedMatMul", "Gemm", "FusedGemm") \
            and len(input_shapes[0]) >= 2:
        # from A: a prepacked constant B is not among the profiled inputs
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return elems, input_shapes[0][-2 if attrs.get("transA", 0) else -1]
    return None


def classify_module(mod: tvm.IRModule) -> dict[str, str]:
    """{PrimFunc name: op class} for every PrimFunc of a prepared (fused) module."""
    return _per_function(mod, tir_class, OTHER)


class VMCallTimer:
    """Times every call instruction of a Relax VM run in place, one run at a time.

    The instrument wraps each call (inputs, memory and caches as in a normal run); a
    function called several times per run is summed within the run. `run()` can be
    interleaved with another runtime's runs so that machine noise hits both alike. The
    whole-run time includes the instrument's Python callbacks (tens of microseconds per
    call instruction: compare whole runs without the instrument); a kernel's own interval
    includes only a few microseconds of it (measured on empty builtins).
    """

    def __init__(self, vm: Any, args: list[Any]) -> None:
        self.vm, self.args = vm, args
        self.per_run: list[dict[str, float]] = []
        self.totals: list[float] = []
        self.calls: dict[str, int] = {}

    def run(self) -> None:
        """One instrumented run of `main`, recorded."""
        current: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        starts: list[float] = []

        def instrument(_func: Any, symbol: str, before: bool, _ret: Any, *_a: Any) -> int:
            now = time.perf_counter()
            if before:
                starts.append(now)
            else:
                current[symbol] += (now - starts.pop()) * 1e3
                calls[symbol] += 1
            return 0

        self.vm.set_instrument(instrument)
        try:
            t0 = time.perf_counter()
            self.vm["main"](*self.args)
            self.totals.append((time.perf_counter() - t0) * 1e3)
        finally:
            self.vm.set_instrument(None)
        self.per_run.append(dict(current))
        self.calls = dict(calls)

    def medians(self) -> tuple[dict[str, float], float]:
        """Median per-run ms of every called function, and of the whole run."""
        names = {n for run in self.per_run for n in run}
        return ({n: statistics.median(run.get(n, 0.0) for run in self.per_run) for n in names},
                statistics.median(self.totals))


def kernel_name(symbol: str) -> str:
    """The prepared module's name of a called kernel (weight pre-packing and the in-place
    copy of a residual kernel rename it)."""
    return re.sub(rf"{inplace.SUFFIX}\d+$", "", symbol).removesuffix(PREPACKED)


# onnxruntime op types (also its NCHWc / fused contrib forms) -> op class
ORT_CLASSES: dict[str, str] = {
    "Gemm": "gemm/matmul", "MatMul": "gemm/matmul", "FusedMatMul": "gemm/matmul",
    "FusedGemm": "gemm/matmul",
    "MaxPool": "pooling/reduce", "AveragePool": "pooling/reduce",
    "GlobalAveragePool": "pooling/reduce", "GlobalMaxPool": "pooling/reduce",
    "ReduceMean": "pooling/reduce",
    "ReorderInput": "layout (transpose/reshape)", "ReorderOutput": "layout (transpose/reshape)",
    "Transpose": "layout (transpose/reshape)", "Reshape": "layout (transpose/reshape)",
    "Flatten": "layout (transpose/reshape)", "Squeeze": "layout (transpose/reshape)",
    "Unsqueeze": "layout (transpose/reshape)", "Concat": "layout (transpose/reshape)",
    "Add": "element-wise", "Sum": "element-wise", "Mul": "element-wise", "Relu": "element-wise",
    "Clip": "element-wise", "Sigmoid": "element-wise", "HardSigmoid": "element-wise",
    "HardSwish": "element-wise", "BatchNormalization": "element-wise",
}


def _channels(shape: list[int] | None) -> int | None:
    """Channels of an NCHW tensor, or of onnxruntime's blocked NCHWc [N, C/b, H, W, b]."""
    if not shape or len(shape) < 2:
        return None
    return shape[1] * shape[4] if len(shape) == 5 else shape[1]


def ort_node_class(node: onnx.NodeProto, input_shapes: list[list[int]]) -> str:
    """Op class of an onnxruntime (optimised graph) node; `input_shapes` are the shapes of
    its inputs as its profiler recorded them (data channels and weight give the grouping)."""
    if node.op_type not in ("Conv", "FusedConv"):
        return ORT_CLASSES.get(node.op_type, OTHER)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight = input_shapes[1] if len(input_shapes) > 1 else None
    kernel = list(attrs.get("kernel_shape", []))
    if len(kernel) != 2 and weight is not None and len(weight) == 4:
        kernel = weight[-2:]
    channels = _channels(input_shapes[0] if input_shapes else None)
    if len(kernel) != 2 or channels is None:
        return OTHER
    groups = int(attrs.get("group", 1))
    return conv_class(kernel[0], kernel[1], channels, channels // groups)


def group(times: dict[str, float], classes: dict[str, str],
          counts: dict[str, int] | None = None) -> dict[str, dict[str, float]]:
    """Sum per-item milliseconds into {class: {"ms": .., "count": ..}}; `counts` says how
    many calls an item stands for (default one)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "count": 0})
    for name, ms in times.items():
        entry = out[classes.get(name, OTHER)]
        entry["ms"] += ms
        entry["count"] += (counts or {}).get(name, 1)
    return dict(out)
