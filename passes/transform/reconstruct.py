"""`reconstruct`: refit the layers that lost input channels to the original's outputs.

After `channel-prune`, a Conv (group 1), Gemm or MatMul whose weight has fewer
input features than the same-named node of the pipeline's input model
(`ctx.original`) computes something else than it did. ThiNet (Luo et al. 2017) and
He et al. 2017 ("Channel Pruning for Accelerating Very Deep Neural Networks")
refit such a layer by least squares; this pass does so on calibration data:

    min_W,b || X W + 1 b - Y ||^2 + lam ||W||^2,   lam = ridge * mean(diag(Xc^T Xc))

X: the layer's input rows (im2col patches at random output positions, or feature
rows) captured from the *current* model; Y: the *original* layer's output at the
same positions (the original model's input patches times the original weights,
plus bias), restricted to the output channels the current layer kept; Xc is X
centred. The penalty acts on the centred problem and the bias is free, so it
absorbs the mean contribution of the removed channels. Only the normal equations
are accumulated (streamed, float64), never the rows. Layers are refit
in topological "levels" (a layer's level is one more than the deepest refit layer
or recalibrated BN above it); every level is re-captured from the current model,
so later layers are fit on the corrected upstream.

With `bn` (default), every BatchNormalization downstream of a change gets, at its
level, mean/var = the current model's input statistics and gamma/beta such that
its per-channel output mean and std equal the original BN's on the calibration
data (AdaBN-style, but matched to the original rather than renormalised).

Which original channels survived is recovered from the weights: the channel
analysis of the original assigns every producer's output channels to units, and
the kept rows of each producer's weight (restricted to its kept input channels)
are aligned, in order, with the original rows. Run `reconstruct` directly after
`channel-prune` (before `fold-bn`, which rescales the weights it aligns).

Transformers: exporters write a Linear as MatMul followed by an Add of a constant
bias vector (`bias_add`); that Add is the layer's bias, so the refit bias replaces
its constant (no extra node). Pruned attention heads reach the output projection as
missing input rows, which is refit like any MatMul; the FFN down projection likewise.

Stream target (`target=stream`): a layer whose output (after its bias Add) is added to a
residual stream is fit to Y = (the original stream after that Add) - (the current skip
input) instead of the original layer's output, so it also absorbs the error that pruning
upstream left in the stream (the skip path carries it past every branch-local refit). It
needs the current model's inputs (`inputs=current`); layers are leveled after the skip.

Generalisation (`passes/analysis/heldout.py`): every `period`-th calibration sample
(`holdout`, default a quarter) is held out; each ridge of `ridges` is fit on the
rest, the one with the lowest held-out error wins, and the layer keeps its pruned
weights when no refit beats them on the held-out samples. The chosen ridge is then
solved on all rows. Without held-out samples (holdout=0 or one sample) the fixed
`ridge` is used, unguarded.

The pass changes numerics on purpose, so it has no numeric reference; its details
report per layer the calibration error before and after (`rel_error_*`), the
held-out error before and after (`heldout_rel_error_*`), the ridge and whether the
refit was applied.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from compress_ir.core.calibration import ActivationCapture, CalibrationSet, batch_size_for
from compress_ir.core.errors import UsageError
from compress_ir.core.model import Model, infer_proto_shapes
from compress_ir.core.padding import batch_mask, token_mask, valid_rows
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.formats.view import unview
from compress_ir.logs import progress
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, analyse_channels
from compress_ir.passes.analysis.heldout import (
    RIDGES,
    Normal,
    choose,
    held_out,
    period_for,
    sample_of,
)
from compress_ir.passes.weight_layers import (
    WEIGHT_OPS,
    RowSampler,
    WeightLayer,
    bias_add,
    linear,
    residual_add,
    weight_of,
    write_linear,
)

EPS = 1e-12
INPUTS = ("current", "original")
PRIORS = ("zero", "pruned")
BIASES = ("refit", "keep")
FITS = ("weights", "scale")
TARGETS = ("layer", "stream")


@dataclass(frozen=True)
class ReconstructOptions:
    ridge: float = option(1e-3, "ridge penalty (relative to the mean diagonal of the centred"
                          " X^T X) when nothing is held out (holdout=0 or 1 sample)")
    ridges: tuple[float, ...] = option(RIDGES, "ridge penalties tried; the one with the lowest"
                                       " held-out error wins")
    holdout: float = option(0.25, "fraction of calibration samples held out to choose the ridge"
                            " and to skip a refit that would not help on them (0: off)")
    samples: int = option(4096, "at most this many sampled rows per layer")
    bn: bool = option(True, "recalibrate BatchNormalization layers downstream of a change")
    downstream: bool = option(False, "also refit weight layers that lost no inputs but whose"
                              " inputs changed upstream (stops error compounding; slower)")
    inputs: str = option("current", "X of the fit: 'current' (the pruned model's inputs, layer"
                         " by layer) or 'original' (the dense model's inputs restricted to the"
                         " kept channels, one-shot)")
    prior: str = option("zero", "what the ridge shrinks the weights toward: 'zero' or"
                        " 'pruned' (the pruned layer's weights, as onnxsim's refit does)")
    bias: str = option("refit", "'refit' (free bias, absorbs the removed inputs' mean) or"
                       " 'keep' (the layer's bias stays; as onnxsim's refit of MatMul + Add)")
    fit: str = option("weights", "'weights' (every weight of the layer) or 'scale' (one"
                      " factor per kept input unit, Kwon et al.'s mask tuning: far fewer"
                      " unknowns, so less to overfit)")
    target: str = option("layer", "Y of the fit: 'layer' (the original layer's output) or"
                         " 'stream' (for a layer whose output is added to a residual stream:"
                         " the original stream after the Add minus the current skip input, so"
                         " the layer also absorbs the error upstream pruning left in the"
                         " stream; needs inputs=current)")

    def __post_init__(self) -> None:
        if not self.ridge >= 0.0 or not all(r >= 0.0 for r in self.ridges):
            raise ValueError(f"ridge must be >= 0, got {self.ridge} / {list(self.ridges)}")
        if not self.ridges:
            raise ValueError("ridges must list at least one value")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {list(INPUTS)}, got {self.inputs!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {list(PRIORS)}, got {self.prior!r}")
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {list(BIASES)}, got {self.bias!r}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {list(FITS)}, got {self.fit!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        if self.target == "stream" and self.inputs != "current":
            raise ValueError("target=stream needs inputs=current: the skip input it subtracts"
                             " comes from the current model, so X must too")


# -- which original channels survived ----------------------------------------------------
def _align(original: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, float]:
    """Increasing indices into `original` rows best matching `current` rows, in order.

    Maximises -sum ||orig[i_j] - cur[j]||^2 / ||cur[j]||^2 over increasing i_j by
    dynamic programming; returns the indices and the worst relative distance.
    """
    o, k = original.shape[0], current.shape[0]
    if k == o:
        idx = np.arange(o)
    else:
        a = original.reshape(o, -1).astype(np.float64)
        b = current.reshape(k, -1).astype(np.float64)
        bn = (b**2).sum(1)
        dist = (a**2).sum(1)[None, :] + bn[:, None] - 2.0 * b @ a.T  # [k, o]
        score = -np.maximum(dist, 0.0) / (bn[:, None] + EPS)
        f = np.full((k, o), -np.inf)
        back = np.zeros((k, o), dtype=np.int64)
        f[0] = score[0]
        positions = np.arange(o)
        for j in range(1, k):
            prev = f[j - 1]
            best = np.maximum.accumulate(prev)
            arg = np.maximum.accumulate(np.where(prev == best, positions, 0))
            f[j, 1:] = score[j, 1:] + best[:-1]
            back[j, 1:] = arg[:-1]
        idx = np.zeros(k, dtype=np.int64)
        idx[-1] = int(np.argmax(f[-1]))
        for j in range(k - 1, 0, -1):
            idx[j - 1] = back[j, idx[j]]
    a = original[idx].reshape(k, -1).astype(np.float64)
    b = current.reshape(k, -1).astype(np.float64)
    rel = np.linalg.norm(a - b, axis=1) / (np.linalg.norm(b, axis=1) + EPS)
    return idx, float(rel.max()) if rel.size else 0.0


def _group_local(mask: np.ndarray, groups: int) -> np.ndarray:
    return mask.reshape(groups, -1)[0] if groups > 1 else mask


def recover_keep(
    analysis: ChannelAnalysis, current: dict[str, gs.Node], max_distance: float = 0.5,
) -> tuple[dict[str, np.ndarray], set[int]]:
    """Keep masks (per tensor of the original) of the channels `current` still has."""
    order = {name: i for i, name in enumerate(analysis.nodes)}
    removed: set[int] = set()
    groups = []
    for group in analysis.groups:
        roots = sorted((r for r in group.roots if r.kind == "producer" and r.weight),
                       key=lambda r: order.get(r.node, 0))
        if roots:
            groups.append((order.get(roots[0].node, 0), roots))
    for _, roots in sorted(groups, key=lambda item: item[0]):
        for root in roots:
            node = analysis.nodes[root.node]
            cur = current.get(root.node)
            index = next(i for i, t in enumerate(node.inputs) if t.name == root.weight)
            if cur is None or cur.op != node.op or len(cur.inputs) <= index:
                continue
            cur_w = cur.inputs[index]
            if not isinstance(cur_w, gs.Constant):
                continue
            weight = np.asarray(node.inputs[index].values)
            keep = analysis.keep_masks(removed)
            for s in analysis.slices:
                if s.node == root.node and s.input_index == index and s.axis != root.weight_axis:
                    weight = np.compress(_group_local(keep[s.by], s.groups), weight, axis=s.axis)
            orig = np.moveaxis(weight, root.weight_axis, 0)
            now = np.moveaxis(np.asarray(cur_w.values), root.weight_axis, 0)
            if orig.shape[1:] != now.shape[1:] or now.shape[0] > orig.shape[0]:
                raise UsageError(
                    f"reconstruct: weight of node {root.node!r} has shape {list(now.shape)}, "
                    f"which is no channel subset of the original's {list(orig.shape)}")
            idx, worst = _align(orig, now)
            if worst > max_distance:
                raise UsageError(
                    f"reconstruct: cannot match the channels of node {root.node!r} to the "
                    f"original model (weights changed by {worst:.2g}); run reconstruct "
                    "directly after channel-prune")
            gone = np.setdiff1d(np.arange(orig.shape[0]), idx)
            units = analysis.unit_of[root.first + gone]
            removed.update(int(u) for u in units)
            break
    return analysis.keep_masks(removed), removed


# -- the layers to refit --------------------------------------------------------------
@dataclass
class Target:
    """One layer to refit (kind conv/rows) or one BatchNormalization to recalibrate."""

    node: gs.Node
    kind: str  # "conv" | "rows" | "bn"
    level: int
    out_keep: np.ndarray | None = None
    rows: int = 0
    sums: dict[str, Any] = field(default_factory=dict)
    # inputs=original: (axis, kept-channel mask or None for all) of the original's input
    in_keep: tuple[int, np.ndarray | None] | None = None
    # target=stream: (skip input in the current model, residual Add output in the original)
    stream: tuple[str, str] | None = None


def _const(node: gs.Node, index: int) -> np.ndarray | None:
    if index < len(node.inputs) and isinstance(node.inputs[index], gs.Constant):
        return np.asarray(node.inputs[index].values)
    return None


def _in_features(node: gs.Node) -> int | None:
    """Input features K of a weight layer this pass can refit, else None.

    Refit needs plain x W^T rows: a Conv of group 1, a Gemm without transA, a MatMul.
    """
    if weight_of(node) is None:
        return None
    if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
        return None
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return None
    return WeightLayer(node, node.inputs[1]).shape()[1]


def _linear(node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """(weight as [O, K], bias [O]) of what the node computes, alpha/beta folded in.

    A MatMul's bias is that of the `Add` right after it (`bias_add`), if any.
    """
    weight, bias = linear(node, _const(node, 1), _const(node, 2))
    found = bias_add(node)
    if found is not None:
        bias = np.asarray(found[0].inputs[found[1]].values)
    return weight, (np.zeros(weight.shape[0]) if bias is None else bias)


def _write(model: Model, node: gs.Node, weight: np.ndarray, bias: np.ndarray) -> None:
    """Store a refit; a MatMul with a bias `Add` gets the new bias in that Add."""
    found = bias_add(node)
    if found is None:
        write_linear(model, node, weight, bias)
        return
    add, index = found
    old = np.asarray(node.inputs[1].values)
    node.inputs[1] = gs.Constant(f"{node.name}__w_reconstructed",
                                 unview(node.op, weight, old.shape, False).astype(old.dtype))
    dtype = np.asarray(add.inputs[index].values).dtype
    add.inputs[index] = gs.Constant(f"{node.name}__b_reconstructed", bias.astype(dtype))


def _bias_ok(node: gs.Node) -> bool:
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        c = _const(node, 2)
        return c is not None and c.ndim <= 1
    return True


def _plan(
    model: Model, original: dict[str, gs.Node], keep: dict[str, np.ndarray], use_bn: bool,
    downstream: bool = False, stream: bool = False,
) -> tuple[list[Target], list[dict]]:
    """Targets with their levels (topological), and the layers skipped (with why)."""
    model.graph.toposort()
    level: dict[str, int] = {}
    dirty: set[str] = set()
    targets: list[Target] = []
    skipped: list[dict] = []
    for node in model.graph.nodes:
        lvl = max((level.get(t.name, 0) for t in node.inputs), default=0)
        orig = original.get(node.name)
        changed = any(t.name in dirty for t in node.inputs) or orig is None or any(
            isinstance(t, gs.Constant) and (
                i >= len(orig.inputs) or not isinstance(orig.inputs[i], gs.Constant)
                or tuple(orig.inputs[i].values.shape) != tuple(t.values.shape))
            for i, t in enumerate(node.inputs))
        target = None
        if orig is not None and orig.op == node.op and node.op in WEIGHT_OPS:
            k_now, k_orig = _in_features(node), _in_features(orig)
            inputs_changed = node.inputs[0].name in dirty
            if k_now is not None and k_orig is not None and (
                    k_now < k_orig or (downstream and k_now == k_orig and inputs_changed)):
                kind = "conv" if node.op == "Conv" else "rows"
                reason = None
                if not _bias_ok(node) or not _bias_ok(orig):
                    reason = "Gemm bias C is not a vector"
                elif kind == "conv" and len(_const(node, 1).shape) != 4:
                    reason = "only 2-D convolutions are refit"
                elif kind == "conv" and str(node.attrs.get("auto_pad", "NOTSET")) not in (
                        "NOTSET", "VALID"):
                    reason = "auto_pad SAME is not supported"
                if reason:
                    skipped.append({"node": node.name, "reason": reason})
                else:
                    target = Target(node, kind, lvl + 1)
        elif (use_bn and node.op == "BatchNormalization" and orig is not None
              and orig.op == node.op and node.inputs[0].name in dirty
              and all(isinstance(t, gs.Constant) for t in node.inputs[1:5])
              and not int(node.attrs.get("training_mode", 0))):
            target = Target(node, "bn", lvl + 1)
        if target is not None:
            name = orig.outputs[0].name
            count = (_const(node, 1).shape[0] if target.kind == "conv"
                     else _linear(node)[0].shape[0] if target.kind == "rows"
                     else _const(node, 1).size)
            mask = keep.get(name)
            if mask is None:
                mask = np.ones(count, dtype=bool)
            if int(mask.sum()) != count:
                raise UsageError(
                    f"reconstruct: node {node.name!r} has {count} output channels, but the "
                    f"channels recovered from the original keep {int(mask.sum())}")
            target.out_keep = mask
            if stream and target.kind == "rows" and bool(mask.all()):
                _stream_target(target, original, level)
            targets.append(target)
            lvl = target.level
        for out in node.outputs:
            level[out.name] = lvl
            if changed or target is not None:
                dirty.add(out.name)
    return targets, skipped


def _stream_target(t: Target, original: dict[str, gs.Node], level: dict[str, int]) -> None:
    """Aim `t` at the residual stream (target=stream) when its output feeds one."""
    found = residual_add(t.node)
    orig_add = original.get(found[0].name) if found else None
    if found is None or orig_add is None or orig_add.op != "Add":
        return
    t.stream = (found[1].name, orig_add.outputs[0].name)
    t.level = max(t.level, level.get(found[1].name, 0) + 1)


# -- one level: capture, accumulate, solve ------------------------------------------
def _proto(model: Model) -> onnx.ModelProto:
    return infer_proto_shapes(model.to_proto())


def _capture_level(
    targets: list[Target], cur: onnx.ModelProto, orig: onnx.ModelProto,
    original: dict[str, gs.Node], calib: CalibrationSet, samples: int, seed: int,
    holdout: float = 0.0,
) -> None:
    """Stream both models once; accumulate normal equations and BN statistics."""
    cur_names, orig_names = set(), set()
    for t in targets:
        o = original[t.node.name]
        if t.in_keep is None:
            cur_names.add(t.node.inputs[0].name)
        if t.stream is not None:
            cur_names.add(t.stream[0])
            orig_names.add(t.stream[1])
        orig_names.add(o.outputs[0].name if t.kind == "bn" else o.inputs[0].name)
    batch = batch_size_for(cur, 128)
    batches = math.ceil(calib.size / batch)
    now_stream: Any = (ActivationCapture(cur, sorted(cur_names)).stream(calib, batch)
                       if cur_names else itertools.repeat({}))
    # not strict: without current-model tensors the first stream repeats {} forever
    streams = zip(now_stream, ActivationCapture(orig, sorted(orig_names)).stream(calib, batch),
                  strict=False)
    per_batch = max(1, math.ceil(samples / batches))
    period = period_for(holdout, calib.size)
    tokens = token_mask(orig, calib.arrays)
    for b, (now, then) in enumerate(streams):
        for n, t in enumerate(targets):
            o = original[t.node.name]
            if t.kind == "bn":
                x = now[t.node.inputs[0].name].astype(np.float64)
                _bn_sums(t, x, then[o.outputs[0].name].astype(np.float64))
                continue
            xo = then[o.inputs[0].name].astype(np.float64)
            if t.in_keep is None:
                x = now[t.node.inputs[0].name].astype(np.float64)
            elif t.in_keep[1] is None:
                x = xo
            else:
                x = np.compress(t.in_keep[1], xo, axis=t.in_keep[0])
            rng = np.random.default_rng([seed, n, b])
            s_now = RowSampler(t.node, _const(t.node, 1).shape)
            s_then = RowSampler(o, _const(o, 1).shape)
            pos = s_now.positions(x, per_batch, rng, valid_rows(x, batch_mask(tokens, b, batch)))
            rows, rows_o = s_now.rows_at(x, pos), s_then.rows_at(xo, pos)
            w_o, b_o = _linear(o)
            if t.stream is None:
                y = (rows_o @ w_o.T.astype(np.float64) + b_o)[:, t.out_keep]
            else:
                skip, total = now[t.stream[0]], then[t.stream[1]]
                if skip.shape != total.shape or skip.shape[-1] != int(t.out_keep.sum()):
                    raise UsageError(
                        f"reconstruct: target=stream: the residual Add after {t.node.name!r}"
                        f" broadcasts (skip {list(skip.shape)}, sum {list(total.shape)})")
                y = (total.reshape(-1, total.shape[-1])[pos].astype(np.float64)
                     - skip.reshape(-1, skip.shape[-1])[pos])
            held = held_out(sample_of(pos, x, t.kind == "conv", b * batch), period)
            t.sums.setdefault("fit", Normal()).add(rows[~held], y[~held])
            t.sums.setdefault("held", Normal()).add(rows[held], y[held])
            t.rows += rows.shape[0]


def _bn_sums(t: Target, x: np.ndarray, y: np.ndarray) -> None:
    def moments(v: np.ndarray) -> np.ndarray:
        flat = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
        return np.stack([flat.sum(1), (flat**2).sum(1)])

    s = t.sums
    s["x"] = s.get("x", 0) + moments(x)
    s["y"] = s.get("y", 0) + moments(y)[:, t.out_keep]
    s["n"] = s.get("n", 0) + x.size // x.shape[1]


def _refit(model: Model, t: Target, opts: ReconstructOptions) -> dict:
    """Refit the layer if that lowers its held-out error (see `heldout.choose`)."""
    fit, held = t.sums.get("fit", Normal()), t.sums.get("held", Normal())
    weight, bias = _linear(t.node)
    current = np.vstack([weight.T, bias[None, :]]).astype(np.float64)
    choice = choose(fit, held, current, opts.ridges, opts.ridge,
                    toward_current=opts.prior == "pruned", keep_bias=opts.bias == "keep",
                    scale=opts.fit == "scale")
    k = current.shape[0] - 1
    if choice.applied:
        _write(model, t.node, choice.coef[:k].T, choice.coef[k])
    return {"node": t.node.name, "op": t.node.op, "level": t.level, "rows": t.rows,
            "heldout_rows": held.rows, "features": k,
            "target": "layer" if t.stream is None else "stream", **choice.report()}


def _recalibrate(t: Target) -> dict:
    s = t.sums
    node = t.node
    n = max(s["n"], 1)
    mean_x = s["x"][0] / n
    var_x = np.maximum(s["x"][1] / n - mean_x**2, 0.0)
    mean_y = s["y"][0] / n
    std_y = np.sqrt(np.maximum(s["y"][1] / n - mean_y**2, 0.0))
    eps = float(node.attrs.get("epsilon", 1e-5))
    gamma = np.asarray(node.inputs[1].values, np.float64)
    sign = np.where(gamma < 0, -1.0, 1.0)
    live = var_x > EPS
    new_gamma = np.where(live, sign * std_y * np.sqrt(var_x + eps) / np.sqrt(
        np.where(live, var_x, 1.0)), gamma)
    dtype = np.asarray(node.inputs[1].values).dtype
    for i, value in ((1, new_gamma), (2, mean_y), (3, mean_x), (4, var_x)):
        node.inputs[i] = gs.Constant(f"{node.name}__{i}_recalibrated", value.astype(dtype))
    return {"node": node.name, "level": t.level, "channels": int(mean_x.size)}


def _use_original_inputs(
    targets: list[Target], analysis: ChannelAnalysis, keep: dict[str, np.ndarray],
    original: dict[str, gs.Node],
) -> None:
    """Fit every weight layer on the dense model's inputs at its kept channels, one-shot.

    Why: fitting on the pruned model's inputs chases upstream pruning error layer by
    layer (on MiniLM it made recall worse than no refit); the dense inputs restricted
    to the surviving channels are what onnxsim's refit uses. No layer then depends on
    another's refit, so all of them are captured in one pass (level 1); BatchNorm
    targets keep their levels and still see the current model.
    """
    for t in targets:
        if t.kind == "bn":
            continue
        name = original[t.node.name].inputs[0].name
        layout, mask = analysis.layouts.get(name), keep.get(name)
        k_now = _in_features(t.node)
        per_channel = _const(t.node, 1).shape[1] if t.kind == "conv" else k_now
        if layout is None or mask is None:
            if k_now != _in_features(original[t.node.name]):
                raise UsageError(f"reconstruct: inputs=original: the channels of {name!r} "
                                 f"(input of {t.node.name!r}) are not tracked")
            t.in_keep = (0, None)
        elif int(mask.sum()) != per_channel:
            raise UsageError(f"reconstruct: inputs=original: {t.node.name!r} has {per_channel}"
                             f" input channels, the kept channels of {name!r} are"
                             f" {int(mask.sum())}")
        else:
            t.in_keep = (layout.axis, mask)
        t.level = 1


@register_pass("reconstruct")
class Reconstruct(Pass):
    summary = "refit pruned layers by least squares to the original outputs (needs --calib)"
    in_place = True
    Options = ReconstructOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        orig_proto = ctx.refit_original("reconstruct")
        opts = self.options
        orig_model = Model.from_proto(orig_proto)
        analysis = analyse_channels(orig_model)
        original = {n.name: n for n in orig_model.graph.nodes}
        current = {n.name: n for n in model.graph.nodes}
        keep, removed = recover_keep(analysis, current)
        targets, skipped = _plan(model, original, keep, opts.bn, opts.downstream,
                                 opts.target == "stream")
        if opts.inputs == "original":
            _use_original_inputs(targets, analysis, keep, original)
        layers: list[dict] = []
        norms: list[dict] = []
        by_level: dict[int, list[Target]] = defaultdict(list)
        for t in targets:
            by_level[t.level].append(t)
        for lvl in progress(sorted(by_level), desc="reconstruct", unit="level"):
            level_targets = by_level[lvl]
            _capture_level(level_targets, _proto(model), orig_proto, original,
                           ctx.calibration, opts.samples, ctx.seed, opts.holdout)
            for t in level_targets:
                if t.kind == "bn":
                    norms.append(_recalibrate(t))
                else:
                    layers.append(_refit(model, t, opts))
        refit = [r for r in layers if r["refit"]]
        stats: dict[str, float] = {
            "layers_refit": len(refit),
            "layers_kept": len(layers) - len(refit),
            "bn_recalibrated": len(norms),
            "levels": len(by_level),
            "units_recovered_removed": len(removed),
        }
        if layers:
            stats["mean_rel_error_before"] = round(
                float(np.mean([r["rel_error_before"] for r in layers])), 6)
            stats["mean_rel_error_after"] = round(
                float(np.mean([r["rel_error_after"] for r in layers])), 6)
            stats["max_rel_error_after"] = max(r["rel_error_after"] for r in layers)
            held = [r for r in layers if "heldout_rel_error_before" in r]
            if held:
                stats["mean_heldout_rel_error_before"] = round(
                    float(np.mean([r["heldout_rel_error_before"] for r in held])), 6)
                stats["mean_heldout_rel_error_after"] = round(
                    float(np.mean([r["heldout_rel_error_after"] for r in held])), 6)
        details = {"layers": layers, "bn": norms, "skipped": skipped,
                   "calibration": {"source": ctx.calibration.source,
                                   "samples": ctx.calibration.size}}
        modified = bool(refit or norms)
        return PassResult(model, modified=modified, stats=stats, details=details)
