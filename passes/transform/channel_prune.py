"""`channel-prune`: remove whole channels, keeping every coupled layer consistent.

analyse (channel groups) -> score (criterion) -> allocate (scope) -> apply (slice).
The plan is serialisable and goes into the report; the masked original is returned
as the numeric reference the new model must reproduce.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_ir.core.errors import UsageError
from compress_ir.core.model import Model, infer_proto_shapes
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.passes.analysis.allocation import ALLOCATIONS
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, analyse_channels
from compress_ir.passes.analysis.importance import CRITERIA, Criterion, ScoreContext
from compress_ir.passes.transform.channel_slicing import apply_removal, masked_reference


@dataclass(frozen=True)
class ChannelPruneOptions:
    ratio: float = option(0.5, "fraction of channels to remove (per group, or overall if global)")
    criterion: str = option("l2", "importance criterion (see --list-passes)")
    scope: str = option("uniform", "uniform: each group alone | global: one normalised ranking")
    round_to: int = option(1, "keep channel counts a multiple of this")
    min_channels: int = option(1, "never keep fewer channels than this in a group")
    exclude: tuple[str, ...] = option((), "node names or glob patterns whose groups stay whole")

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 1 or self.min_channels < 1:
            raise ValueError("round-to and min-channels must be >= 1")
        CRITERIA.get(self.criterion)
        ALLOCATIONS.get(self.scope)


def group_report(group: Any, kept: int | None, criterion: str, excluded: bool) -> dict:
    return {
        "group": group.index,
        "producers": [r.node for r in group.roots if r.kind == "producer"],
        "size": group.size,
        "kept": group.size if kept is None else kept,
        "criterion": criterion if kept is not None else None,
        "status": "blocked" if group.blocked else ("excluded" if excluded else "pruned"),
        "blocked_by": group.blocked,
    }


def plan_removal(
    analysis: ChannelAnalysis, criterion: Criterion, score_ctx: ScoreContext,
    opts: ChannelPruneOptions,
) -> tuple[set[int], list[dict]]:
    """Choose the units to remove; return them and the per-group plan for the report."""

    def excluded(group: Any) -> bool:
        return any(
            fnmatch.fnmatchcase(r.node, pat) for r in group.roots for pat in opts.exclude
        )

    candidates = [g for g in analysis.groups if g.prunable and not excluded(g) and g.size > 1]
    scores = {g.index: criterion.score(g, score_ctx) for g in candidates}
    keep = ALLOCATIONS.get(opts.scope)(scores, opts.ratio, opts.round_to, opts.min_channels)
    planned: set[int] = set()
    for g in analysis.groups:
        mask = keep.get(g.index)
        if mask is not None:
            planned.update(int(u) for u in g.units[~mask])
    removed = analysis.nonempty(planned)  # no Split/Slice/Concat piece may become empty
    rows = []
    for g in analysis.groups:
        kept = None
        if g.index in keep:
            kept = g.size - sum(1 for u in g.units if int(u) in removed)
        rows.append(group_report(g, kept, opts.criterion, excluded(g)))
    return removed, rows


def calibration_stats(
    criterion: Criterion, ctx: PassContext, proto: Any, analysis: ChannelAnalysis
) -> Any:
    """Capture what a data-driven criterion reads; None for weight-only criteria."""
    if not criterion.needs_calibration:
        return None
    if ctx.calibration is None:
        raise UsageError(f"criterion {criterion.name!r} needs calibration data (--calib)")
    from compress_ir.passes.analysis.calibration_stats import CalibrationStats

    return CalibrationStats(proto, analysis, ctx.calibration, seed=ctx.seed)


@register_pass("channel-prune")
class ChannelPrune(Pass):
    summary = "remove whole channels (filters) and slice every coupled layer"
    Options = ChannelPruneOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        before = infer_proto_shapes(model.to_proto())
        work = Model.from_proto(before, model.source)
        work.ir_version, work.opset_imports = model.ir_version, dict(model.opset_imports)
        analysis = analyse_channels(work)
        criterion = CRITERIA.get(self.options.criterion)()
        score_ctx = ScoreContext(work, analysis, calibration=calibration_stats(
            criterion, ctx, before, analysis))
        removed, rows = plan_removal(analysis, criterion, score_ctx, self.options)
        removed_list = np.array(sorted(removed), dtype=np.int64)
        channels_removed = sum(
            int(np.isin(analysis.unit_of[r.first : r.first + r.size], removed_list).sum())
            for r in analysis.roots
        )
        pruned = [r for r in rows if r["status"] == "pruned" and r["kept"] < r["size"]]
        stats = {
            "groups": len(analysis.groups),
            "groups_pruned": len(pruned),
            "groups_blocked": sum(1 for r in rows if r["status"] == "blocked"),
            "units_removed": len(removed),
            "channels_removed": channels_removed,
        }
        details = {"groups": rows}
        if not removed:
            return PassResult(model, modified=False, stats=stats, details=details)
        if criterion.compensate(score_ctx, removed):
            before = work.to_proto()  # the masked oracle starts from the compensated weights
        reference = masked_reference(before, analysis, removed)
        apply_removal(work, analysis, removed)
        return PassResult(work, modified=True, stats=stats, details=details, reference=reference)
