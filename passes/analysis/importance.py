"""Importance criteria: one interface for weight-only and (later) data-driven scores.

A criterion maps a channel group to one score per unit (higher = keep). It gets a
`ScoreContext` holding the model, the analysis and, for calibration-based criteria,
captured activations; weight-only criteria ignore the latter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compress_ir.core.model import Model
from compress_ir.core.registry import Registry
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, ChannelGroup

_EPS = 1e-12


@dataclass
class ScoreContext:
    """What a criterion may read: weights through the model, activations if captured."""

    model: Model
    analysis: ChannelAnalysis
    activations: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self._tensors = self.model.tensors()

    def producer_weight(self, root_index: int) -> np.ndarray | None:
        """The producer's weight with its output-channel axis first (None if fixed)."""
        root = self.analysis.roots[root_index]
        if root.weight is None:
            return None
        tensor = self._tensors[root.weight]
        return np.moveaxis(np.asarray(tensor.values), root.weight_axis, 0)


class Criterion:
    """Base class: `score(group, ctx)` returns one float per unit of `group.units`."""

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        raise NotImplementedError


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


class _NormCriterion(Criterion):
    """Li et al. 2017: a filter's p-norm; each producer normalised by its mean norm.

    Normalising per producer lets layers with different weight scales be summed
    within a coupled group (and compared across groups in global scope).
    """

    order: ClassVar[int] = 1

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        per_root: dict[int, np.ndarray] = {}
        for root in group.roots:
            weight = ctx.producer_weight(root.index)
            if weight is None:
                continue
            flat = weight.reshape(weight.shape[0], -1).astype(np.float64, copy=False)
            norms = np.linalg.norm(flat, ord=self.order, axis=1)
            per_root[root.index] = norms / (norms.mean() + _EPS)
        scores = np.zeros(group.size)
        for i, unit in enumerate(group.units):
            for root_index, positions in group.members[int(unit)]:
                if root_index in per_root:
                    scores[i] += per_root[root_index][positions].sum()
        return scores


@CRITERIA.register("l1")
class L1Norm(_NormCriterion):
    order = 1


@CRITERIA.register("l2")
class L2Norm(_NormCriterion):
    order = 2
