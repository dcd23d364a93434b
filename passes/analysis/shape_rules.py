"""Channel rules for ops whose behaviour is set by a shape tensor.

Reshape, Flatten, Expand, Tile and ConstantOfShape read a shape (or repeats)
that exporters often compute at run time from `Shape`. Their symbolic value
(`shape_values`) says which elements are literals, symbolic dims (batch,
sequence) or channel counts. A rule accepts a shape input only after checking
that, for several pruned channel counts, the shape the op will compute equals the
shape the pruned model needs; literals that hold a channel-derived size are
rewritten (`shape-element` fixups). Anything else blocks with the node's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs
import sympy

from compress_ir.passes.analysis.shape_values import SymValue, concrete, prime_env

if TYPE_CHECKING:  # the analysis imports the rules, not the other way round
    from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, Layout

SAMPLES = 3  # pruned channel counts tried when checking that a shape follows


@dataclass
class HeadSplit:
    """A reshape that splits one channel axis into several (attention heads).

    `table[i0, i1, ...]` is the element id at each position of the split dims
    (`axes` of `tensor`); channel `c` of the input sits at `table.flat[c]`, i.e.
    (head, position) = divmod(c, head_dim) for a `[heads, head_dim]` split.
    `carried` is the output axis the channels are tracked on; the other split
    axes are kept whole (every unit spans all of them).
    """

    node: str
    tensor: str
    axes: list[int]
    table: np.ndarray
    carried: int


def _block(a: ChannelAnalysis, node: gs.Node, ids: np.ndarray, reason: str) -> None:
    a.block(ids, f"{node.op} node {node.name!r}: {reason}")


def _reshape_groups(src: list[int], dst: list[int]) -> list[tuple[range, range]]:
    """Pair runs of input and output dims with equal products, from the left.

    Stops at the first run that cannot be paired (an unknown dim that inference
    did not relate to the output): the runs before it are exact.
    """
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        si, sj, pi, pj = i, j, 1, 1
        if i < len(src):
            pi, i = src[i], i + 1
        if j < len(dst):
            pj, j = dst[j], j + 1
        while pi != pj:
            if pi < pj and i < len(src):
                pi, i = pi * src[i], i + 1
            elif pj < pi and j < len(dst):
                pj, j = pj * dst[j], j + 1
            else:
                return groups
        groups.append((range(si, i), range(sj, j)))
    return groups


def _aligned_groups(src: list[int], dst: list[int]) -> list[tuple[range, range]]:
    """Runs paired from the left, then from the right (equal suffix products: same strides).

    `addmm(...).view(B, S, 96)` reshapes [unk, 96] to [B, S, 96]: the leading dims
    do not pair, the channel dim pairs from the right.
    """
    n, m = len(src), len(dst)
    right = [(range(n - s.stop, n - s.start), range(m - d.stop, m - d.start))
             for s, d in _reshape_groups(src[::-1], dst[::-1])]
    return _reshape_groups(src, dst) + right


def _resolve(src: list[sympy.Expr], target: list[sympy.Expr], allowzero: bool
             ) -> list[sympy.Expr] | None:
    """The output shape a Reshape computes from `target` (0 copies, -1 infers)."""
    dst: list[sympy.Expr | None] = []
    for j, e in enumerate(target):
        if e == 0 and not allowzero:
            if j >= len(src):
                return None
            dst.append(src[j])
        elif e == -1:
            dst.append(None)
        else:
            dst.append(e)
    holes = [j for j, d in enumerate(dst) if d is None]
    if len(holes) > 1:
        return None
    if holes:
        known = sympy.Mul(*[d for d in dst if d is not None])
        dst[holes[0]] = sympy.cancel(sympy.Mul(*src) / known)
    return dst


def _samples(count: int, positions: int) -> list[int]:
    """Channel counts below `count` that leave a whole number of `positions`."""
    valid = [k for k in range(1, count) if (k * positions) % count == 0]
    if len(valid) <= SAMPLES:
        return valid
    return [valid[0], valid[len(valid) // 2], valid[-1]]


def _target_mismatch(
    src: list[sympy.Expr], target: list[sympy.Expr], dst: list[sympy.Expr], chan: sympy.Symbol,
    count: int, axis: int, rewrite: set[int], allowzero: bool,
) -> int | None:
    """First target element that does not follow a pruned channel count (None: all do).

    The pruned input has `k` channels; the output must then have
    `dst[axis] * k / count` positions on `axis` and every other dim unchanged.
    Checked for a few `k` with symbolic dims set to two assignments of large
    primes; `rewrite` elements are literals the transform will set to the count.
    """
    size = None
    for shift in (0, 3):
        env = prime_env([*src, *target, *dst], skip={chan}, shift=shift)
        full = {**env, chan: sympy.Integer(count)}
        size = concrete(dst[axis], full)
        if size is None:
            return axis
        for k in _samples(count, size):
            pruned = {**env, chan: sympy.Integer(k)}
            src_k = [concrete(e, pruned) for e in src]
            want = [concrete(d, full) for d in dst]
            want[axis] = size * k // count
            got: list[int | None] = []
            for j, e in enumerate(target):
                if j in rewrite:
                    got.append(want[j])
                elif e == 0 and not allowzero:
                    got.append(src_k[j])
                elif e == -1:
                    got.append(-1)
                else:
                    got.append(concrete(e, pruned))
            # a -1 takes what the others leave: right whenever they are (the pruned
            # input and the wanted output lose the same fraction of elements)
            for j, (g, w) in enumerate(zip(got, want, strict=True)):
                if g != -1 and (g is None or g != w):
                    return j
    return None


def _literal(e: sympy.Expr) -> bool:
    return e.is_Integer and int(e) not in (0, -1)


def _rewrite_fixup(a: ChannelAnalysis, node: gs.Node, index: int, value: SymValue,
                   position: int, by: gs.Tensor) -> None:
    """Record how the transform rewrites literal `position` of shape input `index`."""
    shape_t = node.inputs[index]
    origin = value.origin(position)
    if isinstance(shape_t, gs.Constant):
        how, data = "const", {}
    elif origin is not None and len(shape_t.outputs) == 1:
        how, data = "concat", {"origin": list(origin)}
    else:
        how, data = "delta", {}
    a.fixup("shape-element", node, index=index, position=position, by=by.name,
            old=int(value.elems[position]), how=how, **data)


def _couple(a: ChannelAnalysis, node: gs.Node, value: SymValue, ids: np.ndarray,
            chan: sympy.Symbol, index: int = 1) -> SymValue | None:
    """Let a shape use another tensor's channel count by coupling it to `ids`.

    `Expand(x, Shape(y))` (torch's `expand_as`) or a reshape target read off a
    sibling tensor: the element equals the other tensor's channel count, so the
    two must keep the same number of channels -- uniting their elements position
    by position guarantees it. The value is returned with the other symbol
    replaced by `chan`. A count of a different size blocks (None).
    """
    others = {s for e in value.elems for s in a.sym.channels_of(e)} - {chan}
    if a.sym.deps(node.inputs[index]) - {chan} - others:
        _block(a, node, ids, "shape is computed from a channel count the analysis cannot follow")
        return None
    for sym in others:
        if a.sym.channel_ids[sym].size != ids.size:
            _block(a, node, ids, f"shape uses the channel count of "
                   f"{a.sym.channel_tensor[sym]!r}, which has a different size")
            return None
    for sym in others:
        a.unite(a.sym.channel_ids[sym], ids)
    subs = {sym: chan for sym in others}
    elems = [e.subs(subs) if subs else e for e in value.elems]
    return SymValue(elems, value.scalar, value.origins)


# ops between a head split and the per-head products that keep heads apart: scaling,
# rotary embeddings (Mul/Add by cos/sin, rotate_half's Slice/Neg/Concat inside a head),
# and grouped-query attention's repeat_kv (Unsqueeze -> Expand -> Reshape)
_ATTENTION_PATH = {"Transpose", "Mul", "Div", "Identity", "Cast", "Add", "Sub", "Neg",
                   "Slice", "Concat", "Unsqueeze", "Expand", "Reshape"}


def _feeds_attention(t: gs.Tensor, hops: int = 8) -> bool:
    """Does `t` reach, through a few layout/scale ops, a MatMul of two activations?

    Then a `[heads, head_dim]` split should carry the heads: per-head products
    keep them separate, so whole heads can go (`batched_matmul`). It is only a
    preference: the rules downstream still check every op the heads pass through.
    """
    for consumer in t.outputs:
        if consumer.op == "MatMul" and not any(isinstance(i, gs.Constant)
                                               for i in consumer.inputs):
            return True
        if hops and consumer.op in _ATTENTION_PATH and consumer.outputs:
            if _feeds_attention(consumer.outputs[0], hops - 1):
                return True
    return False


def _dim(e: sympy.Expr) -> int | str:
    """A graphsurgeon dim: an int, or a name for a symbolic one."""
    return int(e) if e.is_Integer else str(e)


def _choose_axes(full: np.ndarray) -> list[int]:
    """Output axes that could carry the channels after a split, best first.

    Disjoint slices first (a unit stays one slice), then the most units.
    """
    keys = []
    for axis in range(full.ndim):
        rows = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
        disjoint = sum(np.unique(r).size for r in rows) == np.unique(full).size
        keys.append(((disjoint, full.shape[axis], axis), axis))
    return [axis for _, axis in sorted(keys, reverse=True)]


def reshape(a: ChannelAnalysis, node: gs.Node) -> None:
    """Reshape/Flatten: map the channel axis through merged or split dims.

    Dims may be symbolic (a batch named `N` or `unk__0`, a sequence): only the
    dims merged with or split from the channel axis must be static. A target
    computed at run time is accepted when it follows the pruned channel count.
    """
    x, y = node.inputs[0], node.outputs[0]
    lay = a.layout(x)
    if lay is None:
        _learn_untracked(a, node)
        return
    src = a.sym.dims(x)
    if src is None:
        _block(a, node, lay.ids, "input shape is unknown")
        return
    chan = a.sym.channel_symbol(x)
    count = int(lay.ids.size)
    target: SymValue | None = None
    allowzero = bool(node.attrs.get("allowzero", 0))
    if node.op == "Flatten":
        ax = int(node.attrs.get("axis", 1))
        ax = ax + len(src) if ax < 0 else ax
        dst = [sympy.Mul(*src[:ax]), sympy.Mul(*src[ax:])]
    else:
        target = a.sym.value(node.inputs[1])
        if target is None or target.scalar:
            _block(a, node, lay.ids, "target shape is computed at run time by ops the "
                   "channel analysis does not follow")
            return
        target = _couple(a, node, target, lay.ids, chan)
        if target is None:
            return
        dst = _resolve(src, target.elems, allowzero)
        if dst is None:
            _block(a, node, lay.ids, "cannot resolve the target shape")
            return
    if target is not None:  # its channel counts are now this input's: blocks below cover them
        a.sym.accept(node, 1)
    env = {**prime_env([*src, *dst], skip={chan}), chan: sympy.Integer(count)}
    dst_c = [concrete(e, env) for e in dst]
    if target is not None and -1 in target.elems and None in dst_c:
        # inference lost how the input's dims relate (`unk__2 * unk__3` vs `batch`):
        # the -1 is opaque; the channel dims can still pair from the right
        hole = target.elems.index(-1)
        dst[hole] = sympy.Symbol(f"?{y.name}[{hole}]", integer=True, positive=True)
        env = {**prime_env([*src, *dst], skip={chan}), chan: sympy.Integer(count)}
        dst_c = [concrete(e, env) for e in dst]
    a.sym.learn(y, dst)
    src_c = [concrete(e, env) for e in src]
    if None in src_c or None in dst_c:
        _block(a, node, lay.ids, "target shape is not a whole number of elements")
        return
    group = next((g for g in _aligned_groups(src_c, dst_c) if lay.axis in g[0]), None)
    if group is None or not len(group[1]):
        _block(a, node, lay.ids, "cannot map the channel axis")
        return
    src_dims, dst_axes = group
    if any(src[d].free_symbols - {chan} for d in src_dims) or any(
            dst[d].free_symbols - {chan} for d in dst_axes):
        _block(a, node, lay.ids, "the channel axis is merged with a symbolic dim")
        return
    in_dims = [src_c[d] for d in src_dims]
    bshape = [1] * len(in_dims)
    bshape[lay.axis - src_dims.start] = -1
    full = np.broadcast_to(lay.ids.reshape(bshape), in_dims).reshape(
        [dst_c[d] for d in dst_axes])
    failure = None
    order = _choose_axes(full)
    if len(dst_axes) > 1 and len(src_dims) == 1 and _feeds_attention(y):
        order = [0, *[ax for ax in order if ax != 0]]  # heads: whole heads are separable
    for axis in order:
        new_axis = dst_axes.start + axis
        rewrite = set()
        if target is not None:
            if _literal(target.elems[new_axis]):
                rewrite.add(new_axis)
            bad = _target_mismatch(src, target.elems, dst, chan, count, new_axis, rewrite,
                                   allowzero)
            if bad is not None:
                failure = failure or bad
                continue
        break
    else:
        _block(a, node, lay.ids, f"target shape element {failure} ({target.elems[failure]}) "
               "does not follow the pruned channel count")
        return
    slices = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
    for row in slices:
        a.unite(np.full(row.size, row[0]), row)
    a.set_layout(y, new_axis, slices[:, 0])
    if a.shape(y) is None:  # inference lost the rank (opset-13 computed target): give it back
        y.shape = [_dim(d.subs(chan, count)) for d in dst]
    if len(dst_axes) > 1 and len(src_dims) == 1:
        a.head_splits.append(HeadSplit(node.name, y.name, list(dst_axes), full, new_axis))
    if target is not None:
        for j in rewrite:
            _rewrite_fixup(a, node, 1, target, j, y)


def channel_sized(a: ChannelAnalysis, node: gs.Node, index: int, x: gs.Tensor,
                  by: gs.Tensor, out_rank: int, allow_one: bool = False) -> bool:
    """Shape input `index` (right-aligned to `out_rank` dims) sizes `x`'s channel axis.

    The element there must follow the channel count (computed from it), or be
    the literal count (rewritten when pruned), or 1 where broadcasting allows;
    no other element may use the count. Otherwise the channels are blocked.
    """
    lay = a.layout(x)
    value = a.sym.value(node.inputs[index])
    if value is None or value.scalar:
        _block(a, node, lay.ids, "shape is computed at run time by ops the channel analysis "
               "does not follow")
        return False
    chan = a.sym.channel_symbol(x)
    value = _couple(a, node, value, lay.ids, chan, index)
    if value is None:
        return False
    a.sym.accept(node, index)  # every failure below blocks these channels
    pos = lay.axis + out_rank - a.rank(x) - (out_rank - len(value.elems))
    if any(chan in e.free_symbols for j, e in enumerate(value.elems) if j != pos):
        _block(a, node, lay.ids, "shape uses the channel count on another axis")
        return False
    if pos < 0:
        return True
    e = value.elems[pos]
    if e == chan or (allow_one and e == 1):
        return True
    if e.is_Integer and int(e) == lay.ids.size:
        _rewrite_fixup(a, node, index, value, pos, by)
        return True
    _block(a, node, lay.ids, f"shape element {pos} ({e}) does not follow the channels")
    return False


def _learn_untracked(a: ChannelAnalysis, node: gs.Node) -> None:
    """An untracked Reshape still tells what inference's `unk__N` output dims are."""
    if node.op != "Reshape":
        return
    src, target = a.sym.dims(node.inputs[0]), a.sym.value(node.inputs[1])
    if src is None or target is None or target.scalar or a.sym.deps(node.inputs[1]):
        return
    dst = _resolve(src, target.elems, bool(node.attrs.get("allowzero", 0)))
    if dst is not None:
        a.sym.learn(node.outputs[0], dst)


def expand(a: ChannelAnalysis, node: gs.Node) -> None:
    """Expand: channels stay on their axis; the shape element there is 1, C or follows C."""
    x, y = node.inputs[0], node.outputs[0]
    lay = a.layout(x)
    if lay is None:
        _follow_shape(a, node, 1, a.sym.dims(x))
        return
    value = a.sym.value(node.inputs[1])
    out_rank = max(a.rank(x), len(value.elems) if value is not None else 0)
    if channel_sized(a, node, 1, x, y, out_rank, allow_one=True):
        a.set_layout(y, lay.axis + out_rank - a.rank(x), lay.ids)


def tile(a: ChannelAnalysis, node: gs.Node) -> None:
    """Tile: allowed when the channel axis is repeated once."""
    x, y = node.inputs[0], node.outputs[0]
    lay = a.layout(x)
    if lay is None:
        return
    value = a.sym.value(node.inputs[1])
    if value is None or len(value.elems) <= lay.axis or value.elems[lay.axis] != 1:
        _block(a, node, lay.ids, "repeats the channel axis (or its repeats are unknown)")
        return
    if a.sym.deps(node.inputs[1]):
        _block(a, node, lay.ids, "repeats depend on a channel count")
        return
    a.set_layout(y, lay.axis, lay.ids)
    a.sym.accept(node, 1)


def constant_of_shape(a: ChannelAnalysis, node: gs.Node) -> None:
    """ConstantOfShape: a dim equal to a channel count makes the output carry those channels."""
    _follow_shape(a, node, 0, None)


def _follow_shape(a: ChannelAnalysis, node: gs.Node, index: int,
                  base: list[sympy.Expr] | None) -> None:
    """An untracked op whose shape input may hold a channel count (Expand, ConstantOfShape).

    The output takes the layout of the channels whose count sits, as is, at one
    position of the shape (and the op's data input is 1 there); its values are
    the same at every channel, so removing channels there matches the masked model.
    Any other use of a channel count is left to the caller's leak check (blocked).
    """
    t = node.inputs[index]
    value = a.sym.value(t)
    deps = a.sym.deps(t)
    if value is None or not deps:
        return
    hits = [(j, e) for j, e in enumerate(value.elems) if e in deps]
    rest = [e for j, e in enumerate(value.elems) if e not in deps]
    if len(hits) != 1 or any(a.sym.channels_of(e) for e in rest):
        return
    pos, sym = hits[0]
    out_rank = len(value.elems) if base is None else max(len(base), len(value.elems))
    axis = pos + out_rank - len(value.elems)
    if base is not None:
        local = axis - (out_rank - len(base))
        if local >= 0 and base[local] != 1:
            return
    a.set_layout(node.outputs[0], axis, a.sym.channel_ids[sym])
    a.sym.accept(node, index)


def symbolic_slice(a: ChannelAnalysis, node: gs.Node, lay: Layout, axes: list[int] | None,
                   steps: list[int] | None) -> None:
    """Slice with bounds computed at run time (torch's `chunk`: `(C + 1) // 2`, ...).

    Bounds on other axes must not depend on channel counts. Bounds on the channel
    axis must be fixed fractions of the count (0, C/2, C, ...): the axis is then
    cut into that many equal parts, tied position by position (every part loses
    the same channels), and the bounds are checked to land on the same fractions
    of a few pruned counts.
    """
    x, out = node.inputs[0], node.outputs[0]
    starts, ends = a.sym.value(node.inputs[1]), a.sym.value(node.inputs[2])
    if starts is None or ends is None or len(starts.elems) != len(ends.elems):
        _block(a, node, lay.ids, "bounds are computed at run time by ops the channel analysis "
               "does not follow")
        return
    rank = a.rank(x)
    axes = [v + rank if v < 0 else v for v in (axes or range(len(starts.elems)))]
    chan = a.sym.channel_symbol(x)
    deps = a.sym.deps(node.inputs[1]) | a.sym.deps(node.inputs[2])
    if deps - {chan}:
        _block(a, node, lay.ids, "bounds depend on another tensor's channel count")
        return
    if lay.axis not in axes:
        if deps:
            _block(a, node, lay.ids, "bounds of another axis depend on the channel count")
            return
        a.set_layout(out, lay.axis, lay.ids)
        a.sym.accept(node, 1)
        a.sym.accept(node, 2)
        return
    pos = axes.index(lay.axis)
    a.sym.accept(node, 1)  # every failure below blocks these channels
    a.sym.accept(node, 2)
    if steps is not None and steps[pos] != 1:
        _block(a, node, lay.ids, "strided slice of the channel axis")
        return
    others = [*starts.elems[:pos], *starts.elems[pos + 1:], *ends.elems[:pos],
              *ends.elems[pos + 1:]]
    if any(chan in e.free_symbols for e in others):
        _block(a, node, lay.ids, "bounds of another axis depend on the channel count")
        return
    bounds = (starts.elems[pos], ends.elems[pos])
    env = prime_env(list(bounds), skip={chan})

    def at(count: int) -> tuple[int, int] | None:
        values = [concrete(e, {**env, chan: sympy.Integer(count)}) for e in bounds]
        if None in values:
            return None
        return slice(*values).indices(count)[:2]

    count = int(lay.ids.size)
    full = at(count)
    if full is None:
        _block(a, node, lay.ids, "bounds are not whole numbers")
        return
    start, stop = full
    parts = math.lcm(Fraction(start, count).denominator, Fraction(stop, count).denominator)
    for m in _samples(count // parts, count // parts):
        if at(parts * m) != (start * m * parts // count, stop * m * parts // count):
            _block(a, node, lay.ids, f"bounds ({bounds[0]}, {bounds[1]}) do not follow the "
                   "pruned channel count")
            return
    a.tie(lay.ids, parts)
    a.set_layout(out, lay.axis, lay.ids[start:stop])
