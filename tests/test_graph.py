"""Graph questions on node lists (compress_ir.core.graph): order, cycles, upstream cut."""

from __future__ import annotations

import onnx.parser
import pytest

from compress_ir.core.graph import GraphCycle, find_cycle, topological_order, upstream

# a diamond: a -> (b, c) -> d, plus e reading only x
DIAMOND = onnx.parser.parse_graph("""
diamond (float[2] x) => (float[2] d, float[2] e) {
    [a] ta = Relu (x)
    [b] tb = Neg (ta)
    [c] tc = Abs (ta)
    [d] d = Add (tb, tc)
    [e] e = Sigmoid (x)
}
""")


def names(order: list[int], nodes) -> list[str]:
    return [nodes[i].name for i in order]


def test_sorted_graph_keeps_its_order() -> None:
    nodes = list(DIAMOND.node)
    assert names(topological_order(nodes), nodes) == ["a", "b", "c", "d", "e"]


def test_shuffled_graph_is_ordered_stably() -> None:
    nodes = [DIAMOND.node[i] for i in (3, 4, 2, 1, 0)]  # d e c b a
    # e first (it only needs x: the earliest position that is ready), then a, c, b, d
    assert names(topological_order(nodes), nodes) == ["e", "a", "c", "b", "d"]


def test_cycle_is_named_in_order_and_nothing_else() -> None:
    graph = onnx.parser.parse_graph("""
    loop (float[2] x) => (float[2] z) {
        [p] tp = Add (x, tq)
        [q] tq = Relu (tp)
        [z] z = Neg (tq)
    }
    """)
    nodes = list(graph.node)
    assert find_cycle(nodes) == ["p", "q"]
    with pytest.raises(GraphCycle, match=r"cycle: p -> q -> p$"):
        topological_order(nodes)
    assert find_cycle(list(DIAMOND.node)) is None


def test_upstream_keeps_what_a_tensor_depends_on() -> None:
    nodes = list(DIAMOND.node)
    assert names(upstream(nodes, ["tb"]), nodes) == ["a", "b"]
    assert names(upstream(nodes, ["d"]), nodes) == ["a", "b", "c", "d"]
    assert names(upstream(nodes, ["e", "tc"]), nodes) == ["a", "c", "e"]
