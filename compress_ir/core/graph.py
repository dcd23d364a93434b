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


def node_graph(nodes: Sequence[onnx.NodeProto]) -> nx.MultiDiGraph:
    """Vertex i is `nodes[i]`; an edge i -> j (attribute `tensor`) per tensor j reads from i.

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
        for name in node.input:
            if name and name in producer:
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
