"""Model-aware allocations: per-group sensitivity, and a MACs / parameter budget.

The score-only allocations (`allocation.py`) decide from criterion scores alone.
The two strategies here also read the model:

* `sensitivity_allocation` (Li et al. 2017, "Pruning Filters for Efficient
  ConvNets", sec. 4.1): each candidate group is pruned *alone* at ratios 0.1 ... 0.9
  (its lowest-scored units first) and the model's outputs are compared with the
  unpruned ones on calibration data (or seeded random inputs when none is given).
  The loss is `1 - cos(pruned, original)` per sample over all graph outputs,
  averaged over at most `SENSITIVITY_SAMPLES` samples. A group keeps the largest
  ratio whose loss, and the loss of every smaller ratio, is within `tolerance`.
  The pruned model is evaluated as its masked-model oracle (`masked_reference`:
  the removed channels' input weights zeroed), which computes exactly what the
  sliced model computes without re-analysing and slicing a copy per ratio.

* `budget_allocation` (greedy, in the spirit of AMC / AutoSlim): until the model's
  MACs (or parameters) are at most `fraction` of the input model's, remove from
  some group its next `round_to` lowest-scored units, choosing the group whose
  slice has the least harm per MAC (parameter) saved; harm is the criterion score
  normalised by the group's mean score (as in `global` scope), or with `harm=output` the
  measured rise of the output loss (`1 - cos`, as in sensitivity) along the group's curve
  from pruning it alone at `HARM_RATIOS`, interpolated linearly in the kept units:
  criterion scores of different groups (heads vs FFN neurons, early vs late layers) are
  not comparable, the effect on the model's output is. Savings change as
  neighbouring groups shrink (a Conv's MACs scale with its kept inputs *and*
  outputs), so they are re-computed after every step for the affected groups.

MACs and parameters are computed analytically by `CostModel`: every counted term
(a Conv/Gemm/MatMul's MACs as `model_metrics` counts them, an initializer's
element count) is its original value times, per tracked tensor that sizes it,
`kept / size` of that tensor's channels. That is exact for the counts
`model_metrics` reports, up to the positions the empty-tensor guard gives back.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, ClassVar

import numpy as np
import onnx

from compress_ir.core.calibration import CalibrationSet, batch_size_for, load_calibration
from compress_ir.core.errors import UsageError
from compress_ir.core.metrics import tensor_shapes
from compress_ir.core.numeric import session
from compress_ir.core.ops import WEIGHTED_OPS, count_macs, node_attrs
from compress_ir.logs import progress
from compress_ir.passes.analysis.allocation import (
    ALLOCATIONS,
    Allocation,
    AllocationContext,
    AllocationRequest,
    Keep,
    keep_count,
    top_mask,
)
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, ChannelGroup

SENSITIVITY_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
SENSITIVITY_SAMPLES = 64
EPS = 1e-12
HARMS = ("score", "output")
# harm=output: each group pruned alone at these ratios, on this many calibration samples
HARM_RATIOS = (0.25, 0.5, 0.75, 1.0)  # 1.0: down to min-channels
HARM_SAMPLES = 16


@ALLOCATIONS.register("sensitivity")
class Sensitivity(Allocation):
    summary: ClassVar[str] = "per-group ratios from pruning each group alone (Li et al. 2017)"
    needs_model: ClassVar[bool] = True

    def allocate(self, scores: dict[int, np.ndarray], req: AllocationRequest
                 ) -> tuple[Keep, dict[str, Any]]:
        return sensitivity_allocation(scores, req, req.tolerance, req.plot)


@ALLOCATIONS.register("budget")
class Budget(Allocation):
    summary: ClassVar[str] = "greedy removal until the MACs / parameter budget holds"
    needs_model: ClassVar[bool] = True
    by_scope: ClassVar[bool] = False  # chosen by target-macs / target-params

    def allocate(self, scores: dict[int, np.ndarray], req: AllocationRequest
                 ) -> tuple[Keep, dict[str, Any]]:
        if req.budget is None:
            raise UsageError("the budget allocation needs target-macs or target-params")
        return budget_allocation(scores, req, *req.budget)


def _model(req: AllocationRequest) -> AllocationContext:
    if req.model is None:
        raise UsageError("this allocation needs the model; use it through channel-prune")
    return req.model


# -- sensitivity ----------------------------------------------------------------------
def _eval_set(actx: AllocationContext, samples: int = SENSITIVITY_SAMPLES
              ) -> tuple[CalibrationSet, str]:
    if actx.calibration is not None:
        calib = actx.calibration
        arrays = {k: v[:samples] for k, v in calib.arrays.items()}
        return CalibrationSet(arrays, calib.source), "calibration"
    spec = f"random:{samples}"
    return load_calibration(spec, actx.proto, seed=actx.seed,
                            input_shapes=actx.input_shapes), "random"


def _outputs(proto: onnx.ModelProto, data: CalibrationSet) -> np.ndarray:
    """Per sample, every graph output flattened and concatenated: [samples, features]."""
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    rows = []
    for feeds in data.batches(batch_size_for(proto, SENSITIVITY_SAMPLES)):
        count = next(iter(feeds.values())).shape[0]
        values = sess.run(names, feeds)
        parts = [
            np.asarray(v, np.float64).reshape(count, -1)
            if np.ndim(v) and np.shape(v)[0] == count
            else np.broadcast_to(np.asarray(v, np.float64).reshape(1, -1), (count, np.size(v)))
            for v in values
        ]
        rows.append(np.concatenate(parts, axis=1))
    return np.concatenate(rows)


def output_loss(got: np.ndarray, want: np.ndarray) -> float:
    """Mean over samples of 1 - cosine similarity (0 for identical outputs)."""
    num = (got * want).sum(1)
    den = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, EPS), np.where(
        np.abs(got - want).max(1) > 0, 0.0, 1.0))
    return float(np.mean(1.0 - cos))


def _require_matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("the sensitivity plot needs matplotlib: pip install matplotlib") from None
    return plt


def _plot(path: str, curves: dict[int, dict], groups: dict[int, ChannelGroup],
          tolerance: float) -> None:
    plt = _require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5))
    for g, curve in curves.items():
        if curve["ratios"]:
            ax.plot(curve["ratios"], np.maximum(curve["loss"], 1e-9), marker="o",
                    label=f"{g}: {groups[g].label()}")
    ax.axhline(max(tolerance, 1e-9), color="k", linestyle="--", label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of the group's units removed")
    ax.set_ylabel("output loss (1 - cosine)")
    ax.set_title("channel-prune sensitivity (each group pruned alone)")
    if len(curves) <= 20:
        ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"cannot write the sensitivity plot {path!r}: {exc}") from None
    finally:
        plt.close(fig)


def sensitivity_allocation(
    scores: dict[int, np.ndarray], req: AllocationRequest, tolerance: float, plot: str = "",
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Keep masks from each group's sensitivity curve, and the curves for the report.

    Without a plot the scan of a group stops at its first ratio over `tolerance`
    (the choice cannot go further), which saves most of the work on sensitive
    groups; with a plot every ratio is evaluated.
    """
    actx = _model(req)
    if plot:
        _require_matplotlib()  # fail before the expensive scan
    start = time.perf_counter()
    data, kind = _eval_set(actx)
    baseline = _outputs(actx.proto, data)
    keep: dict[int, np.ndarray] = {}
    curves: dict[int, dict] = {}
    evaluations = 0
    for g, s in progress(scores.items(), total=len(scores), desc="sensitivity scan",
                         unit="group"):
        group = actx.groups[g]
        curve: dict[str, Any] = {"ratios": [], "loss": [], "chosen": 0.0}
        chosen_keep, cache = s.size, {}
        passing = True
        for r in SENSITIVITY_RATIOS:
            k = keep_count(s.size, math.floor(r * s.size + 1e-9), req.round_for(g),
                           req.min_keep)
            if k not in cache:
                if not passing and not plot:
                    break
                mask = top_mask(s, k)
                removed = {int(u) for u in group.units[~mask]}
                masked = actx.masked(removed)
                cache[k] = output_loss(_outputs(masked, data), baseline) if removed else 0.0
                evaluations += 1
            loss = cache[k]
            curve["ratios"].append(r)
            curve["loss"].append(loss)
            if passing and loss <= tolerance:
                chosen_keep, curve["chosen"] = k, r
            else:
                passing = False
        keep[g] = top_mask(s, chosen_keep)
        curves[g] = curve
    if plot:
        _plot(plot, curves, actx.groups, tolerance)
    info = {
        "mode": "sensitivity",
        "data": kind,
        "samples": data.size,
        "tolerance": tolerance,
        "loss": "mean 1 - cosine similarity of the graph outputs",
        "evaluations": evaluations,
        "seconds": round(time.perf_counter() - start, 3),
        "plot": plot or None,
        "curves": {g: c for g, c in curves.items()},
    }
    return keep, info


# -- the cost model -------------------------------------------------------------------
class CostModel:
    """MACs, parameters or predicted latency of the model as a function of the units removed.

    MACs / parameters: cost = sum over terms of base * prod over the term's tensors of
    kept / size. Latency: each tabled layer's measured table at its kept (out, in)
    widths, plus the measured rest (`latency_table.py`).
    """

    def __init__(self, proto: onnx.ModelProto, analysis: ChannelAnalysis, metric: str,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 latency_tables: Any = None) -> None:
        self.analysis = analysis
        self.latency_tables = latency_tables  # metric "latency": a LatencyTables
        self.roles = {}
        self._index: dict[str, int] = {}
        self.terms: list[tuple[float, tuple[int, ...]]] = []
        shapes = tensor_shapes(proto, input_shapes)
        layouts = analysis.layouts
        nodes = {n.name: n for n in proto.graph.node}
        weight_slices: dict[tuple[str, int], list] = defaultdict(list)
        for s in analysis.slices:
            weight_slices[(s.node, s.input_index)].append(s)

        self._layouts = layouts
        self._add_terms(proto, metric, shapes, nodes, weight_slices)
        names = sorted(self._index, key=self._index.get)
        self.size = np.array([layouts[n].ids.size for n in names], dtype=np.float64)
        self.kept = self.size.copy()
        self.total = sum(base for base, _ in self.terms)
        # which tensors (and how many positions in each) every unit occupies
        self.unit_positions: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for name in names:
            units, counts = np.unique(analysis.unit_of[layouts[name].ids], return_counts=True)
            for u, c in zip(units, counts, strict=True):
                self.unit_positions[int(u)].append((self._index[name], int(c)))
        self.terms_of_tensor: dict[int, list[int]] = defaultdict(list)
        for i, (_, factors) in enumerate(self.terms):
            for t in set(factors):
                self.terms_of_tensor[t].append(i)

    def _tensor(self, name: str) -> list[int]:
        if name not in self._layouts:
            return []
        if name not in self._index:
            self._index[name] = len(self._index)
        return [self._index[name]]

    def _add_terms(self, proto: onnx.ModelProto, metric: str,
                   shapes: dict[str, tuple[int, ...]], nodes: dict[str, onnx.NodeProto],
                   weight_slices: dict[tuple[str, int], list]) -> None:
        """One term per counted quantity: its value at full width and the tensors sizing it."""
        tensor = self._tensor
        analysis = self.analysis
        if metric == "macs":
            for node in proto.graph.node:
                spec = WEIGHTED_OPS.get(node.op_type)
                if spec is None:
                    continue
                base = count_macs(node, shapes)
                if not base:
                    continue
                # the driver's channels times the weight's other sliced axes (`core.ops`)
                factors = tensor(node.output[0] if spec.driver < 0 else node.input[spec.driver])
                weight = shapes.get(node.input[1])
                slices = weight_slices.get((node.name, 1), [])
                if slices and weight is not None:
                    driver_axis = spec.driver_axis(node_attrs(node), len(weight))
                    for s in slices:
                        if s.axis != driver_axis:
                            factors += tensor(s.by)
                self.terms.append((float(base), tuple(factors)))
        elif metric == "params":
            sliced: dict[str, set] = defaultdict(set)
            for s in analysis.slices:
                node = nodes.get(s.node)
                if node is not None and s.input_index < len(node.input):
                    sliced[node.input[s.input_index]].add((s.axis, s.by))
            for init in proto.graph.initializer:
                factors = []
                for _, by in sorted(sliced.get(init.name, ())):
                    factors += tensor(by)
                self.terms.append((float(np.prod(init.dims)), tuple(factors)))
        elif metric == "latency":
            self._latency_terms(proto, shapes, weight_slices)
        else:
            raise ValueError(f"unknown cost metric {metric!r}")

    def _latency_terms(self, proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                       weight_slices: dict[tuple[str, int], list]) -> None:
        """One term per tabled layer (its table at the kept out x in widths) plus the rest."""
        tables = self.latency_tables
        if tables is None:
            raise UsageError("target-latency needs latency tables")
        self.roles: dict[int, tuple[Any, int | None, int | None]] = {}
        for node in proto.graph.node:
            table = tables.tables.get(node.name)
            if table is None:
                continue
            spec = WEIGHTED_OPS[node.op_type]
            out = self._tensor(node.output[0])
            ins: list[int] = []
            weight = shapes.get(node.input[1])
            if weight is not None and not table.layer.depthwise:
                in_axis = spec.in_axis(node_attrs(node), len(weight))
                for s in weight_slices.get((node.name, 1), []):
                    if s.axis == in_axis:
                        ins += self._tensor(s.by)
            self.roles[len(self.terms)] = (table, out[0] if out else None,
                                           ins[0] if ins else None)
            self.terms.append((tables.scale * table.full, tuple(out + ins)))
        self.terms.append((tables.rest_ms, ()))

    def _term(self, i: int, kept: np.ndarray) -> float:
        role = self.roles.get(i)
        if role is not None:  # a latency table
            table, out, inp = role
            layer = table.layer
            cout = layer.full_out * (kept[out] / self.size[out] if out is not None else 1.0)
            cin = layer.full_in * (kept[inp] / self.size[inp] if inp is not None else 1.0)
            return self.latency_tables.scale * table.at(cout, cin)
        base, factors = self.terms[i]
        value = base
        for t in factors:
            value *= kept[t] / self.size[t]
        return value

    def cost(self) -> float:
        return sum(self._term(i, self.kept) for i in range(len(self.terms)))

    def delta(self, units: Any) -> dict[int, int]:
        change: dict[int, int] = defaultdict(int)
        for u in units:
            for t, c in self.unit_positions.get(int(u), []):
                change[t] += c
        return change

    def saving(self, units: Any) -> float:
        """How much the cost drops if `units` are removed as well."""
        change = self.delta(units)
        if not change:
            return 0.0
        after = self.kept.copy()
        for t, c in change.items():
            after[t] -= c
        terms = {i for t in change for i in self.terms_of_tensor[t]}
        return sum(self._term(i, self.kept) - self._term(i, after) for i in terms)

    def remove(self, units: Any) -> None:
        for t, c in self.delta(units).items():
            self.kept[t] -= c

    def tensors_of(self, units: Any) -> set[int]:
        return set(self.delta(units))


def _next_keep(keep: int, round_to: int, floor: int) -> int | None:
    """The next smaller allowed keep count, or None when the group cannot shrink."""
    nxt = ((keep - 1) // round_to) * round_to if round_to > 1 else keep - 1
    return nxt if nxt >= floor and nxt > 0 else None


def output_curves(scores: dict[int, np.ndarray], req: AllocationRequest
                  ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Per group: (kept unit counts, increasing; output loss at each) with the group alone
    pruned (lowest-scored units first) at `HARM_RATIOS`, plus the dense point (0 loss)."""
    actx = _model(req)
    data, kind = _eval_set(actx, HARM_SAMPLES)
    baseline = _outputs(actx.proto, data)
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for g, s in progress(scores.items(), total=len(scores), desc="output harm", unit="group"):
        points = {s.size: 0.0}
        for r in HARM_RATIOS:
            k = keep_count(s.size, math.floor(r * s.size + 1e-9), req.round_for(g),
                           req.min_keep)
            if k not in points:
                removed = {int(u) for u in actx.groups[g].units[~top_mask(s, k)]}
                points[k] = output_loss(_outputs(actx.masked(removed), data), baseline)
        ks = np.array(sorted(points), dtype=np.float64)
        curves[g] = (ks, np.array([points[int(k)] for k in ks]))
    info = {"harm": "output", "harm_data": kind, "harm_samples": data.size,
            "harm_curves": {g: {"kept": c[0].astype(int).tolist(),
                                "loss": [round(float(v), 6) for v in c[1]]}
                            for g, c in curves.items()}}
    return curves, info


def budget_allocation(
    scores: dict[int, np.ndarray], req: AllocationRequest, metric: str, fraction: float,
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Greedy: remove the least harmful slice per unit of cost saved until the budget holds."""
    actx = _model(req)
    start = time.perf_counter()
    tables = None
    if metric == "latency":
        if actx.latency is None:
            raise UsageError("target-latency needs a latency timer (use it through channel-prune)")
        tables = actx.latency(actx.proto)
    model = CostModel(actx.proto, actx.analysis, metric, actx.input_shapes, tables)
    target = fraction * model.total
    cost = model.cost()
    # removal order per group: the reverse of `top_mask`'s keep order (same tie-breaking)
    order = {g: np.argsort(-s, kind="stable")[::-1] for g, s in scores.items()}
    norm = {g: s / (s.mean() + EPS) if s.size else s for g, s in scores.items()}
    curves, harm_info = (output_curves(scores, req) if req.harm == "output"
                         else ({}, {"harm": "score"}))

    def harm(g: int, picks: np.ndarray, nxt: int) -> float:
        if g not in curves:
            return float(norm[g][picks].sum())
        ks, loss = curves[g]
        rise = float(np.interp(nxt, ks, loss) - np.interp(keep[g], ks, loss))
        # ties (flat curve pieces) broken by the scores, far below any measured rise
        return max(rise, 0.0) + 1e-9 * float(norm[g][picks].sum())
    floor = {g: max(min(req.min_keep, s.size), 1) for g, s in scores.items()}
    keep = {g: s.size for g, s in scores.items()}
    units = {g: actx.groups[g].units for g in scores}
    tensors = {g: model.tensors_of(units[g]) for g in scores}
    terms = {g: {i for t in tensors[g] for i in model.terms_of_tensor[t]} for g in scores}
    neighbours = {g: [h for h in scores if terms[g] & terms[h]] for g in scores}

    def candidate(g: int) -> tuple[float, np.ndarray] | None:
        nxt = _next_keep(keep[g], req.round_for(g), floor[g])
        if nxt is None:
            return None
        size = scores[g].size
        picks = order[g][size - keep[g] : size - nxt]
        saved = model.saving(units[g][picks])
        if saved <= 0:
            return None
        return harm(g, picks, nxt) / saved, picks

    cands = {g: candidate(g) for g in scores}
    steps = 0
    while cost > target:
        live = [(c[0], g) for g, c in cands.items() if c is not None]
        if not live:
            break
        g = min(live)[1]
        picks = cands[g][1]
        cost -= model.saving(units[g][picks])
        model.remove(units[g][picks])
        keep[g] -= picks.size
        steps += 1
        for h in {g, *neighbours[g]}:
            cands[h] = candidate(h)
    masks = {g: top_mask(s, keep[g]) for g, s in scores.items()}
    info = {
        "mode": f"target-{metric}",
        "metric": metric,
        "target_fraction": fraction,
        "original": int(model.total),
        "target": int(math.floor(target)),
        "estimated": int(round(model.cost())),
        "estimated_fraction": round(float(model.cost() / model.total), 6) if model.total else 1.0,
        "reached": bool(cost <= target + 1e-6),
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 3),
        **harm_info,
    }
    if tables is not None:  # ms are not counts
        info.update({
            "original": round(model.total, 4), "target": round(target, 4),
            "estimated": round(model.cost(), 4), "unit": "ms (predicted)",
            "dense_measured_ms": round(tables.dense_ms, 4), "rest_ms": round(tables.rest_ms, 4),
            "tables": tables.stats, "uncovered": tables.uncovered,
        })
    return masks, info
