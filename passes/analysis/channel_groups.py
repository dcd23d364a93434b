"""Channel dependency analysis: which channels must be removed together.

Every output channel of a weight-carrying producer (Conv, Gemm, MatMul, ...) is an
*element* with a global id. Each tensor that carries tracked channels gets a
`Layout`: the axis the channels live on and the element id at every position of
that axis. Op rules (see `channel_rules`) propagate layouts forward and *unite*
elements that must go together (residual adds, grouped convs, shuffles, ...).

Imports go one way: this driver imports the rule table (`channel_rules`,
`shape_rules`, `shape_values`); the rules see `ChannelAnalysis` only as a type.

After propagation, a *unit* is a union-find class of elements (removing a unit
removes every position, in every tensor, whose element is in it) and a *group* is
a set of producers whose units are coupled. Anything an op rule does not
understand blocks the elements that reach it, with the node and the reason.

Rules also record *actions*: which constant inputs to slice along which axis (and
whether that constant reduces over the channels, which the masked-model oracle
zeroes instead), and which attributes or shape constants to rewrite.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from compress_ir.core.model import Model, infer_proto_shapes
from compress_ir.core.passes import PassContext
from compress_ir.passes.analysis.channel_rules import RANK_FREE, RULES, fill_shape, unknown_op
from compress_ir.passes.analysis.shape_values import ShapeValues


class UnionFind:
    """Union-find over integer ids with path halving; grows on demand."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb

    def find_all(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(i)) for i in ids.ravel()), np.int64, ids.size).reshape(
            ids.shape
        )


@dataclass
class Layout:
    """Tracked channels of one tensor: the axis, and the element id at each position."""

    axis: int
    ids: np.ndarray


@dataclass
class Root:
    """A producer of fresh channels (or a block of fixed, unprunable positions)."""

    index: int
    node: str
    tensor: str
    size: int
    kind: str = "producer"  # "producer" | "fixed"
    weight: str | None = None  # constant whose `weight_axis` indexes the output channels
    weight_axis: int = 0
    first: int = 0  # id of the first element


@dataclass
class ConstSlice:
    """Slice constant input `input_index` of `node` along `axis` by the layout of `by`.

    `groups` > 1 means the constant's axis holds per-group local indices (the input
    channels of a grouped Conv weight). `reduces` marks a consumer that sums over
    these channels: the oracle zeroes those weights instead of removing them.
    """

    node: str
    input_index: int
    axis: int
    by: str
    reduces: bool = False
    groups: int = 1


@dataclass
class Fixup:
    """An attribute or shape-constant rewrite, applied by the transform's fixup table."""

    kind: str
    node: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChannelGroup:
    """Coupled producers and their prunable units (what a criterion ranks)."""

    index: int
    roots: list[Root]
    units: np.ndarray  # unit ids (union-find representatives), sorted
    members: dict[int, list[tuple[int, np.ndarray]]]  # unit -> [(root index, positions)]
    blocked: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.units.size)

    @property
    def prunable(self) -> bool:
        return not self.blocked

    def label(self) -> str:
        names = [r.node for r in self.roots if r.kind == "producer"]
        head = ", ".join(names[:3])
        return head + (f", +{len(names) - 3}" if len(names) > 3 else "")


class ChannelAnalysis:
    """Runs the op rules over a model and exposes layouts, units, groups and actions."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.uf = UnionFind()
        self.elem_root: list[int] = []
        self.roots: list[Root] = []
        self.layouts: dict[str, Layout] = {}
        self.blocked: dict[int, list[str]] = defaultdict(list)
        self.slices: list[ConstSlice] = []
        self.fixups: list[Fixup] = []
        self.nodes: dict[str, gs.Node] = {}
        self.groups: list[ChannelGroup] = []
        self.head_splits: list[Any] = []  # shape_rules.HeadSplit: channels split into heads

    # -- helpers used by op rules -------------------------------------------------
    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(tensor.name)

    def set_layout(self, tensor: gs.Tensor, axis: int, ids: np.ndarray) -> None:
        self.layouts[tensor.name] = Layout(axis, np.asarray(ids, dtype=np.int64).ravel())

    def shape(self, tensor: gs.Tensor) -> tuple | None:
        return self.model.shape(tensor)

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def const(self, tensor: gs.Tensor) -> np.ndarray | None:
        return self.model.constant(tensor)

    def new_root(
        self,
        node: gs.Node,
        tensor: gs.Tensor,
        size: int,
        weight: gs.Tensor | None = None,
        weight_axis: int = 0,
        kind: str = "producer",
    ) -> np.ndarray:
        ids = self.uf.add(size)
        root = Root(
            index=len(self.roots),
            node=node.name,
            tensor=tensor.name,
            size=size,
            kind=kind,
            weight=weight.name if weight is not None else None,
            weight_axis=weight_axis,
            first=int(ids[0]) if size else len(self.elem_root),
        )
        self.roots.append(root)
        self.elem_root.extend([root.index] * size)
        return ids

    def fixed(self, node: gs.Node, tensor: gs.Tensor, size: int, reason: str) -> np.ndarray:
        """Fresh elements for positions that can never be removed (e.g. a graph input)."""
        ids = self.new_root(node, tensor, size, kind="fixed")
        self.block(ids, reason)
        return ids

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.asarray(a).ravel(), np.asarray(b).ravel(), strict=True):
            self.uf.union(int(x), int(y))

    def tie(self, ids: np.ndarray, groups: int) -> None:
        """Unite position j of every group: grouped ops must stay rectangular."""
        table = np.asarray(ids).reshape(groups, -1)
        for row in table[1:]:
            self.unite(table[0], row)

    def block(self, ids: np.ndarray, reason: str) -> None:
        for e in np.asarray(ids).ravel():
            self.blocked[int(e)].append(reason)

    def block_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            lay = self.layout(t)
            if lay is not None:
                self.block(lay.ids, f"{node.op} node {node.name!r}: {reason}")

    def slice_const(self, node: gs.Node, index: int, axis: int, by: gs.Tensor, **kw: Any) -> None:
        self.slices.append(ConstSlice(node.name, index, axis, by.name, **kw))

    def fixup(self, kind: str, node: gs.Node, **data: Any) -> None:
        self.fixups.append(Fixup(kind, node.name, data))

    def block_symbols(self, symbols: Any, reason: str) -> None:
        """Block the channels whose counts the given shape-value symbols stand for."""
        for sym in symbols:
            self.block(self.sym.channel_ids[sym], reason)

    # -- driver -----------------------------------------------------------------
    def run(self) -> ChannelAnalysis:
        graph = self.model.graph
        graph.toposort()
        self.nodes = {n.name: n for n in graph.nodes}
        self.sym = ShapeValues(self)
        for node in graph.nodes:
            self._visit(node)
        for out in graph.outputs:
            lay = self.layout(out)
            if lay is not None:
                self.block(lay.ids, f"graph output {out.name!r} must keep its shape")
            self.block_symbols(self.sym.deps(out),
                               f"graph output {out.name!r} is computed from a channel count")
        self._build_groups()
        return self

    def _visit(self, node: gs.Node) -> None:
        """Run one node's channel rule and shape-value rule; never let missing info crash.

        Whatever a rule cannot handle (unknown rank, unknown shape, a subgraph, an
        exception from missing information) blocks the channels that reach the node,
        with a reason naming it: never a guess, never an internal error.
        """
        where = f"{node.op} node {node.name!r}"
        tracked = [t for t in node.inputs if self.layout(t) is not None]
        if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v
                                           and isinstance(v[0], gs.Graph))
               for v in node.attrs.values()):
            outer = _subgraph_inputs(node)
            for name in sorted(outer):
                lay = self.layouts.get(name)
                if lay is not None:
                    self.block(lay.ids, f"{where} uses {name!r} inside a subgraph")
            deps = set().union(set(), *(self.sym.deps_name(n) for n in outer))
            self.block_symbols(deps, f"{where} uses a channel count inside a subgraph")
            self.block_inputs(node, "subgraphs (If/Loop/Scan) are not analysed")
        elif tracked or node.op in RULES:
            fill_shape(self, node)
            unknown = [t.name for t in tracked
                       if node.op not in RANK_FREE and self.rank(t) is None]
            if unknown:
                self.block_inputs(node, f"input {unknown[0]!r} has unknown rank")
            else:
                self._run_rule(RULES.get(node.op, unknown_op), node, where)
        if self.sym.visit(node):
            return
        for idx, t in enumerate(node.inputs):
            deps = self.sym.deps(t)
            if deps and (node.name, idx) not in self.sym.accepted:
                names = ", ".join(sorted(self.sym.channel_tensor[d] for d in deps))
                self.block_symbols(
                    deps, f"{where} uses a value computed from the channel count of {names}")

    def _run_rule(self, rule: Any, node: gs.Node, where: str) -> None:
        """Run `rule`; on an exception undo its recorded actions and block instead."""
        n_slices, n_fixups, n_roots = len(self.slices), len(self.fixups), len(self.roots)
        before = set(self.layouts)
        try:
            rule(self, node)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError,
                ArithmeticError) as exc:
            del self.slices[n_slices:], self.fixups[n_fixups:]
            for root in self.roots[n_roots:]:
                self.block(np.arange(root.first, root.first + root.size),
                           f"{where}: shape information is missing")
            for name in set(self.layouts) - before:
                self.block(self.layouts[name].ids, f"{where}: shape information is missing")
            self.block_inputs(node, f"shape information is missing ({type(exc).__name__})")

    def _build_groups(self) -> None:
        n = len(self.elem_root)
        unit_of = self.uf.find_all(np.arange(n, dtype=np.int64))
        root_uf = UnionFind()
        root_uf.add(len(self.roots))
        elem_root = np.asarray(self.elem_root, dtype=np.int64)
        for e in range(n):
            root_uf.union(int(elem_root[e]), int(elem_root[unit_of[e]]))
        by_group: dict[int, list[int]] = defaultdict(list)
        for r in self.roots:
            by_group[root_uf.find(r.index)].append(r.index)
        blocked_units: dict[int, list[str]] = defaultdict(list)
        for e, reasons in self.blocked.items():
            blocked_units[int(unit_of[e])].extend(reasons)
        self.unit_of = unit_of
        for root_ids in by_group.values():
            roots = [self.roots[i] for i in root_ids]
            if all(r.kind == "fixed" for r in roots):
                continue
            members: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
            for r in roots:
                units = unit_of[r.first : r.first + r.size]
                for u in np.unique(units):
                    members[int(u)].append((r.index, np.flatnonzero(units == u)))
            reasons: list[str] = []
            for u in members:
                for reason in blocked_units.get(u, []):
                    if reason not in reasons:
                        reasons.append(reason)
            self.groups.append(
                ChannelGroup(
                    index=len(self.groups),
                    roots=roots,
                    units=np.array(sorted(members), dtype=np.int64),
                    members=dict(members),
                    blocked=reasons,
                )
            )

    # -- queries for transforms and the oracle ----------------------------------
    def nonempty(self, removed_units: set[int]) -> set[int]:
        """`removed_units` minus what would leave a tracked tensor with no channels.

        A group keeps at least one unit, but one tensor may carry only some of its
        units (a Split or Slice piece, one input of a Concat): if all of those go,
        the tensor is empty and the model cannot run. Such a tensor keeps the unit
        of its first position. Un-removing never empties another tensor, so one
        sweep suffices.
        """
        removed = set(removed_units)
        for lay in self.layouts.values():
            units = self.unit_of[lay.ids]
            if units.size and all(int(u) in removed for u in units):
                removed.discard(int(units[0]))
        return removed

    def keep_masks(self, removed_units: set[int]) -> dict[str, np.ndarray]:
        """Per tracked tensor, the positions along its channel axis that survive."""
        removed = np.array(sorted(self.nonempty(removed_units)), dtype=np.int64)
        return {
            name: ~np.isin(self.unit_of[lay.ids], removed) for name, lay in self.layouts.items()
        }


def _subgraph_inputs(node: gs.Node) -> set[str]:
    """Names of outer-scope tensors a node's subgraphs read (recursively)."""
    names: set[str] = set()
    for value in node.attrs.values():
        graphs = value if isinstance(value, list) else [value]
        for g in graphs:
            if not isinstance(g, gs.Graph):
                continue
            local = {t.name for t in g.inputs}
            for n in g.nodes:
                local.update(t.name for t in n.outputs)
            for n in g.nodes:
                names.update(t.name for t in n.inputs
                             if t.name and t.name not in local and not isinstance(t, gs.Constant))
                names.update(_subgraph_inputs(n) - local)
    return names


def analyse_channels(model: Model) -> ChannelAnalysis:
    """Analyse `model` (which must carry inferred shapes) and return the result."""
    return ChannelAnalysis(model).run()


CHANNELS = "channels"  # the channel analysis' name in `PassContext.analyses`


@dataclass
class ChannelView:
    """The channel analysis of a model: `proto` (the model exported, shapes inferred),
    `work` (a Model read back from it, which the analysis annotates and channel-prune
    slices) and `analysis` (run on `work`)."""

    proto: onnx.ModelProto
    work: Model
    analysis: ChannelAnalysis


def _view(model: Model) -> ChannelView:
    proto = infer_proto_shapes(model.to_proto())
    work = Model.from_proto(proto, model.source)
    work.ir_version, work.opset_imports = model.ir_version, dict(model.opset_imports)
    return ChannelView(proto, work, analyse_channels(work))


def channel_view(model: Model, ctx: PassContext) -> ChannelView:
    """The channel analysis of `model`, cached on the pass context: computed on first use,
    reused by later passes until a transform changes the model (`Analyses`)."""
    return ctx.analyses.get(CHANNELS, model, _view)


def blocked_lines(groups: list[dict], top: int = 10) -> list[str]:
    """Report lines: the `top` blocking reasons by how many groups each holds whole."""
    reasons: dict[str, int] = {}
    for g in groups:
        for r in g["blocked_by"]:
            reasons[r] = reasons.get(r, 0) + 1
    return [f"  blocked ({count} group{'s' if count > 1 else ''}): {reason}"
            for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:top]]
