"""The channel groups drawn on the model's graph, for people to look at (DOT, GraphML).

Why: "why is this group blocked, and what is coupled to what" is a graph question;
a picture of the graph with each group's producers and carried tensors coloured
answers it faster than a table. The graph is `Model.to_networkx()` (one vertex per
node, one edge per tensor use) with the analysis written on it: a producer vertex gets
`group` (and `blocked`), an edge carrying tracked channels gets `groups` (the groups
whose units it holds). GraphML comes from networkx; DOT is written here (Graphviz
text needs no extra package).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from compress_ir.core.errors import UsageError
from compress_ir.core.files import write_atomic

if TYPE_CHECKING:
    from compress_ir.passes.analysis.channel_groups import ChannelView

FORMATS = (".dot", ".gv", ".graphml")
_PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462",
            "#b3de69", "#fccde5", "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3")
_BLOCKED = "#d9d9d9"


def group_graph(view: ChannelView) -> nx.MultiDiGraph:
    """The node graph of the analysed model with the channel groups written on it."""
    analysis = view.analysis
    graph = view.work.to_networkx()
    group_of = {int(u): g.index for g in analysis.groups for u in g.units}
    blocked = {g.index: "; ".join(g.blocked) for g in analysis.groups if g.blocked}
    for g in analysis.groups:
        for root in g.roots:
            if root.kind == "producer" and root.node in graph:
                graph.nodes[root.node]["group"] = g.index
                graph.nodes[root.node]["blocked"] = blocked.get(g.index, "")
    for _, _, data in graph.edges(data=True):
        lay = analysis.layouts.get(data["tensor"])
        if lay is None:
            continue
        units = np.unique(analysis.unit_of[lay.ids])
        groups = sorted({group_of[int(u)] for u in units if int(u) in group_of})
        if groups:
            data["groups"] = ",".join(map(str, groups))
    return graph


def _quote(text: Any) -> str:
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def _color(group: int, blocked: bool) -> str:
    return _BLOCKED if blocked else _PALETTE[group % len(_PALETTE)]


def to_dot(graph: nx.MultiDiGraph) -> str:
    """Graphviz text: producers filled with their group's colour (grey: blocked, the
    reason as tooltip), edges that carry a group's channels drawn in its colour."""
    lines = ["digraph channel_groups {",
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname=Helvetica];',
             "  edge [fontname=Helvetica, fontsize=9];"]
    blocked_groups = {d["group"] for _, d in graph.nodes(data=True)
                      if "group" in d and d.get("blocked")}
    for name, data in graph.nodes(data=True):
        label = f"{name}\n{data.get('op', '')}"
        attrs = []
        if "group" in data:
            g, why = data["group"], data.get("blocked", "")
            label += f"\ngroup {g}" + (" (blocked)" if why else "")
            attrs.append(f"fillcolor={_quote(_color(g, bool(why)))}")
            if why:
                attrs.append(f"tooltip={_quote(why)}")
        lines.append(f"  {_quote(name)} [{', '.join([f'label={_quote(label)}', *attrs])}];")
    for src, dst, data in graph.edges(data=True):
        label, attrs = data["tensor"], []
        if data.get("groups"):
            first = int(data["groups"].split(",")[0])
            label += f"\ng{data['groups']}"
            attrs = [f"color={_quote(_color(first, first in blocked_groups))}", "penwidth=2"]
        lines.append(f"  {_quote(src)} -> {_quote(dst)} "
                     f"[{', '.join([f'label={_quote(label)}', *attrs])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_groups(view: ChannelView, path: str) -> dict[str, Any]:
    """Write the group graph to `path` (atomically) as DOT or GraphML, by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"channel-groups dump {path!r}: the name must end in "
                         f"{', '.join(FORMATS)}")
    graph = group_graph(view)
    if suffix == ".graphml":
        text = "\n".join(nx.generate_graphml(graph)) + "\n"
    else:
        text = to_dot(graph)
    try:
        write_atomic(path, text.encode())
    except OSError as exc:
        raise UsageError(f"cannot write the channel groups to {path!r}: {exc}") from None
    return {"format": "graphml" if suffix == ".graphml" else "dot",
            "nodes": graph.number_of_nodes(), "edges": graph.number_of_edges()}
