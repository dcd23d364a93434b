"""Make compiled models fast: default schedules, MetaSchedule tuning, a persistent database.

`compile_relax` turns an imported Relax module (static shapes, weights as constants) into a
`relax.Executable`:

* CPU (x86, aarch64): NHWC layout, fusion, then per PrimFunc the first of: the best
  tuning-database record, the default rules of `cpu.py` (deterministic), TVM's default.
* GPU (cuda): fusion + dlight rules (unscheduled GPU code does not build).
* `tune_trials > 0`: MetaSchedule tunes every task that the database has no record for,
  with at most `tune_trials` measured candidates **per task** (x86 hosts only: cross
  targets cannot be measured without a device runner). Each task's default-rule schedule
  is measured the same way and stored as an ordinary record (`compete.py`), so the
  database's best record is never slower than the default: a small budget cannot make a
  model slower than no tuning. `last_build_stats().choices` shows the winner per function
  (the default rule's name, or 'database') with both latencies.

`last_build_stats()` tells which rule scheduled each PrimFunc and how long phases took;
every scheduled PrimFunc is lowered on its own first, and one that does not lower is left
to TVM's default handling, counted as 'fallback' with the reason in `fallback_reasons`.
"""

from __future__ import annotations

from typing import Any

from compress_ir.backend.schedule.pipeline import BuildStats

__all__ = ["BuildStats", "compile_relax", "last_build_stats"]

_LAST_STATS: BuildStats | None = None


def last_build_stats() -> BuildStats | None:
    """Stats of the most recent `compile_relax` call in this process (None before any)."""
    return _LAST_STATS


def compile_relax(mod: Any, target: Any, spec: Any = None, *, tune_trials: int = 0,
                  tuning_db: str | None = None, work_dir: str | None = None) -> Any:
    """Compile a Relax module for `target`, fast by default, tuned on request.

    `tune_trials` is the MetaSchedule budget per task (0: no tuning, no measuring).
    `tuning_db` is a directory holding a JSON database reused across runs and models;
    without tuning its best records are still applied. `work_dir` holds tuning logs
    (defaults to `tuning_db`, else a temporary directory). `spec` is unused.
    """
    global _LAST_STATS
    from compress_ir.backend.schedule.build import build

    executable, stats = build(mod, target, tune_trials=tune_trials, tuning_db=tuning_db,
                              work_dir=work_dir)
    _LAST_STATS = stats
    return executable
