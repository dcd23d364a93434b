"""Size and cost of a model: parameters, multiply-accumulates, serialized bytes.

MACs are counted for the ops that dominate CNN and transformer cost (Conv,
ConvTranspose, Gemm, MatMul) from inferred static shapes; element-wise ops are
not counted, as is customary in the pruning literature.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from compress_ir.core.model import infer_proto_shapes

Shapes = dict[str, tuple[int, ...]]


def _shapes(proto: onnx.ModelProto) -> Shapes:
    shapes: Shapes = {}
    for vi in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    for init in proto.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _conv(node: onnx.NodeProto, s: Shapes) -> int:
    w, y = s.get(node.input[1]), s.get(node.output[0])
    return int(np.prod(y)) * int(np.prod(w[1:])) if w and y else 0


def _conv_transpose(node: onnx.NodeProto, s: Shapes) -> int:
    x, w = s.get(node.input[0]), s.get(node.input[1])
    return int(np.prod(x)) * int(np.prod(w[1:])) if w and x else 0


def _gemm(node: onnx.NodeProto, s: Shapes) -> int:
    a, y = s.get(node.input[0]), s.get(node.output[0])
    if not a or not y:
        return 0
    k = a[0] if _attr(node, "transA", 0) else a[-1]
    b = s.get(node.input[1])
    if b and len(b) == 2:  # a symbolic K in A (counted as 1) is known from B
        k = max(k, b[1] if _attr(node, "transB", 0) else b[0])
    return int(np.prod(y)) * k


def _matmul(node: onnx.NodeProto, s: Shapes) -> int:
    a, b, y = s.get(node.input[0]), s.get(node.input[1]), s.get(node.output[0])
    if not a or not y:
        return 0
    k = max(a[-1], b[-2]) if b and len(b) >= 2 else a[-1]  # a symbolic K is known from B
    return int(np.prod(y)) * k


MAC_COUNTERS: dict[str, Callable[[onnx.NodeProto, Shapes], int]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
}


def model_metrics(proto: onnx.ModelProto) -> dict[str, int]:
    """params (initializer elements), macs, and bytes of the serialized model."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    shapes = _shapes(infer_proto_shapes(work))
    macs = sum(MAC_COUNTERS[n.op_type](n, shapes) for n in work.graph.node
               if n.op_type in MAC_COUNTERS)
    params = sum(int(np.prod(i.dims)) for i in work.graph.initializer)
    return {"params": int(params), "macs": int(macs), "bytes": proto.ByteSize()}


def layer_metrics(proto: onnx.ModelProto) -> dict[str, dict[str, int | str]]:
    """Per weighted node (Conv, Gemm, MatMul, ...): op, MACs and parameters, by node name.

    For the report's before/after table: pruning keeps node names, so the two maps join.
    """
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    shapes = _shapes(infer_proto_shapes(work))
    inits = {i.name: int(np.prod(i.dims)) for i in work.graph.initializer}
    out: dict[str, dict[str, int | str]] = {}
    for i, node in enumerate(work.graph.node):
        if node.op_type not in MAC_COUNTERS:
            continue
        name = node.name or f"{node.op_type}_{i}"
        out[name] = {"op": node.op_type, "macs": int(MAC_COUNTERS[node.op_type](node, shapes)),
                     "params": sum(inits.get(t, 0) for t in node.input[1:])}
    return out
