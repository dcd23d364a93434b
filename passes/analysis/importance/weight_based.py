"""Weight-only criteria beyond filter norms: FPGM, BN scale, NISP and neuron merging.

Each criterion reads only constants of the model (through `ScoreContext`) and the
channel analysis; none needs calibration data. Scores follow the `Criterion`
contract: one float per unit of `group.units`, higher = keep. Where a unit spans
several producers (a residual group) or several positions of one producer (tied
channels of a grouped conv), per-filter scores are summed over its members, as in
`norms.py`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from compress_ir.core.ops import WEIGHTED_OPS
from compress_ir.passes.analysis.channel_groups import (
    ChannelAnalysis,
    ChannelGroup,
    ConstSlice,
    Root,
)
from compress_ir.passes.analysis.importance.base import (
    CRITERIA,
    EPS,
    Criterion,
    ScoreContext,
    UnscorableGroup,
    per_producer,
    sum_members,
)
from compress_ir.passes.weight_layers import output_scales

_BLOCK = 1 << 22  # entries of one (rows x C) block of a pairwise matrix


# -- shared helpers -------------------------------------------------------------------
def _rows(weight: np.ndarray) -> np.ndarray:
    """A producer weight (output channels first) as float64 rows, one per filter."""
    return weight.reshape(weight.shape[0], -1).astype(np.float64)


def _row_blocks(count: int, width: int):
    step = max(1, _BLOCK // max(width, 1))
    for start in range(0, count, step):
        yield slice(start, min(count, start + step))


class _ModelWide(Criterion):
    """A criterion whose per-group scores read one model-wide table, built once per context."""

    def table(self, ctx: ScoreContext):
        memo = getattr(self, "_memo", None)
        if memo is None or memo[0] is not ctx:  # holding ctx keeps its identity unique
            memo = self._memo = (ctx, self.build(ctx))
        return memo[1]

    def build(self, ctx: ScoreContext):
        raise NotImplementedError


# -- FPGM -----------------------------------------------------------------------------
@CRITERIA.register("fpgm")
class FPGM(Criterion):
    """He et al. 2019, "Filter Pruning via Geometric Median for Deep CNN Acceleration".

    Filters close to the geometric median of their layer are the most replaceable
    by the others. Per producer of the group, a filter's score is the sum of its
    Euclidean distances to every other filter of that producer (the objective the
    geometric median minimises): small = near the median = redundant. Each
    producer's scores are divided by their mean, then summed over the members of
    each unit (the unit's filters in every coupled producer), like `l1`/`l2`.
    An exactly duplicated filter loses one distance term and ranks lowest among
    filters that are otherwise equidistant.
    """

    summary: ClassVar[str] = "FPGM (He et al. 2019): sum of distances to the layer's filters"

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        return per_producer(group, ctx, lambda weight: _distance_sums(_rows(weight)))


def _distance_sums(flat: np.ndarray) -> np.ndarray:
    """Row i: sum over j of ||flat[i] - flat[j]|| (blocked, so memory stays bounded)."""
    sq = np.einsum("ij,ij->i", flat, flat)
    out = np.empty(flat.shape[0])
    for rows in _row_blocks(flat.shape[0], flat.shape[0]):
        d2 = sq[rows, None] + sq[None, :] - 2.0 * (flat[rows] @ flat.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = 0.0
        out[rows] = np.sqrt(d2).sum(axis=1)
    return out


# -- BN scale -------------------------------------------------------------------------
@CRITERIA.register("bn-scale")
class BNScale(_ModelWide):
    """Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming": a channel's importance is |gamma| of the BatchNormalization on it.

    Mapping to groups: every BatchNormalization node whose input 0 carries tracked
    channels (a layout of the analysis, on axis 1) contributes |gamma| at each
    position to the unit found there (`analysis.unit_of[layout.ids]`), divided by
    that node's mean |gamma|. A unit's score sums these over every such BN (a
    residual group has one BN per producer; a BN after a depthwise conv or a concat
    counts too).

    Missing BN, decided rather than guessed:
    * A group with no BN on any of its units raises `UsageError` naming its
      producers: network slimming has nothing to rank there, and any fallback
      would prune it silently by another criterion. Models exported with BN folded
      into the convs (the torchvision fixtures, most deployment exports) therefore
      reject `bn-scale` outright; use `l1`/`l2`/`fpgm` there, or `exclude=` the
      named producers (e.g. squeeze-excite convs, which never have a BN).
    * Inside a group that has BN, a unit without one is ranked above every
      BN-scored unit (score: the group's largest BN score + 1, finite so the
      global scope's normalisation stays defined), i.e. it is removed last.
    """

    summary: ClassVar[str] = "network slimming (Liu et al. 2017): |gamma| of the BN after"

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        table = self.table(ctx)
        scores = np.full(group.size, np.nan)
        for i, unit in enumerate(group.units):
            if int(unit) in table:
                scores[i] = table[int(unit)]
        scored = ~np.isnan(scores)
        if not scored.any():
            producers = ", ".join(r.node for r in group.roots if r.kind == "producer")
            raise UnscorableGroup(
                f"criterion 'bn-scale' needs a BatchNormalization on the output channels of "
                f"producer(s) {producers}, and there is none (BN folded into the weights?); "
                f"use another criterion or exclude these producers"
            )
        scores[~scored] = scores[scored].max() + 1.0
        return scores

    def build(self, ctx: ScoreContext) -> dict[int, float]:
        return _bn_scale_table(ctx)


def _bn_scale_table(ctx: ScoreContext) -> dict[int, float]:
    """unit -> sum over BN nodes of |gamma| / mean |gamma| at the unit's positions."""
    analysis = ctx.analysis
    table: dict[int, float] = defaultdict(float)
    for node in ctx.model.graph.nodes:
        if node.op != "BatchNormalization" or len(node.inputs) < 2:
            continue
        lay = analysis.layouts.get(node.inputs[0].name)
        gamma = ctx.model.constant(node.inputs[1])
        if lay is None or lay.axis != 1 or gamma is None or gamma.size != lay.ids.size:
            continue
        mag = np.abs(gamma.astype(np.float64).ravel())
        mag = mag / (mag.mean() + EPS)
        for unit, value in zip(analysis.unit_of[lay.ids], mag, strict=True):
            table[int(unit)] += float(value)
    return dict(table)


# -- NISP -----------------------------------------------------------------------------
@CRITERIA.register("nisp")
class NISP(_ModelWide):
    """Yu et al. 2018, "NISP: Pruning Networks using Neuron Importance Score
    Propagation": importance flows back from the outputs through |W|.

    Every position of a graph output's channel axis has importance 1. Going
    backwards over the nodes (reverse topological order, so a tensor's consumers
    are finished before it is), each tracked tensor (one with an analysis layout)
    receives, per channel position:
    * from a reducing consumer (a `ConstSlice` with `reduces`: Conv, Gemm, MatMul,
      ConvTranspose), sum_o |W[o, p]| * I_out[o], with |W| summed over the kernel
      dims and I_out the importance of the consumer's output channels (1 each when
      that output has no layout). Grouped convs (`groups` > 1) are exact: input
      position p of group g only meets the outputs of group g, through the local
      column p - g * (C / groups);
    * from any other consumer, the importance of the output positions carrying the
      same element (identity for element-wise ops, BN and pooling; a concat, split
      or slice routes by position; a flatten sums a channel's spatial positions; a
      depthwise conv sums its multiplier's outputs; a reshape that holds several
      input channels at one position, as in a channel shuffle, splits that
      position's importance evenly over them): NISP's identity treatment of
      activations, extended to the per-channel scales of BN, Mul and depthwise
      convs, which are ignored. An element-wise op's second input (other elements,
      same units positionwise) gets the same importance as its first.
    A consumer none of whose outputs carries channels (a reduce over the channels,
    ArgMax, an op the analysis does not know) is an end point like a graph output:
    importance 1 per input position; except Shape/Size, which read no values and
    pass nothing back. A unit's score is the importance of its positions in its
    producers' output tensors, summed over the members. The propagation works on
    tensors, not units: a residual unit would otherwise feed its own importance
    back through its block. Values are rescaled uniformly when they grow large
    (deep nets multiply |W| sums), which changes no ranking.
    """

    summary: ClassVar[str] = "NISP (Yu et al. 2018): importance propagated back through |W|"

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        importance = self.table(ctx)
        per_root = {
            root.index: importance[root.tensor]
            for root in group.roots
            if root.kind == "producer" and root.tensor in importance
        }
        return sum_members(group, per_root)

    def build(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        return _nisp_importance(ctx)


_RESCALE_AT = 1e100
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_UNITING = frozenset({"Reshape", "Flatten"})


def _nisp_importance(ctx: ScoreContext) -> dict[str, np.ndarray]:
    """Per tracked tensor: the importance of each position of its channel axis."""
    analysis = ctx.analysis
    layouts = analysis.layouts
    reducing = {(s.node, s.by): s for s in analysis.slices if s.reduces}
    producer_of = {r.node: r for r in analysis.roots if r.kind == "producer"}
    importance: dict[str, np.ndarray] = {}
    unit = 1.0  # the value of "importance 1" after rescaling

    def slot(name: str) -> np.ndarray:
        if name not in importance:
            importance[name] = np.zeros(layouts[name].ids.size)
        return importance[name]

    for out in ctx.model.graph.outputs:
        if out.name in layouts:
            slot(out.name)[:] += unit
    for node in reversed(list(analysis.nodes.values())):
        touched = []
        for tensor in node.inputs:
            lay = layouts.get(tensor.name)
            if lay is None:
                continue
            s = reducing.get((node.name, tensor.name))
            if s is not None:
                back = _through_weight(ctx, node, s, producer_of.get(node.name), importance, unit)
            elif not any(o.name in layouts for o in node.outputs):
                # the channels leave tracking (a reduce over them, ArgMax, an unknown
                # op): an end point like a graph output, unless only the shape is read
                back = None if node.op in _SHAPE_ONLY else np.full(lay.ids.size, unit)
            else:
                back = _through_layout(analysis, node, lay.ids, importance)
            if back is not None:
                slot(tensor.name)[:] += back
                touched.append(tensor.name)
        if touched and max(float(importance[n].max(initial=0.0)) for n in touched) > _RESCALE_AT:
            for values in importance.values():
                values /= _RESCALE_AT
            unit /= _RESCALE_AT
    return importance


def _through_weight(
    ctx: ScoreContext, node: gs.Node, s: ConstSlice, root: Root | None,
    importance: dict[str, np.ndarray], unit: float,
) -> np.ndarray:
    """sum_o |W[o, p]| * I_out[o] for each input position p of a reducing consumer."""
    weight = np.abs(np.asarray(node.inputs[s.input_index].values, dtype=np.float64))
    out_axis = root.weight_axis if root is not None else (1 if s.axis == 0 else 0)
    mat = np.moveaxis(weight, (s.axis, out_axis), (0, 1))
    mat = mat.reshape(mat.shape[0], mat.shape[1], -1).sum(axis=2)  # (local inputs, outputs)
    out = node.outputs[0]
    if out.name in ctx.analysis.layouts:
        i_out = importance.get(out.name, np.zeros(mat.shape[1]))
    else:
        i_out = np.full(mat.shape[1], unit)
    if i_out.size != mat.shape[1]:
        raise AssertionError(f"nisp: {node.name!r} output layout does not match its weight")
    if s.groups == 1:
        return mat @ i_out
    per_out = mat.shape[1] // s.groups
    return np.concatenate([
        mat[:, g * per_out : (g + 1) * per_out] @ i_out[g * per_out : (g + 1) * per_out]
        for g in range(s.groups)
    ])


def _through_layout(
    analysis: ChannelAnalysis, node: gs.Node, ids_in: np.ndarray,
    importance: dict[str, np.ndarray],
) -> np.ndarray | None:
    """Importance of a non-reducing node's input positions, routed by element ids.

    A Reshape may unite elements and keep one per position (a channel shuffle's
    [N, 2C] -> [N, 2, C] holds two input channels at each output position): it
    routes by unit instead, and splits an output position's importance evenly
    over the input positions of its unit.
    """
    back = np.zeros(ids_in.size)
    found = False
    units_in = analysis.unit_of[ids_in]
    by_unit = node.op in _UNITING
    keys, inverse = np.unique(units_in if by_unit else ids_in, return_inverse=True)
    counts = np.bincount(inverse, minlength=keys.size)
    for out in node.outputs:
        lay = analysis.layouts.get(out.name)
        i_out = importance.get(out.name)
        if lay is None or i_out is None:
            continue
        ids_out = lay.ids
        if ids_out.size == ids_in.size and (
            np.array_equal(ids_out, ids_in) or np.array_equal(analysis.unit_of[ids_out], units_in)
        ):
            back += i_out
            found = True
            continue
        keys_out = analysis.unit_of[ids_out] if by_unit else ids_out
        pos = np.minimum(np.searchsorted(keys, keys_out), keys.size - 1)
        hit = keys[pos] == keys_out
        if hit.any():
            sums = np.bincount(pos[hit], weights=i_out[hit], minlength=keys.size)
            back += (sums / counts)[inverse]
            found = True
    return back if found else None


# -- neuron merging -------------------------------------------------------------------
# ops through which relu(a * z) == a * relu(z) style proportionality survives per channel
# (positively homogeneous and channel-wise, or pure data movement)
_HOMOGENEOUS = frozenset(
    "Relu LeakyRelu Identity Dropout MaxPool AveragePool GlobalAveragePool GlobalMaxPool "
    "Flatten Reshape Transpose Squeeze Unsqueeze Concat Split Slice".split()
)


@CRITERIA.register("merge")
class Merge(_ModelWide):
    """Srinivas & Babu 2015, "Data-free Parameter Pruning for Deep Neural Networks":
    remove neurons and merge each into its most similar kept neuron.

    Merging. Let v_j be filter j's augmented vector (weights, then the bias; Gemm's
    alpha/beta applied) and a_j the consumer weights that read its channel. If every
    path from the producer to a consumer that sums over its channels consists of
    positively homogeneous, 1-Lipschitz channel-wise or data-movement ops
    (`_HOMOGENEOUS`: ReLU, LeakyReLU, max/avg pooling, Identity/Dropout, reshapes,
    concat/split/slice, transposes), then for s >= 0 |h(v_j.x) - s h(v_i.x)| <=
    |(v_j - s v_i).x|, so replacing channel j by s times channel i (adding s a_j to
    a_i) changes the consumers' pre-activations by at most |a_j| |(v_j - s v_i).x|,
    while dropping j alone changes them by up to |a_j| |v_j.x|. `compensate` merges a
    removed filter into its best kept twin i (s >= 0 minimising ||v_j - s v_i||)
    whenever that residual is below ||v_j|| (relative residual < `twin_tolerance` = 1):
    the bound only shrinks. An exact twin (v_j = s v_i) is merged with no change at all.

    Score: the bound of the action taken, ||a_j|| * ||v_j - s v_i|| with the best
    twin among the other filters (the saliency of Srinivas & Babu, <a_j^2> ||e||^2,
    square-rooted), or ||a_j|| * ||v_j|| where no merge is possible. Near-twins
    carrying little signal go first. Where a unit spans several producers or
    positions, the squared bounds of its members are summed.

    No merge (and the plain-removal score) for a group when it has several producers
    or tied positions per unit, when any path reaches a BN, a bias Add, a per-channel
    Mul, a non-homogeneous activation (Clip, Sigmoid, ...), a depthwise conv or a
    graph output, when a consumer is a grouped conv, or when a producer's bias is not
    a constant; and for a single pair when a consumer sees the removed channel but
    not its twin (a Split/Slice that separates them). Where a unit's consumer weights
    cannot be read per channel (a grouped consumer, or none), ||a_j|| counts as 1 for
    the whole group.
    """

    summary: ClassVar[str] = ("neuron merging (Srinivas & Babu 2015): merge each removed"
                              " neuron into its closest kept twin")
    twin_tolerance: ClassVar[float] = 1.0

    def build(self, ctx: ScoreContext) -> tuple[np.ndarray, set[int]]:
        """Per unit: squared norm of the consumer weights reading it; units without one."""
        analysis = ctx.analysis
        tensors = ctx.model.tensors()
        out = np.zeros(int(analysis.unit_of.max()) + 1 if analysis.unit_of.size else 0)
        unreadable: set[int] = set()
        for s in analysis.slices:
            if not s.reduces or s.by not in analysis.layouts:
                continue
            units = analysis.unit_of[analysis.layouts[s.by].ids]
            weight = ctx.model.constant(tensors[analysis.nodes[s.node].inputs[s.input_index].name])
            if s.groups != 1 or weight is None:
                unreadable.update(int(u) for u in units)
                continue
            moved = np.moveaxis(np.asarray(weight, np.float64), s.axis, 0)
            np.add.at(out, units, (moved.reshape(moved.shape[0], -1) ** 2).sum(axis=1))
        return out, unreadable

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        setup = _merge_setup(ctx, group, ctx.model.tensors())
        per_root: dict[int, np.ndarray] = {}
        for root in group.roots:
            vectors = setup[2] if setup is not None else _augmented(ctx, root, need_bias=False)
            if vectors is None:
                continue
            sq = np.einsum("ij,ij->i", vectors, vectors)
            per_root[root.index] = sq * _twin_residuals(vectors) ** 2 if setup else sq
        outgoing, unreadable = self.table(ctx)
        units = group.units.astype(np.int64)
        reads = (np.ones(group.size) if any(int(u) in unreadable for u in units)
                 else outgoing[units])
        return np.sqrt(sum_members(group, per_root) * reads)

    def compensate(self, ctx: ScoreContext, removed_units: set[int]) -> bool:
        removed = {int(u) for u in removed_units}
        edits: list[tuple[ConstSlice, np.ndarray, np.ndarray, float]] = []
        tensors = ctx.model.tensors()
        for group in ctx.analysis.groups:  # plan everything on the original weights ...
            if any(int(u) in removed for u in group.units):
                edits.extend(self._merge_plan(ctx, group, removed, tensors))
        return _apply_merges(ctx, edits)  # ... then edit

    def _merge_plan(
        self, ctx: ScoreContext, group: ChannelGroup, removed: set[int],
        tensors: dict[str, gs.Tensor],
    ) -> list[tuple[ConstSlice, np.ndarray, np.ndarray, float]]:
        setup = _merge_setup(ctx, group, tensors)
        if setup is None:
            return []
        position, consumers, vectors = setup
        gone = [u for u in position if u in removed]
        kept = [u for u in position if u not in removed]
        if not gone or not kept:
            return []
        kept_rows = vectors[[position[u] for u in kept]]
        gone_rows = vectors[[position[u] for u in gone]]
        kept_sq = np.einsum("ij,ij->i", kept_rows, kept_rows)
        gone_sq = np.einsum("ij,ij->i", gone_rows, gone_rows)
        dots = gone_rows @ kept_rows.T  # [removed, kept]
        alpha = np.where(kept_sq > EPS, np.maximum(dots, 0.0) / np.maximum(kept_sq, EPS), 0.0)
        resid = np.maximum(gone_sq[:, None] - 2 * alpha * dots + alpha**2 * kept_sq, 0.0)
        best = np.argmin(resid, axis=1)
        edits = []
        for k, unit in enumerate(gone):
            if gone_sq[k] <= EPS:
                continue  # an all-zero filter contributes nothing to merge
            a, r = float(alpha[k, best[k]]), float(np.sqrt(resid[k, best[k]] / gone_sq[k]))
            if a <= 0 or r >= self.twin_tolerance:
                continue  # no twin makes the bound smaller: plain removal
            twin = kept[int(best[k])]
            pair: list | None = []
            for s in consumers:
                units_by = ctx.analysis.unit_of[ctx.analysis.layouts[s.by].ids]
                src, dst = np.flatnonzero(units_by == unit), np.flatnonzero(units_by == twin)
                if src.size == 0:
                    continue
                if src.size != dst.size:
                    pair = None
                    break
                pair.append((s, src, dst, a))
            if pair:
                edits.extend(pair)
        return edits


def _merge_setup(
    ctx: ScoreContext, group: ChannelGroup, tensors: dict[str, gs.Tensor],
) -> tuple[dict[int, int], list[ConstSlice], np.ndarray] | None:
    """(position of each unit, consumers, augmented vectors) when the group can merge."""
    if len(group.roots) != 1 or group.roots[0].kind != "producer":
        return None
    root = group.roots[0]
    position: dict[int, int] = {}
    for unit, members in group.members.items():
        if len(members) != 1 or members[0][1].size != 1:
            return None
        position[int(unit)] = int(members[0][1][0])
    consumers = _homogeneous_consumers(ctx, root.tensor, tensors)
    vectors = _augmented(ctx, root, need_bias=True) if consumers else None
    if vectors is None:
        return None
    return position, consumers, vectors


def _augmented(ctx: ScoreContext, root: Root, need_bias: bool) -> np.ndarray | None:
    """Rows [weights, bias] of a producer (None if fixed, or bias unknown and needed)."""
    weight = ctx.producer_weight(root.index)
    if weight is None:
        return None
    rows = _rows(weight)
    node = ctx.analysis.nodes.get(root.node)
    spec = WEIGHTED_OPS.get(node.op) if node is not None else None
    if spec is None or spec.bias is None:
        return rows
    weight_scale, bias_scale = output_scales(node)
    if weight_scale != 1.0:
        rows = rows * weight_scale
    if len(node.inputs) <= spec.bias or not node.inputs[spec.bias].name:
        return rows
    bias = ctx.model.constant(node.inputs[spec.bias])
    if bias is not None and bias_scale != 1.0:
        bias = bias * bias_scale
    if bias is not None and bias.size in (1, root.size):
        column = np.broadcast_to(bias.astype(np.float64).ravel(), (root.size,))
        return np.concatenate([rows, column[:, None]], axis=1)
    return None if need_bias else rows


def _twin_residuals(vectors: np.ndarray) -> np.ndarray:
    """Row j: min over i != j of ||v_j - a v_i|| / ||v_j||, best a >= 0 (0 if v_j = 0)."""
    n = vectors.shape[0]
    sq = np.einsum("ij,ij->i", vectors, vectors)
    out = np.ones(n)
    if n < 2:
        return out
    for rows in _row_blocks(n, n):
        dots = vectors[rows] @ vectors.T  # [j, i] = v_j . v_i
        cos2 = np.where(
            (dots > 0) & (sq[None, :] > EPS),
            dots**2 / np.maximum(sq[rows, None] * sq[None, :], EPS * EPS),
            0.0,
        )
        idx = np.arange(rows.start, rows.stop)
        cos2[idx - rows.start, idx] = -np.inf  # not its own twin
        out[rows] = np.sqrt(np.clip(1.0 - cos2.max(axis=1), 0.0, 1.0))
    out[sq <= EPS] = 0.0
    return out


def _homogeneous_consumers(
    ctx: ScoreContext, tensor: str, tensors: dict[str, gs.Tensor]
) -> list[ConstSlice] | None:
    """Reducing slices reached from `tensor` through `_HOMOGENEOUS` ops only (else None)."""
    analysis = ctx.analysis
    reducing = {(s.node, s.by): s for s in analysis.slices if s.reduces}
    graph_outputs = {t.name for t in ctx.model.graph.outputs}
    found: list[ConstSlice] = []
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in graph_outputs:
            return None
        for node in tensors[name].outputs:
            s = reducing.get((node.name, name))
            if s is not None:
                if s.groups != 1:
                    return None
                found.append(s)
                continue
            if node.op not in _HOMOGENEOUS:
                return None
            for out in node.outputs:
                if not out.outputs and out.name not in graph_outputs:
                    continue  # unused (e.g. Dropout's mask)
                if out.name not in analysis.layouts:
                    return None
                stack.append(out.name)
    return found


def _apply_merges(
    ctx: ScoreContext, edits: list[tuple[ConstSlice, np.ndarray, np.ndarray, float]]
) -> bool:
    """weights[dst] += a * weights[src] along each slice's channel axis (original values)."""
    by_input: dict[tuple[str, int, int], list[tuple[np.ndarray, np.ndarray, float]]] = (
        defaultdict(list)
    )
    for s, src, dst, alpha in edits:
        by_input[(s.node, s.input_index, s.axis)].append((src, dst, alpha))
    changed = False
    for (node_name, index, axis), moves in by_input.items():
        node = ctx.analysis.nodes[node_name]
        tensor = node.inputs[index]
        original = np.asarray(tensor.values)
        values = original.copy()
        src_view, dst_view = np.moveaxis(original, axis, 0), np.moveaxis(values, axis, 0)
        for src, dst, alpha in moves:
            dst_view[dst] += (alpha * src_view[src]).astype(values.dtype)
        if np.array_equal(values, original):
            continue
        changed = True
        if len(tensor.outputs) == 1:
            tensor.values = values
        else:  # shared constant: give this consumer its own copy
            node.inputs[index] = gs.Constant(f"{tensor.name}__merged_{node_name}", values)
    return changed
