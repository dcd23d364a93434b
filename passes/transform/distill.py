"""`distill`: move the kept weights so the whole model's output matches the original's.

Why: `reconstruct` and `sparsify{correct}` refit one layer at a time to that layer's
original output (or to the residual stream after it). What a pruned or sparse layer
changes downstream -- through attention, LayerNorm, the next block -- is only fixed one
layer at a time, and a local fit cannot know which part of its error the rest of the
network ignores (stop 32: 2:4 sparsity and heads + FFN pruning of MiniLM stay 8-20 %
below dense recall after every local refit). Here the target is the model outputs: the
loss is the squared error of the current model's float outputs against the original
model's on the calibration set (padded tokens weighted 0; each output scaled by its
energy so a pooled vector counts as much as the token states), and Adam moves the chosen
initializers along its gradient (`passes/analysis/output_gradients.py`, TVM Relax).
It is post-training distillation of the compressed model from the original on the
calibration data only: no labels, no training set.

What it keeps: weights that are exactly zero stay zero (the gradient is masked), so a
`sparsify` pattern (2:4, block, unstructured) and every shape survive. `params=weights`
trains the Conv/Gemm/MatMul weights; `params=all` also the other float initializers the
arithmetic reads (biases, norm scales and shifts), never embedding tables or shape data.

Generalisation: a quarter of the calibration samples (`holdout`) never contribute a
gradient; after every epoch the model is run in onnxruntime on them and the epoch with
the lowest held-out output error is kept. When no epoch beats the model as it came in,
the model is left unchanged (reported as `kept`). The details give the held-out and the
fit error per epoch; the stats the before/after errors.

Cost: one TVM build of the gradient graph (seconds to a minute) and per epoch one
forward + backward pass over the fit samples (MiniLM, 48 windows of 128 tokens: about
8 s on 2 cores) plus an onnxruntime run over the held-out ones. The whole calibration
output stays in memory; this pass is for models that fit in memory, not the streamed
1B-parameter path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compress_ir.core.calibration import ActivationCapture, CalibrationSet
from compress_ir.core.errors import UsageError
from compress_ir.core.model import Model
from compress_ir.core.padding import token_mask
from compress_ir.core.passes import Pass, PassContext, PassResult, option, register_pass
from compress_ir.logs import progress
from compress_ir.passes.analysis.heldout import held_out, period_for
from compress_ir.passes.analysis.output_gradients import OutputGradients
from compress_ir.passes.weight_layers import initializer_layers

PARAMS = ("weights", "all")
# ops whose float initializers `params=all` trains (biases, scales, shifts)
ARITHMETIC = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Add", "Sub", "Mul",
                        "LayerNormalization", "BatchNormalization", "PRelu"})


@dataclass(frozen=True)
class DistillOptions:
    epochs: int = option(10, "passes over the fit samples; the best epoch on held-out"
                         " samples is kept")
    lr: float = option(5e-5, "Adam step size")
    batch: int = option(8, "calibration samples per gradient step")
    holdout: float = option(0.25, "fraction of calibration samples held out to choose the"
                            " epoch (and to keep the model unchanged when none helps)")
    params: str = option("weights", "what moves: 'weights' (Conv/Gemm/MatMul weights) or"
                         " 'all' (also biases and norm scales/shifts)")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("epochs and batch must be >= 1")
        if not self.lr > 0.0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.params not in PARAMS:
            raise ValueError(f"params must be one of {', '.join(PARAMS)}, got {self.params!r}")


def trainable(proto: onnx.ModelProto, params: str) -> list[str]:
    """Initializer names that move, in graph order (see the module docstring)."""
    weights = [la.weight for la in initializer_layers(proto)
               if la.array.dtype == np.float32]
    if params == "weights":
        return weights
    inits = {i.name: i for i in proto.graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            if name in inits:
                readers.setdefault(name, set()).add(node.op_type)
    extra = [name for name, ops in readers.items()
             if name not in weights and ops <= ARITHMETIC
             and inits[name].data_type == onnx.TensorProto.FLOAT
             and int(np.prod(inits[name].dims)) >= 2]
    chosen = set(weights) | set(extra)
    return [i.name for i in proto.graph.initializer if i.name in chosen]


def _weights(idx: np.ndarray, shape: tuple[int, ...], tokens: np.ndarray | None
             ) -> np.ndarray:
    """k for samples `idx`: the token mask over [B, S, ...] outputs, else 1 per sample."""
    if tokens is not None and len(shape) >= 2 and shape[1] == tokens.shape[1]:
        k = tokens[idx].astype(np.float32)
        return k.reshape(*k.shape, *[1] * (len(shape) - 2))
    return np.ones((len(idx),) + (1,) * (len(shape) - 1), np.float32)


def _subset(calib: CalibrationSet, idx: np.ndarray) -> CalibrationSet:
    return CalibrationSet({k: v[idx] for k, v in calib.arrays.items()}, calib.source)


def _outputs(proto: onnx.ModelProto, names: list[str], calib: CalibrationSet, batch: int
             ) -> list[np.ndarray]:
    capture = ActivationCapture(proto, names)
    parts = list(capture.stream(calib, batch, desc="distill"))
    return [np.concatenate([np.asarray(v[n]) for v in parts]) for n in names]


def _rel_error(outs: list[np.ndarray], refs: list[np.ndarray], ks: list[np.ndarray]) -> float:
    """sqrt(sum_i sum k_i (o_i - y_i)^2 / sum_i sum k_i y_i^2): with one output, its
    relative error; with several, their errors weighted as the loss weighs them."""
    num = sum(float((k * (o.astype(np.float64) - y) ** 2).sum())
              for o, y, k in zip(outs, refs, ks, strict=True))
    den = sum(float((k * y.astype(np.float64) ** 2).sum()) for y, k in zip(refs, ks, strict=True))
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


class Adam:
    """Adam (Kingma & Ba 2015) over a list of arrays; masked entries never move."""

    def __init__(self, values: list[np.ndarray], masks: list[np.ndarray | None], lr: float,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.values, self.masks, self.lr = values, masks, lr
        self.b1, self.b2, self.eps, self.t = beta1, beta2, eps, 0
        self.m = [np.zeros_like(v) for v in values]
        self.v = [np.zeros_like(v) for v in values]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for i, g in enumerate(grads):
            g = g.astype(np.float32)
            if self.masks[i] is not None:
                g = g * self.masks[i]
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g * g
            update = self.lr * (self.m[i] / c1) / (np.sqrt(self.v[i] / c2) + self.eps)
            self.values[i] = (self.values[i] - update).astype(np.float32)
            if self.masks[i] is not None:
                self.values[i] *= self.masks[i]


def _with_values(proto: onnx.ModelProto, names: list[str], values: list[np.ndarray]
                 ) -> onnx.ModelProto:
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    new = dict(zip(names, values, strict=True))
    for init in work.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
    return work


@register_pass("distill")
class Distill(Pass):
    summary = ("fit the kept weights to the original model's output by gradient steps"
               " on calibration data (needs --calib and Apache TVM)")
    in_place = True
    Options = DistillOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts = self.options
        orig = ctx.refit_original("distill")
        proto = model.to_proto()
        if [o.name for o in proto.graph.output] != [o.name for o in orig.graph.output]:
            raise UsageError("distill: the model's outputs "
                             f"{[o.name for o in proto.graph.output]} are not the original's "
                             f"{[o.name for o in orig.graph.output]}")
        calib = ctx.calibration
        assert calib is not None  # refit_original checked it
        n = calib.size
        held = held_out(np.arange(n), period_for(opts.holdout, n))
        fit_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
        if not len(held_idx) or not len(fit_idx):
            raise UsageError(f"distill needs at least 2 calibration samples, got {n}")
        batch = min(opts.batch, len(fit_idx))
        names = trainable(proto, opts.params)
        if not names:
            return PassResult(model, modified=False, details={"reason": "nothing to train"})
        start = time.perf_counter()
        out_names = [o.name for o in proto.graph.output]
        all_targets = _outputs(orig, out_names, calib, opts.batch)
        used = [i for i, t in enumerate(all_targets) if t.dtype.kind == "f"]
        if not used:
            raise UsageError("distill: the model has no float output to match")
        targets = [all_targets[i].astype(np.float32) for i in used]
        names_used = [out_names[i] for i in used]
        tokens = token_mask(orig, calib.arrays)
        # each output's weight: its token mask over its energy, so outputs count alike
        ks = []
        for y in targets:
            k = _weights(np.arange(n), y.shape, tokens)
            energy = float((k * y.astype(np.float64) ** 2).sum())
            ks.append(k / energy if energy > 0 else k)
        held_calib = _subset(calib, held_idx)

        def held_error(p: onnx.ModelProto) -> float:
            return _rel_error(_outputs(p, names_used, held_calib, opts.batch),
                              [y[held_idx] for y in targets], [k[held_idx] for k in ks])

        inits = {i.name: i for i in proto.graph.initializer}
        values = [numpy_helper.to_array(inits[nm]).astype(np.float32) for nm in names]
        weight_names = {la.weight for la in initializer_layers(proto)}
        masks = [(v != 0).astype(np.float32) if nm in weight_names and (v == 0).any()
                 else None for nm, v in zip(names, values, strict=True)]
        shapes = {nm: (batch, *arr.shape[1:]) for nm, arr in calib.arrays.items()}
        runner = OutputGradients(
            proto, names, shapes, {o: (batch, *y.shape[1:]) for o, y in zip(
                names_used, targets, strict=True)},
            {o: (batch, *k.shape[1:]) for o, k in zip(names_used, ks, strict=True)})
        adam = Adam(values, masks, opts.lr)
        rng = np.random.default_rng(ctx.seed)
        before = held_error(proto)
        best = (before, 0, [v.copy() for v in values])
        history: list[dict[str, Any]] = []
        for epoch in progress(range(1, opts.epochs + 1), desc="distill", unit="epoch"):
            order = rng.permutation(fit_idx)
            losses, energy = 0.0, 0.0
            for s in range(0, len(order) - batch + 1, batch):
                idx = order[s:s + batch]
                feeds = {nm: arr[idx] for nm, arr in calib.arrays.items()}
                loss, grads = runner(feeds, adam.values, [y[idx] for y in targets],
                                     [k[idx] for k in ks])
                losses += loss
                energy += sum(float((k[idx] * y[idx].astype(np.float64) ** 2).sum())
                              for y, k in zip(targets, ks, strict=True))
                adam.step(grads)
            error = held_error(_with_values(proto, names, adam.values))
            history.append({"epoch": epoch, "fit_rel_error": round(float(np.sqrt(
                losses / energy)) if energy else 0.0, 6), "heldout_rel_error": round(error, 6)})
            if error < best[0]:
                best = (error, epoch, [v.copy() for v in adam.values])
        modified = best[1] > 0
        if modified:
            tensors = model.tensors()
            for nm, v in zip(names, best[2], strict=True):
                tensors[nm].values = v
        stats = {"heldout_rel_error_before": round(before, 6),
                 "heldout_rel_error_after": round(best[0], 6),
                 "best_epoch": best[1], "params_trained": len(names),
                 "seconds": round(time.perf_counter() - start, 1),
                 "compile_seconds": round(runner.compile_seconds, 1)}
        details = {"epochs": history, "kept": not modified,
                   "compiled_with": runner.compiled_with,
                   "params": names, "outputs": names_used, "fit_samples": int(len(fit_idx)),
                   "heldout_samples": int(len(held_idx)),
                   "calibration": {"source": calib.source, "samples": n}}
        return PassResult(model, modified=modified, stats=stats, details=details)
