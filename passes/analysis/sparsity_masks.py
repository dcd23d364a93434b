"""Sparsity patterns and the masks that realise them on a weight matrix.

Every weight is seen as a 2-D matrix `[out, reduction]` (see `weight_matrix`):
rows = output features, columns = the axis the layer sums over. That view is
what the patterns are defined on, and what sparse kernels (BSR, N:M) consume:

* `unstructured`: any element may be zero; exactly `round(sparsity * size)` zeros.
* `n:m`: in every row, each run of M consecutive columns (reduction positions
  `[j*M, (j+1)*M)`) keeps at most N elements (Zhou et al. 2021; 2:4 is the
  sparse tensor core layout).
* `block` `RxC`: the matrix is tiled by blocks of R rows (output features) by C
  columns (reduction); whole blocks are zeroed. `1x4` = 4 consecutive reduction
  weights of one output (a SIMD vector along K), `4x1` = one reduction weight
  across 4 outputs.

Masks are boolean arrays of the matrix's shape, True = kept. Scores are
"larger = more important"; ties are broken by position (stable sort), so the
zero count is exact whatever the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from compress_ir.core.errors import UsageError

BLOCK_SHAPES = ("1x4", "4x1", "8x1", "16x1", "4x4")


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern: kind plus its N:M or block geometry."""

    kind: str  # "unstructured" | "nm" | "block"
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern itself implies (n:m), else None."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    @property
    def column_multiple(self) -> int:
        """Column chunks (OBS) must be a multiple of this so groups/blocks stay whole."""
        return self.m if self.kind == "nm" else self.cols if self.kind == "block" else 1

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block {self.rows}x{self.cols}"
        return "unstructured"


_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^(\d+)x(\d+)$")


def parse_block(text: str) -> tuple[int, int]:
    """`RxC` -> (rows, cols); any positive sizes are accepted, BLOCK_SHAPES are the usual."""
    match = _BLOCK.match(text.strip().lower())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UsageError(f"block {text!r}: expected RxC with positive sizes, e.g. "
                         f"{', '.join(BLOCK_SHAPES)}")
    return int(match.group(1)), int(match.group(2))


def parse_pattern(text: str, block: str = "1x4") -> Pattern:
    """`unstructured`, `N:M` (e.g. 2:4) or `block` (geometry from `block`, e.g. 4x1)."""
    text = text.strip().lower()
    if text == "unstructured":
        return Pattern("unstructured")
    if text == "block":
        rows, cols = parse_block(block)
        return Pattern("block", rows=rows, cols=cols)
    match = _NM.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise UsageError(f"pattern {text!r}: N:M needs 0 < N < M")
        return Pattern("nm", n=n, m=m)
    raise UsageError(f"pattern {text!r}: expected unstructured, N:M (e.g. 2:4) or block")


def unsupported_shape(pattern: Pattern, shape: tuple[int, int]) -> str | None:
    """Why a `[out, reduction]` matrix cannot carry the pattern exactly (None if it can)."""
    out, red = shape
    if pattern.kind == "nm" and red % pattern.m:
        return f"reduction length {red} is not a multiple of M={pattern.m}"
    if pattern.kind == "block" and (out % pattern.rows or red % pattern.cols):
        return (f"matrix {out}x{red} is not tiled by {pattern.rows}x{pattern.cols} blocks")
    return None


def block_scores(scores: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sum of element scores per block: `[out/rows, red/cols]`."""
    out, red = scores.shape
    return scores.reshape(out // rows, rows, red // cols, cols).sum(axis=(1, 3))


def expand_blocks(block_mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A per-block mask back to element resolution."""
    return np.repeat(np.repeat(block_mask, rows, axis=0), cols, axis=1)


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask (same shape) of the `count` lowest scores, ties broken by position."""
    flat = scores.reshape(-1)
    pruned = np.zeros(flat.size, dtype=bool)
    if count >= flat.size:
        pruned[:] = True
    elif count > 0:
        # O(n) selection instead of a full stable sort (5x+ on a 2048x5632 layer), same
        # set: everything below the count-th value, then the earliest ties at it
        threshold = np.partition(flat, count - 1)[count - 1]
        pruned = flat < threshold
        ties = np.flatnonzero(flat == threshold)[: count - int(np.count_nonzero(pruned))]
        pruned[ties] = True
    return pruned.reshape(scores.shape)


def nm_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the N highest scores of every M consecutive columns in each row."""
    out, red = scores.shape
    groups = scores.reshape(out, red // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")  # highest first, ties by position
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return keep.reshape(out, red)


def units(pattern: Pattern, shape: tuple[int, int]) -> int:
    """How many prunable units (elements or blocks) a matrix has under the pattern."""
    if pattern.kind == "block":
        return (shape[0] // pattern.rows) * (shape[1] // pattern.cols)
    return shape[0] * shape[1]


def unit_scores(pattern: Pattern, scores: np.ndarray) -> np.ndarray:
    """Scores per prunable unit: elements, or summed over each block."""
    if pattern.kind == "block":
        return block_scores(scores, pattern.rows, pattern.cols)
    return scores


def mask_from_units(pattern: Pattern, pruned_units: np.ndarray) -> np.ndarray:
    """Keep mask at element resolution from a boolean 'pruned' mask over units."""
    keep = ~pruned_units
    if pattern.kind == "block":
        return expand_blocks(keep, pattern.rows, pattern.cols)
    return keep


def count_mask(scores: np.ndarray, pattern: Pattern, count: int) -> np.ndarray:
    """Keep mask of one `[out, reduction]` matrix with its `count` lowest-scored units
    pruned (N:M ignores `count`: the N highest of every M are kept)."""
    if pattern.kind == "nm":
        return nm_mask(scores, pattern.n, pattern.m)
    return mask_from_units(pattern, lowest(unit_scores(pattern, scores), count))


def layer_mask(scores: np.ndarray, pattern: Pattern, sparsity: float) -> np.ndarray:
    """Keep mask of one `[out, reduction]` matrix at `sparsity` (n:m ignores it).

    Unstructured: exactly round(sparsity * size) zeros; block: exactly
    round(sparsity * blocks) zero blocks.
    """
    if pattern.kind == "nm":
        return nm_mask(scores, pattern.n, pattern.m)
    per_unit = unit_scores(pattern, scores)
    count = int(round(sparsity * per_unit.size))
    return mask_from_units(pattern, lowest(per_unit, count))


def normalised(per_unit: np.ndarray) -> np.ndarray:
    """Scores divided by the layer's mean score, so layers can share one threshold.

    Magnitudes differ by orders between layers (fan-in scaled inits, BN after the
    conv); relative to the layer's own mean, "small" means the same everywhere.
    """
    mean = float(np.mean(per_unit)) if per_unit.size else 0.0
    return per_unit / mean if mean > 0 else per_unit


def global_counts(per_unit: list[np.ndarray], sparsity: float) -> list[int]:
    """Units to prune per layer so that round(sparsity * total) go over all layers.

    One threshold over the layer-normalised scores: the lowest `total` units of
    the concatenation, ties broken by layer order then position.
    """
    flat = [normalised(s).reshape(-1) for s in per_unit]
    sizes = [f.size for f in flat]
    total = int(round(sparsity * sum(sizes)))
    if not flat or total == 0:
        return [0] * len(flat)
    order = np.argsort(np.concatenate(flat), kind="stable")[:total]
    owner = np.repeat(np.arange(len(flat)), sizes)
    return np.bincount(owner[order], minlength=len(flat)).tolist()


def split_count(total: int, sizes: list[int]) -> list[int]:
    """Distribute `total` over chunks proportionally to `sizes`, summing exactly to it."""
    cum = np.cumsum([0, *sizes]).astype(np.float64)
    whole = cum[-1]
    if whole == 0:
        return [0] * len(sizes)
    marks = np.round(total * cum / whole).astype(np.int64)
    return np.diff(marks).tolist()
