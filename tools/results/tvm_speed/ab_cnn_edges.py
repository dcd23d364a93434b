"""Before/after of the CNN-edge schedules (blocked transposes, short-axis padding), one process.

Not a test. Builds each model (dense and `channel-prune{ratio=0.5}`) twice: with today's
default rules and with the rules as they were before this change (no `rule_transpose`;
padding with a short innermost axis fused into one scalar loop: emulated by patching
`cpu.py`), then times onnxruntime and both TVM builds in interleaved rounds (one run of
each per round, rotating order) at each thread count. Writes a markdown table.

    python tools/results/tvm_speed/ab_cnn_edges.py --models mobilenet_v2,resnet18 --threads 1,2
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import tvm  # noqa: E402
from ab_schedules import compare  # noqa: E402
from bench_tvm import input_spec  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

import compress_ir.passes  # noqa: F401,E402
from compress_ir.backend.schedule import compile_relax  # noqa: E402
from compress_ir.backend.schedule import cpu as cpu_rules  # noqa: E402


def _old_injective(sch, block, cpu) -> None:  # noqa: ANN001
    """`schedule_injective` before this change: a short innermost axis was fused."""
    loops = sch.get_loops(block)
    if not loops:
        return
    last = cpu_rules._extent(sch, loops[-1])
    if len(loops) > 1 and last is not None and last % cpu.lanes == 0:
        outer, inner = sch.split(loops[-1], [None, cpu.lanes])
        sch.parallel(sch.fuse(*loops[:-1], outer))
        sch.vectorize(inner)
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
    saved = (cpu_rules.CPU_RULES, cpu_rules.schedule_injective)
    if legacy:
        cpu_rules.CPU_RULES = tuple(r for r in saved[0] if r is not cpu_rules.rule_transpose)
        cpu_rules.schedule_injective = _old_injective
    try:
        ex, _stats = compile_relax(mod, target)
    finally:
        cpu_rules.CPU_RULES, cpu_rules.schedule_injective = saved
    return relax.VirtualMachine(ex, tvm.cpu())


def main() -> int:
    return compare(build, "mobilenet_v2,resnet18")


if __name__ == "__main__":
    sys.exit(main())
