"""Weighted ops: one table entry per op that multiplies its input by a constant weight.

Why one table: the channel analysis (which axes carry the channels in and out, how a
grouped op ties them), the slicing, the MAC count, the budget's cost model, the weight
matrix view and the criteria all need the same geometry of Conv, Gemm, MatMul, ... Each
used to keep its own copy (five files to touch per op). Here an entry is plain data and
numpy, so `core.metrics` and `formats.view` can read it; the generic flow rule
(`passes.analysis.channel_rules.weighted`) and everything above read it too.

Conventions: input 0 is the data, input 1 the constant weight; `data_axis` is the axis
of input 0 the weight sums over, `in_axis`/`out_axis` the weight axes indexed by the
input and output channels, `y_axis` the axis of output 0 carrying the output channels.
Ranks passed in may be None when shape inference does not know them; an op whose
geometry needs them must say so with `needs_rank` (the analysis then blocks instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

Attrs = Mapping[str, Any]
Shape = tuple[int, ...] | None


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A proto node's attributes as a dict (strings decoded)."""
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _prod(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


@dataclass(frozen=True)
class WeightedOp:
    """The geometry of one weighted op (see the module docstring for the axis names).

    `grouped`: the op has a `group` attribute, and the weight's `in_axis` then holds
    per-group local indices (Conv's C_in / group).
    `bias`: the input holding a per-output-channel bias (its last axis), if any.
    `macs(attrs, input shapes, output shape)` with unknown dims already counted as 1;
    `reads`: the operands it reads (-1 the output), to tell which counts rest on
    unknown dims. `driver`: the tensor (-1 output, else input index) whose channels,
    times the weight's other sliced axes, size the MACs (the budget's cost model).
    `layer`: the weight-layer kind ("conv", "fc") for sparsify/share-weights/the size
    report, with `layer_ranks` the weight ranks that have a matrix view; None: not one.
    `refuse(attrs, weight rank)`: a reason this node is outside what the entry
    describes (the analysis blocks it with that reason), else None.
    """

    data_axis: Callable[[Attrs, int | None], int]
    in_axis: Callable[[Attrs, int], int]
    out_axis: Callable[[Attrs, int], int]
    y_axis: Callable[[Attrs, int | None], int]
    macs: Callable[[Attrs, Sequence[Shape], Shape], int]
    reads: tuple[int, ...]
    driver: int = -1
    grouped: bool = False
    bias: int | None = None
    layer: str | None = None
    layer_ranks: tuple[int, int] = (2, 2)
    weight_ranks: tuple[int, int] = (2, 2)
    needs_rank: bool = False
    refuse: Callable[[Attrs, int], str | None] = lambda attrs, rank: None

    def groups(self, attrs: Attrs) -> int:
        return int(attrs.get("group", 1)) if self.grouped else 1

    def driver_axis(self, attrs: Attrs, weight_rank: int) -> int:
        """The weight axis indexed by the driver's channels."""
        return (self.out_axis if self.driver < 0 else self.in_axis)(attrs, weight_rank)


# -- MAC counts ----------------------------------------------------------------------------
def _conv_macs(attrs: Attrs, ins: Sequence[Shape], y: Shape) -> int:
    w = ins[1]
    return _prod(y) * _prod(w[1:]) if w and y else 0


def _conv_transpose_macs(attrs: Attrs, ins: Sequence[Shape], y: Shape) -> int:
    x, w = ins[0], ins[1]
    return _prod(x) * _prod(w[1:]) if w and x else 0


def _gemm_macs(attrs: Attrs, ins: Sequence[Shape], y: Shape) -> int:
    a, b = ins[0], ins[1]
    if not y:
        return 0
    k = (a[0] if int(attrs.get("transA", 0)) else a[-1]) if a else 1
    if b and len(b) == 2:  # a symbolic K in A (counted as 1, or A's rank unknown) is B's
        k = max(k, b[1] if int(attrs.get("transB", 0)) else b[0])
    return _prod(y) * k


def _matmul_macs(attrs: Attrs, ins: Sequence[Shape], y: Shape) -> int:
    a, b = ins[0], ins[1]
    if not y:
        return 0
    k = a[-1] if a else 1
    if b and len(b) >= 2:  # a symbolic K in A (or A's rank unknown) is B's
        k = max(k, b[-2])
    return _prod(y) * k


# -- Einsum as a linear layer ----------------------------------------------------------------
_EINSUM = re.compile(r"^(\.\.\.)?([a-zA-Z]*),([a-zA-Z]{2})->(\.\.\.)?([a-zA-Z]*)$")


def einsum_linear(equation: str) -> tuple[int, int] | None:
    """(in_axis, out_axis) of the weight when `equation` is x[..., k] . W[k, n] -> y[..., n]
    (either order of W's letters), else None: the linear layers Keras' EinsumDense and
    `torch.einsum` exports write; anything else mixes more than a feature axis."""
    m = _EINSUM.match(equation.replace(" ", ""))
    if m is None or bool(m.group(1)) != bool(m.group(4)):
        return None
    data, weight, out = m.group(2), m.group(3), m.group(5)
    if not data or len(set(data)) != len(data):
        return None
    k = data[-1]
    if k not in weight or weight[0] == weight[1]:
        return None
    n = weight[1 - weight.index(k)]
    if n in data or out != data[:-1] + n:
        return None
    return weight.index(k), weight.index(n)


def _einsum_axis(which: int) -> Callable[[Attrs, int], int]:
    def axis(attrs: Attrs, rank: int) -> int:
        found = einsum_linear(str(attrs.get("equation", "")))
        if found is None:
            raise ValueError(f"Einsum equation {attrs.get('equation')!r} is not a linear layer")
        return found[which]

    return axis


def _einsum_refuse(attrs: Attrs, rank: int) -> str | None:
    if einsum_linear(str(attrs.get("equation", ""))) is None:
        return (f"equation {attrs.get('equation')!r} is not a linear layer "
                "(x[..., k] . W[k, n] -> y[..., n])")
    return None


def _einsum_macs(attrs: Attrs, ins: Sequence[Shape], y: Shape) -> int:
    found = einsum_linear(str(attrs.get("equation", "")))
    w = ins[1]
    return _prod(y) * int(w[found[0]]) if found and w and y else 0


def _last(attrs: Attrs, rank: int | None) -> int:
    if rank is None:
        raise ValueError("rank unknown")
    return rank - 1


def _gemm_n(attrs: Attrs, rank: int) -> int:
    return 0 if int(attrs.get("transB", 0)) else 1


WEIGHTED_OPS: dict[str, WeightedOp] = {
    "Conv": WeightedOp(
        data_axis=lambda attrs, rank: 1, in_axis=lambda attrs, rank: 1,
        out_axis=lambda attrs, rank: 0, y_axis=lambda attrs, rank: 1,
        macs=_conv_macs, reads=(1, -1), grouped=True, bias=2,
        layer="conv", layer_ranks=(3, 8), weight_ranks=(3, 8)),
    "ConvTranspose": WeightedOp(
        data_axis=lambda attrs, rank: 1, in_axis=lambda attrs, rank: 0,
        out_axis=lambda attrs, rank: 1, y_axis=lambda attrs, rank: 1,
        macs=_conv_transpose_macs, reads=(0, 1), driver=0, bias=2, weight_ranks=(3, 8),
        refuse=lambda attrs, rank: (None if int(attrs.get("group", 1)) == 1
                                    else "grouped ConvTranspose is not supported yet")),
    "Gemm": WeightedOp(
        data_axis=lambda attrs, rank: 0 if int(attrs.get("transA", 0)) else 1,
        in_axis=lambda attrs, rank: 1 - _gemm_n(attrs, rank), out_axis=_gemm_n,
        y_axis=lambda attrs, rank: 1, macs=_gemm_macs, reads=(0, -1), bias=2, layer="fc"),
    "MatMul": WeightedOp(
        data_axis=_last, in_axis=lambda attrs, rank: rank - 2,
        out_axis=lambda attrs, rank: rank - 1, y_axis=_last,
        macs=_matmul_macs, reads=(0, -1), layer="fc", weight_ranks=(2, 8), needs_rank=True),
    "Einsum": WeightedOp(
        data_axis=_last, in_axis=_einsum_axis(0), out_axis=_einsum_axis(1), y_axis=_last,
        macs=_einsum_macs, reads=(1, -1), needs_rank=True, refuse=_einsum_refuse),
}


def count_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """MACs of one weighted node at static `shapes` (0 for any other op)."""
    spec = WEIGHTED_OPS.get(node.op_type)
    if spec is None:
        return 0
    ins = [shapes.get(name) if name else None for name in node.input]
    ins += [None] * (2 - len(ins))
    return int(spec.macs(node_attrs(node), ins, shapes.get(node.output[0])))
