"""`channel-prune`: remove whole channels, keeping every coupled layer consistent.

analyse (channel groups) -> score (criterion) -> allocate (scope) -> apply (slice).
The plan is serialisable and goes into the report; the masked original is returned
as the numeric reference the new model must reproduce.

Allocation is score-only (`uniform`, `global`: allocation.py) or model-aware
(`scope=sensitivity`, `target-macs`, `target-params`: budget.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import UsageError
from compress_ir.core.metrics import layer_metrics
from compress_ir.core.model import Model, infer_proto_shapes
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.core.validate import plot_path
from compress_ir.passes.analysis import budget  # noqa: F401 - registers sensitivity, budget
from compress_ir.passes.analysis.allocation import (
    ALLOCATIONS,
    AllocationContext,
    AllocationRequest,
)
from compress_ir.passes.analysis.channel_groups import (
    CHANNELS,
    ChannelAnalysis,
    blocked_lines,
    channel_view,
)
from compress_ir.passes.analysis.importance import CRITERIA, Criterion, ScoreContext
from compress_ir.passes.analysis.importance.base import UnscorableGroup
from compress_ir.passes.analysis.prune_plan import build_step
from compress_ir.passes.analysis.prune_summary import (
    describe,
    requested_reduction,
    shortfall,
    totals,
    unit_rows,
)
from compress_ir.passes.transform.channel_slicing import apply_removal, masked_reference

log = logging.getLogger("compress_ir.channel_prune")


@dataclass(frozen=True)
class ChannelPruneOptions:
    ratio: float = option(0.5, "fraction of channels to remove (per group, or overall if global)")
    criterion: str = option("l2", "importance criterion (see --list-passes)")
    scope: str = option("uniform", "uniform: each group alone | global: one normalised ranking"
                        " | sensitivity: per-group ratios from pruning each group alone"
                        " (ratio ignored)")
    round_to: int = option(0, "keep channel counts a multiple of this (0: the --target's vector"
                           " width; target-latency: the timed target's, this host without"
                           " --target; else 1)")
    min_channels: int = option(1, "never keep fewer channels than this in a group")
    exclude: tuple[str, ...] = option((), "node names or glob patterns whose groups stay whole")
    target_macs: float = option(0.0, "keep this fraction of the MACs, e.g. 0.5 (greedy; 0 = off;"
                                " ratio and scope are ignored)")
    target_params: float = option(0.0, "keep this fraction of the parameters (greedy; 0 = off;"
                                  " ratio and scope are ignored)")
    target_latency: float = option(0.0, "keep this fraction of the latency on the --target,"
                                   " predicted from per-layer tables timed with the compiled"
                                   " kernels (greedy; 0 = off; ratio and scope are ignored)")
    latency_timer: str = option("tvm", "target-latency: how layers are timed (tvm: built and"
                                " run on this host)")
    latency_cache: str = option("", "target-latency: directory caching the layer timings"
                                " (default $COMPRESS_IR_LATENCY_CACHE or ~/.cache/compress-ir"
                                "/latency)")
    latency_repeat: int = option(20, "target-latency: interleaved rounds timing the dense and"
                                 " pruned models afterwards (0: do not measure)")
    latency_rounds: int = option(4, "target-latency: plan, build and measure up to this many"
                                 " times, re-aiming the tables' budget by the measured ratio"
                                 " (1: trust the tables)")
    tolerance: float = option(0.01, "sensitivity: largest output loss (1 - cosine) per group")
    harm: str = option("score", "target-macs/params: the harm of a removal, 'score' (criterion"
                       " score / group mean) or 'output' (measured: 1 - cosine of the model"
                       " outputs with the group alone pruned at a few ratios, interpolated)")
    plot: str = option("", "sensitivity: write the loss-vs-ratio curves to this PNG")

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 0 or self.min_channels < 1:
            raise ValueError("round-to must be >= 0 and min-channels >= 1")
        CRITERIA.get(self.criterion)
        if not ALLOCATIONS.get(self.scope).by_scope:
            raise ValueError(f"scope={self.scope} is chosen by target-macs/target-params")
        for name in ("target_macs", "target_params", "target_latency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # also rejects nan
                raise ValueError(f"{name.replace('_', '-')} must be in (0, 1] (0 = off), "
                                 f"got {value}")
        if sum(1 for v in (self.target_macs, self.target_params, self.target_latency) if v) > 1:
            raise ValueError("target-macs, target-params and target-latency are mutually"
                             " exclusive")
        from compress_ir.passes.analysis.latency_table import LATENCY_TIMERS

        if self.latency_timer not in LATENCY_TIMERS:
            raise ValueError(f"unknown latency-timer {self.latency_timer!r}; known: "
                             f"{', '.join(LATENCY_TIMERS)}")
        if self.latency_repeat < 0:
            raise ValueError(f"latency-repeat must be >= 0, got {self.latency_repeat}")
        if self.latency_rounds < 1:
            raise ValueError(f"latency-rounds must be >= 1, got {self.latency_rounds}")
        if self.budget and self.scope == "sensitivity":
            raise ValueError("scope=sensitivity cannot be combined with target-macs/params")
        from compress_ir.passes.analysis.budget import HARMS

        if self.harm not in HARMS:
            raise ValueError(f"harm must be one of {list(HARMS)}, got {self.harm!r}")
        if self.harm != "score" and not (self.target_macs or self.target_params):
            raise ValueError("harm=output needs target-macs or target-params")
        if not self.tolerance >= 0.0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.plot and self.scope != "sensitivity":
            raise ValueError("plot needs scope=sensitivity")
        plot_path(self.plot)

    @property
    def budget(self) -> tuple[str, float] | None:
        """("macs" | "params", fraction to keep) when a budget replaces the ratio."""
        if self.target_macs:
            return "macs", self.target_macs
        if self.target_params:
            return "params", self.target_params
        if self.target_latency:
            return "latency", self.target_latency
        return None


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
    opts: ChannelPruneOptions, *, proto: Any = None, calibration: CalibrationSet | None = None,
    seed: int = 0, info: dict | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None, scores_out: dict | None = None,
    latency: Any = None,
) -> tuple[set[int], list[dict]]:
    """Choose the units to remove; return them and the per-group plan for the report.

    Model-aware allocations (sensitivity, target-macs/params) read `proto` (the
    model the analysis ran on, with shapes; exported from `score_ctx.model` when
    not given) and `calibration`; what they found is written into `info`, and the
    criterion's scores per group index into `scores_out` (for the pruning plan).
    """

    if opts.round_to == 0:  # no target known here: keep every count
        opts = dataclasses.replace(opts, round_to=1)

    def excluded(group: Any) -> bool:
        return any(
            fnmatch.fnmatchcase(r.node, pat) for r in group.roots for pat in opts.exclude
        )

    candidates = [g for g in analysis.groups if g.prunable and not excluded(g) and g.size > 1]
    scores: dict[int, np.ndarray] = {}
    unscored: dict[int, str] = {}
    for g in candidates:
        try:
            scores[g.index] = criterion.score(g, score_ctx)
        except UnscorableGroup as exc:
            unscored[g.index] = str(exc)
    if candidates and not scores:
        raise UsageError(next(iter(unscored.values())))
    if scores_out is not None:
        scores_out.update(scores)
    candidates = [g for g in candidates if g.index in scores]
    allocation = ALLOCATIONS.get("budget" if opts.budget else opts.scope)()
    request = AllocationRequest(opts.ratio, opts.round_to, opts.min_channels, opts.tolerance,
                                opts.plot, opts.budget, harm=opts.harm)
    request.unit_round = unit_multiples(candidates, opts.round_to)
    if allocation.needs_model:
        if proto is None:
            proto = infer_proto_shapes(score_ctx.model.to_proto())
        model_proto = proto
        request.model = AllocationContext(
            model_proto, analysis, {g.index: g for g in candidates},
            lambda removed: masked_reference(model_proto, analysis, removed), calibration, seed,
            input_shapes, latency)
    keep, extra = allocation.allocate(scores, request)
    if info is not None:
        info.update(extra)
    planned: set[int] = set()
    for g in analysis.groups:
        mask = keep.get(g.index)
        if mask is not None:
            planned.update(int(u) for u in g.units[~mask])
    removed = analysis.nonempty(planned)  # no Split/Slice/Concat piece may become empty
    rows = []
    for g in analysis.groups:
        gone = [i for i, u in enumerate(g.units) if int(u) in removed]
        kept = g.size - len(gone) if g.index in keep else None
        row = group_report(g, kept, opts.criterion, excluded(g))
        if g.index in unscored:
            row["status"], row["unscored"] = "unscored", unscored[g.index]
        if gone:
            row["removed"] = gone  # indices into the group's units (sorted unit ids)
        rows.append(row)
    return removed, rows


def unit_multiples(groups: list[Any], round_to: int) -> dict[int, int]:
    """Per group, the multiple of units that keeps every producer's channel count a
    multiple of `round_to`.

    A unit of c channels in a producer (an attention head: head_dim columns of Q, K
    and V) needs k units with k * c a multiple of round_to, i.e. k a multiple of
    round_to / gcd(round_to, c); for heads of head_dim 64 and round-to 8 any head
    count will do. Rounding the head count itself to 8 would keep every head of a
    model with fewer. Producers whose units differ in size keep `round_to`.
    """
    out: dict[int, int] = {}
    if round_to <= 1:
        return out
    for g in groups:
        per_root: dict[int, set[int]] = {}
        for members in g.members.values():
            for root, positions in members:
                per_root.setdefault(root, set()).add(int(positions.size))
        need = 1
        for sizes in per_root.values():
            c = sizes.pop() if len(sizes) == 1 else 1
            need = math.lcm(need, round_to // math.gcd(round_to, c))
        if need != round_to:
            out[g.index] = need
    return out


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


def effective_round_to(round_to: int, ctx: PassContext) -> int:
    """`round-to=0` means the target's channel multiple (its vector width), else 1."""
    if round_to:
        return round_to
    return ctx.target.round_to if ctx.target is not None else 1


def latency_spec(ctx: PassContext) -> Any:
    """The target whose latency target-latency measures: --target, else this host (x86)."""
    from compress_ir.targets import resolve_target

    return ctx.target if ctx.target is not None else resolve_target("x86")


class LatencyProbe:
    """target-latency: the tables for the allocation, and the measurement of the result.

    The dense model is timed once for the tables' `rest` constant; afterwards the dense
    and pruned models are timed in interleaved rounds (`benchmark.interleaved`), so the
    measured ratio is not skewed by the machine's phases.
    """

    def __init__(self, options: ChannelPruneOptions, ctx: PassContext) -> None:
        from compress_ir.passes.analysis.latency_table import (
            LATENCY_TIMERS,
            LatencyCache,
            default_cache_dir,
            schedules_fingerprint,
        )

        self.spec = latency_spec(ctx)
        self.options = options
        self.input_shapes = ctx.input_shapes
        self._prepare = LATENCY_TIMERS[options.latency_timer](self.spec)
        self._built: dict[str, Any] = {}  # model sha256 -> its timer (dense: built once)
        scope = {"timer": options.latency_timer, "target": self.spec.name,
                 "tvm": self.spec.tvm, "lanes": self.spec.lanes,
                 "threads": os.environ.get("TVM_NUM_THREADS"), "statistic": "min",
                 "schedules": schedules_fingerprint()}
        cache_dir = options.latency_cache or default_cache_dir()
        self.cache = LatencyCache(cache_dir, scope)

    def prepare(self, proto: Any) -> Any:
        """The timer's build of `proto`, reused when the same model comes again."""
        import hashlib

        key = hashlib.sha256(proto.SerializeToString()).hexdigest()
        if key not in self._built:
            self._built[key] = self._prepare(proto)
        return self._built[key]

    def tables(self, proto: Any) -> Any:
        from compress_ir.core.metrics import tensor_shapes
        from compress_ir.passes.analysis.latency_table import measure_tables

        return measure_tables(proto, tensor_shapes(proto, self.input_shapes), self._prepare,
                              max(self.spec.lanes, 1), self.cache, prepare_model=self.prepare)

    def measure(self, dense: Any, pruned: Any) -> dict[str, Any]:
        """Dense and pruned timed interleaved: medians, ratio, and the spread."""
        if not self.options.latency_repeat:
            return {"ran": False, "reason": "latency-repeat=0"}
        from compress_ir.backend.benchmark import interleaved, summarize

        timers = {"dense": self.prepare(dense), "pruned": self.prepare(pruned)}
        samples = interleaved(timers, self.options.latency_repeat)
        out: dict[str, Any] = {k: summarize(v) for k, v in samples.items()}
        out["ratio"] = round(out["pruned"]["median_ms"] / out["dense"]["median_ms"], 4)
        out["ratio_min"] = round(out["pruned"]["min_ms"] / out["dense"]["min_ms"], 4)
        out["method"] = "interleaved rounds, median"
        return out


@register_pass("channel-prune")
class ChannelPrune(Pass):
    summary = "remove whole channels (filters) and slice every coupled layer"
    in_place = False
    Options = ChannelPruneOptions

    @classmethod
    def format_details(cls, details: dict[str, Any], max_rows: int = 25) -> list[str]:
        """The pruned groups (size, kept, producers) and why the others stayed whole."""
        groups = details.get("groups", [])
        if not groups:
            return []
        lines = [f"  {'group':>5} {'size':>6} {'kept':>6}  status    producers"]
        pruned = [g for g in groups if g["status"] == "pruned"]
        for g in pruned[:max_rows]:
            prods = ", ".join(g["producers"][:3]) + (" ..." if len(g["producers"]) > 3 else "")
            unit = describe(g)
            lines.append(f"  {g['group']:>5} {g['size']:>6} {g['kept']:>6}  "
                         f"{g['status']:9} {prods}" + (f"  [{unit}]" if unit else ""))
        if len(pruned) > max_rows:
            lines.append(f"  ... {len(pruned) - max_rows} more pruned groups (see --report)")
        kept = details.get("kept") or {}
        if kept:
            lines.append("  kept: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in kept.items())
                         + " (heads: all attention blocks; others: pruned groups)")
        lines += blocked_lines(groups)
        lines += _latency_lines(details.get("allocation") or {})
        lines += [f"  warning: {w}" for w in details.get("warnings", [])]
        return lines

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        round_to = effective_round_to(self.options.round_to, ctx)
        if self.options.target_latency and not self.options.round_to:
            # widths the latency tables were timed at (vector multiples of the timed target;
            # the host without --target): odd widths fall off the fast kernels, and a
            # pruned MobileNetV2 measured slower than the dense one
            round_to = latency_spec(ctx).round_to
        options = dataclasses.replace(self.options, round_to=round_to)
        view = channel_view(model, ctx)  # cached: an earlier analysis pass may have run it
        before, work, analysis = view.proto, view.work, view.analysis
        criterion = CRITERIA.get(self.options.criterion)()
        score_ctx = ScoreContext(work, analysis, calibration=calibration_stats(
            criterion, ctx, before, analysis))
        allocation: dict[str, Any] = {}
        scores: dict[int, np.ndarray] = {}
        latency = LatencyProbe(options, ctx) if options.target_latency else None

        def plan(opts: ChannelPruneOptions) -> tuple[set[int], list[dict]]:
            allocation.clear()
            scores.clear()
            return plan_removal(
                analysis, criterion, score_ctx, opts, proto=before,
                calibration=ctx.calibration, seed=ctx.seed, info=allocation,
                input_shapes=ctx.input_shapes, scores_out=scores,
                latency=latency.tables if latency else None)

        if latency is not None and options.latency_rounds > 1 and options.latency_repeat:
            removed, rows, rounds = _aim_latency(plan, options, latency, before, work, analysis)
            allocation["rounds"] = rounds
        else:
            removed, rows = plan(options)
        unit_rows(analysis, rows, removed)
        requested = requested_reduction(options.ratio, options.scope, options.budget)
        macs_before = layer_metrics(before, ctx.input_shapes) if requested else None
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
            "round_to": round_to,
        }
        details: dict[str, Any] = {"groups": rows, "kept": totals(rows)}
        if allocation:
            details["allocation"] = allocation
        what = (f"target-macs={options.target_macs}" if options.budget
                else f"ratio={options.ratio}")
        if not removed:
            if requested:
                _warn_shortfall(details, shortfall(requested, macs_before, None, rows, what))
            return PassResult(model, modified=False, stats=stats, details=details)
        ctx.analyses.forget(CHANNELS)  # `work` is sliced below: no later reader may get it
        compensated = bool(criterion.compensate(score_ctx, removed))
        if compensated:
            before = work.to_proto()  # the masked oracle starts from the compensated weights
        reference = masked_reference(before, analysis, removed)
        plan = build_step(analysis, removed, rows, scores, work.node_metadata, self.spec(),
                          self.options.criterion, compensated)
        apply_removal(work, analysis, removed)
        if requested:
            macs_after = layer_metrics(work.to_proto(), ctx.input_shapes)
            _warn_shortfall(details, shortfall(requested, macs_before, macs_after, rows, what))
        if latency is not None:
            allocation["measured"] = latency.measure(before, work.to_proto())
        elif self.options.budget:
            from compress_ir.core.metrics import model_metrics

            metric, _ = self.options.budget
            achieved = model_metrics(work.to_proto(), ctx.input_shapes)[metric]
            allocation["achieved"] = achieved
            allocation["achieved_fraction"] = round(achieved / max(allocation["original"], 1), 6)
        return PassResult(work, modified=True, stats=stats, details=details, reference=reference,
                          plan=plan)


def _latency_lines(alloc: dict[str, Any]) -> list[str]:
    """target-latency: what the tables predicted, what was measured, and each round."""
    meas = alloc.get("measured") or {}
    if alloc.get("mode") != "target-latency" or "ratio" not in meas:
        return []
    lines = [f"  latency: predicted {alloc.get('estimated_fraction', float('nan')):.3f} of dense"
             f", measured {meas['ratio']:.3f} ({meas['pruned']['median_ms']:.2f} / "
             f"{meas['dense']['median_ms']:.2f} ms, medians of interleaved rounds)"]
    rounds = alloc.get("rounds") or []
    if len(rounds) > 1:
        lines.append("  latency rounds (tables asked -> measured): " + ", ".join(
            f"{r['asked']:.3f} -> {r['measured']:.3f}" for r in rounds))
    return lines


LATENCY_AIM = 0.05  # stop re-aiming once the measured ratio is this close to the goal


def _aim_latency(plan: Any, options: ChannelPruneOptions, latency: LatencyProbe, before: Any,
                 work: Model, analysis: Any) -> tuple[set[int], list[dict], list[dict]]:
    """Plan, build and measure; re-aim the tables' budget until the measurement hits it.

    Why: the per-layer tables time each layer alone, and a whole model is not the sum of
    its layers (caches, fusion, the unmodelled rest), so the predicted ratio can be far from
    the measured one (ResNet-50 at target-latency=0.5: predicted 0.50, measured 0.82). As in
    NetAdapt, the measurement decides: the next round asks the tables for
    `asked * goal / measured` (the ratio of the last two rounds when they differ, a secant
    step), until the measured ratio is within LATENCY_AIM of the goal or the rounds are
    used; the round whose measurement was closest wins. Each round builds the candidate
    once (the final measurement reuses that build).
    """
    goal = options.target_latency
    asked, history, best = goal, [], None
    for _ in range(options.latency_rounds):
        removed, rows = plan(dataclasses.replace(options, target_latency=asked))
        trial = work.copy()
        apply_removal(trial, analysis, removed)
        measured = latency.measure(before, trial.to_proto())
        ratio = measured.get("ratio")
        history.append({"asked": round(asked, 4), "measured": ratio,
                        "dense_ms": measured["dense"]["median_ms"],
                        "pruned_ms": measured["pruned"]["median_ms"]})
        if ratio is None:
            return removed, rows, history
        miss = abs(ratio / goal - 1)
        if best is None or miss < best[0]:
            best = (miss, asked, removed, rows)
        if miss <= LATENCY_AIM:
            break
        if len(history) >= 2 and history[-2]["measured"] != ratio:
            prev = history[-2]
            slope = (ratio - prev["measured"]) / (asked - prev["asked"]) \
                if asked != prev["asked"] else 0.0
            step = asked + (goal - ratio) / slope if slope > 0 else asked * goal / ratio
        else:
            step = asked * goal / ratio
        nxt = min(1.0, max(0.02, step))
        if abs(nxt - asked) < 1e-4:
            break
        asked = nxt
    _, asked, removed, rows = best
    if asked != history[-1]["asked"]:  # the closest round was not the last: plan it again
        removed, rows = plan(dataclasses.replace(options, target_latency=asked))
    return removed, rows, history


def _warn_shortfall(details: dict[str, Any], found: dict[str, Any] | None) -> None:
    """Record a shortfall in the details (report) and say it in the log."""
    if found is None:
        return
    details["shortfall"] = found
    details.setdefault("warnings", []).append(found["message"])
    log.warning("%s", found["message"])
