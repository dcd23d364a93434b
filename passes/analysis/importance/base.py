"""The criterion interface: one for weight-only and data-driven scores.

A criterion maps a channel group to one score per unit (higher = keep). It gets a
`ScoreContext` holding the model, the analysis and, for calibration-based criteria,
statistics of calibration activations (`ctx.calibration`); weight-only criteria
ignore the latter. A criterion may also `compensate`: edit the kept weights of the
model before the removal is applied (e.g. merging a removed neuron into its twin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from compress_ir.core.errors import UsageError
from compress_ir.core.model import Model
from compress_ir.core.registry import Registry
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, ChannelGroup

EPS = 1e-12


@dataclass
class ScoreContext:
    """What a criterion may read: weights through the model, activations if captured."""

    model: Model
    analysis: ChannelAnalysis
    calibration: Any = None  # compress_ir.core.calibration.CalibrationStats when captured

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
    summary: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        raise NotImplementedError

    def compensate(self, ctx: ScoreContext, removed_units: set[int]) -> bool:
        """Edit kept weights in `ctx.model` to absorb removed units; True if changed."""
        return False


class UnscorableGroup(UsageError):
    """A criterion cannot score this group (e.g. hrank on a Gemm's features).

    The group is left whole and the report says why; only when no candidate group
    can be scored does the pass fail with this error.
    """


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def sum_members(group: ChannelGroup, per_root: dict[int, np.ndarray]) -> np.ndarray:
    """Per unit: the per-filter scores of every (root, position) member, summed."""
    scores = np.zeros(group.size)
    for i, unit in enumerate(group.units):
        for root_index, positions in group.members[int(unit)]:
            if root_index in per_root:
                scores[i] += per_root[root_index][positions].sum()
    return scores


def per_producer(
    group: ChannelGroup, ctx: ScoreContext, filter_scores: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Score each producer's filters (output-channel axis first), normalise by the
    producer's mean so layers of different scale can be summed, then sum per unit."""
    per_root: dict[int, np.ndarray] = {}
    for root in group.roots:
        weight = ctx.producer_weight(root.index)
        if weight is not None:
            values = filter_scores(weight)
            per_root[root.index] = values / (values.mean() + EPS)
    return sum_members(group, per_root)
