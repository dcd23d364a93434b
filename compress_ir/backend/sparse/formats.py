"""Kernel-side choice of sparse format (BSR block, N:M) for dense numpy weights.

Kernels are specialised on the weight's structure, so everything here is plain numpy
that runs once at compile time. A weight is always the (out, reduction) matrix of
`compress_ir.formats.view` and a block (r, c) covers r output rows by c reduction
columns; BSR itself is `compress_ir.formats.BSR`, the one the size report measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress_ir.formats.encoding import BSR, bsr_encode

# Candidate block shapes, preferred first: larger area first, then taller blocks
# (row blocks vectorise over output features, the CPU kernels' fast axis).
BLOCK_CANDIDATES: tuple[tuple[int, int], ...] = (
    (16, 1), (4, 4), (8, 1), (4, 1), (1, 4), (1, 1),
)
# N:M patterns along the reduction axis, sparsest first.
NM_CANDIDATES: tuple[tuple[int, int], ...] = ((1, 4), (2, 8), (2, 4), (4, 8))


@dataclass(frozen=True)
class NM:
    """N:M along the reduction axis: per row, `n` kept values in every group of `m`."""

    shape: tuple[int, int]
    n: int
    m: int
    values: np.ndarray  # (rows, groups*n)
    offsets: np.ndarray  # (rows, groups*n) uint8, position inside the group

    def to_dense(self) -> np.ndarray:
        """Dense (rows, cols) matrix."""
        rows, cols = self.shape
        out = np.zeros(self.shape, dtype=self.values.dtype)
        q = np.arange(self.values.shape[1])
        col = (q // self.n) * self.m + self.offsets.astype(np.int64)
        np.put_along_axis(out, col, self.values, axis=1)
        return out


def _block_nonzero(w: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    r, c = block
    rows, cols = w.shape
    return (w.reshape(rows // r, r, cols // c, c) != 0).any(axis=(1, 3))


def block_fits(shape: tuple[int, int], block: tuple[int, int]) -> bool:
    """True when the block tiles the matrix exactly."""
    return shape[0] % block[0] == 0 and shape[1] % block[1] == 0


def block_sparsity(w: np.ndarray, block: tuple[int, int]) -> float:
    """Fraction of (r, c) blocks that are entirely zero."""
    if not block_fits(w.shape, block):
        raise ValueError(f"block {block} does not tile a {w.shape} matrix")
    return float(1.0 - _block_nonzero(w, block).mean())


def choose_block(w: np.ndarray, min_sparsity: float,
                 candidates: tuple[tuple[int, int], ...] = BLOCK_CANDIDATES
                 ) -> tuple[tuple[int, int], float] | None:
    """First candidate (preferred order) whose zero blocks reach `min_sparsity`, or None."""
    for block in candidates:
        if block_fits(w.shape, block):
            s = block_sparsity(w, block)
            if s >= min_sparsity:
                return block, s
    return None


def to_bsr(w: np.ndarray, block: tuple[int, int]) -> BSR:
    """Kernel-ready BSR of a 2-D matrix the block tiles exactly.

    The packing is the project's encoder (`formats.bsr_encode`, the one the size report
    measures); the kernels only add the int32 index contract.
    """
    if not block_fits(w.shape, block):
        raise ValueError(f"block {block} does not tile a {w.shape} matrix")
    return bsr_encode(w, block).with_index_dtype(np.int32)


def detect_nm(w: np.ndarray, candidates: tuple[tuple[int, int], ...] = NM_CANDIDATES
              ) -> tuple[int, int] | None:
    """The sparsest (n, m) such that every group of m reduction columns holds ≤ n nonzeros."""
    rows, cols = w.shape
    for n, m in candidates:
        if cols % m == 0 and (w.reshape(rows, cols // m, m) != 0).sum(axis=2).max() <= n:
            return n, m
    return None


def to_nm(w: np.ndarray, n: int, m: int) -> NM:
    """Pack a matrix that satisfies n:m (see `detect_nm`); groups with fewer nonzeros pad zeros."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // m, m)
    # Stable order: nonzeros first (by position), then zeros, take n per group.
    order = np.argsort(g == 0, axis=2, kind="stable")[:, :, :n]
    vals = np.take_along_axis(g, order, axis=2)
    if (g != 0).sum(axis=2).max() > n:
        raise ValueError(f"matrix is not {n}:{m} sparse")
    return NM((rows, cols), n, m, vals.reshape(rows, -1).astype(w.dtype),
              order.reshape(rows, -1).astype(np.uint8))
