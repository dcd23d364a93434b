"""Make compiled models fast: default schedules, MetaSchedule tuning, a persistent database.

`compile_relax` turns an imported Relax module (static shapes, weights as constants) into a
`relax.Executable`:

* CPU (x86, aarch64): NHWC layout, fusion, then per PrimFunc the first of: the best
  tuning-database record, the default rules of `cpu.py` (deterministic), TVM's default.
* GPU (cuda): fusion + dlight rules (unscheduled GPU code does not build).
* `tune_trials > 0`: MetaSchedule tunes every task that the database has no record for,
  with at most `tune_trials` measured candidates **per task** (on this host, or on the
  devices of an RPC tracker key: `remote.py`). Each task's default-rule schedule
  is measured the same way and stored as an ordinary record (`compete.py`), so the
  database's best record is never slower than the default, and after tuning the whole
  tuned model is timed against the default build and the faster one kept
  (`keep_faster.py`): a small budget cannot make a model slower than no tuning.
* `tune_budget_s > 0`: a wall-clock budget instead of a trial count, spent on the tasks
  with the most default run time first (`tuning.tune_within_budget`).
  The stats' `choices` show the winner per function (the default rule's name, or
  'database') with both latencies.

The returned `BuildStats` tell which rule scheduled each PrimFunc and how long phases took;
every scheduled PrimFunc is lowered on its own first, and one that does not lower is left
to TVM's default handling, counted as 'fallback' with the reason in `fallback_reasons`.
"""

from __future__ import annotations

from typing import Any

from compress_ir.backend.schedule.pipeline import BuildStats

__all__ = ["BuildStats", "compile_relax"]


def compile_relax(mod: Any, target: Any, spec: Any = None, *, tune_trials: int = 0,
                  tuning_db: str | None = None, work_dir: str | None = None,
                  remote: Any = None, tune_budget_s: float = 0.0
                  ) -> tuple[Any, BuildStats]:
    """Compile a Relax module for `target`, fast by default, tuned on request.

    Returns `(executable, stats)`: the `relax.Executable` and the `BuildStats` of this
    build (no module state: concurrent builds cannot read each other's stats).
    `spec` is the `TargetSpec` the target came from: the CPU schedules take their vector
    lanes and registers from it (without one, from the spec of the bare TVM target).
    `tune_trials` is the MetaSchedule budget per task (0: no tuning, no measuring).
    `tuning_db` is a directory holding a JSON database reused across runs and models;
    without tuning its best records are still applied. `work_dir` holds tuning logs
    (defaults to `tuning_db`, else a temporary directory). `remote` (a
    `remote.RemoteTuning`, from `--rpc HOST:PORT:KEY`) measures candidates on the
    tracker's devices, so cross targets can be tuned. `tune_budget_s > 0` tunes for
    about that many seconds instead, the tasks with the most default run time first
    (`tune_trials` then caps trials per task). After any local tuning the tuned and the
    default build are timed side by side and the faster is returned (`stats.whole_model`).
    """
    from compress_ir.backend.schedule.build import build_executable

    return build_executable(mod, target, spec, tune_trials=tune_trials, tuning_db=tuning_db,
                            work_dir=work_dir, remote=remote, tune_budget_s=tune_budget_s)
