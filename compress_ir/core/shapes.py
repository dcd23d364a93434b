"""Concrete input shapes for models with symbolic dims (batch, sequence, height, width).

Real exports leave dims symbolic (`batch`, `sequence`, `height`, or unnamed). The
numeric check, the MACs in the report, random calibration data and the TVM build
all need one concrete shape per input. `resolve_shapes` picks it, in this order:

1. what the user fixed (`--input-shape NAME=d0,d1,...`, `compress(input_shapes=)`);
2. the shapes of the calibration data (every axis but the sample axis 0);
3. an assumed realistic value per symbolic dim, by its role: batch 1, sequence 128
   (capped by the model's position table), spatial 224, anything else 16.

A symbolic dim is one variable shared by name across inputs (`batch` and
`sequence` of input_ids and attention_mask); an unnamed one belongs to its input
and axis alone. The plan records where every value came from, and the report
shows which dims were assumed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from compress_ir.core.errors import UsageError

Shapes = Mapping[str, Sequence[int]]

# Assumed values per role (documented in the README): one image, a typical sentence,
# an ImageNet-sized image side; "other" is anything we cannot classify.
DEFAULT_DIMS: dict[str, int] = {"batch": 1, "sequence": 128, "spatial": 224, "other": 16}

# Name patterns first (exporters name dims after what they are), position second.
_NAME_ROLES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("batch", re.compile(r"^(n|b|bs)$|batch", re.I)),
    ("sequence", re.compile(r"seq|len|token|time|step|position|past|total", re.I)),
    ("spatial", re.compile(r"^(h|w|y|x)$|height|width|_h$|_w$|^h_|^w_|size", re.I)),
)


@dataclass(frozen=True)
class DimInfo:
    """One symbolic dim: its value, where it came from, its role, where it occurs."""

    value: int
    source: str  # "input-shape" | "calibration" | "assumed"
    role: str
    where: tuple[str, ...]  # "input[axis]" occurrences

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "role": self.role,
                "where": list(self.where)}


@dataclass(frozen=True)
class ShapePlan:
    """Concrete shape per real graph input, and how each symbolic dim was fixed."""

    inputs: dict[str, tuple[int, ...]]
    dims: dict[str, DimInfo] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def assumed(self) -> dict[str, int]:
        return {k: d.value for k, d in self.dims.items() if d.source == "assumed"}

    @property
    def given(self) -> dict[str, tuple[int, ...]]:
        """Input shapes the user or the data fixed (no assumed dim in them)."""
        assumed = {w.partition("[")[0] for d in self.dims.values() if d.source == "assumed"
                   for w in d.where}
        return {k: v for k, v in self.inputs.items() if k not in assumed}

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": {k: list(v) for k, v in self.inputs.items()},
                "dims": {k: d.to_dict() for k, d in self.dims.items()},
                "assumed": self.assumed, "notes": list(self.notes)}

    def describe_assumed(self) -> str:
        """e.g. `batch=1, sequence=128 (assumed)`; empty when nothing was assumed."""
        items = [f"{k}={v}" for k, v in self.assumed.items()]
        return f"{', '.join(items)} (assumed)" if items else ""


def declared_dims(proto: onnx.ModelProto) -> dict[str, list[int | str] | None]:
    """Per real graph input: static ints and symbolic dim keys (None: unknown rank).

    The key of a named dim is its name (shared across inputs); an unnamed or
    non-positive dim gets the key `input[axis]`, which nothing else shares.
    """
    inits = {i.name for i in proto.graph.initializer}
    out: dict[str, list[int | str] | None] = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        if not t.HasField("shape"):
            out[inp.name] = None
            continue
        dims: list[int | str] = []
        for axis, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"{inp.name}[{axis}]")
        out[inp.name] = dims
    return out


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME=d0,d1,...` (also `NAME=d0xd1x...`) -> (name, dims); the name may contain `=`."""
    name, eq, dims = text.rpartition("=")
    if not eq or not name.strip():
        raise UsageError(f"--input-shape {text!r}: expected NAME=d0,d1,... e.g. x=1,3,640,640")
    parts = [p for p in re.split(r"[,x×]", dims.strip()) if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: dims must be integers, e.g. "
                         f"{name.strip()}=1,3,640,640") from None
    if not values:
        raise UsageError(f"--input-shape {text!r}: no dims given")
    return name.strip(), values


def _role(key: str, dims: list[int | str], axis: int, dtype: int) -> str:
    """What a symbolic dim stands for: its name, else its position in the input."""
    if "[" not in key:
        for role, pattern in _NAME_ROLES:
            if pattern.search(key):
                return role
    rank = len(dims)
    floating = dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                         onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    if axis == 0 and rank > 1:
        return "batch"
    if rank == 4 and floating:  # images: NCHW, or NHWC when the last dim is the small one
        nhwc = isinstance(dims[3], int) and dims[3] <= 4 and not (
            isinstance(dims[1], int) and dims[1] <= 4)
        return "spatial" if axis in ((1, 2) if nhwc else (2, 3)) else "other"
    if rank in (3, 5) and floating and axis >= 2 and isinstance(dims[1], int):
        return "spatial" if rank == 5 else "sequence"  # N,C,L signals / N,C,D,H,W volumes
    if rank in (1, 2, 3) and axis == rank - 1 and not floating:
        return "sequence"  # token ids, masks, positions
    if rank == 3 and floating and axis == 1:
        return "sequence"  # N,L,hidden
    return "other"


def _input_dtypes(proto: onnx.ModelProto) -> dict[str, int]:
    return {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}


def position_table_rows(proto: onnx.ModelProto) -> int | None:
    """Rows of the smallest 2-D table gathered with computed indices (position embeddings).

    A sequence longer than a BERT/GPT position table cannot run, so an assumed
    sequence length is capped by it. Tables indexed straight from a graph input
    (word or token-type embeddings) bound the ids, not the length.
    """
    inputs = {i.name for i in proto.graph.input}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    tables = {i.name: list(i.dims) for i in proto.graph.initializer if i.data_type in floats}
    shapes = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:  # placeholder weights: ConstantOfShape(W__SHAPE) -> W
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            dims = onnx.numpy_helper.to_array(shapes[node.input[0]])
            tables[node.output[0]] = [int(v) for v in np.atleast_1d(dims)]
    passthrough = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"}
    producers = {o: n for n in proto.graph.node for o in n.output}

    def from_input(name: str) -> bool:
        seen = 0
        while name not in inputs and seen < 8:
            node = producers.get(name)
            if node is None or node.op_type not in passthrough:
                return False
            name, seen = node.input[0], seen + 1
        return name in inputs

    rows = [tables[n.input[0]][0] for n in proto.graph.node
            if n.op_type == "Gather" and n.input[0] in tables and len(tables[n.input[0]]) == 2
            and not any(a.name == "axis" and a.i != 0 for a in n.attribute)
            and n.input[1] not in shapes and not from_input(n.input[1])]
    return min(rows) if rows else None


def _check_given(name: str, dims: list[int | str] | None, shape: tuple[int, ...]) -> None:
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {name}: dims must be positive, got {list(shape)}")
    if dims is None:
        return
    if len(shape) != len(dims):
        raise UsageError(f"--input-shape {name}: the input has rank {len(dims)} "
                         f"(dims {dims}), got {len(shape)} dims {list(shape)}")
    for axis, (d, v) in enumerate(zip(dims, shape, strict=True)):
        if isinstance(d, int) and d != v:
            raise UsageError(f"--input-shape {name}: dim {axis} is fixed to {d} in the model, "
                             f"got {v} (dims {dims})")


def resolve_shapes(
    proto: onnx.ModelProto,
    input_shapes: Shapes | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
) -> ShapePlan:
    """One concrete shape per real graph input: user shapes, then data, then assumptions."""
    declared = declared_dims(proto)
    dtypes = _input_dtypes(proto)
    given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"--input-shape {unknown[0]}: the model has no input {unknown[0]!r} "
                         f"(inputs: {', '.join(declared) or 'none'})")
    bound: dict[str, tuple[int, str, str]] = {}  # key -> (value, source, first place)

    def bind(key: str, value: int, source: str, where: str) -> None:
        if key in bound and bound[key][0] != value:
            old_value, old_source, old_where = bound[key]
            raise UsageError(
                f"{where.partition('[')[0]}: dim {key!r} is {value} here ({source}) but "
                f"{old_value} at {old_where} ({old_source}); a named dim has one value")
        bound.setdefault(key, (value, source, where))

    for name, shape in given.items():
        _check_given(name, declared[name], shape)
        for axis, d in enumerate(declared[name] or []):
            if isinstance(d, str):
                bind(d, shape[axis], "input-shape", f"{name}[{axis}]")
    for name, arr in (calibration or {}).items():
        dims = declared.get(name)
        if dims is None or name in given and declared[name] is None:
            continue
        for axis, d in enumerate(dims):
            if axis == 0 or not isinstance(d, str) or axis >= np.ndim(arr):
                continue  # axis 0 of calibration data counts samples, not the batch
            value = int(np.shape(arr)[axis])
            if d in bound and bound[d][1] == "input-shape" and bound[d][0] != value:
                raise UsageError(f"--input-shape {name}: dim {axis} ({d}) is {bound[d][0]} but "
                                 f"the calibration data has {value}")
            bind(d, value, "calibration", f"{name}[{axis}]")
    roles: dict[str, str] = {}
    where: dict[str, list[str]] = {}
    for name, dims in declared.items():
        if dims is None:
            if name not in given:
                raise UsageError(f"input {name!r} has no declared shape; give it with "
                                 f"--input-shape {name}=d0,d1,...")
            continue
        for axis, d in enumerate(dims):
            if isinstance(d, str):
                roles.setdefault(d, _role(d, dims, axis, dtypes.get(name, 0)))
                where.setdefault(d, []).append(f"{name}[{axis}]")
    notes = []
    cap = position_table_rows(proto)
    for key, role in roles.items():
        if key in bound:
            continue
        value = DEFAULT_DIMS[role]
        if role == "sequence" and cap is not None and cap < value:
            value = cap
            notes.append(f"{key}={cap}: capped by the model's position table ({cap} rows)")
        bound[key] = (value, "assumed", where[key][0])
    inputs = {}
    for name, dims in declared.items():
        if name in given:
            inputs[name] = given[name]
        else:
            inputs[name] = tuple(d if isinstance(d, int) else bound[d][0] for d in dims or ())
    infos = {key: DimInfo(bound[key][0], bound[key][1], role, tuple(where[key]))
             for key, role in roles.items()}
    return ShapePlan(inputs, infos, tuple(notes))


def with_input_shapes(proto: onnx.ModelProto, shapes: Shapes) -> onnx.ModelProto:
    """A copy whose graph inputs have the given static dims; outputs and value_info unset.

    Shape inference then works from these dims; the declared output shapes, which
    name the symbolic dims, would otherwise contradict the concrete ones.
    """
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    for inp in work.graph.input:
        if inp.name not in shapes:
            continue
        t = inp.type.tensor_type
        t.ClearField("shape")
        for v in shapes[inp.name]:
            t.shape.dim.add().dim_value = int(v)
    del work.graph.value_info[:]
    for out in work.graph.output:
        t = out.type.tensor_type
        if t.HasField("shape"):
            rank = len(t.shape.dim)
            t.ClearField("shape")
            for axis in range(rank):
                t.shape.dim.add().dim_param = f"__out_{out.name}_{axis}"
    return work
