"""Importance criteria, one small module per family, all behind `Criterion`.

Importing this package registers every criterion in `CRITERIA`.
"""

from compress_ir.passes.analysis.importance import norms  # noqa: F401
from compress_ir.passes.analysis.importance.base import (  # noqa: F401
    CRITERIA,
    Criterion,
    ScoreContext,
)
