"""The default CPU schedule competes with tuned ones inside the tuning database.

Why: with a small budget MetaSchedule's best candidate is often slower than the hand-written
rules of `cpu.py` (ResNet-18, 8 trials/task: ~90 ms summed vs ~64 ms default), and applying
the database replaced every function by its tuned schedule, so asking for tuning could make
a model slower. Here each tuned task's default schedule is measured the way MetaSchedule
measures candidates (same builder, runner and random inputs) and committed to the database
as an ordinary TuningRecord (its trace, its run time). The database's top-1 is then simply
the faster of the two, later builds (also `tune_trials=0`, also on other machines) need no
re-measurement, and at apply time a record is recognised as the default one by comparing
its trace with the trace the rules produce for that function now.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from compress_ir.backend.schedule.cpu import CpuParams, default_schedule

# Several repeats for the one default candidate, its median committed (robust to noise);
# tuned candidates are measured by MetaSchedule's runner with the same per-repeat settings.
DEFAULT_EVAL = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=100,
                                         enable_cpu_cache_flush=False)
_normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")


@dataclass(frozen=True)
class Default:
    """The default-rule schedule of one workload: rule name, trace, and the trace's
    canonical text (`key`), by which its database record is recognised."""

    rule: str
    trace: object
    key: str


def workload_mod(func: tirx.PrimFunc) -> tvm.IRModule:
    """The IRModule a database keys `func` by (what MetaScheduleApplyDatabase looks up)."""
    return _normalize(func)


_BOOL_AS_INT = {"True": "1", "False": "0"}


def _canonical(node: object) -> object:
    if isinstance(node, str):
        return node
    if hasattr(node, "__iter__") and not hasattr(node, "dtype"):
        return [_canonical(x) for x in node]
    text = str(node)
    return _BOOL_AS_INT.get(text, text)


def _trace_key(trace: object) -> str:
    """The trace as text; a boolean annotation is stored as 1/0 by the JSON database."""
    return repr(_canonical(trace.as_json()))


def default_of(wl_mod: tvm.IRModule, target: Target, cpu: CpuParams | None) -> Default | None:
    """The default rules applied to a workload; None when no rule fits or the target has
    no CPU rules (`cpu` None): then nothing competes."""
    if cpu is None:
        return None
    sch, rule, _reason = default_schedule(wl_mod, cpu, target)
    if sch is None:
        return None
    return Default(rule, sch.trace, _trace_key(sch.trace))


def has_default_record(db: ms.database.Database, wl_mod: tvm.IRModule, target: Target,
                       cpu: CpuParams | None) -> bool:
    """True when the database already holds this workload's default-rule record."""
    default = default_of(wl_mod, target, cpu)
    if default is None or not db.has_workload(wl_mod):
        return default is None
    records = db.get_top_k(db.commit_workload(wl_mod), 1 << 30)
    return any(_trace_key(r.trace) == default.key for r in records)


def measure_defaults(wl_mods: list[tvm.IRModule], target: Target, db: ms.database.Database,
                     builder: ms.builder.Builder, timeout_s: float,
                     cpu: CpuParams | None, runner: ms.runner.Runner | None = None
                     ) -> dict[int, str]:
    """Build + run each workload's default schedule and commit it as a TuningRecord.

    Returns {index in `wl_mods`: reason} for defaults that could not be measured (those simply
    do not compete; the tuned records stay). The runner gets the rewritten argument layout
    (packed weights), as MetaSchedule's own candidates do.
    """
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    todo = [(i, m, d) for i, m in enumerate(wl_mods)
            if (d := default_of(m, target, cpu)) is not None]
    if not todo:
        return {}
    schedules = []
    for _i, mod, default in todo:
        sch = tvm.s_tir.Schedule(mod)
        default.trace.apply_to_schedule(sch, remove_postproc=False)
        schedules.append(sch)
    built = builder.build([ms.builder.BuilderInput(s.mod, target) for s in schedules])
    failed: dict[int, str] = {}
    inputs, ok = [], []
    for (i, mod, default), sch, res in zip(todo, schedules, built, strict=True):
        if res.error_msg:
            failed[i] = f"build: {res.error_msg.strip().splitlines()[-1][:200]}"
            continue
        args = ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        inputs.append(ms.runner.RunnerInput(res.artifact_path, "cpu", args))
        ok.append((i, mod, default, args))
    # `runner`: the tuning's own (an RPC runner for remote devices), else a local one
    runner = runner or ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=DEFAULT_EVAL)
    for (i, mod, default, args), future in zip(ok, runner.run(inputs), strict=True):
        result = future.result()
        if result.error_msg or not result.run_secs:
            failed[i] = f"run: {(result.error_msg or 'no time').strip().splitlines()[-1]}"
            continue
        secs = statistics.median(float(s) for s in result.run_secs)
        db.commit_tuning_record(ms.database.TuningRecord(
            default.trace, db.commit_workload(mod), [secs], target, args))
    return failed


def _mean(record: ms.database.TuningRecord) -> float:
    return statistics.fmean(float(s) for s in record.run_secs)


def choice(db: ms.database.Database, func: tirx.PrimFunc, target: Target,
           cpu: CpuParams | None) -> dict | None:
    """Which record the database applies to `func` (its top-1) and both latencies.

    None when the database has no record for `func`. 'winner' is the default rule name when
    the default record is the top-1, else 'database'; latencies are in microseconds (None
    when that kind of record is absent).
    """
    wl_mod = workload_mod(func)
    if not db.has_workload(wl_mod):
        return None
    records = [r for r in db.get_top_k(db.commit_workload(wl_mod), 1 << 30) if r.run_secs]
    if not records:
        return None
    default = default_of(wl_mod, target, cpu)
    is_default = [default is not None and _trace_key(r.trace) == default.key for r in records]
    tuned = [_mean(r) for r, d in zip(records, is_default, strict=True) if not d]
    defaults = [_mean(r) for r, d in zip(records, is_default, strict=True) if d]
    return {
        "winner": default.rule if is_default[0] else "database",
        "chosen_us": _mean(records[0]) * 1e6,
        "default_us": min(defaults) * 1e6 if defaults else None,
        "tuned_us": min(tuned) * 1e6 if tuned else None,
    }


def default_seconds(db: ms.database.Database, wl_mod: tvm.IRModule, target: Target,
                    cpu: CpuParams | None) -> float | None:
    """Measured run time of a workload's default-rule schedule (its record), if any: the
    per-task profile that budgeted tuning orders its work by."""
    default = default_of(wl_mod, target, cpu)
    if default is None or not db.has_workload(wl_mod):
        return None
    times = [_mean(r) for r in db.get_top_k(db.commit_workload(wl_mod), 1 << 30)
             if r.run_secs and _trace_key(r.trace) == default.key]
    return min(times) if times else None
