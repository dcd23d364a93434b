"""Analysis and transform passes (installed as `compress_ir.passes`).

Importing this package registers every pass, criterion and allocation, and the
size table's report section.
"""

from compress_ir.passes.analysis import (  # noqa: F401
    allocation,
    groups_pass,
    importance,
    size_report,
)
from compress_ir.passes.transform import (  # noqa: F401
    channel_prune,
    distill,
    fold_bn,
    reconstruct,
    refit_norms,
    share_weights,
    sparsify,
)
