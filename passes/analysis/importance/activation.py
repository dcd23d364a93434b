"""Activation-statistics criteria: APoZ, mean |activation|, activation variance, HRank.

All four read calibration activations where a group's channels are *consumed*: the
input tensor of every reducing consumer (a Conv, Gemm, MatMul, ... that sums over
the channels; `ConstSlice.reduces`). `consumer_sites` finds, for one group, those
tensors and the positions of their channel axis that carry the group's units.

Aggregation (same for all four): a unit's value in one consumer input is the mean
of the statistic over the unit's positions there (a Flatten maps one channel to
H*W positions); its score is the mean over the distinct consumer inputs it
reaches. A unit that reaches no reducing consumer influences nothing downstream
and scores 0 (it is removed first).

Note that a consumer behind a GlobalAveragePool sees pooled values: APoZ and the
moments are those of the pooled activation (a dead channel still pools to 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from compress_ir.core.calibration import ActivationCapture
from compress_ir.core.errors import UsageError
from compress_ir.passes.analysis.channel_groups import ChannelGroup, ConstSlice
from compress_ir.passes.analysis.importance.base import (
    CRITERIA,
    Criterion,
    ScoreContext,
    UnscorableGroup,
)


@dataclass
class ConsumerSite:
    """Where a group's units enter one reducing consumer."""

    slice: ConstSlice
    positions: np.ndarray  # positions on `slice.by`'s channel axis holding the group's units
    unit_index: np.ndarray  # for each of those positions, its index into `group.units`


def require_calibration(ctx: ScoreContext, name: str) -> Any:
    if ctx.calibration is None:
        raise UsageError(f"criterion {name!r} needs calibration data (--calib)")
    return ctx.calibration


def locate(group: ChannelGroup, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit id in `units`: its index into `group.units` and whether it is there."""
    idx = np.minimum(np.searchsorted(group.units, units), max(group.size - 1, 0))
    return idx, group.units[idx] == units


def consumer_sites(group: ChannelGroup, ctx: ScoreContext) -> list[ConsumerSite]:
    """Every reducing consumer whose input carries units of `group` (analysis order)."""
    stats = ctx.calibration
    sites = []
    for s in ctx.analysis.slices:
        if not s.reduces or s.by not in ctx.analysis.layouts:
            continue
        idx, hit = locate(group, stats.units(s.by))
        if hit.any():
            sites.append(ConsumerSite(s, np.flatnonzero(hit), idx[hit]))
    return sites


def unit_means(size: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean over parts of (mean over a unit's positions in the part); 0 if never seen."""
    total = np.zeros(size)
    seen = np.zeros(size)
    for unit_index, values in parts:
        count = np.bincount(unit_index, minlength=size)
        sums = np.bincount(unit_index, weights=np.asarray(values, np.float64), minlength=size)
        here = count > 0
        total[here] += sums[here] / count[here]
        seen[here] += 1
    return np.divide(total, seen, out=np.zeros(size), where=seen > 0)


def _by_tensor(sites: list[ConsumerSite]) -> dict[str, ConsumerSite]:
    """One site per consumer input tensor (a tensor read by two convs counts once)."""
    out: dict[str, ConsumerSite] = {}
    for site in sites:
        out.setdefault(site.slice.by, site)
    return out


def _has_maps(ctx: ScoreContext, tensors: dict[str, Any], tensor: str) -> bool:
    """A 4-D tensor whose H x W maps are not a single row or column (so rank means
    something: a 1 x 1 map after GlobalAveragePool has rank 1 or 0)."""
    gs_tensor = tensors.get(tensor)
    shape = None if gs_tensor is None else ctx.model.shape(gs_tensor)
    if shape is None or len(shape) != 4:
        return False
    return all(not isinstance(d, int) or d > 1 for d in shape[2:])


class _ChannelStatCriterion(Criterion):
    needs_calibration = True

    def statistic(self, stats: Any, tensor: str) -> np.ndarray:
        raise NotImplementedError

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        stats = require_calibration(ctx, self.name)
        sites = _by_tensor(consumer_sites(group, ctx))
        parts = [
            (site.unit_index, self.statistic(stats, tensor)[site.positions])
            for tensor, site in sites.items()
        ]
        return unit_means(group.size, parts)


@CRITERIA.register("apoz")
class APoZ(_ChannelStatCriterion):
    """Hu et al. 2016, "Network Trimming: A Data-Driven Neuron Pruning Approach".

    Score = 1 - APoZ, where APoZ is the fraction of the channel's calibration
    activations that are <= 0 at the consumer's input (the zeros a ReLU outputs;
    `ChannelStats.apoz`), over samples and spatial positions. A channel that is
    mostly zero is removed first.
    """

    summary: ClassVar[str] = "1 - average percentage of zeros of the activation (Hu 2016)"

    def statistic(self, stats: Any, tensor: str) -> np.ndarray:
        return 1.0 - stats.channel_stats(tensor).apoz


@CRITERIA.register("act-mean")
class ActivationMean(_ChannelStatCriterion):
    """Polyak & Wolf 2015, "Channel-level acceleration of deep face representations".

    Score = mean |activation| of the channel at the consumer's input over samples
    and spatial positions (`ChannelStats.abs_mean`).
    """

    summary: ClassVar[str] = "mean |activation| over calibration data (Polyak & Wolf 2015)"

    def statistic(self, stats: Any, tensor: str) -> np.ndarray:
        return stats.channel_stats(tensor).abs_mean


@CRITERIA.register("act-var")
class ActivationVariance(_ChannelStatCriterion):
    """Polyak & Wolf 2015, "Channel-level acceleration of deep face representations".

    Score = variance of the channel's activation at the consumer's input over
    samples and spatial positions (`ChannelStats.var`); a near-constant channel
    carries no information (its mean could be folded into a bias).
    """

    summary: ClassVar[str] = "activation variance over calibration data (Polyak & Wolf 2015)"

    def statistic(self, stats: Any, tensor: str) -> np.ndarray:
        return stats.channel_stats(tensor).var


@CRITERIA.register("hrank")
class HRank(Criterion):
    """Lin et al. 2020, "HRank: Filter Pruning using High-Rank Feature Map".

    Score = average (over calibration samples) matrix rank of the channel's H x W
    feature map, read at the 4-D (N, C, H, W) inputs of the group's reducing
    consumers (`CalibrationStats.feature_rank`), aggregated as the other activation
    criteria are. Maps with H or W equal to 1 count as having no rank.

    A unit none of whose consumer inputs has such maps (it reaches its consumers
    only through GlobalAveragePool/Flatten, e.g. the last conv of a classifier) uses
    instead the *deepest* tensor with maps (channels on axis 1) that carries it: the
    last one in topological order, i.e. the feature map just before the pooling, as
    HRank ranks a layer's output maps. If a unit has no such tensor at all (an MLP),
    the criterion raises a UsageError naming the group: a rank is not defined there.
    """

    summary: ClassVar[str] = "average rank of the channel's feature maps (Lin 2020)"
    needs_calibration: ClassVar[bool] = True

    def __init__(self) -> None:
        self._extra: dict[str, np.ndarray] = {}  # ranks of non-consumer tensors, by name

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        stats = require_calibration(ctx, self.name)
        sites = _by_tensor(consumer_sites(group, ctx))
        tensors = ctx.model.tensors()
        parts = []
        consumed = np.zeros(group.size, dtype=bool)
        ranked = np.zeros(group.size, dtype=bool)
        for tensor, site in sites.items():
            consumed[site.unit_index] = True
            ranks = stats.feature_rank(tensor) if _has_maps(ctx, tensors, tensor) else None
            if ranks is not None:
                parts.append((site.unit_index, ranks[site.positions]))
                ranked[site.unit_index] = True
        missing = consumed & ~ranked
        if missing.any():
            parts.extend(self._deepest_maps(group, ctx, tensors, missing))
        return unit_means(group.size, parts)

    def _deepest_maps(
        self, group: ChannelGroup, ctx: ScoreContext, tensors: dict[str, Any],
        missing: np.ndarray,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        stats = ctx.calibration
        deepest: dict[int, str] = {}
        for node in ctx.analysis.nodes.values():  # topological order
            for out in node.outputs:
                lay = ctx.analysis.layouts.get(out.name)
                if lay is None or lay.axis != 1 or not _has_maps(ctx, tensors, out.name):
                    continue
                idx, hit = locate(group, stats.units(out.name))
                for i in np.unique(idx[hit]):
                    if missing[i]:
                        deepest[int(i)] = out.name
        lacking = [int(i) for i in np.flatnonzero(missing) if int(i) not in deepest]
        if lacking:
            raise UnscorableGroup(
                f"criterion 'hrank': channels of group [{group.label()}] never appear in a 4-D "
                "(N, C, H, W) feature map, so they have no feature-map rank; exclude the group "
                "or use another criterion"
            )
        names = sorted(set(deepest.values()))
        self._capture_ranks(stats, [n for n in names if n not in self._extra])
        parts = []
        for name in names:
            idx, hit = locate(group, stats.units(name))
            use = hit & np.isin(idx, [i for i, n in deepest.items() if n == name])
            parts.append((idx[use], self._extra[name][use]))
        return parts

    def _capture_ranks(self, stats: Any, names: list[str]) -> None:
        if not names:
            return
        sums: dict[str, np.ndarray] = {}
        count = 0
        for batch in ActivationCapture(stats.proto, names).stream(stats.calib, stats.batch_size):
            for name in names:
                ranks = np.linalg.matrix_rank(batch[name].astype(np.float64)).sum(0)
                sums[name] = sums.get(name, 0) + ranks
            count += next(iter(batch.values())).shape[0]
        for name in names:
            self._extra[name] = np.asarray(sums[name], np.float64) / max(count, 1)


@CRITERIA.register("wanda")
class Wanda(Criterion):
    """Structured Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for
    LLMs"; per unit as in FLAP / onnxsim's structured Wanda).

    Wanda scores a weight by |W_ij| * ||X_j||_2: its magnitude times the norm of the
    input feature it multiplies, over calibration tokens. A unit's score is the sum of
    that over the weights its channels meet in every weighted reducing consumer (the
    FFN down projection's rows for a neuron, the attention output projection's rows
    for a head): sum_j ||X_j|| * sum_i |W_ij|, with ||X_j|| the RMS of the channel at
    the consumer's input. Consumers without a constant weight (the attention score
    MatMuls) do not contribute. A unit that reaches no weighted consumer scores 0.
    """

    summary: ClassVar[str] = "sum of |W| x input RMS over the consumers' weights (Sun 2023)"
    needs_calibration: ClassVar[bool] = True

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        stats = require_calibration(ctx, self.name)
        tensors = ctx.model.tensors()
        scores = np.zeros(group.size)
        for site in consumer_sites(group, ctx):
            s = site.slice
            node = ctx.analysis.nodes.get(s.node)
            if node is None or s.input_index >= len(node.inputs):
                continue
            weight = tensors.get(node.inputs[s.input_index].name)
            values = getattr(weight, "values", None)
            if values is None:
                continue
            w = np.abs(np.moveaxis(np.asarray(values, np.float64), s.axis, 0))
            col = w.reshape(w.shape[0], -1).sum(1)
            ch = stats.channel_stats(s.by)
            rms = np.sqrt(np.maximum(ch.var + ch.mean**2, 0.0))
            pos = site.positions
            local = pos % col.size if s.groups > 1 else pos
            scores += np.bincount(site.unit_index, weights=col[local] * rms[pos],
                                  minlength=group.size)
        return scores
