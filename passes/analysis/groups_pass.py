"""`channel-groups`: an analysis pass that reports the channel groups, changing nothing.

Why a pass: to see, before pruning, which layers are coupled and why a group is
blocked (`--pass channel-groups`), optionally as a picture of the graph with each
group's channels coloured (`channel-groups{dump=groups.dot}`, or `.graphml`). The
analysis it runs is cached on the pass context, so a `channel-prune` after it reuses
it instead of analysing again (`PassContext.analyses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.passes.analysis.channel_groups import blocked_lines, channel_view
from compress_ir.passes.analysis.group_graph import FORMATS, write_groups


@dataclass(frozen=True)
class ChannelGroupsOptions:
    dump: str = option("", "write the graph with its channel groups here: .dot (Graphviz) "
                           "or .graphml")

    def __post_init__(self) -> None:
        if self.dump and Path(self.dump).suffix.lower() not in FORMATS:
            raise ValueError(f"dump {self.dump!r}: the name must end in {', '.join(FORMATS)}")


@register_pass("channel-groups")
class ChannelGroups(Pass):
    summary = "report the channel groups (coupled layers, blocked reasons); changes nothing"
    in_place = False
    transforms: ClassVar[bool] = False
    Options = ChannelGroupsOptions

    @classmethod
    def format_details(cls, details: dict[str, Any], max_rows: int = 25) -> list[str]:
        """One line per group (units, producers) and the reasons groups are blocked."""
        groups = details.get("groups", [])
        lines = [f"  {'group':>5} {'units':>6}  status    producers"] if groups else []
        for g in groups[:max_rows]:
            prods = ", ".join(g["producers"][:3]) + (" ..." if len(g["producers"]) > 3 else "")
            status = "prunable" if not g["blocked_by"] else "blocked"
            lines.append(f"  {g['group']:>5} {g['units']:>6}  {status:9} {prods}")
        if len(groups) > max_rows:
            lines.append(f"  ... {len(groups) - max_rows} more groups (see --report)")
        lines += blocked_lines(groups)
        return lines

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        view = channel_view(model, ctx)
        rows = [{"group": g.index, "units": g.size,
                 "producers": [r.node for r in g.roots if r.kind == "producer"],
                 "blocked_by": list(g.blocked)} for g in view.analysis.groups]
        stats = {"groups": len(rows),
                 "groups_prunable": sum(1 for r in rows if not r["blocked_by"]),
                 "units_prunable": sum(r["units"] for r in rows if not r["blocked_by"])}
        details: dict[str, Any] = {"groups": rows}
        if self.options.dump:
            details["dump"] = write_groups(view, self.options.dump)
        return PassResult(model, modified=False, stats=stats, details=details)
