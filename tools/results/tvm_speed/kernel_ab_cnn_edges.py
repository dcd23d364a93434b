"""Kernel-level before/after of the CNN-edge schedules (not a test).

Each case is one fused TVM function of a small ONNX model (built here with onnx.helper),
scheduled with today's rules and with the rules before this change (as in
`ab_cnn_edges.py`), compiled alone and timed with TVM's time_evaluator (20 calls x 9
repeats, median; the two variants alternate per repeat). Kernel times are far less
disturbed by a loaded machine than whole-model runs.

    python tools/results/tvm_speed/kernel_ab_cnn_edges.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import tirx
from tvm.relax.frontend.onnx import from_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_cnn_edges import _old_injective  # noqa: E402

from compress_ir.backend.schedule import cpu as cpu_rules  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402
from compress_ir.targets.registry import spec_of_tvm_target  # noqa: E402


def conv_model(cin: int, cout: int, hw: int, k: int, stride: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32),
                                     "W"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B")]
    out = hw // stride
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[k, k],
                          strides=[stride] * 2, pads=[k // 2] * 4)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = {  # label: (model, function-name part)
    "stem 3x3 s2, 3->16 @224 (pruned MobileNetV2)": (conv_model(3, 16, 224, 3, 2), "fused_conv2d"),
    "stem 3x3 s2, 3->32 @224 (MobileNetV2)": (conv_model(3, 32, 224, 3, 2), "fused_conv2d"),
    "stem 7x7 s2, 3->64 @224 (ResNet)": (conv_model(3, 64, 224, 7, 2), "fused_conv2d"),
    "transpose NCHW->NHWC 3x224x224 (input)": (conv_model(3, 16, 224, 3, 2), "transpose2"),
    "transpose NHWC->NCHW 112x112x96 (output)": (conv_model(16, 96, 112, 1, 1), "transpose1"),
}


def _schedule(func: tirx.PrimFunc, target: tvm.target.Target, legacy: bool) -> tirx.PrimFunc:
    saved = (cpu_rules.CPU_RULES, cpu_rules.schedule_injective)
    if legacy:
        cpu_rules.CPU_RULES = tuple(r for r in saved[0] if r is not cpu_rules.rule_transpose)
        cpu_rules.schedule_injective = _old_injective
    try:
        params = cpu_rules.cpu_params(spec_of_tvm_target(target))
        new, rule, _ = cpu_rules.schedule_cpu_func(func, params, target)
    finally:
        cpu_rules.CPU_RULES, cpu_rules.schedule_injective = saved
    return new.with_attr("global_symbol", "main"), rule


def main() -> int:
    from bench_tvm import host_target  # noqa: PLC0415 - tools/ is on sys.path (ab_cnn_edges)

    target = host_target()
    print(f"target `{target}`; median ms of 9 repeats x 20 calls, variants alternating\n")
    print("| kernel | rule before | rule after | before ms | after ms | speed-up |")
    print("|---|---|---|--:|--:|--:|")
    for label, (model, part) in CASES.items():
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        mod = prepare(from_onnx(model, shape_dict={"x": shape}, keep_params_in_input=False),
                      target)
        func = next(f for gv, f in mod.functions_items()
                    if isinstance(f, tirx.PrimFunc) and gv.name_hint.startswith(part))
        dev = tvm.cpu()
        runs, rules = {}, {}
        for key, legacy in (("before", True), ("after", False)):
            sched, rules[key] = _schedule(func, target, legacy)
            lib = tvm.compile(tvm.IRModule({"main": sched}), target=target)
            rng = np.random.default_rng(0)
            args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape])
                                       .astype("float32"), dev) for p in sched.params]
            runs[key] = (lib.mod.time_evaluator("main", dev, number=20, repeat=1), args)
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(9):
            for key, (ev, args) in runs.items():
                times[key].append(ev(*args).results[0] * 1e3)
        b, a = np.median(times["before"]), np.median(times["after"])
        print(f"| {label} | {rules['before']} | {rules['after']} | {b:.3f} | {a:.3f} "
              f"| {b / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
