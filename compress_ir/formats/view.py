"""The (out, reduction) matrix view of a layer weight, and its inverse.

Why one view: sparsity patterns, the size report's encoders, OBS and the TVM sparse
kernels all talk about "row i, column j" of a weight; if they disagreed on which axis
is which, a block pruned by `sparsify` would not be a block the kernels can skip.
Rows are output features, columns the axis the layer sums over:

- Conv W (C_out, C_in/g, kh, kw)      -> (C_out, C_in/g * kh * kw)   (row-major reshape)
- Gemm B (K, N), transB=0             -> B.T (N, K);  transB=1: B (N, K) as is
- MatMul constant B (K, N)            -> B.T (N, K)

Which axis is the output comes from the op table (`compress_ir.core.ops`, `out_axis`);
`VIEWS` lists its weight layers, everything else reads it.
"""

from __future__ import annotations

import numpy as np

from compress_ir.core.errors import UsageError
from compress_ir.core.ops import WEIGHTED_OPS, WeightedOp

# the ops with a matrix view: the weight layers of the op table (`compress_ir.core.ops`)
VIEWS: dict[str, WeightedOp] = {op: spec for op, spec in WEIGHTED_OPS.items() if spec.layer}


def _view(op: str, rank: int) -> WeightedOp:
    view = VIEWS.get(op)
    if view is None:
        raise UsageError(f"no 2-D weight view for op {op!r} ({', '.join(VIEWS)})")
    low, high = view.layer_ranks
    if not low <= rank <= high:
        need = f"rank >= {low}" if high > low else f"{low}-D"
        raise UsageError(f"{op} weight must be {need}, got rank {rank}")
    return view


def _transposed(view: WeightedOp, rank: int, trans_b: bool) -> bool | None:
    """None: reshape to (dim 0, rest); else whether the 2-D matrix is the weight's transpose."""
    if rank > 2:
        return None
    return view.out_axis({"transB": int(trans_b)}, rank) == 1


def has_view(op: str, rank: int) -> bool:
    """True when a weight of `op` with this rank has a matrix view."""
    view = VIEWS.get(op)
    return view is not None and view.layer_ranks[0] <= rank <= view.layer_ranks[1]


def weight_view(op: str, weight: np.ndarray, trans_b: bool = False) -> np.ndarray:
    """The (out, reduction) matrix of a Conv/Gemm/MatMul weight (see module docstring)."""
    w = np.asarray(weight)
    transposed = _transposed(_view(op, w.ndim), w.ndim, trans_b)
    if transposed is None:
        return w.reshape(w.shape[0], -1)
    return w.T if transposed else w


def unview(
    op: str, matrix: np.ndarray, shape: tuple[int, ...], trans_b: bool = False
) -> np.ndarray:
    """Inverse of `weight_view`: the weight tensor of `shape` from its 2-D view."""
    m = np.asarray(matrix)
    transposed = _transposed(_view(op, len(shape)), len(shape), trans_b)
    if transposed is None:
        return m.reshape(shape)
    return (m.T if transposed else m).reshape(shape)


def view_shape(op: str, shape: tuple[int, ...], trans_b: bool = False) -> tuple[int, int]:
    """The (out, reduction) shape `weight_view` gives a weight of `shape`, without data."""
    transposed = _transposed(_view(op, len(shape)), len(shape), trans_b)
    if transposed is None:
        return int(shape[0]), int(np.prod(shape[1:]))
    return (int(shape[1]), int(shape[0])) if transposed else (
        int(shape[0]), int(shape[1]))
