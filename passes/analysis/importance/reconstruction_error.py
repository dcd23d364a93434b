"""Reconstruction-error criteria: ThiNet, LASSO channel selection, layer-wise OBD / OBS.

Each reads, for every reducing consumer of a group that sums over its channels
(group-1 Conv with explicit or VALID padding, Gemm, MatMul), the sampled consumer
inputs X [S, K] (im2col rows for a Conv), its weight W [O, K] and the channel
position of each of the K features (`CalibrationStats.linear`). F_c is the set of
features that belong to unit c (for a Conv the kh*kw taps of its channel; after a
Flatten every spatial position of the channel), and

    Z_c = X[:, F_c] @ W[:, F_c].T      [S, O]

is unit c's contribution to the consumer's pre-bias output on the sampled rows.
Features of other groups (a Concat's other inputs) are left alone: their
contribution is the same with or without this group's units. Objectives are sums
over the group's consumers of per-consumer *means over the sampled rows* (so a
consumer sampled with more rows does not weigh more), in absolute output units.

A consumer that cannot be sampled (a grouped Conv, SAME auto_pad, ConvTranspose)
is skipped; if some unit of the group reaches only such consumers, the criterion
raises a UsageError naming the producers and the consumer: no silent fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compress_ir.passes.analysis.calibration_stats import LinearSamples
from compress_ir.passes.analysis.channel_groups import ChannelGroup
from compress_ir.passes.analysis.importance.activation import (
    ConsumerSite,
    consumer_sites,
    require_calibration,
)
from compress_ir.passes.analysis.importance.base import (
    CRITERIA,
    EPS,
    Criterion,
    ScoreContext,
    UnscorableGroup,
)

GRAM_BUDGET = 1 << 28  # multiply-adds for one consumer's Gram matrix (units^2 * rows * outputs)
Z_BUDGET = 1 << 22  # float64 values of the stacked contributions Z (32 MiB)
OBS_DAMPING = 1e-2  # H + damping * mean(diag H) * I


@dataclass
class LinearConsumer:
    """One sampled consumer of a group, with each feature's unit (index into group.units)."""

    site: ConsumerSite
    samples: LinearSamples
    feature_unit: np.ndarray  # [K]; -1 for features of other groups

    def unit_features(self) -> list[tuple[int, np.ndarray]]:
        """(unit index, feature indices F_c) for every unit of the group present here."""
        fu = self.feature_unit
        return [(int(u), np.flatnonzero(fu == u)) for u in np.unique(fu[fu >= 0])]


def linear_consumers(group: ChannelGroup, ctx: ScoreContext, name: str) -> list[LinearConsumer]:
    """The group's sampled consumers; raise if a unit reaches only unsupported ones."""
    stats = require_calibration(ctx, name)
    consumed = np.zeros(group.size, dtype=bool)
    covered = np.zeros(group.size, dtype=bool)
    found: list[LinearConsumer] = []
    unsupported: list[ConsumerSite] = []
    for site in consumer_sites(group, ctx):
        consumed[site.unit_index] = True
        samples = stats.linear(site.slice)
        if samples is None:
            unsupported.append(site)
            continue
        unit_at = np.full(ctx.analysis.layouts[site.slice.by].ids.size, -1, dtype=np.int64)
        unit_at[site.positions] = site.unit_index
        feature_unit = unit_at[samples.channel]
        covered[feature_unit[feature_unit >= 0]] = True
        found.append(LinearConsumer(site, samples, feature_unit))
    if (consumed & ~covered).any():
        producers = ", ".join(r.node for r in group.roots if r.kind == "producer")
        ops = ", ".join(
            sorted({f"{ctx.analysis.nodes[s.slice.node].op} node {s.slice.node!r}"
                    for s in unsupported})
        )
        raise UnscorableGroup(
            f"criterion {name!r}: the channels of [{producers}] are consumed by {ops}, which "
            "it cannot sample (it needs a group-1 Conv with explicit or VALID padding, a Gemm "
            "or a MatMul); exclude these producers or use another criterion"
        )
    return found


def contribution_gram(
    consumer: LinearConsumer, size: int, rng: np.random.Generator
) -> np.ndarray:
    """G[c, d] = <Z_c, Z_d> / S over the group's units (size x size).

    Exact over all sampled rows and outputs while units^2 * rows * outputs fits
    GRAM_BUDGET and units * rows * outputs fits Z_BUDGET (never below 2 * units
    pairs); beyond that a seeded random subset of output channels (and, past that, of
    rows) is used and rescaled to the full output count: ThiNet itself samples
    (location, output channel) pairs.
    """
    x = consumer.samples.inputs.astype(np.float64)
    w = consumer.samples.weight.astype(np.float64)
    units = consumer.unit_features()
    n_units = len(units)
    rows, outs = x.shape[0], w.shape[0]
    # (row, output) pairs to use: bounded by the Gram's cost and Z's memory, but at
    # least 2 * units so that G is not rank-deficient by sampling alone
    pairs = max(2 * n_units, min(GRAM_BUDGET // max(n_units * n_units, 1),
                                 Z_BUDGET // max(n_units, 1)))
    keep_rows = min(rows, pairs)
    if keep_rows < rows:
        x = x[np.sort(rng.choice(rows, keep_rows, replace=False))]
    per_row = min(outs, max(1, pairs // keep_rows))
    if per_row < outs:
        w = w[np.sort(rng.choice(outs, per_row, replace=False))]
    z = np.empty((n_units, keep_rows * w.shape[0]))
    for j, (_, feats) in enumerate(units):
        z[j] = (x[:, feats] @ w[:, feats].T).ravel()
    gram = np.zeros((size, size))
    index = np.array([u for u, _ in units], dtype=np.int64)
    gram[np.ix_(index, index)] = (z @ z.T) * (outs / w.shape[0]) / keep_rows
    return gram


def group_gram(group: ChannelGroup, ctx: ScoreContext, name: str) -> np.ndarray:
    """Sum over the group's consumers of `contribution_gram`."""
    rng = np.random.default_rng(getattr(ctx.calibration, "seed", 0))
    gram = np.zeros((group.size, group.size))
    for consumer in linear_consumers(group, ctx, name):
        gram += contribution_gram(consumer, group.size, rng)
    return gram


def thinet_order(gram: np.ndarray) -> np.ndarray:
    """ThiNet's greedy: repeatedly remove the unit that least increases ||sum_T Z_c||^2."""
    size = gram.shape[0]
    diag = np.diag(gram).copy()
    cross = np.zeros(size)  # sum over removed t of G[c, t]
    removed = np.zeros(size, dtype=bool)
    order = np.empty(size, dtype=np.int64)
    for step in range(size):
        cost = 2.0 * cross + diag  # objective increase if c joined the removal set
        cost[removed] = np.inf
        c = int(np.argmin(cost))
        order[step] = c
        removed[c] = True
        cross += gram[:, c]
    return order


@CRITERIA.register("thinet")
class ThiNet(Criterion):
    """Luo et al. 2017, "ThiNet: A Filter Level Pruning Method for Deep Neural Network
    Compression".

    Builds the removal set T greedily, each step adding the unit c that minimises
    ||sum_{t in T+c} Z_t||^2 (the change of the consumers' sampled outputs), the
    objective summed over the group's consumers and computed from the Gram matrix
    G = <Z_c, Z_d> (one per consumer, units x units). Score = position in the
    removal order, 1 for the first unit removed up to the group size for the last:
    an order, not a magnitude (in global scope, groups compare by relative rank).
    """

    summary: ClassVar[str] = "greedy min. reconstruction error of the next layer (Luo 2017)"
    needs_calibration: ClassVar[bool] = True

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        order = thinet_order(group_gram(group, ctx, self.name))
        scores = np.empty(group.size)
        scores[order] = np.arange(1, group.size + 1, dtype=np.float64)
        return scores


def lasso_cd(
    gram: np.ndarray, b: np.ndarray, lam: float, beta: np.ndarray, sweeps: int = 50,
    tol: float = 1e-5,
) -> np.ndarray:
    """Coordinate descent for min 1/2 beta' G beta - b' beta + lam * ||beta||_1.

    Working-set sweeps: cycle over the nonzero coordinates plus those violating the
    optimality condition |(b - G beta)_c| <= lam (checked vectorised) until no unit's
    contribution moves by more than `tol` of the largest one; repeat until nothing
    violates it, or after `sweeps` full sweeps' worth of updates (a ranking needs no
    more precision, and ill-conditioned Grams converge slowly).
    """
    beta = beta.copy()
    diag = np.diag(gram)
    live = diag > EPS * max(float(diag.max()), EPS)
    residual = b - gram @ beta  # -gradient of the smooth part
    limit = tol * math.sqrt(float(diag.max()))
    budget = sweeps * int(live.sum())
    while budget > 0:
        work = np.flatnonzero(live & ((beta != 0) | (np.abs(residual) > lam)))
        if not work.size:
            break
        while budget > 0:
            budget -= work.size
            biggest = 0.0
            for c in work:
                old = beta[c]
                z = residual[c] + diag[c] * old
                new = math.copysign(max(abs(z) - lam, 0.0), z) / diag[c]
                if new != old:
                    residual -= gram[:, c] * (new - old)
                    beta[c] = new
                    biggest = max(biggest, abs(new - old) * math.sqrt(diag[c]))
            if biggest < limit:
                break
        if not (live & (beta == 0) & (np.abs(residual) > lam * (1 + 1e-9))).any():
            break
    return beta


def lasso_scores(gram: np.ndarray, steps: int = 30, floor: float = 1e-3) -> np.ndarray:
    """|beta| at the first path lambda with at least half the units nonzero, plus a
    tie-break: 1e-6 of the largest |beta| times the unit's entry lambda / lambda_max."""
    size = gram.shape[0]
    b = gram.sum(axis=1)  # <Z_c, Y> with Y = sum_c Z_c
    lam_max = float(np.abs(b).max()) if size else 0.0
    if lam_max <= 0.0:
        return np.zeros(size)
    diag = np.diag(gram)
    entry = np.zeros(size)  # lambda at which beta_c first leaves 0 (interpolated)
    entered = np.zeros(size, dtype=bool)
    beta = np.zeros(size)
    lam, gap = lam_max, np.abs(b) - lam_max  # gap = |z_c| - lambda: 0 where c enters
    z = b
    need = min(size - size // 2, int(np.count_nonzero(diag > 0)))
    for next_lam in lam_max * np.geomspace(1.0, floor, steps)[1:]:
        prev_lam, prev_gap, lam = lam, gap, float(next_lam)
        beta = lasso_cd(gram, b, lam, beta)
        z = b - gram @ beta + diag * beta  # at the optimum beta_c = soft(z_c, lambda) / G_cc
        gap = np.abs(z) - lam
        fresh = (beta != 0) & ~entered
        # z is linear in lambda between kinks of the path: interpolate the crossing
        t = np.clip(-prev_gap[fresh] / np.maximum(gap[fresh] - prev_gap[fresh], EPS), 0, 1)
        entry[fresh] = prev_lam + (lam - prev_lam) * t
        entered |= fresh
        if np.count_nonzero(beta) >= need:
            break
    # units still out: |z_c| <= lambda is where each would enter with the fit held fixed
    entry[~entered] = np.minimum(np.abs(z[~entered]), lam)
    chosen = np.abs(beta)
    return chosen + 1e-6 * max(float(chosen.max()), EPS) * entry / lam_max


@CRITERIA.register("lasso")
class LassoSelection(Criterion):
    """He et al. 2017, "Channel Pruning for Accelerating Very Deep Neural Networks".

    Solves min_beta 1/2 ||Y - sum_c beta_c Z_c||^2 + lambda ||beta||_1, Y = sum_c Z_c
    (the consumers' original sampled outputs; the objective summed over the group's
    consumers, beta_c shared by all of them) by coordinate descent on the Gram
    matrix, along a warm-started path of 30 lambdas from lambda_max = max_c |<Z_c, Y>|
    (where all beta are 0) down to 1e-3 lambda_max. Score = |beta_c| at the first
    lambda of the path where at least half the units are nonzero (the last lambda if
    none is; coordinate descent stops at 1e-5 relative precision or 50 sweeps). Units that are
    zero there are ordered by their entry lambda (units that survive a stronger
    penalty are more important), added as a 1e-6-relative tie-break: for a unit that
    was nonzero higher on the path, the largest lambda where it was (interpolated
    between path points, where |z_c| = lambda, z_c = <Z_c, Y - sum_{d != c} beta_d
    Z_d>); for one that never was, |z_c| at the chosen lambda, the lambda at which it
    would enter with the other betas held. The path stops at the chosen lambda. The
    paper's least-squares weight reconstruction is not applied.
    """

    summary: ClassVar[str] = "LASSO channel selection on the next layer's output (He 2017)"
    needs_calibration: ClassVar[bool] = True

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        return lasso_scores(group_gram(group, ctx, self.name))


def _float64(samples: LinearSamples) -> tuple[np.ndarray, np.ndarray]:
    x = samples.inputs.astype(np.float64)
    return x, samples.weight.astype(np.float64)


@CRITERIA.register("obd")
class OptimalBrainDamage(Criterion):
    """LeCun et al. 1990, "Optimal Brain Damage", layer-wise (per consumer).

    With the consumer's layer-wise reconstruction error E(W) = 1/S ||X (W - W0)'||^2,
    H = 2 X'X / S over the K input features (X the sampled inputs). The diagonal
    saliency of removing channel c is 1/2 sum_o sum_{k in F_c} W[o, k]^2 H_kk; the
    score is that saliency summed over the group's consumers (low: pruned first).
    """

    summary: ClassVar[str] = "diagonal-Hessian saliency of the next layer's error (LeCun 1990)"
    needs_calibration: ClassVar[bool] = True

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        scores = np.zeros(group.size)
        for consumer in linear_consumers(group, ctx, self.name):
            x, w = _float64(consumer.samples)
            h_diag = 2.0 * np.mean(x * x, axis=0)
            per_feature = 0.5 * h_diag * np.sum(w * w, axis=0)
            fu = consumer.feature_unit
            scores += np.bincount(fu[fu >= 0], weights=per_feature[fu >= 0],
                                  minlength=group.size)
        return scores


def inverse_blocks(x: np.ndarray, blocks: list[np.ndarray], damping: float) -> list[np.ndarray]:
    """(H_d^-1)[F, F] for each F in `blocks`, H_d = 2 X'X / S + a I, a = damping*mean(diag H).

    Inverts the K x K matrix when K <= S; otherwise uses Woodbury with the S x S
    matrix a I + Xs Xs' (Xs = sqrt(2/S) X), so the cost is min(K, S)^3.
    """
    rows, k = x.shape
    xs = x * math.sqrt(2.0 / rows)
    a = max(damping * float(np.mean(np.sum(xs * xs, axis=0))), EPS)
    if k <= rows:
        inv = np.linalg.inv(xs.T @ xs + a * np.eye(k))
        return [inv[np.ix_(f, f)] for f in blocks]
    chol = np.linalg.cholesky(a * np.eye(rows) + xs @ xs.T)
    v = np.linalg.solve(chol, xs)  # Xs' C^-1 Xs = V'V
    return [(np.eye(f.size) - v[:, f].T @ v[:, f]) / a for f in blocks]


@CRITERIA.register("obs")
class OptimalBrainSurgeon(Criterion):
    """Hassibi & Stork 1993, "Second order derivatives for network pruning: Optimal Brain
    Surgeon", layer-wise and for a whole channel at once.

    With H = 2 X'X / S as for OBD, damped to H + 1e-2 mean(diag H) I, the saliency
    of removing channel c while optimally adjusting all other weights of the
    consumer is 1/2 sum_o W[o, F_c] ((H^-1)[F_c, F_c])^-1 W[o, F_c]'; the score is
    that saliency summed over the group's consumers (low: pruned first). It is a
    single-removal saliency: each of two duplicate channels is cheap on its own.
    """

    summary: ClassVar[str] = "inverse-Hessian saliency of removing a channel (Hassibi 1993)"
    needs_calibration: ClassVar[bool] = True
    damping: ClassVar[float] = OBS_DAMPING

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        scores = np.zeros(group.size)
        for consumer in linear_consumers(group, ctx, self.name):
            x, w = _float64(consumer.samples)
            units = consumer.unit_features()
            blocks = inverse_blocks(x, [f for _, f in units], self.damping)
            by_width: dict[int, list[int]] = {}
            for j, (_, feats) in enumerate(units):
                by_width.setdefault(feats.size, []).append(j)
            for members in by_width.values():  # one batched solve per block size
                stacked = np.stack([blocks[j] for j in members])  # [n, F, F]
                wf = np.stack([w[:, units[j][1]].T for j in members])  # [n, F, O]
                sal = 0.5 * np.sum(wf * np.linalg.solve(stacked, wf), axis=(1, 2))
                for j, value in zip(members, sal, strict=True):
                    scores[units[j][0]] += value
        return scores
