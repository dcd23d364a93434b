"""Fisher information of unit masks (Kwon et al. 2022), label-free, gradients from TVM Relax.

Kwon, Kim, Mahoney, Hassoun, Keutzer & Gholami 2022, "A Fast Post-Training Pruning
Framework for Transformers": a mask variable m_i scales unit i (an attention head, an FFN
neuron, a channel); the diagonal of the Fisher information of the masks, the mean over
samples of (dL/dm_i)^2, ranks the units by how much removing one costs.

Why it differs from the local criteria (wanda, act-*, obs): dL/dm_i carries the unit's
effect through everything downstream of its layer to the model's output, so a head
whose output a later LayerNorm or attention largely cancels scores low even when its own
output is large.

Labels: calibration data has none, and the model may have no classifier (a sentence
encoder's output is token embeddings). With L = v . f(x) for v standard normal of the
output's shape (drawn per batch, `Fisher.draws` times, zero at padded tokens), E_v[(dL/dm_i)^2] =
||df/dm_i||^2: the Gauss-Newton diagonal of ||f(x; m) - f(x; 1)||^2, i.e. how far the
unit's removal moves the output, to first order. dL/dm_i = sum over the sample's positions
and the unit's channels of a * dL/da at the inputs of the group's reducing consumers
(taylor.py's probes and Relax gradient, with the projection loss).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from compress_ir.passes.analysis.channel_groups import ChannelGroup
from compress_ir.passes.analysis.importance.activation import (
    _by_tensor,
    consumer_sites,
    require_calibration,
)
from compress_ir.passes.analysis.importance.base import CRITERIA, ScoreContext
from compress_ir.passes.analysis.importance.taylor import GradientCriterion


@CRITERIA.register("fisher")
class Fisher(GradientCriterion):
    """Kwon et al. 2022: mean over calibration samples of (dL/dm)^2 for a mask m on the
    unit, with the label-free projection loss L = v . output (see the module docstring).
    Gradients come from Apache TVM Relax."""

    summary: ClassVar[str] = "Fisher information of unit masks, label-free (Kwon et al. 2022)"
    needs_calibration: ClassVar[bool] = True
    loss: ClassVar[str] = "projection"
    # projections per calibration batch: one draw leaves each score a chi-square(1) sample
    # per calibration sample (relative error sqrt(2 / (samples x draws)))
    draws: ClassVar[int] = 1

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        stats = require_calibration(ctx, self.name)
        contrib = self._contributions(ctx, stats)
        grad = None  # [samples, units]: dL/dm per sample, summed over every site of the unit
        for tensor, site in _by_tensor(consumer_sites(group, ctx)).items():
            values = contrib[tensor][:, site.positions]  # [samples, k]
            onehot = np.zeros((site.unit_index.size, group.size))
            onehot[np.arange(site.unit_index.size), site.unit_index] = 1.0
            part = values @ onehot
            grad = part if grad is None else grad + part
        if grad is None:
            return np.zeros(group.size)
        return (grad ** 2).mean(0)
