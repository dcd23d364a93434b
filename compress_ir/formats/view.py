"""The (out, reduction) matrix view of a layer weight, and its inverse.

Why one view: sparsity patterns, the size report's encoders, OBS and the TVM sparse
kernels all talk about "row i, column j" of a weight; if they disagreed on which axis
is which, a block pruned by `sparsify` would not be a block the kernels can skip.
Rows are output features, columns the axis the layer sums over:

- Conv W (C_out, C_in/g, kh, kw)      -> (C_out, C_in/g * kh * kw)   (row-major reshape)
- Gemm B (K, N), transB=0             -> B.T (N, K);  transB=1: B (N, K) as is
- MatMul constant B (K, N)            -> B.T (N, K)

One table entry per op (`VIEWS`); everything else reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compress_ir.core.errors import UsageError


@dataclass(frozen=True)
class View:
    """How one op's weight maps to its matrix: `transposed(trans_b)` says whether the
    matrix is the weight's transpose (2-D weights); `ranks` are the weight ranks allowed."""

    ranks: tuple[int, int]  # (lowest, highest) weight rank
    transposed: Callable[[bool], bool] | None  # None: reshape to (dim 0, rest)


VIEWS: dict[str, View] = {
    "Conv": View((3, 8), None),
    "Gemm": View((2, 2), lambda trans_b: not trans_b),
    "MatMul": View((2, 2), lambda trans_b: True),
}


def _view(op: str, rank: int) -> View:
    view = VIEWS.get(op)
    if view is None:
        raise UsageError(f"no 2-D weight view for op {op!r} ({', '.join(VIEWS)})")
    low, high = view.ranks
    if not low <= rank <= high:
        need = f"rank >= {low}" if high > low else f"{low}-D"
        raise UsageError(f"{op} weight must be {need}, got rank {rank}")
    return view


def has_view(op: str, rank: int) -> bool:
    """True when a weight of `op` with this rank has a matrix view."""
    view = VIEWS.get(op)
    return view is not None and view.ranks[0] <= rank <= view.ranks[1]


def weight_view(op: str, weight: np.ndarray, trans_b: bool = False) -> np.ndarray:
    """The (out, reduction) matrix of a Conv/Gemm/MatMul weight (see module docstring)."""
    w = np.asarray(weight)
    view = _view(op, w.ndim)
    if view.transposed is None:
        return w.reshape(w.shape[0], -1)
    return w.T if view.transposed(trans_b) else w


def unview(
    op: str, matrix: np.ndarray, shape: tuple[int, ...], trans_b: bool = False
) -> np.ndarray:
    """Inverse of `weight_view`: the weight tensor of `shape` from its 2-D view."""
    m = np.asarray(matrix)
    view = _view(op, len(shape))
    if view.transposed is None:
        return m.reshape(shape)
    return (m.T if view.transposed(trans_b) else m).reshape(shape)


def view_shape(op: str, shape: tuple[int, ...], trans_b: bool = False) -> tuple[int, int]:
    """The (out, reduction) shape `weight_view` gives a weight of `shape`, without data."""
    view = _view(op, len(shape))
    if view.transposed is None:
        return int(shape[0]), int(np.prod(shape[1:]))
    return (int(shape[1]), int(shape[0])) if view.transposed(trans_b) else (
        int(shape[0]), int(shape[1]))
