"""Cut a decoder/encoder graph into prelude, blocks and epilogue at its residual stream.

Why: layer-by-layer (SparseGPT-style sequential) processing of a model too big to hold
needs self-contained pieces that can be run one after another on stored activations.
The natural cut points of a transformer are the tensors of its residual stream.

A residual Add is an Add whose one input (the skip) is an ancestor of the other (the
branch) along a path through a weight layer. The residual adds form a chain: the skip
of each is the previous one's output, or reached from it without a weight layer
(post-norm: LayerNorm(x + h)). The points are the chain's skips and the last output.
Segment i (block i) is every node that depends on point i but not on point i+1; the
prelude is every node that does not depend on point 0 (embedding, RoPE cos/sin, masks:
computed once per calibration batch), the epilogue every node after the last point
(final norm, LM head). A segment's inputs are whatever it reads from earlier segments
or the graph inputs (point i plus side tensors); its outputs are what later segments
or the graph outputs read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from compress_ir.core.errors import UsageError
from compress_ir.stream.engine import weight_nodes


@dataclass
class Segment:
    """A run of consecutive nodes that is executed as one small model."""

    name: str
    nodes: list[onnx.NodeProto]
    inputs: list[str] = field(default_factory=list)  # produced earlier or graph inputs
    outputs: list[str] = field(default_factory=list)  # read later or graph outputs
    initializers: list[str] = field(default_factory=list)


@dataclass
class Decomposition:
    segments: list[Segment]
    points: list[str]  # residual-stream tensors between the segments

    @property
    def blocks(self) -> list[Segment]:
        return self.segments[1:-1]


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    return [name for name in node.input if name]


def _descendants(nodes: list[onnx.NodeProto], start: str) -> set[int]:
    """Indices of nodes (graph order, toposorted) that read `start` transitively."""
    reached = {start}
    out = set()
    for idx, node in enumerate(nodes):
        if any(name in reached for name in _node_inputs(node)):
            out.add(idx)
            reached.update(node.output)
    return out


def _through_weight(nodes: list[onnx.NodeProto], start: str, target: str,
                    weighted: set[str], stop: int) -> bool:
    """Whether `target` is reached from `start` along a path with a weight layer (nodes
    before index `stop` only)."""
    plain, heavy = {start}, set()  # tensors reached without / with a weight layer
    for node in nodes[:stop]:
        ins = _node_inputs(node)
        hit_heavy = any(n in heavy for n in ins)
        hit_plain = any(n in plain for n in ins)
        if hit_heavy or (hit_plain and node.name in weighted):
            heavy.update(node.output)
        elif hit_plain:
            plain.update(node.output)
    return target in heavy


def _residual_adds(model: onnx.ModelProto) -> list[tuple[int, str, str]]:
    """(node index, skip input, output) of each residual Add, in graph order."""
    nodes = list(model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    weighted = {node.name for node, _ in weight_nodes(model)}
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    found = []
    for idx, node in enumerate(nodes):
        if node.op_type != "Add" or len(node.input) != 2 or any(n in inits for n in node.input):
            continue
        for skip, branch in (node.input, node.input[::-1]):
            # the skip must exist before the branch starts: graph input or earlier producer
            if producer.get(skip, -1) >= producer.get(branch, -1):
                continue
            if _through_weight(nodes, skip, branch, weighted, idx):
                found.append((idx, skip, node.output[0]))
                break
    return found


def _chain(model: onnx.ModelProto) -> list[str]:
    """The residual-stream points: each residual add's skip, then the last add's output."""
    nodes = list(model.graph.node)
    adds = _residual_adds(model)
    if not adds:
        raise UsageError("no residual stream found (no Add of a tensor and a weight-layer "
                         "branch computed from it): cannot cut the model into blocks")
    weighted = {node.name for node, _ in weight_nodes(model)}
    points = [adds[0][1]]
    last_out = adds[0][2]
    for _idx, skip, out in adds[1:]:
        # an Add off the chain (e.g. a shared attention mask added to later layers'
        # scores: the mask reaches them through earlier layers' weights) stays inside
        # its block; that only makes the block bigger, never wrong
        if skip == last_out or _plain_path(nodes, last_out, skip, weighted):
            points.append(skip)
            last_out = out
    points.append(last_out)
    return points


def _plain_path(nodes: list[onnx.NodeProto], start: str, target: str,
                weighted: set[str]) -> bool:
    """`target` reached from `start` without passing a weight layer (post-norm chains)."""
    reached = {start}
    for node in nodes:
        if node.name in weighted:
            continue
        if any(n in reached for n in _node_inputs(node)):
            reached.update(node.output)
    return target in reached


def decompose(model: onnx.ModelProto) -> Decomposition:
    """Prelude, one block per residual add, epilogue (nodes in graph order).

    `model` must be topologically sorted (ONNX requires it of valid graphs).
    """
    nodes = list(model.graph.node)
    points = _chain(model)
    below = [_descendants(nodes, p) for p in points]  # nodes depending on point i
    # segment index: 0 prelude, 1.. blocks, last epilogue
    owner = [sum(1 for s in below if idx in s) for idx in range(len(nodes))]
    _constants_to_users(model, nodes, owner)
    groups: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for idx, node in enumerate(nodes):
        groups[owner[idx]].append(node)
    names = ["prelude"] + [f"block {i}" for i in range(len(points) - 1)] + ["epilogue"]
    segments = [Segment(names[i], groups.get(i, [])) for i in range(len(points) + 1)]
    _wire(model, segments)
    for i, seg in enumerate(segments[1:], start=1):
        if points[i - 1] not in seg.inputs:
            raise UsageError(f"{seg.name} does not read residual point {points[i - 1]!r}")
    return Decomposition(segments, points)


def _constants_to_users(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
                        owner: list[int]) -> None:
    """Move nodes that read no graph input (folding material such as `gamma + 1`) into
    the first segment that uses them: the prelude then reads no block's weights."""
    graph_inputs = {i.name for i in model.graph.input}
    live: set[str] = set(graph_inputs)
    constant = []
    for node in nodes:
        dynamic = any(n in live for n in _node_inputs(node))
        if dynamic:
            live.update(node.output)
        constant.append(not dynamic)
    users: dict[str, list[int]] = defaultdict(list)
    for idx, node in enumerate(nodes):
        for name in _node_inputs(node):
            users[name].append(idx)
    for idx in range(len(nodes) - 1, -1, -1):
        if constant[idx] and owner[idx] == 0:
            readers = [owner[u] for out in nodes[idx].output for u in users.get(out, [])]
            if readers:
                owner[idx] = min(readers)


def rewire(model: onnx.ModelProto, segments: list[Segment]) -> None:
    """Recompute every segment's inputs, outputs and initializers after nodes moved."""
    _wire(model, segments)


def _wire(model: onnx.ModelProto, segments: list[Segment]) -> None:
    """Fill each segment's inputs, outputs and initializers from the graph's edges."""
    inits = {t.name for t in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    produced = [{out for node in seg.nodes for out in node.output} for seg in segments]
    used = [list(dict.fromkeys(n for node in seg.nodes for n in _node_inputs(node)))
            for seg in segments]
    needed_after: list[set[str]] = [set() for _ in segments]
    running: set[str] = set(graph_outputs)
    for i in range(len(segments) - 1, -1, -1):
        needed_after[i] = set(running)
        # only what the segment reads from outside: a block that recomputes a side
        # tensor itself (blockwise.absorb_side_inputs) does not need it from earlier
        running.update(n for n in used[i] if n not in produced[i])
    for i, seg in enumerate(segments):
        seg.initializers = [n for n in used[i] if n in inits]
        seg.inputs = [n for n in used[i] if n not in inits and n not in produced[i]]
        seg.outputs = [out for node in seg.nodes for out in node.output
                       if out and out in needed_after[i]]
