"""Fill weight placeholders with seeded random weights.

The `onnx` package's zoo models (`onnx/backend/test/data/light/`) and our committed
torchvision fixtures store each weight `W` as `ConstantOfShape(W__SHAPE)` so the
files stay small. Structural tests need real-looking weights: fan-in scaled
normals for weight matrices, positive variances and scales for normalisation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIP_THRESHOLD = 16  # float initializers with more elements than this become placeholders
SHAPE_SUFFIX = "__SHAPE"
PLACEHOLDER_VALUE = 0.0

# (op type, input index) pairs that must be positive (variances, scales)
_POSITIVE = {
    ("BatchNormalization", 1),
    ("BatchNormalization", 4),
    ("InstanceNormalization", 1),
    ("LayerNormalization", 1),
}


def _fan_in(shape: tuple[int, ...], op: str, index: int, node: onnx.NodeProto | None) -> int:
    if op == "MatMul" and len(shape) >= 2:
        return shape[-2]
    if op == "Gemm" and index == 1 and node is not None:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return shape[1] if trans_b else shape[0]
    if op == "ConvTranspose":
        return shape[0] * int(np.prod(shape[2:]))
    return int(np.prod(shape[1:]))


def fill_placeholders(proto: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Return a copy of `proto` whose ConstantOfShape weights are random initializers.

    A placeholder whose shape comes from a ``Constant`` node (a paddle2onnx-style
    fixture, which has no initializers at all) is filled as a ``Constant`` node, so
    the model keeps the form its exporter gave it.
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.ir_version = max(out.ir_version, 4)  # IR 3 wants new initializers listed as inputs
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    shape_nodes = {
        n.output[0]: n.attribute[0].t
        for n in graph.node
        if n.op_type == "Constant" and n.output[0].endswith(SHAPE_SUFFIX)
        and len(n.attribute) == 1 and n.attribute[0].name == "value"
    }
    consumers: dict[str, tuple[str, int, onnx.NodeProto]] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, (node.op_type, idx, node))
    kept = []
    for node in graph.node:
        # only `W__SHAPE` inputs mark a placeholder: an export's own ConstantOfShape over
        # a constant shape (GPT-2's masked-attention fill value, transformers 5's mask) is
        # part of the model and stays as it is
        if node.op_type != "ConstantOfShape" or not node.input[0].endswith(SHAPE_SUFFIX) or (
            node.input[0] not in inits and node.input[0] not in shape_nodes
        ):
            kept.append(node)
            continue
        src = node.input[0]
        shape_tensor = inits[src] if src in inits else shape_nodes[src]
        shape = tuple(int(d) for d in numpy_helper.to_array(shape_tensor))
        op, idx, user = consumers.get(node.output[0], ("", 0, None))
        if (op, idx) in _POSITIVE:
            values = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            values = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(
                max(_fan_in(shape, op, idx, user), 1)
            )
        elif op == "Mul" or (op == "Unsqueeze" and "scale" in node.output[0]):
            values = rng.uniform(0.5, 1.5, shape)
        else:
            values = rng.normal(0.0, 0.1, shape)
        tensor = numpy_helper.from_array(values.astype(np.float32), node.output[0])
        if node.input[0] in inits:
            graph.initializer.append(tensor)
            kept.append(None)
        else:
            kept.append(helper.make_node("Constant", [], [node.output[0]], value=tensor))
    still_used = {name for n in kept if n is not None for name in n.input}
    del graph.node[:]
    graph.node.extend(
        n for n in kept
        if n is not None and not (n.op_type == "Constant" and n.output[0] in shape_nodes
                                  and n.output[0] not in still_used)
    )
    names_in = {i.name for i in graph.initializer}
    unused_shapes = {n for n in names_in if n.endswith("__SHAPE")}
    used = {name for node in graph.node for name in node.input}
    keep_inits = [i for i in graph.initializer if i.name not in unused_shapes or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    inputs = [i for i in graph.input if i.name not in unused_shapes or i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    return out


def strip_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Replace large float initializers by ``ConstantOfShape(W__SHAPE) -> W`` placeholders.

    Why: fixtures keep every op, attribute and shape of a real export without
    committing its weights. Returns the stripped copy and the removed weights
    (name -> array), which is exactly what `restore_weights` needs to undo it.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    taken = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    taken |= {o for n in graph.node for o in n.output}

    kept: list[TensorProto] = []
    placeholders: list[onnx.NodeProto] = []
    weights: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) <= STRIP_THRESHOLD:
            kept.append(init)
            continue
        shape_name = init.name + SHAPE_SUFFIX
        if shape_name in taken:
            raise ValueError(f"cannot add placeholder shape {shape_name!r}: name in use")
        weights[init.name] = numpy_helper.to_array(init)
        kept.append(numpy_helper.from_array(np.array(init.dims, dtype=np.int64), shape_name))
        placeholders.append(
            helper.make_node(
                "ConstantOfShape",
                [shape_name],
                [init.name],
                value=helper.make_tensor("", TensorProto.FLOAT, [1], [PLACEHOLDER_VALUE]),
            )
        )

    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = placeholders + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)

    onnx.checker.check_model(stripped)
    onnx.shape_inference.infer_shapes(stripped, check_type=True, strict_mode=True, data_prop=True)
    return stripped, weights


def restore_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Turn ``ConstantOfShape(W__SHAPE) -> W`` placeholders back into the given weights.

    This is the reference loader for the convention (exporters use it to prove a
    stripped file round-trips); a weight missing from ``weights`` leaves its
    placeholder in place (it then evaluates to a constant).
    """
    filled = onnx.ModelProto()
    filled.CopyFrom(model)
    graph = filled.graph
    shapes = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    used_shapes: set[str] = set()
    for node in graph.node:
        name = node.output[0] if node.output else ""
        if (
            node.op_type == "ConstantOfShape"
            and node.input[0] == name + SHAPE_SUFFIX
            and node.input[0] in shapes
            and name in weights
        ):
            array = weights[name]
            if list(array.shape) != shapes[node.input[0]].tolist():
                raise ValueError(
                    f"weight {name!r} has shape {array.shape}, graph expects "
                    f"{shapes[node.input[0]].tolist()}"
                )
            new_inits.append(numpy_helper.from_array(array, name))
            continue
        nodes.append(node)
        used_shapes.update(node.input)

    dropped = {i.name for i in graph.initializer if i.name.endswith(SHAPE_SUFFIX)} - used_shapes
    inits = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(inits + new_inits)
    inputs = [i for i in graph.input if i.name not in dropped]
    if filled.ir_version < 4:  # IR<4 (e.g. the onnx "light" zoo) lists initializers as inputs
        inputs += [
            helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in new_inits
        ]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.node[:]
    graph.node.extend(nodes)
    return filled
