"""Symbolic values of shape tensors, with the channel counts they depend on.

Exporters build reshape targets at run time: `Shape -> Gather -> Unsqueeze ->
Concat -> Reshape` (torch's `x.view(x.size(0), -1)`), `Shape -> Slice -> Concat`
(attention's `[B, S, heads, head_dim]`). To prune through them the channel
analysis must know, for every element of such a tensor, whether it is a literal
(and which constant holds it), a symbolic dim (batch, sequence, H, W), or a value
derived from a channel count that pruning changes.

Why not `onnxruntime.tools.symbolic_shape_infer` or onnx's `data_prop`: both
compute shapes and values (the frontend already uses `data_prop`), but a channel
count reaches them as a plain integer read off a weight, so neither can say which
element *is* a channel count. Here every tracked channel axis is a sympy symbol
(one per distinct layout), symbolic dims are symbols named after their
`dim_param`, and literals are integers: a small value propagation over the ops
exporters use for shape arithmetic (`RULES` below). Any op it does not follow
leaves its output *tainted* by the channel symbols of its inputs, so the channel
analysis can block, never guess.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import sympy

from compress_ir.passes.analysis.static_dims import INFERRED, sym_dim

if TYPE_CHECKING:
    from compress_ir.passes.analysis.channel_groups import ChannelAnalysis

MAX_ELEMENTS = 64  # longer integer tensors are data, not shapes

Origin = tuple[str, int, int]  # (node, input index, flat position) of a literal element


@dataclass
class SymValue:
    """Value of a 0-D or 1-D integer tensor: one sympy expression per element."""

    elems: list[sympy.Expr]
    scalar: bool = False
    origins: list[Origin | None] | None = None  # literals read directly off a constant

    def origin(self, i: int) -> Origin | None:
        return self.origins[i] if self.origins else None


class ShapeValues:
    """Symbolic values and channel dependence of the integer tensors of one graph."""

    def __init__(self, analysis: ChannelAnalysis) -> None:
        self.a = analysis
        self.values: dict[str, SymValue] = {}
        self.taint: dict[str, set[sympy.Symbol]] = {}
        self.channel_ids: dict[sympy.Symbol, np.ndarray] = {}  # symbol -> layout ids
        self.channel_tensor: dict[sympy.Symbol, str] = {}  # symbol -> a tensor it counts
        self._by_ids: dict[bytes, sympy.Symbol] = {}
        self._unknown: dict[tuple[str, int], sympy.Symbol] = {}
        self.accepted: set[tuple[str, int]] = set()  # (node, input) checked by a rule
        self.aliases: dict[sympy.Symbol, sympy.Expr] = {}  # inference's unk__N -> known value
        self.dim_cache: dict[tuple[str, int], sympy.Expr | None] = {}  # static_dims.sym_dim

    # -- symbols ------------------------------------------------------------------
    def channel_symbol(self, tensor: gs.Tensor) -> sympy.Symbol:
        """The symbol counting `tensor`'s tracked channels (shared by equal layouts)."""
        lay = self.a.layout(tensor)
        key = lay.ids.tobytes()
        sym = self._by_ids.get(key)
        if sym is None:
            sym = sympy.Symbol(f"C{len(self._by_ids)}", integer=True, positive=True)
            self._by_ids[key] = sym
            self.channel_ids[sym] = lay.ids
            self.channel_tensor[sym] = tensor.name
        return sym

    def dims(self, tensor: gs.Tensor) -> list[sympy.Expr] | None:
        """Symbolic shape: ints, named dims, and the channel symbol on the tracked axis."""
        shape = self.a.shape(tensor)
        if shape is None:
            return None
        lay = self.a.layout(tensor)
        out: list[sympy.Expr] = []
        for axis, d in enumerate(shape):
            if lay is not None and axis == lay.axis:
                out.append(self.channel_symbol(tensor))
            elif isinstance(d, (int, np.integer)) and d >= 0:
                out.append(sympy.Integer(int(d)))
            elif isinstance(d, str) and d and not d.startswith(INFERRED):
                sym = sympy.Symbol(d, integer=True, positive=True)
                out.append(self.aliases.get(sym, sym))
            elif (known := sym_dim(self.a, tensor, axis)) is not None:
                out.append(known)  # inference lost it; the producers still say what it is
            elif isinstance(d, str) and d:
                sym = sympy.Symbol(d, integer=True, positive=True)
                out.append(self.aliases.get(sym, sym))
            else:  # unknown and unnamed: a symbol of its own
                key = (tensor.name, axis)
                if key not in self._unknown:
                    self._unknown[key] = sympy.Symbol(
                        f"?{tensor.name}[{axis}]", integer=True, positive=True)
                out.append(self._unknown[key])
        return out

    def learn(self, tensor: gs.Tensor, dims: list[sympy.Expr]) -> None:
        """Record what a reshape computed for dims inference could only name (`unk__N`).

        Inference names an unknown dim once and carries the name through later ops,
        so every tensor sharing it gets the value (e.g. `Min(64, sequence)`).
        """
        shape = self.a.shape(tensor)
        if shape is None or len(shape) != len(dims):
            return
        for d, e in zip(shape, dims, strict=True):
            if not isinstance(d, str) or not d or self.channels_of(e) or any(
                    str(s).startswith(("?", "unk__")) for s in e.free_symbols):
                continue  # only a value in known names (batch, sequence, literals) helps
            if concrete(e, prime_env([e], set())) is None:
                continue
            sym = sympy.Symbol(d, integer=True, positive=True)
            if sym != e:
                self.aliases.setdefault(sym, e)

    def channels_of(self, expr: sympy.Expr) -> set[sympy.Symbol]:
        return {s for s in expr.free_symbols if s in self.channel_ids}

    # -- values -------------------------------------------------------------------
    def value(self, tensor: gs.Tensor) -> SymValue | None:
        """The symbolic value of a small integer tensor (constant or propagated)."""
        if tensor.name in self.values:
            return self.values[tensor.name]
        const = self.a.const(tensor)
        if const is None or const.ndim > 1 or const.size > MAX_ELEMENTS:
            return None
        if np.issubdtype(const.dtype, np.integer):
            elems = [sympy.Integer(int(v)) for v in const.ravel()]
        elif np.issubdtype(const.dtype, np.floating) and np.isfinite(const).all():
            elems = [sympy.Rational(float(v)) for v in const.ravel()]  # exact binary value
        else:
            return None
        return SymValue(elems, scalar=const.ndim == 0)

    def deps(self, tensor: gs.Tensor) -> set[sympy.Symbol]:
        """Channel symbols a tensor's value depends on (known value or taint)."""
        return self.deps_name(tensor.name)

    def deps_name(self, name: str) -> set[sympy.Symbol]:
        out = set(self.taint.get(name, ()))
        val = self.values.get(name)
        if val is not None:
            for e in val.elems:
                out |= self.channels_of(e)
        return out

    def accept(self, node: gs.Node, index: int) -> None:
        """A rule has checked that input `index` of `node` follows the channel counts."""
        self.accepted.add((node.name, index))

    def visit(self, node: gs.Node) -> bool:
        """Propagate values through `node`; True if its outputs now carry what it read.

        A rule that cannot follow its shape-valued data taints the outputs with the
        channel symbols of its (not accepted) inputs. An op whose data is not a
        shape value at all (a Slice of activations with computed bounds) is not
        handled here: the caller's leak check blocks at this node, naming it.
        """
        rule = RULES.get(node.op)
        if rule is None:
            return False
        if node.op not in ("Shape", "Size", "ConstantOfShape"):  # these read shapes only
            if not any(t.name in self.values or self.deps(t) for t in node.inputs):
                return False
            if not all(self.value(t) is not None or self.deps(t)
                       for t in node.inputs if t.name):
                return False  # an activation is involved: not shape arithmetic
        try:
            outs = rule(self, node)
        except (ArithmeticError, ValueError, TypeError, IndexError, KeyError):
            outs = None
        if outs is None:  # inputs a channel rule accepted are followed; the rest taint
            deps = set().union(set(), *(self.deps(t) for i, t in enumerate(node.inputs)
                                        if (node.name, i) not in self.accepted))
            if deps:
                for out in node.outputs:
                    self.taint[out.name] = deps
            return True
        for out, val in zip(node.outputs, outs, strict=False):
            if val is not None:
                self.values[out.name] = val
        return True


# -- helpers ------------------------------------------------------------------------
def _int_attr(node: gs.Node, name: str, default: int) -> int:
    value = node.attrs.get(name)
    return default if value is None else int(value)


def _ints(sv: ShapeValues, node: gs.Node, attr: str, index: int) -> list[int] | None:
    if node.attrs.get(attr) is not None:
        return [int(v) for v in np.atleast_1d(node.attrs[attr])]
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    val = sv.value(node.inputs[index])
    if val is None or not all(e.is_Integer for e in val.elems):
        raise ValueError("non-literal indices")
    return [int(e) for e in val.elems]


def _vec(sv: ShapeValues, t: gs.Tensor) -> SymValue:
    val = sv.value(t)
    if val is None:
        raise ValueError(f"no symbolic value for {t.name!r}")
    return val


# -- rules: each returns one SymValue (or None) per output, or None if not followed ---
SymRule = Callable[[ShapeValues, gs.Node], "list[SymValue | None] | None"]


def _shape(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    dims = sv.dims(node.inputs[0])
    if dims is None:
        return None
    rank = len(dims)
    start = _int_attr(node, "start", 0)
    end = node.attrs.get("end")
    end = rank if end is None else int(end)
    return [SymValue(dims[slice(start, end)])]


def _size(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    dims = sv.dims(node.inputs[0])
    return None if dims is None else [SymValue([sympy.Mul(*dims)], scalar=True)]


def _identity(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    val = _vec(sv, node.inputs[0])
    return [SymValue(list(val.elems), val.scalar)]


_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
              onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
              onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


def _cast(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    to = int(node.attrs["to"])
    if to not in _INT_TYPES | _FLOAT_TYPES:
        return None
    val = _vec(sv, node.inputs[0])
    elems = list(val.elems)
    if to in _INT_TYPES and _floating(node.inputs[0]):  # float -> int truncates (dims >= 0)
        elems = [sympy.floor(e) for e in elems]
    return [SymValue(elems, val.scalar)]


def _unsqueeze(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    val = _vec(sv, node.inputs[0])
    axes = _ints(sv, node, "axes", 1)
    if not val.scalar or axes is None or len(axes) != 1:
        return None
    return [SymValue(list(val.elems), scalar=False)]


def _squeeze(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    val = _vec(sv, node.inputs[0])
    if val.scalar or len(val.elems) != 1:
        return None
    return [SymValue(list(val.elems), scalar=True)]


def _gather(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    data = _vec(sv, node.inputs[0])
    idx = sv.value(node.inputs[1])
    if data.scalar or idx is None or not all(e.is_Integer for e in idx.elems):
        return None
    n = len(data.elems)
    picks = [int(e) + n if int(e) < 0 else int(e) for e in idx.elems]
    return [SymValue([data.elems[p] for p in picks], scalar=idx.scalar)]


def _slice(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    data = _vec(sv, node.inputs[0])
    starts, ends = _ints(sv, node, "starts", 1), _ints(sv, node, "ends", 2)
    axes, steps = _ints(sv, node, "axes", 3), _ints(sv, node, "steps", 4)
    if data.scalar or starts is None or ends is None or len(starts) != 1:
        return None
    if axes is not None and axes[0] not in (0, -1):
        return None
    step = 1 if steps is None else steps[0]
    n = len(data.elems)
    start, stop, step = slice(starts[0], ends[0], step).indices(n)
    return [SymValue(data.elems[start:stop:step])]


def _concat(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    elems: list[sympy.Expr] = []
    origins: list[Origin | None] = []
    for idx, t in enumerate(node.inputs):
        val = _vec(sv, t)
        if val.scalar:
            return None
        elems.extend(val.elems)
        literal = sv.a.const(t) is not None
        origins.extend((node.name, idx, i) if literal else None for i in range(len(val.elems)))
    return [SymValue(elems, origins=origins)]


def _broadcast(vals: list[SymValue]) -> tuple[list[list[sympy.Expr]], bool]:
    n = max(len(v.elems) for v in vals)
    out = []
    for v in vals:
        if len(v.elems) not in (1, n):
            raise ValueError("shapes do not broadcast")
        out.append(v.elems * n if len(v.elems) == 1 else v.elems)
    return out, all(v.scalar for v in vals)


def _int_div(x: sympy.Expr, y: sympy.Expr) -> sympy.Expr:
    """ONNX integer Div truncates; symbolic dims are positive, so floor is the same."""
    if x.is_Integer and y.is_Integer:
        return sympy.Integer(math.trunc(Fraction(int(x), int(y))))
    return sympy.floor(x / y)


_BINARY: dict[str, Callable[[sympy.Expr, sympy.Expr], sympy.Expr]] = {
    "Add": lambda x, y: x + y,
    "Sub": lambda x, y: x - y,
    "Mul": lambda x, y: x * y,
    "Div": _int_div,
    "Max": sympy.Max,
    "Min": sympy.Min,
}


def _true_div(x: sympy.Expr, y: sympy.Expr) -> sympy.Expr:
    return x / y


def _floating(t: gs.Tensor) -> bool:
    try:
        return t.dtype is not None and np.issubdtype(np.dtype(t.dtype), np.floating)
    except TypeError:
        return False


def _binary(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    vals = [_vec(sv, t) for t in node.inputs]
    if len(vals) != 2:
        return None
    (xs, ys), scalar = _broadcast(vals)
    fn = _BINARY[node.op]
    if node.op == "Div" and any(_floating(t) for t in (*node.inputs, *node.outputs)):
        fn = _true_div  # a float Div divides exactly
    return [SymValue([fn(x, y) for x, y in zip(xs, ys, strict=True)], scalar)]


def _equal(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    """Equal decides when the difference is a number, or by the dims' signs: a dim is
    positive, so TorchScript's `expand(B, -1, -1)` test `shape == -1` is False for B."""
    vals = [_vec(sv, t) for t in node.inputs]
    (xs, ys), scalar = _broadcast(vals)
    out = []
    for x, y in zip(xs, ys, strict=True):
        diff = sympy.simplify(x - y)
        if diff.is_number:
            out.append(sympy.Integer(int(diff == 0)))
        elif diff.is_zero is False:  # from the symbols' assumptions (positive integers)
            out.append(sympy.Integer(0))
        else:
            return None
    return [SymValue(out, scalar)]


def _constant_of_shape(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    """A 1-D ConstantOfShape of a literal length: TorchScript's `ones_like(shape)`."""
    shape = _vec(sv, node.inputs[0])
    if len(shape.elems) != 1 or not shape.elems[0].is_Integer:
        return None
    count = int(shape.elems[0])
    fill = node.attrs.get("value")
    fill = np.zeros(1) if fill is None else np.asarray(getattr(fill, "values", fill)).ravel()
    if not 0 <= count <= MAX_ELEMENTS or fill.size != 1 or not np.isfinite(fill).all():
        return None
    value = fill[0]
    elem = sympy.Integer(int(value)) if float(value).is_integer() else sympy.Rational(float(value))
    return [SymValue([elem] * count)]


def _where(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    vals = [_vec(sv, t) for t in node.inputs]
    (cs, xs, ys), scalar = _broadcast(vals)
    if not all(c.is_Integer for c in cs):
        return None
    return [SymValue([x if int(c) else y for c, x, y in zip(cs, xs, ys, strict=True)], scalar)]


def _reduce_prod(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    val = _vec(sv, node.inputs[0])
    axes = _ints(sv, node, "axes", 1)
    if axes not in (None, [0], [-1]):
        return None
    keep = _int_attr(node, "keepdims", 1)
    return [SymValue([sympy.Mul(*val.elems)], scalar=not keep and not val.scalar)]


def _reshape(sv: ShapeValues, node: gs.Node) -> list[SymValue | None] | None:
    val = _vec(sv, node.inputs[0])
    target = _ints(sv, node, "shape", 1)
    if target is None or len(target) > 1 or (target and target[0] not in (-1, len(val.elems))):
        return None
    return [SymValue(list(val.elems), scalar=not target)]


RULES: dict[str, SymRule] = {
    "Reshape": _reshape,
    "Shape": _shape,
    "Size": _size,
    "Identity": _identity,
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    **{op: _binary for op in _BINARY},
    "Equal": _equal,
    "ConstantOfShape": _constant_of_shape,
    "Where": _where,
    "ReduceProd": _reduce_prod,
}


# -- evaluation -----------------------------------------------------------------------
@functools.cache
def _primes(count: int) -> tuple[int, ...]:
    """`count` distinct primes above any dim a shape tensor holds in practice."""
    out, p = [], 10_000
    for _ in range(count):
        p = int(sympy.nextprime(p))
        out.append(p)
    return tuple(out)


def prime_env(exprs: list[sympy.Expr], skip: set[sympy.Symbol], shift: int = 0) -> dict:
    """Distinct large primes for the free symbols (but `skip`): products stay unique.

    A symbolic dim set to a large prime cannot be mistaken for a product of the
    static dims, so runs of dims pair exactly when they pair symbolically.
    `shift` picks another assignment (to check an equality twice).
    """
    names = sorted({s for e in exprs for s in e.free_symbols} - skip, key=str)
    primes = _primes(len(names) + shift)[shift:]
    return {s: sympy.Integer(p) for s, p in zip(names, primes, strict=True)}


def concrete(expr: sympy.Expr, env: dict) -> int | None:
    """Integer value of `expr` under `env` (None if it is not an integer)."""
    value = expr.subs(env) if expr.free_symbols else expr
    if not value.is_number:
        return None
    value = sympy.nsimplify(value)
    return int(value) if value.is_Integer else None
