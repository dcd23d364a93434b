"""Filter-norm criteria (Li et al. 2017, "Pruning Filters for Efficient ConvNets")."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from compress_ir.passes.analysis.channel_groups import ChannelGroup
from compress_ir.passes.analysis.importance.base import (
    CRITERIA,
    Criterion,
    ScoreContext,
    per_producer,
)


class _NormCriterion(Criterion):
    """Li et al. 2017: a filter's p-norm; each producer normalised by its mean norm.

    Normalising per producer lets layers with different weight scales be summed
    within a coupled group (and compared across groups in global scope).
    """

    order: ClassVar[int] = 1

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        def norms(weight: np.ndarray) -> np.ndarray:
            flat = weight.reshape(weight.shape[0], -1).astype(np.float64, copy=False)
            return np.linalg.norm(flat, ord=self.order, axis=1)

        return per_producer(group, ctx, norms)


@CRITERIA.register("l1")
class L1Norm(_NormCriterion):
    order = 1


@CRITERIA.register("l2")
class L2Norm(_NormCriterion):
    order = 2
