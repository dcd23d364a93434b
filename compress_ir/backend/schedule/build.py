"""One build: prepare, (tune), schedule, lower — recording what happened in BuildStats."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.target import Target

from compress_ir.backend.schedule.cpu import cpu_params
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


def build_executable(mod: tvm.IRModule, target: Target | str | dict,
                     spec: TargetSpec | None = None, *, tune_trials: int = 0,
                     tuning_db: str | None = None, work_dir: str | None = None,
                     remote: RemoteTuning | None = None
                     ) -> tuple[relax.Executable, BuildStats]:
    """Compile `mod`; see `compress_ir.backend.schedule.compile_relax` for the contract."""
    target = _as_target(target)
    spec = spec or spec_of_tvm_target(target)
    cpu = cpu_params(spec) if spec.device == "cpu" else None
    if tune_trials < 0:
        raise UsageError(f"tune_trials must be >= 0, got {tune_trials}")
    stats = BuildStats(target_kind=target.kind.name)
    if tune_trials > 0:
        from compress_ir.backend.schedule.tuning import check_tunable

        check_tunable(target, remote)
    with Timer(stats, "prepare"):
        mod = prepare(mod, target)
    if tuning_db is not None:
        from compress_ir.backend.schedule.tuning import apply_database, tune_missing

        if tune_trials > 0:
            with Timer(stats, "tune"):
                tune_missing(mod, target, tune_trials, tuning_db, work_dir, stats, cpu,
                             remote)
        with Timer(stats, "apply_db"):
            mod = apply_database(mod, target, tuning_db, stats, cpu)
    elif tune_trials > 0:
        import tempfile

        from compress_ir.backend.schedule.tuning import apply_database, tune_missing

        with tempfile.TemporaryDirectory(prefix="cir-tune-") as tmp:
            with Timer(stats, "tune"):
                tune_missing(mod, target, tune_trials, tmp, work_dir, stats, cpu, remote)
            with Timer(stats, "apply_db"):
                mod = apply_database(mod, target, tmp, stats, cpu)
    with Timer(stats, "schedule"):
        mod = (schedule_gpu(mod, target, stats) if is_gpu(target)
               else schedule_cpu(mod, target, stats, cpu))
    with Timer(stats, "codegen"):
        executable = lower_and_build(mod, target)
    return executable, stats
