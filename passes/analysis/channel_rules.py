"""Per-op channel rules: how tracked channels flow through each ONNX op.

One function per op family, looked up in `RULES` by op type. A rule reads the
layouts of the node's inputs, sets the layouts of its outputs, unites coupled
elements, and records the constant slices and fixups the transform will apply.
An op missing from the table is a barrier (`unknown_op`): never guess.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from compress_ir.core.ops import WEIGHTED_OPS
from compress_ir.passes.analysis.shape_rules import (
    channel_sized,
    constant_of_shape,
    expand,
    reshape,
    symbolic_slice,
    tile,
)
from compress_ir.passes.analysis.static_dims import static_dim

if TYPE_CHECKING:  # the analysis imports the rules, not the other way round
    from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, Layout

Rule = Callable[["ChannelAnalysis", gs.Node], None]


def _opt(node: gs.Node, index: int) -> gs.Tensor | None:
    """Optional input `index` (None when absent or given as the empty name)."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def _ints(a: ChannelAnalysis, node: gs.Node, attr: str, index: int) -> list[int] | None:
    """An int list given as attribute `attr` (old opsets) or constant input `index`."""
    if attr in node.attrs and node.attrs[attr] is not None:
        return [int(v) for v in np.atleast_1d(node.attrs[attr])]
    t = _opt(node, index)
    if t is None:
        return None
    value = a.const(t)
    return None if value is None else [int(v) for v in np.atleast_1d(value)]


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _used(t: gs.Tensor) -> bool:
    return bool(t.outputs)


def unknown_op(a: ChannelAnalysis, node: gs.Node) -> None:
    a.block_inputs(node, f"op {node.op!r} is not understood by the channel analysis")


def barrier(reason: str, keeps_shape: bool = False) -> Rule:
    """A rule for an op known to mix channels: it blocks with a specific reason.

    A shape-preserving barrier still passes the (now blocked) layout on, so that a
    residual Add downstream is coupled to it and reports this reason, not a vaguer one.
    """

    def rule(a: ChannelAnalysis, node: gs.Node) -> None:
        a.block_inputs(node, reason)
        if keeps_shape:
            passthrough(a, node)

    return rule


def _normalisation(a: ChannelAnalysis, node: gs.Node, lay: Layout, across: bool) -> None:
    """A normalising op: per-channel unless it normalises `across` the channel axis."""
    if across:
        a.block(lay.ids, f"{node.op} node {node.name!r} normalises across the channels")
    a.set_layout(node.outputs[0], lay.axis, lay.ids)


def passthrough(a: ChannelAnalysis, node: gs.Node) -> None:
    """Unary element-wise ops: every output has the layout of input 0."""
    lay = a.layout(node.inputs[0]) if node.inputs else None
    if lay is None:
        return
    for out in node.outputs:
        a.set_layout(out, lay.axis, lay.ids)


def channel_passthrough(a: ChannelAnalysis, node: gs.Node) -> None:
    """Per-channel NC* ops (pooling): channels must be on axis 1."""
    lay = a.layout(node.inputs[0])
    if lay is None:
        return
    if lay.axis != 1:
        a.block(lay.ids, f"{node.op} node {node.name!r}: channels are not on axis 1")
        return
    if len(node.outputs) > 1 and _used(node.outputs[1]):
        a.block(lay.ids, f"{node.op} node {node.name!r}: its indices output encodes channels")
        return
    a.set_layout(node.outputs[0], 1, lay.ids)


def weighted(a: ChannelAnalysis, node: gs.Node) -> None:
    """Any op of the weighted-op table (`compress_ir.core.ops`), from its entry alone.

    The weight sums over input 0's channels on `data_axis` (sliced on `in_axis`, and
    zeroed by the oracle: `reduces`) and makes fresh channels on output 0 (`out_axis`
    of the weight, `y_axis` of the output, plus the bias). A grouped op ties position
    j of every group, so that groups stay rectangular; a depthwise one (one input
    channel per group) passes its input's channels on instead, and the group count
    follows the kept channels.
    """
    spec = WEIGHTED_OPS[node.op]
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    weight = a.const(w)
    if weight is None or a.const(x) is not None:
        a.block_inputs(node, "the weight is computed at run time")
        return
    attrs = node.attrs
    low, high = spec.weight_ranks
    reason = spec.refuse(attrs, weight.ndim) if low <= weight.ndim <= high else (
        f"weight of rank {weight.ndim} is not supported")
    if reason:
        a.block_inputs(node, reason)
        return
    in_axis, out_axis = spec.in_axis(attrs, weight.ndim), spec.out_axis(attrs, weight.ndim)
    groups = spec.groups(attrs)
    cout = int(weight.shape[out_axis])
    y_axis = spec.y_axis(attrs, a.rank(y))
    lay = a.layout(x)
    if lay is not None and lay.axis != spec.data_axis(attrs, a.rank(x)):
        a.block(lay.ids, f"{node.op} node {node.name!r}: channels are not on the axis it "
                         "sums over")
        lay = None
    b = _opt(node, spec.bias) if spec.bias is not None else None
    if lay is not None and groups > 1 and weight.shape[in_axis] == 1:
        # depthwise: each group is one input channel and its outputs follow it
        a.set_layout(y, y_axis, np.repeat(lay.ids, cout // groups))
        a.slice_const(node, 1, out_axis, y)
        _bias(a, node, spec.bias, b, cout, None, y)
        a.fixup("conv-group", node, by=x.name)
        return
    if lay is not None:
        if groups > 1:
            a.tie(lay.ids, groups)
        a.slice_const(node, 1, in_axis, x, reduces=True, groups=groups)
    ids = a.new_root(node, y, cout, weight=w, weight_axis=out_axis)
    if groups > 1:
        a.tie(ids, groups)
    a.set_layout(y, y_axis, ids)
    a.slice_const(node, 1, out_axis, y)
    _bias(a, node, spec.bias, b, cout, ids, y)


def _bias(a: ChannelAnalysis, node: gs.Node, index: int | None, b: gs.Tensor | None,
          cout: int, ids: np.ndarray | None, y: gs.Tensor) -> None:
    """Slice a per-output bias (its last axis); one computed at run time blocks the outputs."""
    if b is None:
        return
    shape, value = a.shape(b), a.const(b)
    if value is None:
        if shape is None or shape[-1] == cout:
            a.block(ids if ids is not None else a.layout(y).ids,
                    f"{node.op} node {node.name!r}: its bias is computed at run time")
        return
    if value.ndim and value.shape[-1] == cout:
        a.slice_const(node, index, value.ndim - 1, y)


def _per_channel_params(first: int, last: int) -> Rule:
    """BatchNormalization/InstanceNormalization: constant params indexed by channel."""

    def rule(a: ChannelAnalysis, node: gs.Node) -> None:
        x = node.inputs[0]
        lay = a.layout(x)
        if lay is None:
            return
        if lay.axis != 1:
            a.block(lay.ids, f"{node.op} node {node.name!r}: channels are not on axis 1")
            return
        if any(_used(o) for o in node.outputs[1:]):
            a.block(lay.ids, f"{node.op} node {node.name!r}: training-mode outputs are used")
            return
        for idx in range(first, min(last, len(node.inputs) - 1) + 1):
            if a.const(node.inputs[idx]) is None:
                a.block(lay.ids, f"{node.op} node {node.name!r}: input {idx} is not constant")
                return
        a.set_layout(node.outputs[0], 1, lay.ids)
        for idx in range(first, min(last, len(node.inputs) - 1) + 1):
            a.slice_const(node, idx, 0, x)

    return rule


def group_norm(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    num_groups = int(node.attrs["num_groups"])
    channels = lay.ids.size
    if lay.axis != 1 or channels % num_groups:
        a.block(lay.ids, f"GroupNormalization node {node.name!r}: unexpected channel layout")
        return
    per_group = channels // num_groups
    table = lay.ids.reshape(num_groups, per_group)
    for row in table:  # statistics are shared inside a group: remove whole groups only
        a.unite(np.full(per_group, row[0]), row)
    for idx in (1, 2):
        value = a.const(node.inputs[idx])
        if value is None or value.shape[0] not in (channels, num_groups):
            a.block(lay.ids, f"GroupNormalization node {node.name!r}: unexpected scale/bias")
            return
    a.set_layout(node.outputs[0], 1, lay.ids)
    for idx in (1, 2):
        if a.const(node.inputs[idx]).shape[0] == channels:
            a.slice_const(node, idx, 0, x)
        else:
            a.fixup("groupnorm-param", node, index=idx, by=x.name, per_group=per_group)
    a.fixup("groupnorm-groups", node, by=x.name, per_group=per_group)


def layer_norm(a: ChannelAnalysis, node: gs.Node) -> None:
    lay = a.layout(node.inputs[0])
    if lay is None:
        return
    rank = a.rank(node.inputs[0])
    axis = _norm(int(node.attrs.get("axis", -1)), rank)
    _normalisation(a, node, lay, lay.axis >= axis)


def mvn(a: ChannelAnalysis, node: gs.Node) -> None:
    lay = a.layout(node.inputs[0])
    if lay is None:
        return
    axes = [int(v) for v in node.attrs.get("axes", [0, 2, 3])]
    rank = a.rank(node.inputs[0])
    _normalisation(a, node, lay, lay.axis in [_norm(v, rank) for v in axes])


def elementwise(a: ChannelAnalysis, node: gs.Node) -> None:
    """Broadcasting n-ary ops (Add, Mul, Sum, Where, PRelu, ...)."""
    out = node.outputs[0]
    ranks = [a.rank(t) for t in node.inputs]
    if any(r is None for r in ranks):
        a.block_inputs(node, "an input has unknown rank")
        return
    rank = max(ranks)
    laid = [(t, a.layout(t)) for t in node.inputs if a.layout(t) is not None]
    # a tracked single channel broadcast over the others (MobileViT's linear attention
    # scores) is not coupled to them; `nonempty` keeps its tensor from vanishing
    wide = [(t, lay) for t, lay in laid if lay.ids.size > 1]
    broadcast = {t.name for t, lay in laid if lay.ids.size == 1} if wide else set()
    laid = wide or laid
    axes = {lay.axis + rank - a.rank(t) for t, lay in laid}
    sizes = {lay.ids.size for _, lay in laid}
    if len(axes) != 1 or len(sizes) != 1:
        a.block_inputs(node, "inputs carry channels on different axes or sizes")
        return
    axis, size = axes.pop(), sizes.pop()
    first = laid[0][1].ids
    # An untracked input with the channels' full extent on the axis is read at the kept
    # channels only (a Gather before the op): element-wise, out[c] depends on t[c] alone,
    # so this is exact whatever computed t; its values never depend on pruned channels
    # (any op mixing those into it is a barrier that blocks their group).
    gathers: list[tuple[int, int]] = []
    for idx, t in enumerate(node.inputs):
        lay = a.layout(t)
        if t.name in broadcast:
            local = axis - (rank - a.rank(t))
            if local >= 0 and static_dim(a, t, local) != 1:
                a.block_inputs(node, "inputs carry channels on different axes or sizes")
                return
            continue
        if lay is not None:
            a.unite(first, lay.ids)
            continue
        local = axis - (rank - a.rank(t))
        dim = static_dim(a, t, local) if local >= 0 else 1
        if dim == 1:  # broadcast along the channels (a mask, a bias): nothing to track
            continue
        if dim == size and a.const(t) is not None:
            a.slice_const(node, idx, local, out)
            continue
        expanded = _expanded_const(a, t, local, size)
        if dim == size and expanded is not None:  # ViT's class token: Expand(const, [B, 1, 1])
            a.slice_const(expanded[0], 0, expanded[1], out)
            continue
        if dim == size:  # ALiBi: a per-head bias computed at run time (slices of a table)
            gathers.append((idx, local))
            continue
        a.block_inputs(node, f"input {t.name!r} is computed without channel tracking")
        return
    for idx, local in gathers:
        a.fixup("gather-input", node, index=idx, axis=local, by=out.name)
    a.set_layout(out, axis, first)


def _expanded_const(a: ChannelAnalysis, t: gs.Tensor, axis: int, size: int
                    ) -> tuple[gs.Node, int] | None:
    """(Expand node, constant axis) when `t` only broadcasts a constant that holds `size`
    entries on `axis` and is read by one node: slicing the constant slices `t`."""
    if len(t.inputs) != 1 or t.inputs[0].op != "Expand" or len(t.outputs) != 1:
        return None
    expand = t.inputs[0]
    data, shape = a.const(expand.inputs[0]), a.sym.value(expand.inputs[1])
    rank = a.rank(t)
    if data is None or shape is None or rank is None or a.sym.deps(expand.inputs[1]):
        return None
    local = axis - (rank - data.ndim)
    pos = axis - (rank - len(shape.elems))
    if local < 0 or data.shape[local] != size or (pos >= 0 and shape.elems[pos] != 1):
        return None
    return expand, local


def concat(a: ChannelAnalysis, node: gs.Node) -> None:
    out = node.outputs[0]
    rank = a.rank(out)
    if rank is None:
        a.block_inputs(node, "output rank unknown")
        return
    axis = _norm(int(node.attrs["axis"]), rank)
    laid = [a.layout(t) for t in node.inputs if a.layout(t) is not None]
    if all(lay.axis != axis for lay in laid):
        elementwise(a, node)  # concat along another axis: channels must line up
        return
    pieces = []
    for t in node.inputs:
        lay = a.layout(t)
        shape = a.shape(t)
        if lay is not None and lay.axis == axis:
            pieces.append(lay.ids)
            continue
        if shape is None or not isinstance(shape[axis], int):
            a.block_inputs(node, f"input {t.name!r} has an unknown size on the concat axis")
            return
        if lay is not None:
            a.block(lay.ids, f"Concat node {node.name!r}: input channels on another axis")
        reason = f"Concat node {node.name!r}: input {t.name!r} is not a prunable channel source"
        pieces.append(a.fixed(node, t, int(shape[axis]), reason))
    a.set_layout(out, axis, np.concatenate(pieces))


def split(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    axis = _norm(int(node.attrs.get("axis", 0)), a.rank(x))
    if lay.axis != axis:
        for out in node.outputs:
            a.set_layout(out, lay.axis, lay.ids)
        return
    sizes = _ints(a, node, "split", 1)
    if sizes is None:
        if _opt(node, 1) is not None:
            a.block(lay.ids, f"Split node {node.name!r}: split sizes are computed at run time")
            return
        n = len(node.outputs)
        chunk = -(-lay.ids.size // n)
        sizes = [min(chunk, lay.ids.size - i * chunk) for i in range(n)]
    offset = 0
    for out, size in zip(node.outputs, sizes, strict=True):
        a.set_layout(out, axis, lay.ids[offset : offset + size])
        offset += size
    a.fixup("split-sizes", node)


def slice_op(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    rank = a.rank(x)
    starts, ends = _ints(a, node, "starts", 1), _ints(a, node, "ends", 2)
    axes, steps = _ints(a, node, "axes", 3), _ints(a, node, "steps", 4)
    if (_opt(node, 3) and axes is None) or (_opt(node, 4) and steps is None):
        a.block(lay.ids, f"Slice node {node.name!r}: axes or steps are computed at run time")
        return
    if starts is None or ends is None:
        symbolic_slice(a, node, lay, axes, steps)  # bounds from Shape (torch's chunk)
        return
    axes = [_norm(v, rank) for v in (axes or range(len(starts)))]
    if lay.axis not in axes:
        a.set_layout(node.outputs[0], lay.axis, lay.ids)
        return
    pos = axes.index(lay.axis)
    if steps is not None and steps[pos] != 1:
        a.block(lay.ids, f"Slice node {node.name!r}: strided slice of the channel axis")
        return
    start, stop, _ = slice(starts[pos], ends[pos]).indices(lay.ids.size)
    a.set_layout(node.outputs[0], lay.axis, lay.ids[start:stop])
    a.fixup("slice-range", node, position=pos, start=start, stop=stop, by=x.name)


def pad(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    rank = a.rank(x)
    pads = _ints(a, node, "pads", 1)
    axes = _ints(a, node, "axes", 3) if _opt(node, 3) is not None else list(range(rank))
    if pads is None or axes is None:
        a.block(lay.ids, f"Pad node {node.name!r}: pads are computed at run time")
        return
    axes = [_norm(v, rank) for v in axes]
    if lay.axis in axes:
        i = axes.index(lay.axis)
        if pads[i] != 0 or pads[i + len(axes)] != 0:
            a.block(lay.ids, f"Pad node {node.name!r} pads the channel axis")
            return
    a.set_layout(node.outputs[0], lay.axis, lay.ids)


def resize(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    scales_index = 1 if (node.op == "Upsample" or a.model.opset < 11) else 2
    scales = a.const(node.inputs[scales_index]) if _opt(node, scales_index) else None
    sizes_t = _opt(node, 3) if scales_index == 2 else None
    if scales is not None and scales.size and float(scales[lay.axis]) != 1.0:
        a.block(lay.ids, f"{node.op} node {node.name!r} rescales the channel axis")
        return
    if sizes_t is not None:
        if node.attrs.get("axes") is not None:
            a.block(lay.ids, f"{node.op} node {node.name!r}: sizes with axes are not supported")
            return
        if not channel_sized(a, node, 3, x, node.outputs[0], a.rank(x)):
            return  # sizes may be built from Shape (a skip's H, W): they must size the channels
    elif scales is None:
        a.block(lay.ids, f"{node.op} node {node.name!r}: scales are computed at run time")
        return
    a.set_layout(node.outputs[0], lay.axis, lay.ids)


def squeeze(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    rank = a.rank(x)
    axes = _ints(a, node, "axes", 1)
    if axes is None:
        shape = a.shape(x)
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = [_norm(v, rank) for v in axes]
    if lay.axis in axes:
        a.block(lay.ids, f"Squeeze node {node.name!r} removes the channel axis")
        return
    a.set_layout(node.outputs[0], lay.axis - sum(v < lay.axis for v in axes), lay.ids)


def unsqueeze(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    axes = _ints(a, node, "axes", 1)
    if axes is None:
        a.block(lay.ids, f"Unsqueeze node {node.name!r}: axes are computed at run time")
        return
    out_rank = a.rank(x) + len(axes)
    axes = {_norm(v, out_rank) for v in axes}
    kept = [p for p in range(out_rank) if p not in axes]
    a.set_layout(node.outputs[0], kept[lay.axis], lay.ids)


def transpose(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    rank = a.rank(x)
    perm = [int(p) for p in node.attrs.get("perm", list(range(rank))[::-1])]
    a.set_layout(node.outputs[0], perm.index(lay.axis), lay.ids)


def matmul(a: ChannelAnalysis, node: gs.Node) -> None:
    """MatMul: a weighted op when B is constant, else a product of activations."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    weight = a.const(w)
    if weight is None and a.const(x) is None:
        batched_matmul(a, node)
        return
    if weight is None or a.const(x) is not None or weight.ndim < 2:
        a.block_inputs(node, "MatMul without a constant right-hand weight matrix")
        return
    x_shape = a.shape(x)
    if a.rank(y) is None and x_shape is not None and weight.ndim == 2:
        y.shape = [*x_shape[:-1], int(weight.shape[1])]  # inference lost it (tf2onnx flatten)
    if a.rank(y) is None:  # e.g. after an op shape inference does not know
        a.block_inputs(node, "output rank unknown")
        ids = a.new_root(node, y, weight.shape[-1], weight=w, weight_axis=weight.ndim - 1)
        a.block(ids, f"MatMul node {node.name!r}: output rank unknown")
        return
    weighted(a, node)


def batched_matmul(a: ChannelAnalysis, node: gs.Node) -> None:
    """MatMul of two activations (attention's Q.K^T and P.V): channels on a batch axis.

    Heads carried on a batch axis of both operands stay separate products: they are
    coupled (removed together from both) and the output carries them. Channels on
    the two matrix axes are mixed or contracted: a barrier.
    """
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    laid = [(t, a.layout(t)) for t in (x, w) if a.layout(t) is not None]
    if not laid:
        return
    reason = "MatMul without a constant right-hand weight matrix"
    ranks = [a.rank(x), a.rank(w), a.rank(y)]
    if None in ranks or min(ranks[:2]) < 3:
        a.block_inputs(node, reason)
        return
    out_rank = ranks[2]
    axes = {lay.axis + out_rank - a.rank(t) for t, lay in laid}
    sizes = {lay.ids.size for _, lay in laid}
    if any(lay.axis >= a.rank(t) - 2 for t, lay in laid) or len(axes) != 1 or len(sizes) != 1:
        a.block_inputs(node, reason)
        return
    axis = axes.pop()
    for t in (x, w):
        local = axis - (out_rank - a.rank(t))
        if a.layout(t) is None and local >= 0 and static_dim(a, t, local) != 1:
            a.block_inputs(node, f"input {t.name!r} is computed without channel tracking")
            return
    first = laid[0][1].ids
    for _, lay in laid[1:]:
        a.unite(first, lay.ids)
    a.set_layout(y, axis, first)


def softmax(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    rank = a.rank(x)
    legacy = a.model.opset < 13
    axis = _norm(int(node.attrs.get("axis", 1 if legacy else -1)), rank)
    _normalisation(a, node, lay, lay.axis == axis or (legacy and lay.axis >= axis))


def reduce(a: ChannelAnalysis, node: gs.Node) -> None:
    x = node.inputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    rank = a.rank(x)
    if "axis" in node.attrs or node.op in ("ArgMax", "ArgMin"):
        axes = [int(node.attrs.get("axis", 0))]
    else:
        axes = _ints(a, node, "axes", 1)
    if axes is None or not axes:
        if _opt(node, 1) is not None or not node.attrs.get("noop_with_empty_axes", 0):
            a.block(lay.ids, f"{node.op} node {node.name!r} reduces over the channels")
            return
        axes = []
    axes = [_norm(v, rank) for v in axes]
    if lay.axis in axes:
        a.block(lay.ids, f"{node.op} node {node.name!r} reduces over the channels")
        return
    keep = int(node.attrs.get("keepdims", 1))
    axis = lay.axis if keep else lay.axis - sum(v < lay.axis for v in axes)
    a.set_layout(node.outputs[0], axis, lay.ids)


def gather(a: ChannelAnalysis, node: gs.Node) -> None:
    x, idx = node.inputs[0], node.inputs[1]
    lay = a.layout(x)
    if lay is None:
        return
    axis = _norm(int(node.attrs.get("axis", 0)), a.rank(x))
    if lay.axis == axis or a.rank(idx) is None:
        a.block(lay.ids, f"Gather node {node.name!r} indexes the channel axis")
        return
    new_axis = lay.axis if lay.axis < axis else lay.axis - 1 + a.rank(idx)
    a.set_layout(node.outputs[0], new_axis, lay.ids)


def shape_only(a: ChannelAnalysis, node: gs.Node) -> None:
    """Shape/Size read dims, not values: `shape_values` tracks what they expose."""


UNARY = (
    "Relu LeakyRelu Clip Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign "
    "ThresholdedRelu Gelu Mish Exp Log Abs Neg Sqrt Reciprocal Erf Floor Ceil Round Sign Sin Cos "
    "Not IsNaN IsInf Identity Cast Dropout Swish"
).split()
BINARY = "Add Sub Mul Div Pow Max Min Mean Sum PRelu Where Equal Less Greater And Or Xor".split()
ELEMENTWISE = {*UNARY, *BINARY}
POOL = "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()
REDUCE = (
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin"
).split()

def fill_shape(a: ChannelAnalysis, node: gs.Node) -> None:
    """Give an element-wise op's output the broadcast shape when inference lost it.

    Later rules need ranks; a dim is an int where one input has it > 1, else a
    name some input uses, else 1.
    """
    if node.op not in ELEMENTWISE or not node.outputs or a.shape(node.outputs[0]) is not None:
        return
    shapes = [a.shape(t) for t in node.inputs if t.name]
    if not shapes or any(s is None for s in shapes):
        return
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out: list[int | str] = []
    for dims in zip(*padded, strict=True):
        ints = [d for d in dims if isinstance(d, int) and d > 1]
        names = [d for d in dims if isinstance(d, str) and d]
        out.append(ints[0] if ints else names[0] if names else 1)
    node.outputs[0].shape = out


# rules that never read a tracked input's rank (the driver blocks the others when it is unknown)
RANK_FREE = {*UNARY, *POOL, "BatchNormalization", "InstanceNormalization",
             "GroupNormalization", "Shape", "Size",
             *(op for op, spec in WEIGHTED_OPS.items() if not spec.needs_rank)}

RULES: dict[str, Rule] = {
    **{op: passthrough for op in UNARY},
    **{op: elementwise for op in BINARY},
    **{op: channel_passthrough for op in POOL},
    **{op: reduce for op in REDUCE},
    **{op: weighted for op in WEIGHTED_OPS},  # one entry each in compress_ir.core.ops
    "BatchNormalization": _per_channel_params(1, 4),
    "InstanceNormalization": _per_channel_params(1, 2),
    "GroupNormalization": group_norm,
    "LayerNormalization": layer_norm,
    "MeanVarianceNormalization": mvn,
    "Concat": concat,
    "Split": split,
    "Slice": slice_op,
    "Pad": pad,
    "Resize": resize,
    "Upsample": resize,
    "Reshape": reshape,
    "Flatten": reshape,
    "Expand": expand,
    "Tile": tile,
    "ConstantOfShape": constant_of_shape,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Transpose": transpose,
    "MatMul": matmul,  # weighted, or attention's product of two activations
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Hardmax": softmax,
    "Gather": gather,
    "Shape": shape_only,
    "Size": shape_only,
    "LRN": barrier("LRN normalises each channel by its neighbouring channels", True),
    "LpNormalization": barrier("LpNormalization normalises across an axis", True),
    "DepthToSpace": barrier("DepthToSpace moves channels into spatial positions"),
    "SpaceToDepth": barrier("SpaceToDepth moves spatial positions into channels"),
}
