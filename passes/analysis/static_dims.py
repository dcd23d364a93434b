"""One dim of a tensor that shape inference left unknown, read off its producers.

Why: onnx's inference gives up on a dim as soon as one op in the chain is opaque
to it, and every op after it gets a fresh `unk__N`:

- GPT-2's causal mask is `bias[:, :, :S, :S]`, a Slice whose bounds come from
  `Shape`; inference loses all four dims, also the two size-1 axes the Slice does
  not touch. The mask broadcasts over the heads of the scores `[B, heads, S, S]`,
  which must be provable to prune heads.
- LLaMA's rotary tables start at `Range(0, S, 1)`, which inference does not
  evaluate; the `[1, 1, S, D]` cos/sin, the rotated Q/K, the scores and the
  context all end up with `unk__N` for S, and the merge reshape `[B, S, -1]` can
  no longer tell that its -1 is `heads * head_dim`.

This walks back through the ops that set a dim from their inputs' dims (element-wise
broadcasting, Slice of other axes, Unsqueeze, Transpose, MatMul, Expand, Reshape
to a given size, Concat, Range) and returns the dim as a sympy expression in the
named dims (`batch`, `sequence`) and literals -- or None, so the caller keeps the
unknown (and blocks if it needs it): never a guess. Two dims are only equal when
they are the same expression, so a broadcast of `sequence` with `unk__3` stays unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs
import sympy

if TYPE_CHECKING:
    from compress_ir.passes.analysis.channel_groups import ChannelAnalysis

DEPTH = 64  # producers walked back at most (results are cached per tensor and axis)
INFERRED = "unk__"  # onnx's name for a dim it could not infer

Expr = sympy.Expr
DimRule = Callable[["ChannelAnalysis", gs.Node, int, int, int], "Expr | None"]


def static_dim(a: ChannelAnalysis, t: gs.Tensor, axis: int) -> int | None:
    """The size of `t` on `axis` when it is provably a constant int."""
    e = sym_dim(a, t, axis)
    return int(e) if e is not None and e.is_Integer else None


def sym_dim(a: ChannelAnalysis, t: gs.Tensor, axis: int, depth: int = DEPTH) -> Expr | None:
    """The size of `t` on `axis`: an int, a named dim, an expression of them, or None."""
    shape = a.shape(t)
    if shape is not None and 0 <= axis < len(shape):
        d = shape[axis]
        if isinstance(d, (int, np.integer)) and d >= 0:
            return sympy.Integer(int(d))
        if isinstance(d, str) and d and not d.startswith(INFERRED):
            sym = sympy.Symbol(d, integer=True, positive=True)
            return a.sym.aliases.get(sym, sym)
    cache = a.sym.dim_cache
    key = (t.name, axis)
    if key in cache:
        return cache[key]
    cache[key] = None  # also guards against cycles in malformed graphs
    value = _from_producer(a, t, axis, depth)
    cache[key] = value
    return value


def _from_producer(a: ChannelAnalysis, t: gs.Tensor, axis: int, depth: int) -> Expr | None:
    if depth <= 0 or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    rule = RULES.get(node.op)
    rank = a.rank(t)
    if rule is None or rank is None or not node.outputs or node.outputs[0] is not t:
        return None
    try:
        return rule(a, node, axis, rank, depth - 1)
    except (ArithmeticError, ValueError, TypeError, IndexError, KeyError):
        return None


def _same(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int) -> Expr | None:
    x = node.inputs[0]
    return sym_dim(a, x, axis, depth) if a.rank(x) == rank else None


def broadcast(dims: list[Expr | None]) -> Expr | None:
    """numpy broadcasting of one axis: 1s drop out, the rest must be one expression.

    One exact reduction: `E` with `min(E, c)` (c >= 2 a literal; ALiBi's table sliced to
    the last S positions) is `E`: when E > c the two differ and neither is 1, so no run
    that onnxruntime accepts has E > c.
    """
    rest = {d for d in dims if d != 1}
    if None in rest:
        return None
    if len(rest) == 2:
        for m in rest:
            other = next(iter(rest - {m}))
            if isinstance(m, sympy.Min) and len(m.args) == 2 and other in m.args:
                c = next(arg for arg in m.args if arg != other)
                if c.is_Integer and int(c) >= 2:
                    return other
    if len(rest) > 1:
        return None
    return rest.pop() if rest else sympy.Integer(1)


def _right(a: ChannelAnalysis, t: gs.Tensor, axis: int, rank: int, depth: int) -> Expr | None:
    """`t`'s dim under output `axis` when `t` is right-aligned to `rank` dims (1 if absent)."""
    r = a.rank(t)
    if r is None:
        return None
    local = axis - (rank - r)
    return sympy.Integer(1) if local < 0 else sym_dim(a, t, local, depth)


def _broadcast(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
               ) -> Expr | None:
    return broadcast([_right(a, t, axis, rank, depth) for t in node.inputs if t.name])


def _ints(a: ChannelAnalysis, node: gs.Node, attr: str, index: int) -> list[int] | None:
    if node.attrs.get(attr) is not None:
        return [int(v) for v in np.atleast_1d(node.attrs[attr])]
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    value = a.sym.value(node.inputs[index])
    if value is None or not all(e.is_Integer for e in value.elems):
        raise ValueError("not literal")
    return [int(e) for e in value.elems]


def _slice(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int) -> Expr | None:
    """An axis the Slice does not cut keeps its size."""
    x = node.inputs[0]
    if a.rank(x) != rank:
        return None
    axes = _ints(a, node, "axes", 3)
    if axes is None:
        starts = a.sym.value(node.inputs[1])
        if starts is None:
            return None
        axes = list(range(len(starts.elems)))
    cut = [v % rank for v in axes]
    if axis not in cut:
        return sym_dim(a, x, axis, depth)
    if node.attrs.get("starts") is not None:  # opset < 10: attribute form, not followed
        return None
    return _cut_extent(a, node, cut.index(axis), sym_dim(a, x, axis, depth))


END = 2**31 - 1  # an end at least this large means "to the end" (torch writes INT64_MAX)


def _cut_extent(a: ChannelAnalysis, node: gs.Node, k: int, d: Expr | None) -> Expr | None:
    """Length of the k-th sliced axis (size `d`) when it follows from literals and the
    two forms exporters write for "the last n" (`x[..., -n:]`):

    - `[0, END)`: the whole axis (dynamo's no-op `x[:, :]`), `d`;
    - `[max(0, d - n), END)`: `d - max(0, d - n)`, which is `min(d, n)`.
    Anything else is None (unknown), never a guess.
    """
    if d is None:
        return None
    values = [a.sym.value(node.inputs[i]) if i < len(node.inputs) and node.inputs[i].name
              else None for i in (1, 2, 4)]
    starts, ends, steps = values
    if starts is None or ends is None or k >= len(starts.elems) or k >= len(ends.elems):
        return None
    if steps is not None and (k >= len(steps.elems) or steps.elems[k] != 1):
        return None
    start, end = starts.elems[k], ends.elems[k]
    if not (end.is_Integer and int(end) >= END):
        return None
    if start == 0:
        return d
    if isinstance(start, sympy.Max) and len(start.args) == 2 and 0 in start.args:
        n = d - next(arg for arg in start.args if arg != 0)
        return sympy.Min(d, n)
    return None


def _unsqueeze(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
               ) -> Expr | None:
    axes = {v % rank for v in _ints(a, node, "axes", 1) or ()}
    if not axes:
        return None
    if axis in axes:
        return sympy.Integer(1)
    kept = [p for p in range(rank) if p not in axes]
    return sym_dim(a, node.inputs[0], kept.index(axis), depth)


def _squeeze(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
             ) -> Expr | None:
    x = node.inputs[0]
    axes = _ints(a, node, "axes", 1)
    r = a.rank(x)
    if axes is None or r is None:
        return None
    axes_n = {v % r for v in axes}
    kept = [p for p in range(r) if p not in axes_n]
    return sym_dim(a, x, kept[axis], depth)


def _transpose(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
               ) -> Expr | None:
    perm = node.attrs.get("perm")
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    return sym_dim(a, node.inputs[0], perm[axis], depth)


def _matmul(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
            ) -> Expr | None:
    """Rows from A, columns from B, batch dims broadcast (both operands of rank >= 2)."""
    x, w = node.inputs[0], node.inputs[1]
    if a.rank(x) is None or a.rank(w) is None or min(a.rank(x), a.rank(w)) < 2:
        return None
    if axis == rank - 1:
        return sym_dim(a, w, a.rank(w) - 1, depth)
    if axis == rank - 2:
        return sym_dim(a, x, a.rank(x) - 2, depth)
    return broadcast([_batch(a, t, axis, rank, depth) for t in (x, w)])


def _batch(a: ChannelAnalysis, t: gs.Tensor, axis: int, rank: int, depth: int) -> Expr | None:
    """Batch dim of a MatMul operand under output batch `axis` (right-aligned before the
    two matrix axes)."""
    local = axis - (rank - a.rank(t))
    return sympy.Integer(1) if local < 0 else sym_dim(a, t, local, depth)


def _target(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int) -> Expr | None:
    """Element of a shape input (Reshape target, Expand shape) under `axis`, right-aligned;
    1 left of a shorter shape."""
    value = a.sym.value(node.inputs[1])
    if value is None or value.scalar:
        return None
    pos = axis - (rank - len(value.elems))
    return sympy.Integer(1) if pos < 0 else value.elems[pos]


def _reshape(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
             ) -> Expr | None:
    """A target element: a 0 copies the input's dim, a -1 takes what the others leave."""
    x, value = node.inputs[0], a.sym.value(node.inputs[1])
    if value is None or value.scalar or len(value.elems) != rank:
        return None
    keep_zero = bool(node.attrs.get("allowzero", 0))
    dims: list[Expr | None] = []
    for j, e in enumerate(value.elems):
        if a.sym.channels_of(e):
            dims.append(None)  # follows pruned channels: not a fixed size
        else:
            dims.append(sym_dim(a, x, j, depth) if e == 0 and not keep_zero else e)
    d = dims[axis]
    if d != -1:
        return d if d is None or not d.is_Integer or int(d) > 0 else None
    r = a.rank(x)
    if a.layout(x) is not None or r is None or any(e is None or e == -1 for j, e in
                                                   enumerate(dims) if j != axis):
        return None  # the input's size changes with pruning, or the rest is unknown
    total = [sym_dim(a, x, j, depth) for j in range(r)]
    if None in total:
        return None
    hole = sympy.cancel(sympy.Mul(*total) / sympy.Mul(*[e for j, e in enumerate(dims)
                                                         if j != axis]))
    return hole if hole.is_polynomial() else None


def _expand(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
            ) -> Expr | None:
    """Expand broadcasts the data against the shape."""
    want = _target(a, node, axis, rank)
    if want is None or a.sym.channels_of(want):
        return None
    return broadcast([_right(a, node.inputs[0], axis, rank, depth), want])


def _concat(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
            ) -> Expr | None:
    cat = int(node.attrs.get("axis", 0)) % rank
    dims = [sym_dim(a, t, axis, depth) for t in node.inputs]
    if None in dims:
        return None
    if axis == cat:
        return sympy.Add(*dims)
    return dims[0] if len(set(dims)) == 1 else None


def _range(a: ChannelAnalysis, node: gs.Node, axis: int, rank: int, depth: int
           ) -> Expr | None:
    """Range(start, limit, delta) has ceil((limit - start) / delta) elements (0 if negative)."""
    vals = [a.sym.value(t) for t in node.inputs[:3]]
    if any(v is None or len(v.elems) != 1 for v in vals):
        return None
    start, limit, delta = (v.elems[0] for v in vals)
    if any(a.sym.channels_of(e) for e in (start, limit, delta)):
        return None
    if start == 0 and delta == 1:
        return limit  # torch's arange(S): the sequence itself
    if start.is_Integer and limit.is_Integer and delta.is_Integer and int(delta):
        return sympy.Integer(max(0, -(-(int(limit) - int(start)) // int(delta))))
    return None


_UNARY = ("Cast Not Neg Abs Sqrt Exp Log Sin Cos Tanh Sigmoid Relu Identity Reciprocal Erf "
          "Floor Ceil IsNaN IsInf Softmax LogSoftmax Gelu Dropout").split()
_BROADCAST = ("Add Sub Mul Div Pow Max Min Where Equal Less LessOrEqual Greater GreaterOrEqual "
              "And Or Xor").split()

RULES: dict[str, DimRule] = {
    **{op: _same for op in _UNARY},
    **{op: _broadcast for op in _BROADCAST},
    "Slice": _slice,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Transpose": _transpose,
    "MatMul": _matmul,
    "Reshape": _reshape,
    "Expand": _expand,
    "Concat": _concat,
    "Range": _range,
}
