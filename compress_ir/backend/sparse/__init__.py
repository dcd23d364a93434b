"""Sparse kernels for TVM (BSR, N:M) and the Relax rewrite that uses them.

`rewrite_sparse(mod, target)` swaps sparse-weight matmul/conv2d in an imported Relax
module for `call_tir` to kernels specialised on the weight's sparsity structure
(`kernels_cpu`, `kernels_cuda`), packed by `formats`.
"""

from __future__ import annotations

from compress_ir.backend.sparse.rewrite import KERNELS, rewrite_sparse

__all__ = ["KERNELS", "rewrite_sparse"]
