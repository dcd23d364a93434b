"""Held-out ridge refits: fit on part of the calibration data, judge on the rest.

Why: a least-squares refit of a layer to the original model's outputs always lowers
the error *on the rows it was fit on*; with few calibration samples and many input
features it overfits, and the model gets worse on new data (issue 14: the dense-target
refit of `sparsify` took a sentence encoder's retrieval recall from 0.735 to 0.515 on
64 calibration sentences while its calibration error fell). So every refit here
(`reconstruct`, `sparsify{correct}`) accumulates two sets of normal equations -- one
from the fit samples, one from held-out samples (whole calibration samples, every
`period`-th one, never single rows of a sample the fit has seen) -- chooses the ridge
penalty whose fit has the lowest held-out error, and keeps the layer as it was when no
refit beats it on the held-out samples. The chosen refit is then solved once more on
all rows. Calibration and held-out errors are reported side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Ridge penalties tried, relative to the mean diagonal of the centred X^T X.
RIDGES: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def period_for(holdout: float, samples: int) -> int:
    """Every `period`-th calibration sample is held out (0: none held out).

    None is held out when the fraction is 0 or there are fewer than 2 samples (nothing
    would be left to fit on).
    """
    if holdout <= 0.0 or samples < 2:
        return 0
    return max(2, round(1.0 / holdout))


def held_out(sample_index: np.ndarray, period: int) -> np.ndarray:
    """Which rows (by the global index of their calibration sample) are held out."""
    if period <= 0:
        return np.zeros(np.shape(sample_index), dtype=bool)
    return np.asarray(sample_index) % period == period - 1


def sample_of(positions: object, x: np.ndarray, conv: bool, start: int) -> np.ndarray:
    """Global calibration-sample index of each sampled row (`RowSampler` positions).

    A Conv's positions carry their sample; a Gemm/MatMul row index of the input
    flattened to [-1, K] belongs to sample index // (rows per sample). `start` is the
    index of the batch's first sample.
    """
    if conv:
        return start + np.asarray(positions[0])  # type: ignore[index]
    per_sample = max(1, int(np.prod(x.shape[:-1])) // max(1, x.shape[0]))
    return start + np.asarray(positions) // per_sample


@dataclass
class Normal:
    """Normal equations of [X 1] -> Y, accumulated in float64 without keeping rows."""

    xx: np.ndarray | float = 0.0
    xy: np.ndarray | float = 0.0
    yy: float = 0.0
    rows: int = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        xa = np.concatenate([np.asarray(x, np.float64), np.ones((x.shape[0], 1))], axis=1)
        y = np.asarray(y, np.float64)
        self.xx = self.xx + xa.T @ xa
        self.xy = self.xy + xa.T @ y
        self.yy += float((y**2).sum())
        self.rows += x.shape[0]

    def __add__(self, other: Normal) -> Normal:
        return Normal(self.xx + other.xx, self.xy + other.xy, self.yy + other.yy,
                      self.rows + other.rows)

    def error(self, coef: np.ndarray) -> float:
        """Relative error ||[X 1] coef - Y|| / ||Y|| of `coef` = [W^T; b] on these rows."""
        if not self.rows or self.yy <= 0:
            return 0.0
        res = (np.trace(coef.T @ self.xx @ coef) - 2.0 * np.trace(coef.T @ self.xy) + self.yy)
        return float(math.sqrt(max(res, 0.0) / self.yy))

    def solve(self, ridge: float, prior: np.ndarray | None = None,
              bias: np.ndarray | None = None) -> np.ndarray:
        """[W^T; b] minimising ||[X 1][W^T; b] - Y||^2 + lam ||W^T - prior||^2.

        Free bias (`bias` None): the penalty acts on the centred X, so it never pulls the
        bias, which absorbs the removed inputs' mean (an exactly predictable layer is
        recovered up to a tiny bias); lam = ridge * mean diagonal of the centred X^T X.
        Fixed `bias` (kept as it is, as onnxsim's refit does for MatMul + Add): only W is
        fit, on the uncentred X, lam = ridge * mean diagonal of X^T X. `prior` ([K, O],
        default zeros) is what the penalty shrinks W^T toward: the pruned weights make a
        large ridge fall back to them instead of to zero (onnxsim's refit).
        """
        cov, cross, means = self._moments(bias)
        k = cov.shape[0]
        lam = ridge * float(np.mean(np.diag(cov))) if k else 0.0
        cov[np.arange(k), np.arange(k)] += lam
        if prior is not None and lam > 0:
            cross = cross + lam * prior
        if lam > 0:
            try:
                weight = np.linalg.solve(cov, cross)
            except np.linalg.LinAlgError:
                weight = np.linalg.lstsq(cov, cross, rcond=None)[0]
        else:
            weight = np.linalg.lstsq(cov, cross, rcond=None)[0]
        b = bias if bias is not None else means[1] - means[0] @ weight
        return np.vstack([weight, np.asarray(b, np.float64)[None, :]])

    def _moments(self, bias: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """X^T X and X^T (Y - bias) for a kept bias (uncentred); centred ones and the means
        of X and Y for a free bias (the penalty then never acts on the bias)."""
        xx, xy = np.asarray(self.xx), np.asarray(self.xy)
        k = xx.shape[0] - 1
        if bias is not None:
            return xx[:k, :k].copy(), xy[:k] - np.outer(xx[:k, k], bias), None
        n = xx[k, k]
        mean_x, mean_y = xx[k, :k] / n, xy[k] / n
        return (xx[:k, :k] - n * np.outer(mean_x, mean_x),
                xy[:k] - n * np.outer(mean_x, mean_y), (mean_x, mean_y))

    def solve_scale(self, ridge: float, weight: np.ndarray, toward_one: bool = True,
                    bias: np.ndarray | None = None) -> np.ndarray:
        """[diag(s) W^T; b]: one scale per input feature, W^T ([K, O]) otherwise kept.

        Kwon et al.'s mask tuning: with K unknowns instead of K*O the fit cannot absorb
        what the calibration rows happen to contain, only how much each kept unit should
        now contribute. ||X diag(s) W^T - Y'||^2 is quadratic in s with Gram matrix
        (X^T X) * (W^T W^T') (element-wise) and right side diag(X^T Y' W), so the same
        normal equations serve; the ridge pulls s toward 1 (`toward_one`, the pruned
        weights) or 0. Bias free (centred, as `solve`) or kept (`bias`).
        """
        cov, cross, means = self._moments(bias)
        k = cov.shape[0]
        gram = cov * (weight @ weight.T)
        rhs = np.einsum("io,io->i", cross, weight)
        lam = ridge * float(np.mean(np.diag(gram))) if k else 0.0
        gram = gram + lam * np.eye(k)
        if toward_one:
            rhs = rhs + lam
        try:
            scale = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            scale = np.linalg.lstsq(gram, rhs, rcond=None)[0]
        fitted = weight * scale[:, None]
        b = bias if bias is not None else means[1] - means[0] @ fitted
        return np.vstack([fitted, np.asarray(b, np.float64)[None, :]])


@dataclass
class Choice:
    """The outcome of one held-out refit decision (None errors: not measured)."""

    coef: np.ndarray | None  # the refit [W^T; b] on all rows, None when skipped
    ridge: float | None
    applied: bool
    calib_before: float
    calib_after: float
    heldout_before: float | None = None
    heldout_after: float | None = None
    tried: dict[str, float] = field(default_factory=dict)  # ridge -> held-out error

    def report(self) -> dict:
        out = {"refit": self.applied, "ridge": self.ridge,
               "rel_error_before": round(self.calib_before, 6),
               "rel_error_after": round(self.calib_after, 6)}
        if self.heldout_before is not None:
            out["heldout_rel_error_before"] = round(self.heldout_before, 6)
            out["heldout_rel_error_after"] = round(self.heldout_after, 6)
        return out


def choose(fit: Normal, held: Normal, current: np.ndarray, ridges: Sequence[float],
           fixed: float, toward_current: bool = False, keep_bias: bool = False,
           scale: bool = False) -> Choice:
    """Refit `current` ([W^T; b]) or keep it, by held-out error.

    Without held-out rows the refit with the `fixed` ridge is applied (the old,
    unguarded behaviour, reported as such). Otherwise each ridge is fit on `fit`, the
    one with the lowest held-out error wins, and it is applied (solved again on all
    rows) only if it beats `current` on the held-out rows. `toward_current`: the ridge
    shrinks W toward `current`'s W (not zero); `keep_bias`: `current`'s bias is kept;
    `scale`: only one scale per input feature is fit (`Normal.solve_scale`).
    """
    k = current.shape[0] - 1
    bias = current[k] if keep_bias else None

    def solve(normal: Normal, ridge: float) -> np.ndarray:
        if scale:
            return normal.solve_scale(ridge, current[:k], toward_current, bias)
        return normal.solve(ridge, current[:k] if toward_current else None, bias)

    total = fit + held
    before = total.error(current)
    if not held.rows or not fit.rows:
        coef = solve(total, fixed)
        return Choice(coef, fixed, True, before, total.error(coef))
    held_before = held.error(current)
    tried = {}
    best: tuple[float, float] | None = None
    for ridge in ridges:
        err = held.error(solve(fit, ridge))
        tried[f"{ridge:g}"] = round(err, 6)
        if best is None or err < best[0]:
            best = (err, ridge)
    assert best is not None
    if best[0] >= held_before:
        return Choice(None, None, False, before, before, held_before, held_before, tried)
    coef = solve(total, best[1])
    return Choice(coef, best[1], True, before, total.error(coef), held_before, best[0], tried)
