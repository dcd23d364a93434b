"""Before/after of the issue-13 default schedules, side by side in one process (not a test).

Builds each model (dense and `channel-prune{ratio=0.5}`) twice: with today's default rules
and with the rules as they were before (no depthwise kernel, 1x1-conv padding copies
materialised, injective blocks vectorised over fused loops: emulated by patching
`cpu.py`), then times onnxruntime and both TVM builds in interleaved rounds (one run of
each per round, rotating order) at each thread count. Writes a markdown table.

    python tools/results/tvm_speed/ab_schedules.py --models resnet18,mobilenet_v2 --threads 1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
import tvm_threads  # noqa: E402
from bench_tvm import (  # noqa: E402
    host_target,
    input_spec,
    load_fixture,
    ort_session,
)
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

import compress_ir.passes  # noqa: F401,E402
from compress_ir.api import compress  # noqa: E402
from compress_ir.backend.benchmark import environment, interleaved, summarize  # noqa: E402
from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule import cpu as cpu_rules  # noqa: E402


def _old_injective(sch, block, cpu) -> None:  # noqa: ANN001
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = cpu_rules._extent(sch, fused)
    if ext is None or ext <= 1:
        return
    if ext % cpu.lanes == 0 and ext >= 2 * cpu.lanes:
        outer, inner = sch.split(fused, [None, cpu.lanes])
        sch.parallel(outer)
        sch.vectorize(inner)
    else:
        sch.parallel(fused)


def build(proto, target, legacy: bool):  # noqa: ANN001, ANN201
    name, shape = input_spec(proto)
    mod = from_onnx(proto, shape_dict={name: shape}, keep_params_in_input=False)
    saved = (cpu_rules.CPU_RULES, cpu_rules._inline_copies, cpu_rules.schedule_injective)
    if legacy:
        cpu_rules.CPU_RULES = (cpu_rules.rule_reduction_tile, cpu_rules.rule_injective)
        cpu_rules._inline_copies = lambda *_a: None
        cpu_rules.schedule_injective = _old_injective
    try:
        ex, _stats = compile_relax(mod, target)
    finally:
        cpu_rules.CPU_RULES, cpu_rules._inline_copies, cpu_rules.schedule_injective = saved
    return relax.VirtualMachine(ex, tvm.cpu())


def main() -> int:
    return compare(build, "resnet18,mobilenet_v2")


def compare(build_fn, default_models: str) -> int:  # noqa: ANN001 - build(proto, target, legacy)
    """ORT vs the `legacy` and current TVM builds of `build_fn`, interleaved, as a table
    (shared by the before/after scripts in this folder)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=default_models)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    target = host_target()
    env = environment()
    print(f"CPU: {env['cpu']} ({env['cpu_count']} CPUs), target `{target}`; medians of "
          f"{args.repeat} interleaved rounds (ms); ORT/TVM ≥ 1: TVM faster\n")
    print("| model | thr | ORT ms | TVM before ms | TVM after ms | after/before speed-up "
          "| ORT/TVM before | ORT/TVM after | max rel err after |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for model in args.models.split(","):
        dense = load_fixture(model, 0)
        for label, proto in (("dense", dense),
                             ("pruned 0.5", compress(dense, "channel-prune{ratio=0.5}",
                                                     check=False).model)):
            in_name, shape = input_spec(proto)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            xt = tvm.runtime.tensor(x)
            vms = {"before": build_fn(proto, target, True),
                   "after": build_fn(proto, target, False)}
            for threads in [int(t) for t in args.threads.split(",")]:
                tvm_threads.require(threads)  # run once per count: TVM_NUM_THREADS=N
                sess = ort_session(proto, threads, spin=False)
                want = sess.run(None, {in_name: x})[0]
                got = vms["after"]["main"](xt)
                got = (got if hasattr(got, "numpy") else got[0]).numpy()
                err = float(np.abs(got - want).max() / np.abs(want).max())

                def timer(fn):  # noqa: ANN001, ANN202
                    def once() -> float:
                        t0 = time.perf_counter()
                        fn()
                        return (time.perf_counter() - t0) * 1e3
                    return once

                samples = interleaved({
                    "ort": timer(lambda s=sess, f={in_name: x}: s.run(None, f)),
                    "before": timer(lambda v=vms["before"], a=xt: v["main"](a)),
                    "after": timer(lambda v=vms["after"], a=xt: v["main"](a))}, args.repeat)
                med = {k: summarize(v)["median_ms"] for k, v in samples.items()}
                print(f"| {model} {label} | {threads} | {med['ort']:.2f} | {med['before']:.2f} "
                      f"| {med['after']:.2f} | {med['before'] / med['after']:.2f} "
                      f"| {med['ort'] / med['before']:.2f} | {med['ort'] / med['after']:.2f} "
                      f"| {err:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
