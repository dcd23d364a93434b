"""One build: prepare, (tune), schedule, lower — recording what happened in BuildStats."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.target import Target

from compress_ir.backend.schedule.cpu import CpuParams, cpu_params
from compress_ir.backend.schedule.pipeline import (
    BuildStats,
    Timer,
    is_gpu,
    lower_and_build,
    prepare,
    schedule_cpu,
    schedule_gpu,
)
from compress_ir.backend.schedule.remote import RemoteTuning
from compress_ir.core.errors import UsageError
from compress_ir.targets.registry import spec_of_tvm_target
from compress_ir.targets.spec import TargetSpec


def _as_target(target: Target | str | dict) -> Target:
    return target if isinstance(target, Target) else Target(target)


def _tune(mod: tvm.IRModule, target: Target, tune_trials: int, tune_budget_s: float,
          db_dir: str, work_dir: str | None, stats: BuildStats, cpu: CpuParams | None,
          remote: RemoteTuning | None) -> None:
    """Trials per task, or a wall-clock budget (then `tune_trials` caps trials per task)."""
    from compress_ir.backend.schedule.tuning import tune_missing, tune_within_budget

    if tune_budget_s > 0:
        if remote is not None:  # its rounds use the local runner: refuse, never mis-measure
            raise UsageError("--tune-budget measures on this host only; with --rpc use "
                             "--tune-trials N")
        tune_within_budget(mod, target, tune_budget_s, tune_trials, db_dir, work_dir, stats, cpu)
    else:
        tune_missing(mod, target, tune_trials, db_dir, work_dir, stats, cpu, remote)


def _keep_faster(original: tvm.IRModule, tuned: relax.Executable, target: Target,
                 cpu: CpuParams | None, stats: BuildStats) -> relax.Executable:
    """Tuning never makes the model slower: time tuned vs default build, return the faster."""
    from compress_ir.backend.schedule.keep_faster import compare, model_inputs

    if "database" not in stats.rules.values():  # every function kept its default schedule
        stats.whole_model = {"kept": "default", "reason": "no tuned schedule won a function"}
        return tuned
    args = model_inputs(original)
    if args is None:
        stats.whole_model = {"kept": "tuned", "reason": "inputs not static: not compared"}
        return tuned
    with Timer(stats, "default_build"):
        default_stats = BuildStats(target_kind=target.kind.name)
        prepared = prepare(original, target, cpu.lanes if cpu else None)
        default = lower_and_build(schedule_cpu(prepared, target, default_stats, cpu), target)
    with Timer(stats, "compare"):
        stats.whole_model = compare(tuned, default, args)
    if stats.whole_model["kept"] == "default":
        stats.rules = dict(default_stats.rules)
        return default
    return tuned


def build_executable(mod: tvm.IRModule, target: Target | str | dict,
                     spec: TargetSpec | None = None, *, tune_trials: int = 0,
                     tuning_db: str | None = None, work_dir: str | None = None,
                     remote: RemoteTuning | None = None, tune_budget_s: float = 0.0
                     ) -> tuple[relax.Executable, BuildStats]:
    """Compile `mod`; see `compress_ir.backend.schedule.compile_relax` for the contract."""
    target = _as_target(target)
    spec = spec or spec_of_tvm_target(target)
    cpu = cpu_params(spec) if spec.device == "cpu" else None
    if tune_trials < 0:
        raise UsageError(f"tune_trials must be >= 0, got {tune_trials}")
    if not 0 <= tune_budget_s < float("inf"):
        raise UsageError(f"tune_budget must be >= 0 seconds, got {tune_budget_s}")
    tuning = tune_trials > 0 or tune_budget_s > 0
    stats = BuildStats(target_kind=target.kind.name)
    if tuning:
        from compress_ir.backend.schedule.tuning import check_tunable

        check_tunable(target, remote)
    original = mod
    with Timer(stats, "prepare"):
        mod = prepare(mod, target, cpu.lanes if cpu else None)
    if tuning_db is not None:
        from compress_ir.backend.schedule.tuning import apply_database

        if tuning:
            with Timer(stats, "tune"):
                _tune(mod, target, tune_trials, tune_budget_s, tuning_db, work_dir, stats, cpu,
                      remote)
        with Timer(stats, "apply_db"):
            mod = apply_database(mod, target, tuning_db, stats, cpu)
    elif tuning:
        import tempfile

        from compress_ir.backend.schedule.tuning import apply_database

        with tempfile.TemporaryDirectory(prefix="cir-tune-") as tmp:
            with Timer(stats, "tune"):
                _tune(mod, target, tune_trials, tune_budget_s, tmp, work_dir, stats, cpu,
                      remote)
            with Timer(stats, "apply_db"):
                mod = apply_database(mod, target, tmp, stats, cpu)
    with Timer(stats, "schedule"):
        mod = (schedule_gpu(mod, target, stats) if is_gpu(target)
               else schedule_cpu(mod, target, stats, cpu))
    with Timer(stats, "codegen"):
        executable = lower_and_build(mod, target)
    if tuning and remote is None and not is_gpu(target):  # a remote build cannot run here
        executable = _keep_faster(original, executable, target, cpu, stats)
    return executable, stats
