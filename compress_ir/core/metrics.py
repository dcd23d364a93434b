"""Size and cost of a model: parameters, multiply-accumulates, serialized bytes.

MACs are counted for the ops that dominate CNN and transformer cost (the weighted
ops of `core.ops`: Conv, ConvTranspose, Gemm, MatMul, ...) from static shapes;
element-wise ops are not counted, as is customary in the pruning literature.

MACs depend on the input shapes. A model with symbolic dims is counted at
concrete input shapes (given, or `shapes.resolve_shapes`' assumption: batch 1,
sequence 128, spatial 224): the inputs are fixed, then shape computations
(Shape -> Gather -> Concat -> Reshape, ...) are folded to constants and shapes
re-inferred until nothing more folds, so reshapes with computed targets get
static shapes too. A MAC op whose shapes stay unknown is counted with its
unknown dims as 1 and listed by `mac_count`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from compress_ir.core.model import infer_proto_shapes
from compress_ir.core.ops import WEIGHTED_OPS, count_macs
from compress_ir.core.shapes import Shapes as InputShapes
from compress_ir.core.shapes import declared_dims, resolve_shapes, with_input_shapes

Shapes = dict[str, tuple[int, ...]]
MAX_FOLD_ROUNDS = 8  # each round makes at least one more Shape static; real models need 2-4


SMALL_CONSTANT = 64  # ConstantOfShape outputs up to this size are shape values, not weights


def _fold_small_constant_of_shape(proto: onnx.ModelProto) -> None:
    """Evaluate ConstantOfShape nodes with a small constant shape (shape arithmetic).

    The loader never folds ConstantOfShape (in placeholder models it stands for a
    whole weight), but exporters build broadcast shapes with it (`ConstantOfShape
    -> Mul -> Equal -> Where -> Expand` in torch's attention masks).
    """
    consts = {i.name: i for i in proto.graph.initializer}
    kept = []
    for node in proto.graph.node:
        shape = consts.get(node.input[0]) if node.op_type == "ConstantOfShape" else None
        dims = onnx.numpy_helper.to_array(shape) if shape is not None else None
        if dims is None or int(np.prod(dims)) > SMALL_CONSTANT:
            kept.append(node)
            continue
        value = next((onnx.numpy_helper.to_array(a.t) for a in node.attribute
                      if a.name == "value"), np.zeros(1, np.float32))
        array = np.full([int(d) for d in np.atleast_1d(dims)], value.reshape(-1)[0],
                        dtype=value.dtype)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, node.output[0]))
        consts[node.output[0]] = proto.graph.initializer[-1]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


def fold_static(work: onnx.ModelProto, source: str) -> None:
    """Fold, in place, what static input shapes make constant (Shape, Range, ConstantOfShape
    chains), round by round until nothing more folds."""
    from compress_ir.frontends.onnx import _fold_constants  # the loader's folding

    for _ in range(MAX_FOLD_ROUNDS):
        count = len(work.graph.node)
        _fold_small_constant_of_shape(work)
        _fold_constants(work, source)
        if len(work.graph.node) == count:
            break


def value_shapes(
    proto: onnx.ModelProto, input_shapes: InputShapes | None = None
) -> dict[str, tuple[int | None, ...]]:
    """Shape of every tensor at concrete input shapes (None where still unknown).

    `input_shapes` fixes some or all inputs; the other symbolic dims take the
    resolved assumption. A model used at its declared static shapes is inferred as is.
    """
    concrete = resolve_shapes(proto, input_shapes).inputs
    declared = declared_dims(proto)
    if all(list(concrete[k]) == declared[k] for k in declared):  # static as declared
        work = onnx.ModelProto()
        work.CopyFrom(proto)
        work = infer_proto_shapes(work)
    else:
        work = with_input_shapes(proto, concrete)
        # outputs become plain tensors: their inferred shapes then land in value_info
        del work.graph.output[:]
        fold_static(work, "<metrics>")
        work = infer_proto_shapes(work)
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in (*work.graph.input, *work.graph.value_info, *work.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                    else None for d in t.shape.dim)
    for init in work.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def tensor_shapes(proto: onnx.ModelProto, input_shapes: InputShapes | None = None) -> Shapes:
    """Static shapes for cost models; a dim still unknown counts as 1."""
    return {k: tuple(d if d is not None else 1 for d in v)
            for k, v in value_shapes(proto, input_shapes).items()}


# one counter per weighted op, all from the op table (`compress_ir.core.ops`)
MAC_COUNTERS: dict[str, Callable[[onnx.NodeProto, Shapes], int]] = {
    op: count_macs for op in WEIGHTED_OPS}


def mac_count(
    proto: onnx.ModelProto, input_shapes: InputShapes | None = None
) -> tuple[int, list[str]]:
    """MACs at the given (or assumed) input shapes, and the MAC ops with unknown shapes."""
    full = value_shapes(proto, input_shapes)
    shapes = {k: tuple(d if d is not None else 1 for d in v) for k, v in full.items()}
    macs, unresolved = 0, []
    for node in proto.graph.node:
        if node.op_type not in MAC_COUNTERS:
            continue
        macs += count_macs(node, shapes)
        reads = WEIGHTED_OPS[node.op_type].reads
        names = [node.output[0] if i < 0 else node.input[i] for i in reads]
        if any(n not in full or None in full[n] for n in names):
            unresolved.append(node.name or node.output[0])
    return int(macs), unresolved


def measure(
    proto: onnx.ModelProto, input_shapes: InputShapes | None = None
) -> tuple[dict[str, int], list[str]]:
    """`model_metrics` and the MAC ops whose shapes stayed unknown (counted with 1s)."""
    macs, unresolved = mac_count(proto, input_shapes)
    params = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
    return {"params": int(params), "macs": int(macs), "bytes": proto.ByteSize()}, unresolved


def model_metrics(
    proto: onnx.ModelProto, input_shapes: InputShapes | None = None
) -> dict[str, int]:
    """params (initializer elements), macs at `input_shapes`, bytes of the serialized model.

    `input_shapes` (input name -> dims) fixes symbolic dims; without it they take
    the resolved assumption (batch 1, sequence 128, spatial 224; see shapes.py).
    """
    return measure(proto, input_shapes)[0]


def layer_metrics(
    proto: onnx.ModelProto, input_shapes: InputShapes | None = None
) -> dict[str, dict[str, int | str]]:
    """Per weighted node (Conv, Gemm, MatMul, ...): op, MACs and parameters, by node name.

    For the report's before/after table: pruning keeps node names, so the two maps join.
    MACs are at `input_shapes` (else the resolved assumption), like `model_metrics`.
    """
    shapes = tensor_shapes(proto, input_shapes)
    inits = {i.name: int(np.prod(i.dims)) for i in proto.graph.initializer}
    out: dict[str, dict[str, int | str]] = {}
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in MAC_COUNTERS:
            continue
        name = node.name or f"{node.op_type}_{i}"
        out[name] = {"op": node.op_type, "macs": count_macs(node, shapes),
                     "params": sum(inits.get(t, 0) for t in node.input[1:])}
    return out
