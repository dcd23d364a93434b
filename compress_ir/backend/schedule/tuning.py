"""MetaSchedule tuning against a persistent JSON database, tuning only what it lacks.

Why: tuning costs minutes per model on a small machine, and networks share layer shapes
(ResNet's repeated blocks, a model and its re-built variants). Records are keyed by the
structure of each fused PrimFunc, so a task already in the database is reused — from an
earlier run or another model — and only new shapes are measured. Builder workers get a
build function that skips importing `tvm.s_tir.tensor_intrin` (tens of seconds, longer
than MetaSchedule's default 30 s builder timeout, so every build silently "failed").
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from compress_ir.backend.schedule import compete
from compress_ir.backend.schedule import remote as remote_schedule
from compress_ir.backend.schedule.analysis import is_scheduled
from compress_ir.backend.schedule.cpu import CpuParams
from compress_ir.backend.schedule.pipeline import BuildStats, is_gpu
from compress_ir.backend.schedule.remote import RemoteTuning
from compress_ir.backend.schedule.stack_tiles import PIPELINE as CPU_TIR_PIPELINE
from compress_ir.core.errors import UsageError
from compress_ir.logs import stdout_to_log

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
BUILD_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 60.0
# Below this many trials per task an XGBoost cost model has too little data to beat
# random choice and its training costs tens of seconds per round on a small machine.
XGB_MIN_TRIALS = 64
_HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def check_tunable(target: Target, remote: RemoteTuning | None = None) -> None:
    """Tuning measures on this machine: refuse targets it cannot run (no silent fallback).

    With `remote` (a tracker key) candidates are measured on those devices instead.
    """
    if remote is not None:
        return
    if is_gpu(target):
        raise UsageError(f"cannot tune for {target.kind.name}: tuning measures candidates on "
                         "the device and no GPU runner is configured (use tune_trials=0)")
    triple = str(target.attrs.get("mtriple", "") or "")
    host = _HOST_ARCH.get(platform.machine().lower(), platform.machine().lower())
    arch = triple.split("-")[0] if triple else host
    arch = _HOST_ARCH.get(arch, arch)
    if arch != host:
        raise UsageError(f"cannot tune for {triple}: candidates must run on the target and "
                         f"this host is {host}; tuning cross targets needs an RPC runner "
                         "(use tune_trials=0, or a database tuned on the device)")


def open_database(db_dir: str | os.PathLike, create: bool) -> ms.database.JSONDatabase:
    """The JSON database in `db_dir` (two files); a missing one is a UsageError unless tuning."""
    path = Path(db_dir)
    if not create and not (path / WORKLOAD_FILE).exists():
        raise UsageError(f"tuning database {path}: no {WORKLOAD_FILE} there (tune with "
                         "tune_trials > 0 first, or drop tuning_db)")
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(path / WORKLOAD_FILE), str(path / RECORD_FILE),
                                    module_equality="structural")


def tuning_target(target: Target) -> Target:
    """MetaSchedule needs `num-cores`; default it to this machine's CPU count."""
    config = dict(target.export())
    if config.get("num-cores") in (None, 0, -1):
        config["num-cores"] = os.cpu_count() or 1
        return Target(config)
    return target


def build_without_intrin(mod: tvm.IRModule, target: Target, _params: Any) -> Any:
    """MetaSchedule build function minus the slow tensor-intrinsic import (none used here).

    CPU candidates build with the TIR pipeline of the final build (`stack_tiles`), so a
    default schedule with a tile over 1 KB is not measured slower than it will run.
    """
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target,
                          pipeline="default" if is_gpu(target) else CPU_TIR_PIPELINE)


def _has_record(db: ms.database.JSONDatabase, mod: tvm.IRModule) -> bool:
    if not db.has_workload(mod):
        return False
    return bool(db.get_top_k(db.commit_workload(mod), 1))


def tune_missing(mod: tvm.IRModule, target: Target, trials_per_task: int,
                 db_dir: str | os.PathLike, work_dir: str | None, stats: BuildStats,
                 cpu: CpuParams | None, remote: RemoteTuning | None = None) -> None:
    """Tune, with `trials_per_task` measurements each, the tasks `db_dir` has no record for.

    Then every task whose default-rule schedule is not in the database yet (new tasks, or
    a database from before defaults competed) gets it measured and committed.
    """
    target = tuning_target(target)
    db = open_database(db_dir, create=True)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target)
             if not is_scheduled(t.dispatched[0]["main"])]
    todo = [t for t in tasks if not _has_record(db, t.dispatched[0])]
    stats.reused_tasks += len(tasks) - len(todo)
    stats.tuned_tasks += len(todo)
    builder = ms.builder.LocalBuilder(
        timeout_sec=BUILD_TIMEOUT_S, f_build=build_without_intrin,
        f_export=remote_schedule.export_function(target) if remote else None)
    run = (remote_schedule.runner(remote) if remote
           else ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S))
    # MetaSchedule logs to stdout by default: keep stdout for results, send it to the log
    with stdout_to_log("tvm.meta_schedule.stdout"):
        if todo:
            _tune(todo, target, trials_per_task, db, builder, run, work_dir or str(db_dir),
                  stats)
            # failed candidates are recorded too (1e10 s): no real time at all means the
            # boards never ran one, which must not pass as a tuned build
            if remote is not None and not remote_schedule.measured_tasks(
                    db, [t.dispatched[0] for t in todo]):
                raise UsageError(f"RPC {remote}: no tuning candidate could be measured on a "
                                 f"{remote.key!r} device (boards gone, busy or over "
                                 f"{remote.timeout:g} s per session, or candidates fail to "
                                 "build or load there; --rpc-timeout, -v for the log)")
        # the default rules compete: every task gets its default schedule measured once
        missing = [t for t in tasks
                   if not compete.has_default_record(db, t.dispatched[0], target, cpu)]
        failed = compete.measure_defaults(
            [t.dispatched[0] for t in missing], target, db, builder, RUN_TIMEOUT_S, cpu,
            runner=remote_schedule.runner(remote, compete.DEFAULT_EVAL) if remote else None,
        ) if missing else {}
    if missing:
        stats.measured_defaults += len(missing) - len(failed)
        for idx, reason in failed.items():
            stats.default_errors[missing[idx].task_name] = reason


def _tune(todo: list, target: Target, trials_per_task: int, db: ms.database.Database,
          builder: ms.builder.Builder, runner: ms.runner.Runner, logs: str,
          stats: BuildStats) -> None:
    before = len(db)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        todo, work_dir=logs, seed=0)
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=logs,
        max_trials_global=trials_per_task * len(contexts),
        max_trials_per_task=trials_per_task,
        num_trials_per_iter=min(64, max(1, trials_per_task)),
        builder=builder,
        runner=runner,
        database=db,
        cost_model="xgb" if trials_per_task >= XGB_MIN_TRIALS else "random",
    )
    stats.measured_candidates += len(db) - before


def apply_database(mod: tvm.IRModule, target: Target, db_dir: str | os.PathLike,
                   stats: BuildStats, cpu: CpuParams | None) -> tvm.IRModule:
    """Replace every PrimFunc that has a record by the database's best schedule.

    The best may be the default rules' own record (see `compete.py`): the function then
    reports that rule's name, and `stats.choices` holds both measured latencies.
    """
    target = tuning_target(target)
    db = open_database(db_dir, create=False)
    before = {gv.name_hint for gv, f in mod.functions_items()
              if isinstance(f, tirx.PrimFunc) and is_scheduled(f)}
    choices = {gv.name_hint: compete.choice(db, f, target, cpu) for gv, f in mod.functions_items()
               if isinstance(f, tirx.PrimFunc) and gv.name_hint not in before}
    with target, db:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and is_scheduled(func) and gv.name_hint not in before:
            name = gv.name_hint
            found = choices.get(name)
            stats.rules[name] = found["winner"] if found else "database"
            if found:
                stats.choices[name] = found
    return mod


# Budgeted tuning (`--tune-budget SECONDS`): rounds of this many trials, one task at a time
BUDGET_ROUND_TRIALS = 16


def tune_within_budget(mod: tvm.IRModule, target: Target, budget_s: float,
                       trial_cap: int, db_dir: str | os.PathLike, work_dir: str | None,
                       stats: BuildStats, cpu: CpuParams | None) -> None:
    """Tune for about `budget_s` seconds of wall clock, the costliest tasks first.

    Why: a trial count says nothing about time (8 trials/task cost ResNet-18 18 minutes),
    and the time is best spent where the model spends its time. First every task's
    default schedule is measured (it competes, see `compete.py`, and it is the profile):
    a task costs its default run time x its calls per inference. Then, in that order,
    each task gets rounds of `BUDGET_ROUND_TRIALS` candidates (MetaSchedule's search
    restarts from the best records of earlier rounds), pass after pass, until the next
    round would not fit in what is left of the budget (judged by the last round's
    duration, the first by the default measurements' batch; a round can still overrun on
    a busy machine: `stats.budget["used_s"]` says by how much); `trial_cap` > 0 caps the
    candidates per task. `stats.budget` records the
    order, the trials per task and the time used.
    """
    start = time.monotonic()
    deadline = start + budget_s
    target = tuning_target(target)
    db = open_database(db_dir, create=True)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target)
             if not is_scheduled(t.dispatched[0]["main"])]
    builder = ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, f_build=build_without_intrin)
    logs = work_dir or str(db_dir)
    with stdout_to_log("tvm.meta_schedule.stdout"):
        missing = [t for t in tasks
                   if not compete.has_default_record(db, t.dispatched[0], target, cpu)]
        t0 = time.monotonic()
        failed = compete.measure_defaults([t.dispatched[0] for t in missing], target, db,
                                          builder, RUN_TIMEOUT_S, cpu) if missing else {}
        # one build + run batch, like a tuning round: the first round's time estimate
        defaults_s = time.monotonic() - t0 if missing else 0.0
        stats.measured_defaults += len(missing) - len(failed)
        for idx, reason in failed.items():
            stats.default_errors[missing[idx].task_name] = reason
        cost = {}
        for task in tasks:
            secs = compete.default_seconds(db, task.dispatched[0], target, cpu)
            cost[task.task_name] = None if secs is None else secs * int(task.weight)
        known = [c for c in cost.values() if c is not None]
        unknown = max(known) if known else 0.0  # no default measured: tune it early
        order = sorted(tasks, key=lambda t: -(cost[t.task_name]
                                              if cost[t.task_name] is not None else unknown))
        trials = {t.task_name: 0 for t in order}
        last_round, rounds, out_of_time = defaults_s, 0, False
        # the search seeds each round with the best records of its database, and replaying
        # a default-rule record there fails in MetaSchedule (its traces carry the packed
        # argument layout): rounds tune into a scratch database, copied over at the end
        scratch = ms.database.MemoryDatabase(module_equality="structural")
        while not out_of_time:
            progressed = False
            for task in order:
                left = deadline - time.monotonic()
                if left <= 0 or left < last_round:
                    out_of_time = True
                    break
                n = BUDGET_ROUND_TRIALS
                if trial_cap > 0:
                    n = min(n, trial_cap - trials[task.task_name])
                if n <= 0:
                    continue
                t0 = time.monotonic()
                _tune_round(task, target, n, scratch, builder, logs, stats, seed=rounds)
                last_round = time.monotonic() - t0
                trials[task.task_name] += n
                rounds += 1
                progressed = True
            if not progressed:
                break
        _copy_records(scratch, db)
    stats.tuned_tasks += sum(1 for n in trials.values() if n)
    stats.budget = {
        "budget_s": budget_s, "used_s": round(time.monotonic() - start, 2),
        "order": [t.task_name for t in order],
        "default_ms_per_inference": {k: None if v is None else round(v * 1e3, 4)
                                     for k, v in cost.items()},
        "trials": trials}


def _tune_round(task: Any, target: Target, trials: int, db: ms.database.Database,
                builder: ms.builder.Builder, logs: str, stats: BuildStats, seed: int) -> None:
    """One round of `trials` candidates for one task (a new seed each round: the search
    starts from the database's best records, not from the same random population)."""
    before = len(db)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [task], work_dir=logs, seed=seed)
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=logs, max_trials_global=trials,
        max_trials_per_task=trials, num_trials_per_iter=trials, builder=builder,
        runner=ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S), database=db,
        cost_model="random")
    stats.measured_candidates += len(db) - before


def _copy_records(src: ms.database.Database, dst: ms.database.Database) -> None:
    """Commit every measured record of `src` into `dst` (workloads re-keyed in `dst`)."""
    for rec in src.get_all_tuning_records():
        if not rec.run_secs:
            continue
        dst.commit_tuning_record(ms.database.TuningRecord(
            rec.trace, dst.commit_workload(rec.workload.mod), list(rec.run_secs),
            rec.target, rec.args_info))
