"""Rewrite an ONNX model into the form TVM's Relax importer and layout pass can take.

Why: real exports carry what the importer (TVM 0.27) turns into Relax that its own
passes then reject: `Dropout` becomes a tuple-valued `R.nn.dropout` that ConvertLayout
cannot thread ("Expected nested to match tuple"); variadic `Sum`/`Mean`/`Max`/`Min`
become `stack` + reduction, whose stacked layout the reduction's layout rule cannot
map ("Invalid SLayout: can't find S in source layout ABCDE"); symbolic `Shape ->
Gather -> Concat` chains feeding `Reshape`/`ConstantOfShape`/`Expand` stay computed
values although the build fixes every input shape. Each rewrite here is exact in
inference (the verification against onnxruntime on the original model still runs):

1. the fixed input shapes are written into the graph inputs;
2. old opsets (< `MIN_OPSET`) are upgraded with onnx's version converter (kept as they
   are, with the reason recorded, when the converter refuses);
3. inference no-ops go: `Dropout` (no mask used, not in training mode), `Identity`;
4. variadic element-wise ops become chains of binary ones;
5. constants are folded to a fixed point by the frontend's normaliser (`Constant` nodes,
   constant subgraphs, `Shape` of tensors whose shape is now static);
6. a `ConstantOfShape` over a constant empty shape becomes a scalar `Constant`.

Compared with onnxsim 0.8.1 and onnxslim 0.1.98 (`tools/compare_normalizers.py`, light
zoo + yolo): both fold the Shape chains, neither rewrites the variadic `Sum` (resnet50 and
shufflenet keep 16 and 13), and onnxsim keeps the opset-9 `Dropout` (squeezenet,
inception_v1); all agree with onnxruntime to <= 3e-7. The frontend's own folding covers
the rest, so the build needs no extra dependency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_ir.backend.artifact import TensorSpec
from compress_ir.core.errors import UnsupportedModelError

MIN_OPSET = 13  # the importer's converters are complete from here (Squeeze/Split axes inputs)
UPGRADE_TO = 17
MAX_FOLD_ROUNDS = 8


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def set_input_shapes(proto: onnx.ModelProto, specs: list[TensorSpec]) -> None:
    """Write the build's concrete input shapes over the graph inputs' (symbolic) dims."""
    by_name = {s.name: s for s in specs}
    for inp in proto.graph.input:
        spec = by_name.get(inp.name)
        if spec is None or any(d is None for d in spec.shape):
            continue
        shape = inp.type.tensor_type.shape
        del shape.dim[:]
        for d in spec.shape:
            shape.dim.add().dim_value = int(d)


def upgrade_opset(proto: onnx.ModelProto, stats: dict[str, Any]) -> onnx.ModelProto:
    """Opsets below MIN_OPSET go to UPGRADE_TO; a converter failure keeps the model as is."""
    version = _default_opset(proto)
    if version >= MIN_OPSET:
        return proto
    try:
        from onnx import version_converter

        upgraded = version_converter.convert_version(proto, UPGRADE_TO)
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        stats["opset_upgrade"] = {"from": version, "to": None,
                                  "reason": lines[0] if lines else type(exc).__name__}
        return proto
    stats["opset_upgrade"] = {"from": version, "to": UPGRADE_TO}
    return upgraded


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _is_noop(node: onnx.NodeProto, consts: dict[str, np.ndarray], used: set[str]) -> bool:
    """Identity, or a Dropout in inference mode whose mask nobody reads."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1] and node.output[1] in used:
        return False
    if len(node.input) > 2 and node.input[2]:  # training_mode: only a constant false is a no-op
        mode = consts.get(node.input[2])
        return mode is not None and not bool(np.asarray(mode).item())
    return True


def remove_noops(proto: onnx.ModelProto, stats: Counter) -> None:
    """Drop Identity and inference Dropout, rewiring their consumers to the input."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer
              if int(np.prod(i.dims)) <= 1}
    used = {name for n in graph.node for name in n.input} | outputs
    inner = _subgraph_reads(graph)  # outer names read by If/Loop bodies are left alone
    kept = []
    for node in graph.node:
        if not _is_noop(node, consts, used) or not node.input or not node.input[0] or \
                {node.input[0], node.output[0]} & inner:
            kept.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        if dst in outputs:  # a graph output keeps its name: rename the producer's instead
            producer = next((n for n in kept if src in n.output), None)
            if producer is None or src in outputs or _read_elsewhere(graph, src, node):
                kept.append(node)
                continue
            producer.output[list(producer.output).index(src)] = dst
            _rename_uses(graph, src, dst)
        else:
            _rename_uses(graph, dst, src)
        stats[node.op_type] += 1
    del graph.node[:]
    graph.node.extend(kept)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node inside a subgraph attribute (any depth)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names |= {i for n in sub.node for i in n.input} | _subgraph_reads(sub)
    return names


def _read_elsewhere(graph: onnx.GraphProto, name: str, skip: onnx.NodeProto) -> bool:
    return any(name in n.input for n in graph.node if n is not skip)


# Variadic op -> the binary op that chains it (Mean additionally divides by the count).
VARIADIC_TO_BINARY: dict[str, str] = {"Sum": "Add", "Mean": "Add", "Max": "Max", "Min": "Min"}


def split_variadic(proto: onnx.ModelProto, stats: Counter) -> None:
    """`Sum(a, b, c)` -> `Add(Add(a, b), c)` (and Mean, Max, Min likewise)."""
    graph = proto.graph
    new_nodes = []
    for node in graph.node:
        binary = VARIADIC_TO_BINARY.get(node.op_type)
        args = [i for i in node.input if i]
        if binary is None or node.domain not in ("", "ai.onnx") or \
                (len(args) == 2 and binary == node.op_type):
            new_nodes.append(node)
            continue
        base = node.name or node.output[0]
        result = node.output[0]
        mean = node.op_type == "Mean"
        if len(args) == 1:
            new_nodes.append(helper.make_node("Identity", args, [result], name=f"{base}/id"))
            stats[node.op_type] += 1
            continue
        acc = args[0]
        for k, arg in enumerate(args[1:], start=1):
            last = k == len(args) - 1 and not mean
            out = result if last else f"{base}/{binary.lower()}{k}"
            new_nodes.append(helper.make_node(binary, [acc, arg], [out], name=f"{base}/{k}"))
            acc = out
        if mean:
            count = f"{base}/count"
            dtype = _elem_dtype(proto, args[0])
            graph.initializer.append(numpy_helper.from_array(
                np.asarray(len(args), dtype=dtype), count))
            new_nodes.append(helper.make_node("Div", [acc, count], [result], name=f"{base}/div"))
        stats[node.op_type] += 1
    del graph.node[:]
    graph.node.extend(new_nodes)


def _elem_dtype(proto: onnx.ModelProto, name: str) -> np.dtype:
    """The element type of `name` from inputs, initializers or inferred value_info."""
    from compress_ir.core.model import infer_proto_shapes

    work = onnx.ModelProto()
    work.CopyFrom(proto)
    try:
        infer_proto_shapes(work)
    except Exception:  # noqa: BLE001 - the folding step reports invalid models
        pass
    for vi in (*work.graph.input, *work.graph.value_info, *work.graph.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    for init in proto.graph.initializer:
        if init.name == name:
            return np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    raise UnsupportedModelError(f"cannot tell the element type of {name!r} (Mean input)")


def _shape_nodes(proto: onnx.ModelProto) -> int:
    return sum(n.op_type == "Shape" for n in proto.graph.node)


def fold_to_fixed_point(proto: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """The frontend's normaliser, repeated while it folds `Shape` nodes (a folded Shape
    makes a Reshape static, whose consumers' Shape folds in the next round)."""
    from compress_ir.frontends.onnx import normalise

    for _ in range(MAX_FOLD_ROUNDS):
        before = _shape_nodes(proto)
        proto = normalise(proto, source)
        after = _shape_nodes(proto)
        if after == 0 or after == before:
            break
    return proto


def _constant_protos(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and `Constant` node values by name (as protos: nothing is copied)."""
    consts = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    return consts


def scalar_constant_of_shape(proto: onnx.ModelProto, stats: Counter) -> None:
    """`ConstantOfShape` over a constant empty shape (a scalar) becomes a `Constant`.

    Why: TVM 0.27's importer turns it into `broadcast_to(value[1], ())`, which it then
    rejects ("broadcast_to expects the input shape to have the number of ndim at least as
    the input tensor's"); seen in a BERT export from transformers 5.17 (torch 2.11)."""
    consts = _constant_protos(proto.graph)
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "ConstantOfShape" or not node.input:
            continue
        shape = consts.get(node.input[0])
        if shape is None or list(shape.dims) != [0]:
            continue
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                     np.zeros(1, np.float32))
        scalar = numpy_helper.from_array(value.reshape(()), node.output[0])
        const = helper.make_node("Constant", [], [node.output[0]], name=node.name or None,
                                 value=scalar)
        proto.graph.node.remove(node)
        proto.graph.node.insert(i, const)
        stats["ConstantOfShape"] += 1


Rewrite = Callable[[onnx.ModelProto, Counter], None]

# In order; each takes the proto (changed in place) and counts what it rewrote.
REWRITES: tuple[tuple[str, Rewrite], ...] = (
    ("removed", remove_noops),
    ("split_variadic", split_variadic),
)
AFTER_FOLDING: tuple[tuple[str, Rewrite], ...] = (
    ("scalar_constant_of_shape", scalar_constant_of_shape),
)


def _apply(rewrites: tuple[tuple[str, Rewrite], ...], proto: onnx.ModelProto,
           stats: dict[str, Any]) -> None:
    for key, rewrite in rewrites:
        counts: Counter = Counter()
        rewrite(proto, counts)
        if counts:
            stats[key] = dict(counts)


def normalize_for_tvm(proto: onnx.ModelProto, source: str, inputs: list[TensorSpec]
                      ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A rewritten copy of `proto` for the importer, and what was done (for meta.json).

    Raises ModelLoadError (naming `source`) when the model is invalid to begin with.
    """
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    stats: dict[str, Any] = {"nodes_before": len(work.graph.node)}
    set_input_shapes(work, inputs)
    work = upgrade_opset(work, stats)
    _apply(REWRITES, work, stats)  # structural: exporters write graphs in topological order
    work = fold_to_fixed_point(work, source)
    _apply(AFTER_FOLDING, work, stats)  # on the shapes the folding made constant
    stats["nodes_after"] = len(work.graph.node)
    return work, stats
