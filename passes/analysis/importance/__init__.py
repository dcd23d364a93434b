"""Importance criteria, one small module per family, all behind `Criterion`.

Importing this package registers every criterion in `CRITERIA`.
"""

import compress_ir.passes.analysis.importance.activation  # noqa: F401
import compress_ir.passes.analysis.importance.fisher  # noqa: F401
import compress_ir.passes.analysis.importance.reconstruction_error  # noqa: F401
import compress_ir.passes.analysis.importance.taylor  # noqa: F401
import compress_ir.passes.analysis.importance.weight_based  # noqa: F401
from compress_ir.passes.analysis.importance import norms  # noqa: F401
from compress_ir.passes.analysis.importance.base import (  # noqa: F401
    CRITERIA,
    Criterion,
    ScoreContext,
)
