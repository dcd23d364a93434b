"""Analysis and transform passes (installed as `compress_ir.passes`).

Importing this package registers every pass, criterion and allocation.
"""

from compress_ir.passes.analysis import allocation, importance  # noqa: F401
from compress_ir.passes.transform import (  # noqa: F401
    channel_prune,
    fold_bn,
    reconstruct,
    share_weights,
    sparsify,
)
