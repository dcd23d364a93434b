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

from compress_ir.core.errors import CompressIRError, ModelLoadError, UnsupportedModelError
from compress_ir.core.files import write_atomic
from compress_ir.core.graph import find_cycle
from compress_ir.core.limits import MAX_FOLD_BYTES, human_bytes
from compress_ir.core.model import Model, ensure_node_names, infer_proto_shapes
from compress_ir.frontends.external_data import all_tensors as _all_tensors
from compress_ir.frontends.external_data import check_declared_sizes, load_external
from compress_ir.frontends.foreign import foreign_model_error
from compress_ir.frontends.sparse_storage import (
    densify_sparse_initializers,
    to_sparse_initializers,
)

_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


_MAX_PROTO_BYTES = 2 * 1024**3  # protobuf's own limit for one message


def _fail(source: str, message: str) -> ModelLoadError:
    return ModelLoadError(f"{source}: {message}")


def _read(path: Path) -> onnx.ModelProto:
    if "\x00" in str(path):
        raise _fail(repr(str(path)), "a path cannot contain a NUL byte")
    if not path.exists():
        raise _fail(str(path), "no such file")
    if not path.is_file():
        raise _fail(str(path), "not a regular file")
    if path.stat().st_size > _MAX_PROTO_BYTES:
        raise _fail(str(path), "larger than 2 GiB; ONNX keeps big weights in external data")
    proto = onnx.ModelProto()
    try:
        data = path.read_bytes()
        proto.ParseFromString(data)
    except (DecodeError, OSError) as exc:
        raise _fail(str(path), f"not a readable ONNX model ({type(exc).__name__})") from None
    if not proto.HasField("graph") or not data:
        raise _fail(str(path), "not an ONNX model (no graph); truncated or wrong file?")
    return proto


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
        _check_fold_size(node, consts, static, source)
        try:
            values = ReferenceEvaluator(single).run(None, {})
        except MemoryError:
            raise _fail(source, f"node {node.name or node.op_type!r} ({node.op_type}): out of "
                        "memory folding its constant inputs") from None
        except Exception as exc:  # noqa: BLE001 - any evaluator failure is a model error
            label = node.name or node.op_type
            raise _fail(source, f"node {label!r} ({node.op_type}) fails on its constant "
                        f"inputs: {exc}") from None
        for name, value in zip([o for o in node.output if o], values, strict=True):
            _check_folded(node, np.asarray(value).nbytes, source)
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            consts[name] = tensor
    del graph.node[:]
    graph.node.extend(kept)


def _check_folded(node: onnx.NodeProto, nbytes: int, source: str) -> None:
    if nbytes > MAX_FOLD_BYTES:
        raise UnsupportedModelError(
            f"{source}: node {node.name or node.op_type!r} ({node.op_type}) would fold into a "
            f"constant of {human_bytes(nbytes)}, over the limit of {human_bytes(MAX_FOLD_BYTES)}"
            " (COMPRESS_IR_MAX_FOLD_BYTES)")


def _const_values(consts: dict[str, onnx.TensorProto], name: str) -> list[int] | None:
    tensor = consts.get(name)
    if tensor is None or np.prod(tensor.dims) > 64:
        return None
    try:
        return [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
    except (ValueError, TypeError, OverflowError):
        return None


def _check_fold_size(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto],
                     static: dict[str, list[int]], source: str) -> None:
    """Refuse, before evaluating, a fold whose output size is known to be over the cap."""
    item = 8
    elements: int | None = None
    shapes = [static.get(o) for o in node.output if o]
    if shapes and all(s is not None for s in shapes):
        elements = max(int(np.prod(s, dtype=object)) for s in shapes)
    in_dims = [list(consts[n].dims) for n in node.input if n in consts]
    if node.op_type == "Expand" and len(node.input) > 1:
        shape = _const_values(consts, node.input[1])
        if shape is not None and in_dims:
            a, b = in_dims[0], shape
            rank = max(len(a), len(b))
            a, b = [1] * (rank - len(a)) + a, [1] * (rank - len(b)) + b
            elements = int(np.prod([max(x, y) for x, y in zip(a, b, strict=True)], dtype=object))
    elif node.op_type == "Tile" and len(node.input) > 1:
        reps = _const_values(consts, node.input[1])
        if reps is not None and in_dims:
            elements = int(np.prod(in_dims[0], dtype=object)) * int(np.prod(reps, dtype=object))
    elif node.op_type == "Range" and len(node.input) == 3:
        vals = [_const_values(consts, n) for n in node.input]
        if all(v is not None and len(v) == 1 for v in vals) and vals[2][0]:
            elements = max(0, -(-(vals[1][0] - vals[0][0]) // vals[2][0]))
    if elements is not None:
        _check_folded(node, abs(elements) * item, source)


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
    if len(order) != len(graph.node):  # name the cycle itself, not what waits behind it
        cycle = find_cycle(graph.node) or []
        raise _fail(source, "the graph has a cycle: " + " -> ".join(
            repr(n) for n in [*cycle, *cycle[:1]]))
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


def load_onnx_with_files(model: str | os.PathLike | onnx.ModelProto
                         ) -> tuple[Model, list[Path]]:
    """The IR and every file it was read from (the model and its external data)."""
    if isinstance(model, onnx.ModelProto):
        source = "<ModelProto>"
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # external data is inlined into the copy, not the caller's proto
        files: list[Path] = []
        base = None
    else:
        path = Path(model)
        source = str(path)
        foreign = foreign_model_error(path)
        if foreign is not None:
            raise foreign
        proto = _read(path)
        files = [path]
        base = path.parent
    try:
        if base is not None:
            files += load_external(proto, base, source)
        elif any(t.data_location == onnx.TensorProto.EXTERNAL
                 for t in _all_tensors(proto)):
            raise _fail(source, "external data needs a model path (its folder is where the "
                        "data lives); load the file instead of a proto")
        check_declared_sizes(proto, source)
        work = normalise(proto, source)
        ir = Model.from_proto(work, source)
        ensure_node_names(ir.graph)
    except CompressIRError:
        raise
    except RecursionError:
        raise _fail(source, "the graph nests too deeply") from None
    except MemoryError:
        raise _fail(source, "out of memory while loading the model") from None
    except Exception as exc:  # noqa: BLE001 - a malformed proto trips many libraries
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise _fail(source, f"invalid model ({type(exc).__name__}: {first})") from None
    return ir, files


def load_onnx(model: str | os.PathLike | onnx.ModelProto) -> Model:
    """Load a path or ModelProto into the IR; never modifies the file or the proto."""
    return load_onnx_with_files(model)[0]


def save_onnx(
    model: Model | onnx.ModelProto, path: str | os.PathLike, sparse: bool = False,
    min_sparsity: float = 0.5,
) -> int:
    """Write atomically (temp file + rename in the same folder); return the size in bytes.

    With `sparse`, initializers at least `min_sparsity` sparse (and smaller so) are
    stored as COO `sparse_initializer`s; the given model or proto is not modified.
    """
    return write_atomic(path, model_bytes(model, sparse, min_sparsity))


def model_bytes(model: Model | onnx.ModelProto, sparse: bool = False,
                min_sparsity: float = 0.5) -> bytes:
    """The file contents `save_onnx` writes (the given model is not modified)."""
    proto = model.to_proto() if isinstance(model, Model) else model
    if sparse:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        to_sparse_initializers(copy, min_sparsity)
        proto = copy
    return serialize(proto)


def serialize(proto: onnx.ModelProto) -> bytes:
    """Protobuf bytes; a model protobuf cannot encode (over 2 GiB, bad text) is an error."""
    try:
        return proto.SerializeToString()
    except Exception as exc:  # noqa: BLE001 - EncodeError, ValueError from protobuf
        raise UnsupportedModelError(f"cannot serialize the model: {type(exc).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0][:200]}") from None
