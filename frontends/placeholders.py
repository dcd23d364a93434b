"""Fill weight placeholders with seeded random weights.

The `onnx` package's zoo models (`onnx/backend/test/data/light/`) and our committed
torchvision fixtures store each weight `W` as `ConstantOfShape(W__SHAPE)` so the
files stay small. Structural tests need real-looking weights: fan-in scaled
normals for weight matrices, positive variances and scales for normalisation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

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
    """Return a copy of `proto` whose ConstantOfShape weights are random initializers."""
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.ir_version = max(out.ir_version, 4)  # IR 3 wants new initializers listed as inputs
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, tuple[str, int, onnx.NodeProto]] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, (node.op_type, idx, node))
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
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
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), node.output[0]))
        kept.append(None)
    del graph.node[:]
    graph.node.extend(n for n in kept if n is not None)
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
