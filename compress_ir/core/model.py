"""The IR: one mutable onnx-graphsurgeon graph plus the model-level metadata.

onnx-graphsurgeon already links tensors to producers and consumers, so it is the
single truth; numpy arrays hold weights (`gs.Constant.values`), and `to_networkx()`
builds a read-only view for graph algorithms. There is no second graph library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs

# IR < 4 requires every initializer to be listed as a graph input; graphsurgeon
# writes them as initializers only, so such models are written as IR 4.
_MIN_IR_VERSION = 4


@dataclass
class Model:
    """An ONNX model held as a graphsurgeon graph, plus what export needs."""

    graph: gs.Graph
    ir_version: int = onnx.IR_VERSION
    producer_name: str = "compress-ir"
    opset_imports: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    # Per-node metadata_props by node name (graphsurgeon drops them): exporters record
    # there which framework module a node came from, and the pruning plan reads it.
    node_metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, source: str | None = None) -> Model:
        graph = gs.import_onnx(proto)
        return cls(
            graph=graph,
            ir_version=proto.ir_version,
            producer_name=proto.producer_name,
            opset_imports={o.domain: o.version for o in proto.opset_import},
            metadata={p.key: p.value for p in proto.metadata_props},
            source=source,
            node_metadata={
                n.name: {p.key: p.value for p in n.metadata_props}
                for n in proto.graph.node if n.metadata_props and n.name
            },
        )

    def to_proto(self) -> onnx.ModelProto:
        """Export to a ModelProto (topologically sorted, dead nodes removed).

        The live graph is left as it is: cleanup and sorting happen on a shallow copy
        (weights are shared, not copied), so exporting has no side effects.
        """
        graph = self.graph.copy()
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        proto = gs.export_onnx(graph, do_type_check=False)
        proto.ir_version = max(self.ir_version, _MIN_IR_VERSION)
        proto.producer_name = self.producer_name
        del proto.opset_import[:]
        for domain, version in sorted(self.opset_imports.items()):
            proto.opset_import.add(domain=domain, version=version)
        if "" not in self.opset_imports:
            proto.opset_import.add(domain="", version=self.graph.opset)
        for key, value in self.metadata.items():
            proto.metadata_props.add(key=key, value=value)
        if self.node_metadata:
            for node in proto.graph.node:
                for key, value in self.node_metadata.get(node.name, {}).items():
                    node.metadata_props.add(key=key, value=value)
        return proto

    def copy(self) -> Model:
        """A deep copy: transforms mutate in place, analyses compare before/after."""
        clone = Model.from_proto(self.to_proto(), self.source)
        clone.ir_version = self.ir_version
        clone.node_metadata = {k: dict(v) for k, v in self.node_metadata.items()}
        return clone

    @property
    def opset(self) -> int:
        return self.opset_imports.get("", self.graph.opset)

    def tensors(self) -> dict[str, gs.Tensor]:
        return self.graph.tensors()

    def shape(self, tensor: gs.Tensor) -> tuple[int | str, ...] | None:
        """Static shape of a tensor as known from shape inference (None if unknown)."""
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        if tensor.shape is None:
            return None
        return tuple(tensor.shape)

    def constant(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The numpy value of a constant tensor, or None if it is computed at run time."""
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return None

    def to_networkx(self) -> nx.MultiDiGraph:
        """A read-only node-level view: one vertex per node, one edge per tensor use."""
        view = nx.MultiDiGraph()
        producer: dict[str, str] = {}
        for node in self.graph.nodes:
            view.add_node(node.name, op=node.op)
            for out in node.outputs:
                producer[out.name] = node.name
        for node in self.graph.nodes:
            for idx, tensor in enumerate(node.inputs):
                src = producer.get(tensor.name)
                if src is not None:
                    view.add_edge(src, node.name, tensor=tensor.name, index=idx)
        return view


def ensure_node_names(graph: gs.Graph) -> None:
    """Give every node a unique name: reports and errors must be able to name it."""
    seen: set[str] = set()
    for idx, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{idx}"
        while name in seen:
            name = f"{name}_{idx}"
        node.name = name
        seen.add(name)


def infer_shapes(model: Model) -> Model:
    """Re-run ONNX shape inference and return a model whose tensors carry the shapes.

    Transforms clear the shapes they invalidate; analyses need them back.
    """
    proto = infer_proto_shapes(model.to_proto())
    fresh = Model.from_proto(proto, model.source)
    fresh.ir_version = model.ir_version
    fresh.opset_imports = dict(model.opset_imports)
    return fresh


_SKELETON_MIN = 4096  # initializers at least this big are shown to inference as inputs


def infer_proto_shapes(proto: onnx.ModelProto, strict: bool = False) -> onnx.ModelProto:
    """Shape inference without shipping large weights through it.

    Inference needs weight shapes, not values (shape-like constants are small), so
    large initializers are shown to it as typed graph inputs; the inferred
    value_info is then copied onto `proto`. Returns `proto` (modified in place).
    """
    skeleton = onnx.ModelProto()
    skeleton.ir_version = max(proto.ir_version, _MIN_IR_VERSION)
    skeleton.opset_import.extend(proto.opset_import)
    skeleton.graph.name = proto.graph.name
    skeleton.graph.node.extend(proto.graph.node)
    skeleton.graph.output.extend(proto.graph.output)
    listed = {i.name for i in proto.graph.input}
    skeleton.graph.input.extend(proto.graph.input)
    for init in proto.graph.initializer:
        if int(np.prod(init.dims)) >= _SKELETON_MIN:
            if init.name not in listed:
                skeleton.graph.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                )
        else:
            skeleton.graph.initializer.append(init)
    inferred = onnx.shape_inference.infer_shapes(
        skeleton, check_type=strict, strict_mode=strict, data_prop=True
    )
    if strict:
        _check_conv_channels(proto, inferred)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    return proto


def _check_conv_channels(proto: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """What ONNX's Conv inference does not check: channel counts of input, weight, bias.

    A Conv whose weight disagrees with its input's channel count passes the checker
    and shape inference but fails in every runtime; a bad channel slice looks so.
    """
    dims: dict[str, list[int | None]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.dim_value > 0 else None for d in t.shape.dim]
    for init in proto.graph.initializer:
        dims[init.name] = list(init.dims)
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "ConvTranspose"):
            continue
        x = dims.get(node.input[0]) if node.input else None
        w = dims.get(node.input[1]) if len(node.input) > 1 else None
        if not x or not w or len(x) < 2 or len(w) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        where = f"(op_type:{node.op_type}, node name: {node.name})"
        transpose = node.op_type == "ConvTranspose"
        want_in = w[0] if transpose else (None if w[1] is None else w[1] * group)
        if x[1] is not None and want_in is not None and x[1] != want_in:
            raise onnx.shape_inference.InferenceError(
                f"{where}: input {node.input[0]!r} has {x[1]} channels but weight "
                f"{node.input[1]!r} of shape {w} with group={group} expects {want_in}"
            )
        out = (None if w[1] is None else w[1] * group) if transpose else w[0]
        b = dims.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if b is not None and out is not None and b != [out]:
            raise onnx.shape_inference.InferenceError(
                f"{where}: bias {node.input[2]!r} has shape {b} but the op has {out} "
                "output channels"
            )
