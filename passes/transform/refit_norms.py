"""`refit-norms`: refit each LayerNormalization's scale and shift to the original's output.

Why: the refits of weight layers (`reconstruct`, `sparsify` with `correct`) each target
their own layer's output. In a transformer the result travels in the residual stream,
and in a post-norm block (BERT, MiniLM: `x' = LN(x + f(x))`) every block's stream *is* a
LayerNorm output. Its per-channel scale and shift can absorb part of what pruning moved
there, toward the original model's stream. They are 2 unknowns per channel, solved in
closed form from a few thousand calibration tokens, so they cannot overfit them as a
weight refit can (issue 14).

For every LayerNormalization whose same-named node is in the original model (last axis,
constant scale and bias), in topological order:

    n = (x - mean(x)) / sqrt(var(x) + eps)     x: its input in the *current* model
    min_{g_c, b_c}  sum_t (g_c n_tc + b_c - y_tc)^2     y: the original LN's output

on the same calibration tokens (padded positions left out, `compress_ir/core/padding.py`).
Each LN is captured after the ones before it were refit, so it sees the corrected stream.
Every `period`-th calibration sample (`holdout`) is held out: the fit uses the others, and
the LN keeps its scale and shift unless the fit lowers the error on the held-out samples.
The details report, per LN, the held-out relative error of its output before and after.

The pass changes numerics on purpose: it has no numeric reference (as `reconstruct`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from compress_ir.core.calibration import ActivationCapture, CalibrationSet, batch_size_for
from compress_ir.core.model import Model, infer_proto_shapes
from compress_ir.core.padding import batch_mask, token_mask, valid_rows
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.logs import progress
from compress_ir.passes.analysis.heldout import held_out, period_for


@dataclass(frozen=True)
class RefitNormsOptions:
    holdout: float = option(0.25, "fraction of calibration samples held out; an LN is refit"
                            " only if that lowers their error (0: always refit)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


class Moments:
    """Per-channel sums of n, y, n^2, n*y, y^2 over tokens: all a 1-D fit needs."""

    def __init__(self, channels: int) -> None:
        self.sums = np.zeros((5, channels))
        self.count = 0

    def add(self, n: np.ndarray, y: np.ndarray) -> None:
        self.sums += np.stack([n.sum(0), y.sum(0), (n * n).sum(0), (n * y).sum(0),
                               (y * y).sum(0)])
        self.count += n.shape[0]

    def fit(self, gamma: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares (g, b) per channel; a channel with no spread keeps its own."""
        s_n, s_y, s_nn, s_ny, _ = self.sums / max(self.count, 1)
        var = s_nn - s_n**2
        live = var > 1e-12
        g = np.where(live, (s_ny - s_n * s_y) / np.where(live, var, 1.0), gamma)
        return g, np.where(live, s_y - g * s_n, beta)

    def error(self, g: np.ndarray, b: np.ndarray) -> float:
        """sum over tokens and channels of (g n + b - y)^2."""
        s_n, s_y, s_nn, s_ny, s_yy = self.sums
        return float(np.sum(g * g * s_nn + 2 * g * b * s_n + b * b * self.count
                            - 2 * g * s_ny - 2 * b * s_y + s_yy))

    def energy(self) -> float:
        return float(self.sums[4].sum())


def _layer_norms(model: Model, original: dict[str, gs.Node]) -> tuple[list[gs.Node], list[dict]]:
    """LayerNormalization nodes this pass can refit, and the skipped ones with why."""
    model.graph.toposort()
    found, skipped = [], []
    for node in model.graph.nodes:
        if node.op != "LayerNormalization":
            continue
        orig = original.get(node.name)
        reason = None
        if orig is None or orig.op != node.op:
            reason = "no LayerNormalization of that name in the original model"
        elif not isinstance(node.inputs[1], gs.Constant) or (
                len(node.inputs) > 2 and node.inputs[2].name
                and not isinstance(node.inputs[2], gs.Constant)):
            reason = "scale or bias is computed at run time"
        elif np.asarray(node.inputs[1].values).ndim != 1:
            reason = "normalises over more than the last axis"
        elif int(node.attrs.get("axis", -1)) not in (-1, len(node.inputs[0].shape or []) - 1):
            reason = "normalises over more than the last axis"
        if reason:
            skipped.append({"node": node.name, "reason": reason})
        else:
            found.append(node)
    return found, skipped


def _params(node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    gamma = np.asarray(node.inputs[1].values, np.float64)
    has_bias = len(node.inputs) > 2 and node.inputs[2].name
    beta = np.asarray(node.inputs[2].values, np.float64) if has_bias else np.zeros_like(gamma)
    return gamma, beta


def _normalised(x: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def _capture(node: gs.Node, orig: gs.Node, cur: onnx.ModelProto, orig_proto: onnx.ModelProto,
             calib: CalibrationSet, period: int) -> tuple[Moments, Moments]:
    """(fit, held-out) moments of the current LN's normalised input vs the original output."""
    channels = np.asarray(node.inputs[1].values).size
    fit, held = Moments(channels), Moments(channels)
    eps = float(node.attrs.get("epsilon", 1e-5))
    batch = batch_size_for(cur, 64)
    tokens = token_mask(orig_proto, calib.arrays)
    now = ActivationCapture(cur, [node.inputs[0].name]).stream(calib, batch, desc=node.name)
    then = ActivationCapture(orig_proto, [orig.outputs[0].name]).stream(calib, batch,
                                                                        desc=node.name)
    for b, (xs, ys) in enumerate(zip(now, then, strict=True)):
        x, y = xs[node.inputs[0].name], ys[orig.outputs[0].name]
        n = _normalised(x, eps).reshape(-1, channels)
        y = y.astype(np.float64).reshape(-1, channels)
        per_sample = n.shape[0] // max(1, x.shape[0])
        sample = b * batch + np.arange(n.shape[0]) // max(1, per_sample)
        keep = valid_rows(x, batch_mask(tokens, b, batch))
        keep = np.ones(n.shape[0], bool) if keep is None else keep
        out = held_out(sample, period)
        fit.add(n[keep & ~out], y[keep & ~out])
        held.add(n[keep & out], y[keep & out])
    return fit, held


def _write(node: gs.Node, gamma: np.ndarray, beta: np.ndarray) -> None:
    dtype = np.asarray(node.inputs[1].values).dtype
    node.inputs[1] = gs.Constant(f"{node.name}__scale_refit", gamma.astype(dtype))
    bias = gs.Constant(f"{node.name}__bias_refit", beta.astype(dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)


def _rel(moments: Moments, g: np.ndarray, b: np.ndarray) -> float:
    return math.sqrt(max(moments.error(g, b), 0.0) / max(moments.energy(), 1e-30))


@register_pass("refit-norms")
class RefitNorms(Pass):
    summary = "refit LayerNorm scale/shift to the original model's outputs (needs --calib)"
    in_place = True
    Options = RefitNormsOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        orig_proto = ctx.refit_original("refit-norms")
        original = {n.name: n for n in Model.from_proto(orig_proto).graph.nodes}
        norms, skipped = _layer_norms(model, original)
        period = period_for(self.options.holdout, ctx.calibration.size)
        rows: list[dict] = []
        for node in progress(norms, desc="refit-norms", unit="norm"):
            cur = infer_proto_shapes(model.to_proto())
            fit, held = _capture(node, original[node.name], cur, orig_proto,
                                 ctx.calibration, period)
            gamma, beta = _params(node)
            g, b = fit.fit(gamma, beta)
            check = held if held.count else fit
            before, after = _rel(check, gamma, beta), _rel(check, g, b)
            applied = after < before
            if applied:
                _write(node, g, b)
            rows.append({"node": node.name, "tokens": fit.count, "heldout_tokens": held.count,
                         "rel_error_before": round(before, 6), "rel_error_after": round(after, 6),
                         "refit": applied})
        refit = [r for r in rows if r["refit"]]
        stats: dict[str, float] = {"norms_refit": len(refit), "norms_kept": len(rows) - len(refit)}
        if rows:
            stats["mean_rel_error_before"] = round(
                float(np.mean([r["rel_error_before"] for r in rows])), 6)
            stats["mean_rel_error_after"] = round(
                float(np.mean([min(r["rel_error_after"], r["rel_error_before"]) for r in rows])), 6)
        details = {"norms": rows, "skipped": skipped, "heldout": bool(period),
                   **({} if norms or skipped else {"note": "no LayerNormalization node (a "
                      "LayerNorm exported as ReduceMean/Sub/Pow/... chains is not matched)"}),
                   "calibration": {"source": ctx.calibration.source,
                                   "samples": ctx.calibration.size}}
        return PassResult(model, modified=bool(refit), stats=stats, details=details)

