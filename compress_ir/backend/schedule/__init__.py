"""Make compiled models fast: default schedules and MetaSchedule tuning.

PLACEHOLDER seam (being implemented): `optimize(mod, target, spec, tuning)` returns the
Relax module that `tvm.compile` should build.
"""

from __future__ import annotations

from typing import Any


def optimize(mod: Any, target: Any, spec: Any = None, tuning: Any = None) -> Any:
    """Placeholder: no scheduling yet (tvm.compile's default pipeline applies)."""
    return mod
