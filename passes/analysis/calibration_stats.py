"""Statistics of calibration activations, in the coordinates of the channel analysis.

Data-driven criteria read three things, each computed in one streaming pass over
the calibration set (memory: one batch plus the statistics):

* `channel_stats(tensor)`: per-channel mean, variance, fraction of non-positive
  values (APoZ: the zeros a ReLU would output) and mean |x|;
* `feature_rank(tensor)`: average rank of each channel's H×W feature map (HRank);
* `linear(slice)`: for a consumer that sums over the channels (Conv with group 1,
  Gemm, MatMul), sampled input rows `inputs` [S, K], its weight as [O, K], and for
  each of the K features the channel position it belongs to, so that the layer's
  pre-bias output on those rows is `inputs @ weight.T` (ThiNet, LASSO, OBD/OBS,
  reconstruction).

Positions index the channel axis of the tensor's layout; `units(tensor)` maps them
to the analysis' units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from compress_ir.core.calibration import ActivationCapture, CalibrationSet, batch_size_for
from compress_ir.core.padding import batch_mask, token_mask, valid_rows
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, ConstSlice
from compress_ir.passes.weight_layers import RowSampler, is_weight, linear


@dataclass
class ChannelStats:
    mean: np.ndarray
    var: np.ndarray
    apoz: np.ndarray  # fraction of values <= 0
    abs_mean: np.ndarray
    count: int


@dataclass
class LinearSamples:
    """Sampled inputs of a channel-summing consumer and its weight, feature-aligned."""

    inputs: np.ndarray  # [S, K]
    weight: np.ndarray  # [O, K]
    channel: np.ndarray  # [K] position along the input tensor's channel axis
    bias: np.ndarray | None = None  # [O]


class CalibrationStats:
    """Lazily computed activation statistics for the tensors consumed by reducers."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        analysis: ChannelAnalysis,
        calib: CalibrationSet,
        batch_size: int = 128,
        max_rows: int = 2048,
        seed: int = 0,
    ) -> None:
        self.proto = proto
        self.analysis = analysis
        self.calib = calib
        self.batch_size = batch_size_for(proto, batch_size)
        self.max_rows = max_rows
        self.seed = seed
        self.nodes = {n.name: n for n in proto.graph.node}
        self.inits = {i.name: i for i in proto.graph.initializer}
        self.reducers = [s for s in analysis.slices if s.reduces]
        self._stats: dict[str, ChannelStats] | None = None
        self._ranks: dict[str, np.ndarray] | None = None
        self._linear: dict[int, LinearSamples | None] | None = None

    # -- public -----------------------------------------------------------------
    def units(self, tensor: str) -> np.ndarray:
        """Unit id at each position of `tensor`'s channel axis."""
        return self.analysis.unit_of[self.analysis.layouts[tensor].ids]

    def channel_stats(self, tensor: str) -> ChannelStats:
        if self._stats is None:
            self._stats = self._compute_stats()
        return self._stats[tensor]

    def feature_rank(self, tensor: str) -> np.ndarray | None:
        if self._ranks is None:
            self._ranks = self._compute_ranks()
        return self._ranks.get(tensor)

    def linear(self, s: ConstSlice) -> LinearSamples | None:
        if self._linear is None:
            self._linear = self._compute_linear()
        return self._linear.get(id(s))

    # -- passes over the data ---------------------------------------------------
    def _tensors(self) -> list[str]:
        return sorted({s.by for s in self.reducers if s.by in self.analysis.layouts})

    def _moved(self, name: str, value: np.ndarray) -> np.ndarray:
        axis = self.analysis.layouts[name].axis
        return np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)

    def _compute_stats(self) -> dict[str, ChannelStats]:
        names = self._tensors()
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        tokens = token_mask(self.proto, self.calib.arrays)
        capture = ActivationCapture(self.proto, names)
        for b, batch in enumerate(capture.stream(self.calib, self.batch_size)):
            mask = batch_mask(tokens, b, self.batch_size)
            for name, value in batch.items():
                flat = self._moved(name, value.astype(np.float64))
                if self.analysis.layouts[name].axis % value.ndim == value.ndim - 1:  # [.., S, C]
                    valid = valid_rows(value, mask)  # padded tokens are no statistics
                    flat = flat if valid is None else flat[:, valid]
                part = np.stack(
                    [flat.sum(1), (flat**2).sum(1), (flat <= 0).sum(1), np.abs(flat).sum(1)]
                )
                sums[name] = sums[name] + part if name in sums else part
                counts[name] = counts.get(name, 0) + flat.shape[1]
        out = {}
        for name, total in sums.items():
            n = counts[name]
            mean = total[0] / n
            out[name] = ChannelStats(
                mean=mean,
                var=np.maximum(total[1] / n - mean**2, 0.0),
                apoz=total[2] / n,
                abs_mean=total[3] / n,
                count=n,
            )
        return out

    def _compute_ranks(self) -> dict[str, np.ndarray]:
        names = [n for n in self._tensors() if self.analysis.layouts[n].axis == 1]
        sums: dict[str, np.ndarray] = {}
        count = 0
        for batch in ActivationCapture(self.proto, names).stream(self.calib, self.batch_size):
            for name, value in batch.items():
                if value.ndim != 4:
                    continue
                ranks = np.linalg.matrix_rank(value.astype(np.float64)).sum(0)
                sums[name] = sums.get(name, 0) + ranks
            count += next(iter(batch.values())).shape[0]
        return {name: total / max(count, 1) for name, total in sums.items()}

    def _linear_plan(self, s: ConstSlice) -> tuple | None:
        """(row sampler, weight [O, K], channel of each feature, bias) of a reducing slice
        whose node is a weight layer sampled as plain x W^T rows (Conv of group 1 along
        its input channels, Gemm without transA, MatMul), else None."""
        node = self.nodes.get(s.node)
        if node is None or s.by not in self.analysis.layouts or s.input_index != 1:
            return None
        init = self.inits.get(node.input[1])
        if init is None:
            return None
        weight = numpy_helper.to_array(init)
        if not is_weight(node.op_type, weight, node.input[0] in self.inits):
            return None
        sampler = RowSampler(node, weight.shape)
        if node.op_type == "Conv" and not (s.groups == 1 and s.axis == 1 and sampler.supported):
            return None
        if sampler.trans_a:
            return None
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias = numpy_helper.to_array(self.inits[bias_name]) if bias_name in self.inits else None
        matrix, bias = linear(node, weight, bias)
        per_channel = matrix.shape[1] // weight.shape[1] if node.op_type == "Conv" else 1
        channel = np.repeat(np.arange(matrix.shape[1] // per_channel), per_channel)
        return sampler, matrix, channel, bias

    def _compute_linear(self) -> dict[int, LinearSamples | None]:
        plans = {id(s): (s, self._linear_plan(s)) for s in self.reducers}
        names = sorted({s.by for s, plan in plans.values() if plan is not None})
        batches = math.ceil(self.calib.size / self.batch_size)
        rows: dict[int, list[np.ndarray]] = {key: [] for key in plans}
        rng = np.random.default_rng(self.seed)
        capture = ActivationCapture(self.proto, names)
        tokens = token_mask(self.proto, self.calib.arrays)
        for b, batch in enumerate(capture.stream(self.calib, self.batch_size)):
            mask = batch_mask(tokens, b, self.batch_size)
            for key, (s, plan) in plans.items():
                if plan is None:
                    continue
                sampler, weight, _, _ = plan
                budget = max(16, min(self.max_rows, int(4e6 / max(weight.shape[1], 1))))
                per_batch = max(1, math.ceil(budget / batches))
                x = batch[s.by].astype(np.float32)
                rows[key].append(sampler.rows(x, per_batch, rng, valid_rows(x, mask))[0])
        out: dict[int, LinearSamples | None] = {}
        for key, (_, plan) in plans.items():
            if plan is None or not rows[key]:
                out[key] = None
                continue
            _, weight, channel, bias = plan
            out[key] = LinearSamples(np.concatenate(rows[key]), weight.astype(np.float32),
                                     channel, bias)
        return out
