"""Weight layers: which nodes have one, their matrix view, what they compute, their inputs.

Why one module: `sparsify`, `share-weights`, the size report, `reconstruct`, the
calibration statistics and the merge criterion all act on "a layer's weight as an
(out, reduction) matrix". Written once each, they disagreed on which nodes count
(rank and dtype checks, constant data inputs) and on Gemm's alpha/beta. Here:

- `WEIGHT_OPS` + `weight_of`: THE rule. A weight layer is a node whose op has an entry
  (and a matrix view in `compress_ir.formats.view`), whose input 1 is a floating
  constant of a rank the view accepts, and whose input 0 is not a constant (a node of
  constants only is folding material, not a layer). `weight_layers(model)` lists them
  on the graph, `initializer_layers(proto)` on a proto (first use of each initializer).
- `WeightLayer.matrix()` / `from_matrix()`: the view and its inverse for that node.
- `output_scales` / `linear` / `write_linear`: what the layer computes, y = x W^T + b,
  with Gemm's alpha and beta folded in, and the write-back of a refit (W, b).
- `RowSampler`: rows of the layer's input matrix at random positions (im2col patches
  for a Conv, feature rows for Gemm/MatMul), the same positions for several tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from compress_ir.core.model import Model
from compress_ir.core.ops import WEIGHTED_OPS
from compress_ir.formats.view import has_view, unview, view_shape, weight_view

# op -> layer kind, from the op table (`compress_ir.core.ops`, `layer`); the kind picks
# defaults that differ between convolutions and fully connected layers (index bits of the
# size report, share-weights bits). The matrix view of each op is `formats.view`.
WEIGHT_OPS: dict[str, str] = {op: spec.layer for op, spec in WEIGHTED_OPS.items() if spec.layer}


def attrs(node: gs.Node | onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as a dict, for graphsurgeon and proto nodes alike."""
    if isinstance(node, gs.Node):
        return node.attrs
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def op_of(node: gs.Node | onnx.NodeProto) -> str:
    return node.op if isinstance(node, gs.Node) else node.op_type


def trans_b(node: gs.Node | onnx.NodeProto) -> bool:
    """Gemm's transB (False for every other op): which way its B maps to the view."""
    return op_of(node) == "Gemm" and bool(int(attrs(node).get("transB", 0)))


def is_weight(op: str, weight: np.ndarray, data_is_constant: bool) -> bool:
    """The rule, on plain data: `weight` (input 1 of an `op` node) makes it a weight layer."""
    return (op in WEIGHT_OPS and not data_is_constant
            and np.issubdtype(weight.dtype, np.floating) and has_view(op, weight.ndim))


def weight_of(node: gs.Node) -> gs.Constant | None:
    """The node's constant weight (input 1) if the node is a weight layer, else None."""
    if node.op not in WEIGHT_OPS or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if not isinstance(w, gs.Constant):
        return None
    data_const = isinstance(node.inputs[0], gs.Constant)
    return w if is_weight(node.op, np.asarray(w.values), data_const) else None


@dataclass
class WeightLayer:
    """One weight layer of a graph: the node and its weight constant."""

    node: gs.Node
    weight: gs.Constant

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def kind(self) -> str:
        return WEIGHT_OPS[self.node.op]

    @property
    def groups(self) -> int:
        return int(self.node.attrs.get("group", 1)) if self.node.op == "Conv" else 1

    def matrix(self) -> np.ndarray:
        """The weight as its (out, reduction) matrix."""
        return weight_view(self.node.op, np.asarray(self.weight.values), trans_b(self.node))

    def shape(self) -> tuple[int, int]:
        """The (out, reduction) shape, without touching the data."""
        return view_shape(self.node.op, tuple(self.weight.values.shape), trans_b(self.node))

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """An (out, reduction) matrix back in the stored weight's layout."""
        return unview(self.node.op, matrix, tuple(self.weight.values.shape), trans_b(self.node))


def weight_layers(model: Model) -> list[WeightLayer]:
    """Every weight layer of the graph, in graph order (one entry per node)."""
    return [WeightLayer(n, w) for n in model.graph.nodes if (w := weight_of(n)) is not None]


@dataclass(frozen=True)
class InitializerLayer:
    """A weight layer of a proto whose weight is an initializer (first node using it)."""

    node: onnx.NodeProto
    weight: str
    array: np.ndarray

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def kind(self) -> str:
        return WEIGHT_OPS[self.node.op_type]

    def matrix(self) -> np.ndarray:
        return weight_view(self.op, self.array, trans_b(self.node))


def initializer_layers(proto: onnx.ModelProto) -> list[InitializerLayer]:
    """Weight layers of `proto` by the same rule; a shared initializer is listed once."""
    inits = {i.name: i for i in proto.graph.initializer}
    seen: set[str] = set()
    layers = []
    for node in proto.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits or name in seen:
            continue
        w = numpy_helper.to_array(inits[name])
        if not is_weight(node.op_type, w, node.input[0] in inits):
            continue
        seen.add(name)
        layers.append(InitializerLayer(node, name, w))
    return layers


# -- what the layer computes ---------------------------------------------------------------
def output_scales(node: gs.Node | onnx.NodeProto) -> tuple[float, float]:
    """(weight scale, bias scale) the op applies: Gemm's (alpha, beta), else (1, 1)."""
    if op_of(node) != "Gemm":
        return 1.0, 1.0
    a = attrs(node)
    return float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))


def linear(
    node: gs.Node | onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(W [O, K], b [O] or None) with y = x W^T + b what the node computes (pre-activation).

    `weight` is the node's input 1 and `bias` its input 2 (None if absent); alpha and
    beta are folded in. The bias is None when it is not one value per output (or a
    scalar): such a Gemm C is not a per-output bias.
    """
    alpha, beta = output_scales(node)
    w = weight_view(op_of(node), weight, trans_b(node))
    if alpha != 1.0:
        w = w * alpha
    if bias is None or op_of(node) == "MatMul":
        return w, None
    b = np.asarray(bias)
    if b.ndim > 1 or b.size not in (1, w.shape[0]):
        return w, None
    b = np.broadcast_to(b.reshape(-1) * beta if beta != 1.0 else b.reshape(-1), (w.shape[0],))
    return w, b


def write_linear(model: Model, node: gs.Node, weight: np.ndarray, bias: np.ndarray) -> None:
    """Store a fitted [O, K] weight and [O] bias into the node (inverse of `linear`).

    Alpha and beta are divided back out (beta 0 or a missing C becomes beta = 1 with a
    new C); a MatMul gets an Add of the bias after it.
    """
    old = np.asarray(node.inputs[1].values)
    dtype = old.dtype
    alpha = output_scales(node)[0] or 1.0
    new_w = unview(node.op, weight / alpha if alpha != 1.0 else weight, old.shape, trans_b(node))
    node.inputs[1] = gs.Constant(f"{node.name}__w_reconstructed", new_w.astype(dtype))
    bias = bias.astype(dtype)
    if node.op in ("Conv", "Gemm"):
        if node.op == "Gemm":
            beta = output_scales(node)[1]
            if beta == 0.0 or len(node.inputs) < 3 or not node.inputs[2].name:
                node.attrs["beta"] = beta = 1.0
            bias = (bias / beta).astype(dtype)
        const = gs.Constant(f"{node.name}__b_reconstructed", bias)
        if len(node.inputs) > 2:
            node.inputs[2] = const
        else:
            node.inputs.append(const)
        return
    out = node.outputs[0]
    mid = gs.Variable(f"{out.name}__unbiased", dtype=out.dtype)
    node.outputs[0] = mid
    add = gs.Node("Add", f"{node.name}__bias", inputs=[
        mid, gs.Constant(f"{node.name}__b_reconstructed", bias)], outputs=[out])
    model.graph.nodes.append(add)


# -- input rows ------------------------------------------------------------------------------
Positions = Any  # (sample, row, column) arrays for a Conv; row indices otherwise


def bias_add(node: gs.Node) -> tuple[gs.Node, int] | None:
    """The `Add` of a constant bias vector right after a MatMul, as exporters write Linear.

    (the Add, the index of its constant input) when the MatMul's output feeds only that
    Add, whose other input is a constant of one value per output feature; else None.
    """
    if node.op != "MatMul" or len(node.outputs) != 1 or weight_of(node) is None:
        return None
    out = node.outputs[0]
    consumers = list(out.outputs)
    if len(consumers) != 1 or consumers[0].op != "Add" or len(consumers[0].inputs) != 2:
        return None
    add = consumers[0]
    index = 1 if add.inputs[0] is out else 0
    if add.inputs[1 - index] is not out or not isinstance(add.inputs[index], gs.Constant):
        return None
    bias = np.asarray(add.inputs[index].values)
    features = WeightLayer(node, node.inputs[1]).shape()[0]
    if bias.ndim != 1 or bias.size != features or not np.issubdtype(bias.dtype, np.floating):
        return None
    return add, index


def residual_add(node: gs.Node) -> tuple[gs.Node, gs.Tensor] | None:
    """(the residual `Add`, its skip input) when the layer's output (after its bias `Add`)
    feeds only an `Add` of two computed tensors; else None (shapes are checked on capture)."""
    found = bias_add(node)
    out = (found[0] if found else node).outputs[0]
    consumers = list(out.outputs)
    if len(consumers) != 1 or consumers[0].op != "Add" or len(consumers[0].inputs) != 2:
        return None
    add = consumers[0]
    skip = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    if skip is out or isinstance(skip, gs.Constant):
        return None
    return add, skip


class RowSampler:
    """Rows of a weight layer's input matrix (the X of y = X W^T) at random positions.

    A Conv's rows are im2col patches at random (sample, row, column) output positions
    (drawn with replacement; 2-D convs, pads or VALID); a Gemm's / MatMul's are the
    feature rows of the input flattened to [-1, K] (Gemm with transA: of its
    transpose), drawn without replacement. `positions` draws, `rows_at` gathers, so
    two models' inputs can be sampled at the same places.
    """

    def __init__(self, node: gs.Node | onnx.NodeProto, weight_shape: tuple[int, ...]) -> None:
        a = attrs(node)
        self.conv = op_of(node) == "Conv"
        self.trans_a = op_of(node) == "Gemm" and bool(int(a.get("transA", 0)))
        self.supported = True
        if self.conv:
            self.kernel = tuple(weight_shape[2:])
            rank = len(self.kernel)
            self.strides = list(a.get("strides", [1] * rank))
            self.dilations = list(a.get("dilations", [1] * rank))
            self.pads = list(a.get("pads", [0] * (2 * rank)))
            self.supported = rank == 2 and str(a.get("auto_pad", "NOTSET")) in (
                "NOTSET", "VALID")

    def output_size(self, x: np.ndarray) -> tuple[int, int]:
        """A Conv's output (height, width) for input `x`."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        pt, pl, pb, pr = self.pads
        oh = (x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1
        return oh, ow

    def _flat(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.trans_a else x).reshape(-1, x.shape[0 if self.trans_a else -1])

    def available(self, x: np.ndarray) -> int:
        """Distinct positions in `x`: output pixels of a Conv, feature rows otherwise."""
        if self.conv:
            oh, ow = self.output_size(x)
            return x.shape[0] * oh * ow
        return self._flat(x).shape[0]

    def positions(self, x: np.ndarray, count: int, rng: np.random.Generator,
                  valid: np.ndarray | None = None) -> Positions:
        """`count` random positions of input `x` (at most all rows for Gemm/MatMul).

        `valid` (Gemm/MatMul without transA): a flat mask of the rows that may be drawn,
        e.g. the real tokens of a padded batch (core/padding.py).
        """
        if not self.conv:
            n = self._flat(x).shape[0]
            if valid is not None and not self.trans_a and valid.size == n:
                pool = np.flatnonzero(valid)
                return rng.choice(pool, min(count, pool.size), replace=False)
            return rng.choice(n, min(count, n), replace=False)
        oh, ow = self.output_size(x)
        n = rng.integers(0, x.shape[0], count)
        i = rng.integers(0, oh, count)
        j = rng.integers(0, ow, count)
        return n, i, j

    def rows_at(self, x: np.ndarray, positions: Positions) -> np.ndarray:
        """The input rows [S, K] of `x` at `positions`."""
        if not self.conv:
            return self._flat(x)[positions]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        pt, pl, pb, pr = self.pads
        n, i, j = positions
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        hh = i[:, None] * sh + np.arange(kh)[None, :] * dh  # [S, kh]
        ww = j[:, None] * sw + np.arange(kw)[None, :] * dw  # [S, kw]
        patches = xp[n[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                     hh[:, None, :, None], ww[:, None, None, :]]
        return patches.reshape(n.size, -1)

    def rows(self, x: np.ndarray, count: int, rng: np.random.Generator,
             valid: np.ndarray | None = None) -> tuple[np.ndarray, Positions]:
        """`count` random input rows of `x` (among `valid` ones) and their positions."""
        positions = self.positions(x, count, rng, valid)
        return self.rows_at(x, positions), positions
