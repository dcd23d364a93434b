"""How many units each group keeps: the allocation interface and its registry.

An allocation turns per-group scores into keep masks. Like criteria, each one is a
registered class: `uniform` and `global` read the scores only, so every criterion gets
them for free; `sensitivity` and `budget` (target-macs / target-params, in budget.py)
also read the model, and say so with `needs_model`, so the pass builds the model
context for them alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx

from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.registry import Registry
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, ChannelGroup


@dataclass
class AllocationContext:
    """The model a model-aware allocation reads (built only for those)."""

    proto: onnx.ModelProto  # the model the analysis ran on, with inferred shapes
    analysis: ChannelAnalysis
    groups: dict[int, ChannelGroup]  # the candidate groups, by index
    # the model with these units' channels zeroed (the pass's masked oracle)
    masked: Callable[[set[int]], onnx.ModelProto]
    calibration: CalibrationSet | None = None
    seed: int = 0
    input_shapes: dict[str, tuple[int, ...]] | None = None  # MACs at these (else assumed)
    # target-latency: the model -> its LatencyTables (measured on the target, cached)
    latency: Callable[[onnx.ModelProto], Any] | None = None


@dataclass
class AllocationRequest:
    """What the user asked for; each allocation reads the fields it needs."""

    ratio: float = 0.5
    round_to: int = 1
    min_keep: int = 1
    tolerance: float = 0.01  # sensitivity: largest output loss per group
    plot: str = ""  # sensitivity: where to draw the curves
    budget: tuple[str, float] | None = None  # ("macs" | "params" | "latency", fraction kept)
    harm: str = "score"  # budget: what a removal costs ("score" | "output", budget.HARMS)
    model: AllocationContext | None = None  # set for allocations with needs_model
    # per group, the unit multiple that keeps its channel counts multiples of round_to:
    # a unit of several channels (an attention head of head_dim) needs fewer (see
    # channel_prune.unit_multiples); groups not listed use round_to
    unit_round: dict[int, int] = field(default_factory=dict)

    def round_for(self, group: int) -> int:
        """The multiple a group's kept unit count is rounded up to."""
        return self.unit_round.get(group, self.round_to)

    def rounding(self) -> Rounding:
        return self.round_to if not self.unit_round else self.round_for


Keep = dict[int, np.ndarray]
Rounding = int | Callable[[int], int]  # one multiple for all groups, or one per group


def _multiple(rounding: Rounding, group: int) -> int:
    return rounding(group) if callable(rounding) else rounding


class Allocation:
    """Base class: `allocate(scores, request)` returns keep masks per group and what the
    report should show about the choice (empty for score-only allocations)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    by_scope: ClassVar[bool] = True  # chosen with `scope=NAME` (the budget is chosen by target-*)

    def allocate(self, scores: dict[int, np.ndarray], req: AllocationRequest
                 ) -> tuple[Keep, dict[str, Any]]:
        raise NotImplementedError


ALLOCATIONS: Registry[type[Allocation]] = Registry("scope")


def keep_count(size: int, n_remove: int, round_to: int, min_keep: int) -> int:
    """Units a group of `size` keeps after removing `n_remove`: at least `min_keep` (and 1),
    rounded up to a multiple of `round_to` (never above `size`)."""
    keep = max(size - n_remove, min(min_keep, size), 1)
    if round_to > 1:
        keep = min(size, math.ceil(keep / round_to) * round_to)
    return keep


def top_mask(scores: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask of the `keep` best units (stable: ties keep the lower index)."""
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(scores.size, dtype=bool)
    mask[order[:keep]] = True
    return mask


@ALLOCATIONS.register("uniform")
class Uniform(Allocation):
    summary: ClassVar[str] = "remove `ratio` of every group's units, the lowest-scored ones"

    def allocate(self, scores: dict[int, np.ndarray], req: AllocationRequest
                 ) -> tuple[Keep, dict[str, Any]]:
        return uniform(scores, req.ratio, req.rounding(), req.min_keep), {}


@ALLOCATIONS.register("global")
class Global(Allocation):
    summary: ClassVar[str] = "one ranking of all units by score / group mean"

    def allocate(self, scores: dict[int, np.ndarray], req: AllocationRequest
                 ) -> tuple[Keep, dict[str, Any]]:
        return global_(scores, req.ratio, req.rounding(), req.min_keep), {}


def uniform(
    scores: dict[int, np.ndarray], ratio: float, round_to: Rounding, min_keep: int
) -> Keep:
    """Remove `ratio` of every group's units, the lowest-scored ones."""
    return {
        g: top_mask(s, keep_count(s.size, math.floor(ratio * s.size + 1e-9),
                                  _multiple(round_to, g), min_keep))
        for g, s in scores.items()
    }


def global_(
    scores: dict[int, np.ndarray], ratio: float, round_to: Rounding, min_keep: int
) -> Keep:
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
        g: top_mask(s, keep_count(s.size, removed[g], _multiple(round_to, g), min_keep))
        for g, s in scores.items()
    }
