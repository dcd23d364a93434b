"""Make compiled models fast: default schedules and MetaSchedule tuning.

PLACEHOLDER seam (being implemented): `compile_relax` turns an imported Relax module into
a `relax.Executable` for a target.
"""

from __future__ import annotations

from typing import Any


def compile_relax(mod: Any, target: Any, spec: Any = None, *, tune_trials: int = 0,
                  tuning_db: str | None = None, work_dir: str | None = None) -> Any:
    """Placeholder: TVM's default pipeline, no scheduling, no tuning."""
    import tvm

    if tune_trials:
        raise NotImplementedError("tuning is not implemented yet")
    return tvm.compile(mod, target=target)
