"""Graph questions about ONNX node lists, answered by networkx.

Why here: ordering nodes, finding a cycle and cutting out the part of a graph that
feeds some tensors are the same questions in the loader, the criteria and the debug
tools; hand-written walks of each disagreed on details (which node a cycle error
names, what counts as available). The graph is one vertex per node position and one
edge per tensor a node reads from another node's output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx
import onnx


class GraphCycle(ValueError):
    """The nodes cannot be ordered: `cycle` names the nodes of one cycle, in order."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("the graph has a cycle: " + " -> ".join([*cycle, cycle[0]]))


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs, and outer names its subgraphs (If/Loop/Scan
    bodies, recursively) read."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
            names.extend(name for inner in sub.node for name in reads(inner))
    return names


def node_graph(nodes: Sequence[onnx.NodeProto]) -> nx.MultiDiGraph:
    """Vertex i is `nodes[i]`; an edge i -> j (attribute `tensor`) per tensor j reads from i
    (`reads`: subgraph reads included).

    Inputs no node produces (graph inputs, initializers, or missing) add no edge.
    """
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(range(len(nodes)))
    for j, node in enumerate(nodes):
        for name in reads(node):
            if name in producer:
                graph.add_edge(producer[name], j, tensor=name)
    return graph


def find_cycle(nodes: Sequence[onnx.NodeProto]) -> list[str] | None:
    """The names of the nodes on one cycle (in order), or None when the graph has none."""
    try:
        edges = nx.find_cycle(node_graph(nodes))
    except nx.NetworkXNoCycle:
        return None
    return [_label(nodes[u], u) for u, *_ in edges]


def topological_order(nodes: Sequence[onnx.NodeProto]) -> list[int]:
    """Positions of `nodes` in a topological order that keeps the given order wherever
    the dependencies allow (ties go to the earlier position); GraphCycle if none."""
    graph = node_graph(nodes)
    try:
        return list(nx.lexicographical_topological_sort(graph, key=int))
    except nx.NetworkXUnfeasible:
        raise GraphCycle(find_cycle(nodes) or []) from None


def upstream(nodes: Sequence[onnx.NodeProto], tensors: Iterable[str]) -> list[int]:
    """Positions (in order) of the nodes that `tensors` depend on: their producers and
    every node those read from, transitively (what a reproducer must keep)."""
    graph = node_graph(nodes)
    wanted = set(tensors)
    seeds = {i for i, node in enumerate(nodes) if wanted.intersection(node.output)}
    keep = set(seeds)
    for i in seeds:
        keep |= nx.ancestors(graph, i)
    return sorted(keep)


def extract(proto: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The part of `proto` that computes `outputs`: their `upstream` nodes, the graph
    inputs and initializers those read, and `outputs` as the graph outputs (typed where
    the graph knows their type). Reads from inside subgraphs (If/Loop bodies) count."""
    graph = proto.graph
    nodes = list(graph.node)
    kept = [nodes[i] for i in upstream(nodes, outputs)]
    used = set(outputs).union(*(reads(node) for node in kept))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    produced = {name for node in kept for name in node.output}
    typed = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    del g.node[:], g.input[:], g.output[:], g.initializer[:], g.value_info[:]
    g.node.extend(kept)
    g.input.extend(v for v in graph.input if v.name in used)
    g.initializer.extend(t for t in graph.initializer if t.name in used)
    g.value_info.extend(v for v in graph.value_info if v.name in produced)
    g.output.extend(typed[name] if name in typed else onnx.ValueInfoProto(name=name)
                    for name in outputs)
    return out
