"""Relax pipeline around the schedules: layout, legalize + fuse, schedule, lower.

Why: `tvm.compile` on CPU runs a pipeline with no operator fusion and no schedules. Here
convs are converted to NHWC/HWIO first (output channels contiguous: the axis the CPU
kernel vectorises; weight transposes fold into the constants), ops are legalized and fused
(conv+bias+relu is one PrimFunc), and every PrimFunc is scheduled — from a tuning database
if it has a record, else by the default rules — before the usual lowering.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import tvm
from tvm import relax, tirx
from tvm.target import Target

from compress_ir.backend.schedule.analysis import is_scheduled
from compress_ir.backend.schedule.batch_norm import FoldBatchNorm
from compress_ir.backend.schedule.broadcast_rank import ExpandBroadcastRank
from compress_ir.backend.schedule.canonical import CanonicalizeAxes
from compress_ir.backend.schedule.concat_slices import concat_into_slices
from compress_ir.backend.schedule.cpu import CpuParams, cpu_params, schedule_cpu_func
from compress_ir.backend.schedule.fast_sigmoid import SigmoidAsExp
from compress_ir.backend.schedule.inplace import residual_in_place
from compress_ir.backend.schedule.lift import LiftScalarElementwise
from compress_ir.backend.schedule.pad_channels import PadOutputChannels
from compress_ir.backend.schedule.pad_keys import PadAttentionKeys
from compress_ir.backend.schedule.pad_rows import PadRows
from compress_ir.backend.schedule.prefetch import insert_weight_prefetch
from compress_ir.backend.schedule.stack_tiles import PIPELINE as CPU_TIR_PIPELINE
from compress_ir.targets.registry import spec_of_tvm_target

# Desired layouts per op for CPU targets (ConvertLayout keeps what it cannot convert).
# conv2d_transpose stays NCHW explicitly: without an entry the pass hands it the NHWC
# data of its producer, and TVM 0.27 legalizes conv2d_transpose only for NCHW/IOHW (the
# call then reaches VM codegen unlowered: "CodeGenVM cannot emit this Relax operator").
CPU_LAYOUTS: dict[str, list[str]] = {
    "relax.nn.conv2d": ["NHWC", "HWIO"],
    "relax.nn.conv2d_transpose": ["NCHW", "IOHW"],
}


@dataclass
class BuildStats:
    """What a build did: rule used per PrimFunc, counts, and the time of each phase.

    `choices` (functions that had a database record): the winner ('database' for a tuned
    schedule, else the default rule's name) and the measured latencies of the chosen,
    best default and best tuned schedule in microseconds. `in_place`: kernels whose output
    overwrites their dead residual input (`inplace.py`), each with the kernel it copies.
    `budget`: what a
    `tune_budget_s` run did (task order, trials, time used); `whole_model`: the tuned and
    the default build timed side by side after tuning, and which one was kept.
    """

    target_kind: str = ""
    rules: dict[str, str] = field(default_factory=dict)
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    tuned_tasks: int = 0
    reused_tasks: int = 0
    measured_candidates: int = 0
    measured_defaults: int = 0
    default_errors: dict[str, str] = field(default_factory=dict)
    choices: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    whole_model: dict = field(default_factory=dict)
    in_place: dict[str, str] = field(default_factory=dict)
    concat_slices: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """How many PrimFuncs each rule (or 'fallback', 'database', 'pre-scheduled') got."""
        return dict(Counter(self.rules.values()))

    def as_dict(self) -> dict:
        """JSON-ready form for reports and benchmarks."""
        return {"target_kind": self.target_kind, "rules": dict(self.rules),
                "counts": self.counts,
                "fallback_reasons": dict(self.fallback_reasons), "tuned_tasks": self.tuned_tasks,
                "reused_tasks": self.reused_tasks,
                "measured_candidates": self.measured_candidates,
                "measured_defaults": self.measured_defaults,
                "default_errors": dict(self.default_errors),
                "choices": {k: dict(v) for k, v in self.choices.items()},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "budget": dict(self.budget), "whole_model": dict(self.whole_model),
                "in_place": dict(self.in_place), "concat_slices": dict(self.concat_slices)}


def is_gpu(target: Target) -> bool:
    """GPU targets get dlight schedules; everything else the CPU rules."""
    return "gpu" in target.keys


def layout_passes() -> list[tvm.transform.Pass]:
    """CPU layout conversion. FoldConstant first: the importer's NaN guards on Clip bounds
    must fold to scalars before its TE clip kernels can be lifted into Relax max/min, which
    ConvertLayout sees through (else two transposes surround every ReLU6); inference
    BatchNorm becomes a multiply-add (`batch_norm.py`) and per-channel [C, 1, 1] constants
    get their full rank (`broadcast_rank.py`). CSE last: an input read twice (a residual
    from the model input) gets one transpose, not two.
    CanonicalizeAxes: op forms ConvertLayout aborts on (`canonical.py`)."""
    return [relax.transform.FoldConstant(), FoldBatchNorm, LiftScalarElementwise,
            ExpandBroadcastRank, CanonicalizeAxes,
            relax.transform.ConvertLayout(CPU_LAYOUTS), relax.transform.FoldConstant(),
            relax.transform.EliminateCommonSubexpr()]


def cpu_math() -> list[tvm.transform.Pass]:
    """exp/erf/tanh/softmax/sigmoid as vectorisable polynomials (TVM's `fast_*` TOPI kernels;
    sigmoid through exp, `fast_sigmoid.py`).

    Why: libm's `erff`/`expf` are scalar calls that LLVM cannot vectorise; in MiniLM the
    FFN's GELU epilogue cost more than its matmul (25.7 of 56 ms). onnxruntime's MLAS uses
    the same kind of polynomial approximations (MlasComputeErf/Exp); their error (~1e-7
    relative) stays far inside the build check's tolerance, which verifies every artifact.
    """
    return [SigmoidAsExp, relax.transform.FastMathTransform()]


def prepare(mod: tvm.IRModule, target: Target, lanes: int | None = None) -> tvm.IRModule:
    """Layout conversion (CPU), then the target's dispatch + legalize + fuse passes.

    `lanes` (CPU: fp32 lanes per vector, default from the target's spec) is what attention
    keys are padded to (`pad_keys.py`); a ragged token count is carried padded through the
    row-wise layers (`pad_rows.py`); conv and matmul output channels get zero filters up
    to a width the micro-kernel tiles well (`pad_channels.py`)."""
    mod = _pin_prescheduled(mod)
    seq: list[tvm.transform.Pass] = []
    if not is_gpu(target):
        cpu = cpu_params(spec_of_tvm_target(target))
        cpu = replace(cpu, lanes=lanes) if lanes else cpu
        seq = [PadAttentionKeys(cpu.lanes), PadRows, *layout_passes(), PadOutputChannels(cpu),
               *cpu_math()]
    seq += [
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    if not is_gpu(target):  # weights that schedules may re-layout at compile time
        seq += [relax.transform.AttachAttrLayoutFreeBuffers()]
    with target:
        return tvm.transform.Sequential(seq)(mod)


OPAQUE_PATTERN = 8  # relax OpPatternKind.kOpaque: FuseOps never fuses such a call


def _copy(mod: tvm.IRModule) -> tvm.IRModule:
    """A new module with the same functions, attributes and global infos."""
    return tvm.IRModule(mod.functions, attrs=mod.attrs, global_infos=mod.global_infos)


def _pin_prescheduled(mod: tvm.IRModule) -> tvm.IRModule:
    """Hand-scheduled PrimFuncs must reach codegen as written: mark them opaque to fusion."""
    pinned = {gv: f.with_attr("op_pattern", OPAQUE_PATTERN) for gv, f in mod.functions_items()
              if isinstance(f, tirx.PrimFunc) and is_scheduled(f)}
    if not pinned:
        return mod
    mod = _copy(mod)
    for gv, func in pinned.items():
        mod[gv] = func
    return mod


def schedule_cpu(mod: tvm.IRModule, target: Target, stats: BuildStats,
                 cpu: CpuParams | None = None) -> tvm.IRModule:
    """Default CPU rules on every PrimFunc that nothing scheduled before.

    `cpu` comes from the target spec (`cpu_params(spec)`); without it, from the spec
    of the bare TVM target.
    """
    cpu = cpu or cpu_params(spec_of_tvm_target(target))
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        if is_scheduled(func):
            stats.rules.setdefault(name, "pre-scheduled")
            continue
        new_func, rule, reason = schedule_cpu_func(func, cpu, target)
        stats.rules[name] = rule
        if reason is not None:
            stats.fallback_reasons[name] = reason
        if new_func is not func:
            updates[gv] = new_func
    if updates:  # a copy: the caller's module stays unscheduled (one prepared module can
        mod = _copy(mod)  # be scheduled twice, e.g. with different parameters)
    for gv, func in updates.items():
        mod[gv] = func
    mod, stats.concat_slices = concat_into_slices(insert_weight_prefetch(pack_weights(mod, target)))
    mod, stats.in_place = residual_in_place(mod)
    return mod


def pack_weights(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Split weight layout-rewrite blocks into their own calls and fold them into constants."""
    seq = [relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant(),
           relax.transform.DeadCodeElimination()]
    with target:
        return tvm.transform.Sequential(seq)(mod)


def schedule_gpu(mod: tvm.IRModule, target: Target, stats: BuildStats) -> tvm.IRModule:
    """dlight's GPU rules (thread bindings are mandatory for GPU code to build)."""
    from tvm.s_tir import dlight as dl

    before = {gv.name_hint: is_scheduled(f) for gv, f in mod.functions_items()
              if isinstance(f, tirx.PrimFunc)}
    with target:
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(), dl.gpu.Fallback(),
        )(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            name = gv.name_hint
            if before.get(name):
                stats.rules.setdefault(name, "pre-scheduled")
            else:
                stats.rules[name] = "dlight" if is_scheduled(func) else "fallback"
    return mod


def lower_and_build(mod: tvm.IRModule, target: Target) -> relax.Executable:
    """The target's dataflow-lowering and finalize passes, then codegen."""
    import importlib

    # the submodules directly: the package re-exports are incomplete in TVM 0.27
    kind = target.kind.name
    family = "cuda" if kind == "cuda" else ("gpu_generic" if is_gpu(target) else "cpu_generic")
    backend = importlib.import_module(f"tvm.relax.backend.{family}.pipeline")
    passes = backend.dataflow_lower_passes(target) + backend.finalize_passes(target)
    tir_pipeline = "default" if is_gpu(target) else CPU_TIR_PIPELINE
    return tvm.compile(mod, target=target, relax_pipeline=tvm.transform.Sequential(passes),
                       tir_pipeline=tir_pipeline)


class Timer:
    """Adds the wall time of a `with` block to `stats.seconds[name]`."""

    def __init__(self, stats: BuildStats, name: str) -> None:
        self.stats, self.name = stats, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats.seconds[self.name] = (self.stats.seconds.get(self.name, 0.0)
                                         + time.perf_counter() - self.t0)
