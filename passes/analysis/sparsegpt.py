"""Layer-wise OBS pruning with weight updates (SparseGPT, Frantar & Alistarh 2023).

For a linear map `Y = W X` (`W` = `[out, K]`, the view of `sparsity_masks`) and
calibration inputs `X` (rows `[S, K]`), pruning weights and updating the
survivors to minimise `||W X - W' X||^2` is Optimal Brain Surgeon (Hassibi 1993)
per row with the shared Hessian `H = 2 X^T X` (the factor 2 cancels; dampened by
`lam I`, lam = `damp * mean(diag(H))`). SparseGPT processes columns left to right:
the error of zeroing (or keeping) column i is propagated onto columns > i with
row i of the upper Cholesky factor of `H^-1`, which equals the inverse Hessian
of the remaining columns after eliminating the earlier ones. The mask is chosen
per chunk of columns, from the saliency `w^2 / [U]_ii^2` of the already updated
weights (adaptive mask selection), so every pattern of `sparsity_masks` works:
unstructured and block chunks take their share of the layer's count; N:M masks are
chosen per group of M columns as the sweep reaches it (chunks are multiples of M).

`dense_target` gives the weight to prune when the layer's inputs X already come
from a sparsified model but its outputs should match the dense model's (inputs
D): W* = W D^T X (X^T X + lam I)^-1, the ridge refit; OBS on W* with H = X^T X
then minimises ||W D - W' X||.
"""

from __future__ import annotations

import numpy as np

from compress_ir.passes.analysis.sparsity_masks import (
    Pattern,
    count_mask,
    split_count,
    units,
)


class HessianAccumulator:
    """Streams input rows of one layer into `X^T X` (float64) without keeping them.

    With `paired`, `add` also takes the dense model's rows at the same positions
    and accumulates `X^T D` and `D^T D` for the dense-target refit; `dense_features`:
    D's width when it differs from X's (a stream target appends columns to D).
    """

    def __init__(self, features: int, paired: bool = False,
                 dense_features: int | None = None) -> None:
        width = dense_features or features
        self.xtx = np.zeros((features, features))
        self.xtd = np.zeros((features, width)) if paired else None
        self.dtd = np.zeros((width, width)) if paired else None
        self.rows = 0
        self.held: HessianAccumulator | None = None  # held-out samples' rows (sparsify)

    def add(self, rows: np.ndarray, dense_rows: np.ndarray | None = None) -> None:
        x = np.asarray(rows, dtype=np.float32)  # float32 product (2x faster), float64 sum
        self.xtx += x.T @ x
        if self.xtd is not None and dense_rows is not None:
            d = np.asarray(dense_rows, dtype=np.float32)
            self.xtd += x.T @ d
            self.dtd += d.T @ d
        self.rows += x.shape[0]

    def empty(self) -> HessianAccumulator:
        """A paired accumulator of the same widths (for held-out rows)."""
        width = None if self.xtd is None else self.xtd.shape[1]
        return HessianAccumulator(self.xtx.shape[0], True, width)

    def merged(self, other: HessianAccumulator) -> HessianAccumulator:
        """The accumulator of both row sets (for a final solve on all rows)."""
        out = HessianAccumulator(self.xtx.shape[0], self.xtd is not None,
                                 None if self.xtd is None else self.xtd.shape[1])
        out.xtx = self.xtx + other.xtx
        if out.xtd is not None:
            out.xtd = self.xtd + other.xtd
            out.dtd = self.dtd + other.dtd
        out.rows = self.rows + other.rows
        return out

    def hessian(self) -> np.ndarray:
        """`2 X^T X / S` (averaged so that `damp` means the same for any sample count)."""
        return 2.0 * self.xtx / max(self.rows, 1)

    def cross(self) -> np.ndarray:
        """`2 X^T D / S` (X^T X without dense rows: the layer's own inputs are the target's)."""
        return self.hessian() if self.xtd is None else 2.0 * self.xtd / max(self.rows, 1)

    def dense_hessian(self) -> np.ndarray:
        return self.hessian() if self.dtd is None else 2.0 * self.dtd / max(self.rows, 1)


def quad(a: np.ndarray, h: np.ndarray, b: np.ndarray | None = None) -> float:
    """`sum_o a_o^T H b_o` (b = a when omitted) with one BLAS matmul.

    Why: `np.einsum("ok,kl,ol->")` without a contraction path loops over all three
    indices in C (O(out K^2) scalar multiply-adds, seconds per FFN layer); `(a @ H) * b`
    is the same sum in ~40x less time.
    """
    b = a if b is None else b
    return float(np.sum((a @ h) * b))


def dense_target(weight: np.ndarray, hessian: np.ndarray, cross: np.ndarray,
                 damp: float) -> np.ndarray:
    """`W* = argmin ||D W^T - X W*^T||^2 + lam ||W*||^2`: the weight whose outputs on the
    sparsified model's inputs X best match the dense layer's outputs on its inputs D.

    Pruning W* by OBS then minimises the error against the *dense* outputs, because
    the least-squares residual is orthogonal to everything X can produce.
    """
    h = np.array(hessian, dtype=np.float64)
    lam = damp * float(np.mean(np.diag(h))) or damp
    h[np.arange(h.shape[0]), np.arange(h.shape[0])] += lam
    return np.linalg.solve(h, cross @ weight.T).T


def dense_targets(weight: np.ndarray, hessian: np.ndarray, cross: np.ndarray,
                  ridges: tuple[float, ...]) -> dict[float, np.ndarray]:
    """`dense_target` for several ridges from one eigendecomposition of the Hessian.

    Why: the held-out ridge choice refits with every ridge on the same Hessian; one `eigh`
    then two matmuls per ridge replace one K x K solve per ridge.
    """
    h = np.array(hessian, dtype=np.float64)
    mean = float(np.mean(np.diag(h)))
    vals, vecs = np.linalg.eigh(h)
    rhs = vecs.T @ (cross @ weight.T)
    out = {}
    for damp in ridges:
        lam = damp * mean or damp
        out[damp] = (vecs @ (rhs / (vals + lam)[:, None])).T
    return out


def inverse_cholesky(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + lam I)^-1, with dead inputs made harmless.

    An input that is always zero has H_ii = 0; its weights do not matter, so its
    diagonal is set to 1 (SparseGPT does the same) to keep H invertible.

    Computed as the inverse of the upper-triangular N with H = N N^T (the Cholesky
    factor of H with rows and columns reversed): (N^-1)^T N^-1 = H^-1 and N^-1 is upper
    with a positive diagonal, so it is the factor. Why: a Cholesky and a triangular
    inverse cost n^3/3 flops each, against ~3 n^3 for inv() then cholesky() (K=5632:
    ~6 s instead of ~28 s on one core).
    """
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    lam = damp * float(np.mean(np.diag(h)))
    eye = np.eye(h.shape[0])
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky((h + (lam * 10**attempt) * eye)[::-1, ::-1])
        except np.linalg.LinAlgError:
            continue
        return upper_inverse(np.ascontiguousarray(lower[::-1, ::-1]))
    raise np.linalg.LinAlgError("Hessian not positive definite even after damping")


def upper_inverse(n: np.ndarray, leaf: int = 256) -> np.ndarray:
    """Inverse of an upper-triangular matrix by 2x2 blocks (matmuls do the work).

    inv([[A, B], [0, C]]) = [[A^-1, -A^-1 B C^-1], [0, C^-1]]; numpy has no triangular
    inverse, and inv() would treat the matrix as general (8x the flops).
    """
    size = n.shape[0]
    if size <= leaf:
        return np.triu(np.linalg.inv(n))
    m = size // 2
    a_inv = upper_inverse(n[:m, :m], leaf)
    c_inv = upper_inverse(n[m:, m:], leaf)
    out = np.zeros_like(n)
    out[:m, :m] = a_inv
    out[m:, m:] = c_inv
    out[:m, m:] = -(a_inv @ n[:m, m:]) @ c_inv
    return out


def _chunk_mask(
    w: np.ndarray, diag: np.ndarray, pattern: Pattern, count: int,
) -> np.ndarray:
    """Keep mask of one column chunk from OBS saliency `w^2 / d^2`; `count` pruned units."""
    return count_mask(w**2 / (diag[None, :] ** 2), pattern, count)


def obs_prune(
    weight: np.ndarray, hessian: np.ndarray, pattern: Pattern, count: int,
    chunk: int = 128, damp: float = 0.01, inv_chol: np.ndarray | None = None,
    errors: dict[str, float] | None = None, dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Prune `count` units (elements/blocks; ignored for N:M) of `weight` [out, K].

    Returns (updated weight with exact zeros at pruned positions, keep mask).
    `chunk` is rounded up to the pattern's column multiple so N:M groups and
    blocks never straddle two chunks. `inv_chol`: `inverse_cholesky(hessian, damp)` when
    the caller prunes several weights with one Hessian (the inverse is the slow part).
    `errors`, if given, receives the `hessian`-weighted squared errors the choice below
    computes anyway: "obs" (the returned weight) and "magnitude" (magnitude mask, no
    update), so callers need not pay for them again. `dtype` is the precision of the
    column sweep and of those errors (the factorisation stays float64): float32 halves
    the memory traffic of the sweep and the time of the error checks (SparseGPT's own
    precision); the in-memory pass keeps float64.

    SparseGPT's chunked mask choice spreads the pruned units evenly over the chunks;
    at high sparsity on low-rank inputs that can lose to plain magnitude pruning,
    which chooses over the whole matrix. When magnitude's zeroed weights have the lower
    `hessian`-weighted error, the magnitude mask is solved with the same OBS
    compensation and the better of the two is returned: OBS is never worse than
    magnitude on the data it was given.
    """
    w = np.array(weight, dtype=dtype)
    out, k = w.shape
    step = pattern.column_multiple
    chunk = max(step, -(-chunk // step) * step)
    u = inverse_cholesky(hessian, damp) if inv_chol is None else inv_chol
    u = np.asarray(u, dtype=dtype)
    bounds = [(s, min(s + chunk, k)) for s in range(0, k, chunk)]
    counts = split_count(count, [units(pattern, (out, e - s)) for s, e in bounds])
    h = np.asarray(hessian, dtype=dtype)

    def error(c: np.ndarray) -> float:
        d = w - c
        return float(np.sum((d @ h) * d, dtype=np.float64))

    best = _obs_sweep(w, u, pattern, bounds, counts, None)
    magnitude = _chunk_mask(w, np.ones(k), pattern, count)
    zeroed = np.where(magnitude, w, 0.0)
    e_mag, e_best = error(zeroed), error(best[0])
    if e_mag < e_best:  # rare: only then pay for a second sweep
        solved = _obs_sweep(w, u, pattern, bounds, counts, magnitude)
        e_solved = error(solved[0])
        best, e_best = (solved, e_solved) if e_solved <= e_mag else ((zeroed, magnitude), e_mag)
    if errors is not None:
        errors.update(obs=e_best, magnitude=e_mag)
    return best


def _obs_sweep(w: np.ndarray, u: np.ndarray, pattern: Pattern, bounds: list[tuple[int, int]],
               counts: list[int], fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One SparseGPT sweep over the column chunks; masks chosen per chunk unless `fixed`.

    N:M masks are chosen per group of M columns just before the group is processed, from
    the weights as already updated by the earlier columns' errors (SparseGPT's N:M rule):
    a mask chosen for a whole chunk up front scores later groups on stale weights.
    """
    w = w.copy()
    keep = np.ones(w.shape, dtype=bool)
    per_group = fixed is None and pattern.kind == "nm"
    for (i1, i2), n_prune in zip(bounds, counts, strict=True):
        w1 = w[:, i1:i2].copy()
        u1 = u[i1:i2, i1:i2]
        diag1 = np.diag(u1)
        mask1 = (fixed[:, i1:i2] if fixed is not None else np.ones(w1.shape, dtype=bool)
                 if per_group else _chunk_mask(w1, diag1, pattern, n_prune))
        err1 = np.zeros_like(w1)
        for i in range(i2 - i1):
            if per_group and i % pattern.m == 0:  # chosen from the weights updated so far
                group = slice(i, i + pattern.m)
                mask1[:, group] = _chunk_mask(w1[:, group], diag1[group], pattern, 0)
            col = w1[:, i]
            d = u1[i, i]
            q = np.where(mask1[:, i], col, 0.0)
            err = (col - q) / d
            w1[:, i:] -= np.outer(err, u1[i, i:])
            w1[:, i] = q  # exact zeros where pruned, the compensated value where kept
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        keep[:, i1:i2] = mask1
    w[~keep] = 0.0
    return w, keep


def output_error(weight: np.ndarray, new: np.ndarray, hessian: np.ndarray,
                 cross: np.ndarray | None = None, dense: np.ndarray | None = None) -> float:
    """Relative layer output error `||D W^T - X W'^T|| / ||D W^T||` from the accumulated
    products (`hessian` = X^T X, `cross` = X^T D, `dense` = D^T D; D = X when omitted)."""
    cross = hessian if cross is None else cross
    dense = hessian if dense is None else dense
    den = quad(weight, dense)
    num = den - 2.0 * quad(new, cross, weight) + quad(new, hessian)
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0
