"""Realistic random inputs: what the numeric check and `--calib random` feed a model.

Small random integers break real models: token ids 0..3 index a 2-row token-type
table out of bounds, and a random attention mask zeroes whole rows. So each
graph input is classified by how the model uses it, following it through
Cast/Unsqueeze/Squeeze/Reshape/Flatten/Identity/Expand:

* ids: integers that index a table (the indices of a Gather on a tensor with a
  static size on the gather axis, e.g. embeddings; or OneHot's indices, bound
  by its constant depth) are drawn uniformly from the table's rows, never negative;
* mask: a name containing "mask", a bool input, or one used as Where's condition
  or as `1 - x`, gets 0/1 per row as a padded batch has it: ones, then zeros on a
  random tail (at least one of each when the row is longer than 1);
* positions: an integer input named like position ids gets 0..S-1 (bounded
  by its table);
* float inputs are standard normal; other integers are drawn from 0..3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

_PASSTHROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand"}
SMALL_INT_HIGH = 4  # integers the model does not index with: 0..3


@dataclass(frozen=True)
class InputKind:
    """How an input is used, and so how to draw it."""

    kind: str  # "float" | "ids" | "mask" | "positions" | "int"
    high: int | None = None  # ids/positions: exclusive upper bound
    why: str = ""

    def describe(self) -> str:
        values = {"float": "normal floats", "mask": "0/1 mask (mostly ones)",
                  "int": f"integers 0..{SMALL_INT_HIGH - 1}"}.get(self.kind)
        if values is None:
            values = f"{self.kind} 0..{self.high - 1}" if self.high else self.kind
        return values + (f" ({self.why})" if self.why else "")


def _static_dims(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    dims: dict[str, list[int | None]] = {}
    for vi in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                             else None for d in t.shape.dim]
    for init in proto.graph.initializer:
        dims[init.name] = list(init.dims)
    by_name = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:  # weight placeholders: ConstantOfShape(W__SHAPE) -> W
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in by_name:
            shape = onnx.numpy_helper.to_array(by_name[node.input[0]])
            dims[node.output[0]] = [int(v) for v in np.atleast_1d(shape)]
    return dims


def _constant(proto: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in proto.graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    return None


def _uses(proto: onnx.ModelProto, name: str) -> list[tuple[onnx.NodeProto, int]]:
    """(consumer, input index) of `name` and of everything it passes through unchanged."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in proto.graph.node:
        for idx, inp in enumerate(node.input):
            consumers.setdefault(inp, []).append((node, idx))
    out, todo, seen = [], [name], {name}
    while todo:
        for node, idx in consumers.get(todo.pop(), []):
            if node.op_type in _PASSTHROUGH and idx == 0:
                for o in node.output:
                    if o not in seen:
                        seen.add(o)
                        todo.append(o)
            else:
                out.append((node, idx))
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _index_bound(proto: onnx.ModelProto, uses: list[tuple[onnx.NodeProto, int]],
                 dims: dict[str, list[int | None]]) -> tuple[int, str] | None:
    """The smallest table this input indexes, as (rows, why)."""
    bounds = []
    for node, idx in uses:
        if node.op_type == "Gather" and idx == 1:
            data = dims.get(node.input[0])
            axis = _attr(node, "axis", 0)
            if data and -len(data) <= axis < len(data) and data[axis]:
                bounds.append((int(data[axis]), f"Gather {node.name or node.input[0]!r} "
                               f"on {node.input[0]!r}"))
        elif node.op_type == "OneHot" and idx == 0:
            depth = _constant(proto, node.input[1])
            if depth is not None and depth.size == 1:
                bounds.append((int(depth.reshape(())), f"OneHot {node.name!r} depth"))
    return min(bounds) if bounds else None


def _is_mask(name: str, elem: int, uses: list[tuple[onnx.NodeProto, int]],
             proto: onnx.ModelProto) -> bool:
    if "mask" in name.lower() or elem == onnx.TensorProto.BOOL:
        return True
    for node, idx in uses:
        if node.op_type == "Where" and idx == 0:
            return True
        if node.op_type == "Sub" and idx == 1:  # 1 - mask, the additive attention mask
            one = _constant(proto, node.input[0])
            if one is not None and one.size == 1 and float(one.reshape(())) == 1.0:
                return True
    return False


def input_kinds(proto: onnx.ModelProto) -> dict[str, InputKind]:
    """How each real graph input is used (see the module docstring)."""
    inits = {i.name for i in proto.graph.initializer}
    dims = _static_dims(proto)
    kinds = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        elem = inp.type.tensor_type.elem_type
        np_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else None
        if np_dtype is not None and np.issubdtype(np_dtype, np.floating):
            kinds[inp.name] = InputKind("float")
            continue
        uses = _uses(proto, inp.name)
        bound = _index_bound(proto, uses, dims)
        lower = inp.name.lower()
        if _is_mask(inp.name, elem, uses, proto) and bound is None:
            kinds[inp.name] = InputKind("mask")
        elif "position" in lower or "pos_id" in lower:
            kinds[inp.name] = InputKind("positions", bound[0] if bound else None,
                                        bound[1] if bound else "")
        elif bound is not None:
            kinds[inp.name] = InputKind("ids", bound[0], bound[1])
        else:
            kinds[inp.name] = InputKind("int")
    return kinds


def _mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if not shape or shape[-1] < 2:
        return np.ones(shape, np.int64)
    length = shape[-1]
    rows = int(np.prod(shape[:-1]))
    valid = rng.integers((length + 1) // 2, length, rows)  # in [ceil(L/2), L-1]
    mask = (np.arange(length)[None, :] < valid[:, None]).astype(np.int64)
    return mask.reshape(shape)


def draw(kind: InputKind, shape: Sequence[int], dtype: np.dtype,
         rng: np.random.Generator) -> np.ndarray:
    """Seeded values of one input of the given kind, shape and dtype."""
    shape = tuple(int(d) for d in shape)
    if kind.kind == "float" or np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if kind.kind == "mask":
        return _mask(rng, shape).astype(dtype)
    if kind.kind == "positions" and shape:
        pos = np.broadcast_to(np.arange(shape[-1]), shape)
        return (pos % kind.high if kind.high else pos).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    high = kind.high if kind.kind in ("ids", "positions") and kind.high else SMALL_INT_HIGH
    return rng.integers(0, high, shape).astype(dtype)


def realistic_inputs(
    proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], seed: int = 0,
    kinds: Mapping[str, InputKind] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded feeds of the given shapes for every real graph input, drawn by kind."""
    rng = np.random.default_rng(seed)
    kinds = input_kinds(proto) if kinds is None else kinds
    elems = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    feeds = {}
    for name, shape in shapes.items():
        elem = elems.get(name) or onnx.TensorProto.FLOAT
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        feeds[name] = draw(kinds.get(name, InputKind("float")), shape, dtype, rng)
    return feeds
