"""How many units each group keeps: uniform per group, or one global ranking.

Works on scores only, so every criterion gets every allocation for free.
"""

from __future__ import annotations

import math

import numpy as np

from compress_ir.core.registry import Registry

ALLOCATIONS: Registry = Registry("scope")


def _keep_count(size: int, n_remove: int, round_to: int, min_keep: int) -> int:
    keep = max(size - n_remove, min(min_keep, size), 1)
    if round_to > 1:
        keep = min(size, math.ceil(keep / round_to) * round_to)
    return keep


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask of the `keep` best units (stable: ties keep the lower index)."""
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(scores.size, dtype=bool)
    mask[order[:keep]] = True
    return mask


@ALLOCATIONS.register("uniform")
def uniform(
    scores: dict[int, np.ndarray], ratio: float, round_to: int, min_keep: int
) -> dict[int, np.ndarray]:
    """Remove `ratio` of every group's units, the lowest-scored ones."""
    return {
        g: _top(s, _keep_count(s.size, math.floor(ratio * s.size + 1e-9), round_to, min_keep))
        for g, s in scores.items()
    }


@ALLOCATIONS.register("global")
def global_(
    scores: dict[int, np.ndarray], ratio: float, round_to: int, min_keep: int
) -> dict[int, np.ndarray]:
    """Rank all units across groups by score / group mean; remove the lowest `ratio`."""
    entries = []
    for g, s in scores.items():
        norm = s / (s.mean() + 1e-12) if s.size else s
        entries.extend((float(v), g, i) for i, v in enumerate(norm))
    entries.sort()
    budget = math.floor(ratio * len(entries) + 1e-9)
    removed = {g: 0 for g in scores}
    for _, g, _ in entries:
        if budget == 0:
            break
        if scores[g].size - removed[g] > max(min_keep, 1):
            removed[g] += 1
            budget -= 1
    return {
        g: _top(s, _keep_count(s.size, removed[g], round_to, min_keep)) for g, s in scores.items()
    }
