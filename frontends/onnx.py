"""ONNX frontend: read a model safely, normalise it, and write outputs atomically.

Loading checks everything a transform would trip over later (truncated files,
external data outside the model's folder, dangling inputs, cycles, unknown ops,
inconsistent shapes) and reports it as one line naming the file and the node.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from compress_ir.core.errors import ModelLoadError
from compress_ir.core.files import write_atomic
from compress_ir.core.model import Model, ensure_node_names, infer_proto_shapes
from compress_ir.frontends.foreign import foreign_model_error
from compress_ir.frontends.sparse_storage import (
    densify_sparse_initializers,
    to_sparse_initializers,
)

_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _fail(source: str, message: str) -> ModelLoadError:
    return ModelLoadError(f"{source}: {message}")


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise _fail(str(path), "no such file")
    proto = onnx.ModelProto()
    try:
        data = path.read_bytes()
        proto.ParseFromString(data)
    except (DecodeError, OSError) as exc:
        raise _fail(str(path), f"not a readable ONNX model ({type(exc).__name__})") from None
    if not proto.HasField("graph") or not data:
        raise _fail(str(path), "not an ONNX model (no graph); truncated or wrong file?")
    return proto


def _load_external(proto: onnx.ModelProto, base: Path, source: str) -> None:
    """Load external tensors, refusing locations that escape the model's folder."""
    root = base.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise _fail(source, f"tensor {tensor.name!r}: external data {location!r} "
                        "lies outside the model's folder")
        if not target.is_file():
            raise _fail(source, f"tensor {tensor.name!r}: external data file {location!r} missing")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(root))
    except (OSError, ValueError) as exc:
        raise _fail(source, f"cannot read external data: {exc}") from None


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """`Constant` nodes become initializers so every weight is found in one place."""
    kept = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        key = next((k for k in _CONSTANT_ATTRS if k in attrs), None)
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or key is None:
            kept.append(node)
            continue
        value = onnx.helper.get_attribute_value(attrs[key])
        if key == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
        else:
            tensor = numpy_helper.from_array(
                np.asarray(value, dtype="float32" if "float" in key else "int64")
            )
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(kept)


# Ops never folded: random ones, and ConstantOfShape (it stands for a whole weight
# in placeholder models; folding would only bloat the file).
_NO_FOLD = {"ConstantOfShape", "RandomNormal", "RandomUniform", "RandomNormalLike",
            "RandomUniformLike", "Multinomial", "Bernoulli"}


def _fold_constants(proto: onnx.ModelProto, source: str) -> None:
    """Evaluate nodes whose inputs are all constants (e.g. Unsqueeze of a BN scale).

    Weights reached through such nodes then become plain initializers that the
    channel analysis can slice. Runs after toposort, so one sweep is enough.
    """
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    consts = {i.name: i for i in graph.initializer}
    static = _static_shapes(proto)
    kept = []
    for node in graph.node:
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx"):
            dims = static.get(node.input[0])
            if dims is not None:  # the shape of a statically shaped tensor is a constant
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
                value = np.asarray(dims[slice(start, end)], dtype=np.int64)
                consts[node.output[0]] = numpy_helper.from_array(value, node.output[0])
                graph.initializer.append(consts[node.output[0]])
                continue
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NO_FOLD
            and node.input
            and all(name in consts for name in node.input if name)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for a in node.attribute)
        )
        if not foldable:
            kept.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node], "fold",
                [], [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                     for o in node.output if o],
                [consts[n] for n in node.input if n],
            ),
            opset_imports=list(proto.opset_import),
        )
        try:
            values = ReferenceEvaluator(single).run(None, {})
        except Exception as exc:  # noqa: BLE001 - any evaluator failure is a model error
            label = node.name or node.op_type
            raise _fail(source, f"node {label!r} ({node.op_type}) fails on its constant "
                        f"inputs: {exc}") from None
        for name, value in zip([o for o in node.output if o], values, strict=True):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            consts[name] = tensor
    del graph.node[:]
    graph.node.extend(kept)


def _static_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Fully static tensor shapes known from (non-strict) shape inference."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    try:
        inferred = infer_proto_shapes(work)
    except Exception:  # noqa: BLE001 - the strict check later reports the real problem
        return {}
    out = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = [d.dim_value for d in t.shape.dim]
    return out


def _toposort(graph: onnx.GraphProto, source: str) -> None:
    """Sort nodes topologically; name a dangling input or a cycle if there is one."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    producers: dict[str, int] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producers[out] = idx
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = {i: [] for i in range(len(graph.node))}
    for idx, node in enumerate(graph.node):
        for name in node.input:
            if name in available:
                continue
            if name not in producers:
                label = node.name or f"#{idx}"
                raise _fail(source, f"node {label!r} ({node.op_type}) reads {name!r}, which no "
                            "node, initializer or graph input provides")
            waiting[idx] += 1
            users[producers[name]].append(idx)
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    order = []
    while ready:
        idx = ready.popleft()
        order.append(idx)
        for user in users[idx]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(order) != len(graph.node):
        stuck = [graph.node[i].name or f"#{i}" for i, w in enumerate(waiting) if w > 0]
        raise _fail(source, f"the graph has a cycle through nodes {stuck[:5]}")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _check_ops(proto: onnx.ModelProto, source: str) -> None:
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    for idx, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        if domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type, opsets.get("", 1)):
            label = node.name or f"#{idx}"
            raise _fail(source, f"node {label!r}: unknown op {node.op_type!r} "
                        f"in opset {opsets.get('', 1)}")


def normalise(proto: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Validate and normalise a proto (a copy); return it with inferred shapes."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    densify_sparse_initializers(work.graph, source)  # weights are read from initializers
    _constants_to_initializers(work.graph)
    _toposort(work.graph, source)
    _check_ops(work, source)
    _fold_constants(work, source)
    try:
        onnx.checker.check_model(work)
        work = infer_proto_shapes(work, strict=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise _fail(source, f"invalid model: {' '.join(lines[:2])}") from None
    return work


def load_onnx(model: str | os.PathLike | onnx.ModelProto) -> Model:
    """Load a path or ModelProto into the IR; never modifies the file or the proto."""
    if isinstance(model, onnx.ModelProto):
        source = "<ModelProto>"
        proto = model
    else:
        path = Path(model)
        source = str(path)
        foreign = foreign_model_error(path)
        if foreign is not None:
            raise foreign
        proto = _read(path)
        _load_external(proto, path.parent, source)
    work = normalise(proto, source)
    ir = Model.from_proto(work, source)
    ensure_node_names(ir.graph)
    return ir


def save_onnx(
    model: Model | onnx.ModelProto, path: str | os.PathLike, sparse: bool = False,
    min_sparsity: float = 0.5,
) -> int:
    """Write atomically (temp file + rename in the same folder); return the size in bytes.

    With `sparse`, initializers at least `min_sparsity` sparse (and smaller so) are
    stored as COO `sparse_initializer`s; the given model or proto is not modified.
    """
    proto = model.to_proto() if isinstance(model, Model) else model
    if sparse:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        to_sparse_initializers(copy, min_sparsity)
        proto = copy
    return write_atomic(path, proto.SerializeToString())
