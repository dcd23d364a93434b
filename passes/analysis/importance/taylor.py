"""Taylor criterion (Molchanov et al. 2017), with gradients from Apache TVM Relax.

Molchanov, Tyree, Karras, Aila & Kautz 2017, "Pruning Convolutional Neural Networks
for Resource Efficient Inference": the first-order Taylor estimate of the change of
the loss when a channel is zeroed is, per sample, |mean over the channel's positions
of a * dL/da|, averaged over the samples.

Gradients w.r.t. intermediate activations ("probe inputs"): in a copy of the model,
every tensor of interest `a` gets a new graph input `taylor_probe_i` of the same
shape, fed with zeros, and each use of `a` reads `Add(a, probe)` instead, so that
dL/dprobe = dL/da. The copy is imported with `tvm.relax.frontend.onnx.from_onnx`
(batch size fixed; a short last batch is zero-padded and the padding dropped), a
cross-entropy loss is appended with `relax.training.AppendLoss`, and
`relax.transform.Gradient` differentiates it w.r.t. the probes; the result is built
with `tvm.compile(..., target="llvm")` once per `ScoreContext` and run with the
Relax VirtualMachine over the calibration set.

Loss: calibration data is unlabelled, so the labels are the model's own predictions
(pseudo-labels: argmax of the first output, which must be [N, classes] logits) and
L = cross-entropy(softmax(logits), argmax) summed over the batch, so each sample's
gradient is that of its own loss. (At a confident prediction this gradient is small;
it is what Molchanov's criterion measures without labels.)

Tensors and aggregation are those of the activation criteria (`activation.py`): the
inputs of the reducing consumers of a group's channels. In one such tensor, a unit's
value is mean over samples of |mean over the unit's positions (a Flatten maps one
channel to H*W features) and over the other non-sample axes of a * g|; its score is
the mean over the distinct consumer inputs it reaches (0 if it reaches none). Axis 0
of every such tensor must be the sample axis.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper

from compress_ir.core.calibration import ActivationCapture
from compress_ir.core.errors import UsageError
from compress_ir.core.graph import GraphCycle, topological_order
from compress_ir.core.padding import batch_mask, token_mask
from compress_ir.passes.analysis.channel_groups import ChannelGroup
from compress_ir.passes.analysis.importance.activation import (
    _by_tensor,
    consumer_sites,
    require_calibration,
    unit_means,
)
from compress_ir.passes.analysis.importance.base import (
    CRITERIA,
    Criterion,
    ScoreContext,
    UnscorableGroup,
)

PROBE = "taylor_probe_{}"


def _import_tvm() -> Any:
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError:
        raise UsageError(
            "criterion 'taylor' needs Apache TVM: pip install 'compress-ir[tvm]'"
        ) from None
    return tvm


def taylor_tensors(ctx: ScoreContext) -> list[str]:
    """Inputs of the reducing consumers (what the activation criteria read), sorted."""
    a = ctx.analysis
    return sorted({s.by for s in a.slices if s.reduces and s.by in a.layouts})


def probe_model(proto: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `proto` where each use of `tensors[i]` reads `tensors[i] + probe_i`.

    The probes are new graph inputs (after the model's own inputs, in `tensors`
    order), named `PROBE.format(i)`, typed as the tensor where its type is known.
    """
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    index = {name: i for i, name in enumerate(tensors)}
    for node in work.graph.node:
        for k, name in enumerate(node.input):
            if name in index:
                node.input[k] = f"{PROBE.format(index[name])}_sum"
    adds = []
    typed = {v.name: v for v in (*work.graph.value_info, *work.graph.output)}
    for i, name in enumerate(tensors):
        probe = PROBE.format(i)
        info = helper.make_tensor_value_info(probe, onnx.TensorProto.FLOAT, None)
        if name in typed:
            info.type.CopyFrom(typed[name].type)
        work.graph.input.append(info)
        adds.append(helper.make_node("Add", [name, probe], [f"{probe}_sum"], name=f"{probe}_add"))
    # topological order, each Add as early as its inputs allow
    nodes = [*work.graph.node, *adds]
    try:
        order = topological_order(nodes)
    except GraphCycle as exc:
        raise UsageError(f"criterion 'taylor': cannot order the probed graph ({exc})") from None
    del work.graph.node[:]
    work.graph.node.extend(nodes[i] for i in order)
    return work


def _register_missing_gradients() -> None:
    """Relax has no gradient for `erf` (GELU in BERT-family models; d erf(x)/dx =
    2/sqrt(pi) exp(-x^2)) nor `squeeze` (the gradient is the output's gradient reshaped
    to the input). Registered once, only where TVM lacks them."""
    import tvm
    from tvm import relax
    from tvm.relax.op.base import register_gradient

    def missing(op: str) -> bool:
        return tvm.ir.Op.get(op).get_attr("FPrimalGradient") is None

    if missing("relax.erf"):
        @register_gradient("relax.erf")
        def _erf_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list:
            x = orig_call.args[0]
            scale = relax.const(2.0 / np.sqrt(np.pi), str(x.ty.dtype))
            return [output_grad * scale * relax.op.exp(relax.op.negative(x * x))]

    if missing("relax.squeeze"):  # a pooler's first-token Gather (distill's rewrite)
        @register_gradient("relax.squeeze")
        def _squeeze_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list:
            x = orig_call.args[0]
            return [relax.op.reshape(output_grad, x.ty.shape)]  # static: a ShapeExpr


LOSSES = ("ce", "projection")


class GradientRunner:
    """dL/d(tensor), compiled once with TVM Relax, for one of two label-free losses.

    `ce`: cross-entropy of the first output ([N, classes] logits) against its own argmax
    (Taylor). `projection`: L = sum(output * v) for a fed `v` of the first output's
    shape (Fisher: with v standard normal, E[(dL/dm)^2] = ||d output / dm||^2).
    """

    def __init__(
        self, proto: onnx.ModelProto, tensors: list[str], shapes: dict[str, tuple[int, ...]],
        loss: str = "ce",
    ) -> None:
        tvm = _import_tvm()
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
        from tvm.relax.training import AppendLoss
        from tvm.relax.training.loss import CrossEntropyLoss

        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        _register_missing_gradients()
        inits = {i.name for i in proto.graph.initializer}
        self.inputs = [i.name for i in proto.graph.input if i.name not in inits]
        self.tensors = tensors
        probed = probe_model(proto, tensors)
        shape_dict = {name: list(shapes[name]) for name in self.inputs}
        for i, name in enumerate(tensors):
            shape_dict[PROBE.format(i)] = list(shapes[name])
        start = time.perf_counter()
        mod = from_onnx(probed, shape_dict=shape_dict, keep_params_in_input=False)
        # inference first (BatchNorm with its running statistics), then the training
        # decomposition for what has no gradient as one op (layer_norm)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.DecomposeOpsForTraining()(mod)
        out = mod["main"].ret_ty
        if loss == "ce":
            if not isinstance(out, relax.TensorType) or out.ndim != 2:
                raise UsageError(
                    "criterion 'taylor' needs a classifier: the model's output must be "
                    f"[N, classes] logits, got {out}"
                )
            batch = int(out.shape[0])
            loss_fn = CrossEntropyLoss(reduction="sum")(out, relax.TensorType([batch], "int64"))
            self.extra_shape: tuple[int, ...] = (batch,)
        else:
            if not isinstance(out, relax.TensorType) or not out.ndim or \
                    not str(out.dtype).startswith("float"):
                raise UsageError(f"criterion 'fisher' needs one float output tensor, got {out}")
            self.extra_shape = tuple(int(d) for d in out.shape)
            loss_fn = _projection_loss(out)
        mod = AppendLoss("main", loss_fn, 1, "main_loss")(mod)
        params = list(mod["main_loss"].params)
        n_in = len(self.inputs)
        probes = params[n_in : n_in + len(tensors)]
        mod = relax.transform.Gradient("main_loss", require_grads=probes)(mod)
        mod = tvm.IRModule({"main_loss_adjoint": mod["main_loss_adjoint"]})
        self.vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
        self.compile_seconds = time.perf_counter() - start
        self.batch = self.extra_shape[0]
        self._tvm = tvm
        self._zeros = [
            tvm.runtime.tensor(np.zeros(shapes[name], np.float32)) for name in tensors
        ]

    def gradients(
        self, feeds: dict[str, np.ndarray], extra: np.ndarray
    ) -> tuple[float, list[np.ndarray]]:
        """Loss and dL/d(tensor) per tensor for one batch (padded to the fixed size);
        `extra` is the loss's second argument: labels (ce) or the projection v."""
        rows = extra.shape[0]
        pad = self.batch - rows

        def padded(x: np.ndarray) -> np.ndarray:
            return np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x

        tensor = self._tvm.runtime.tensor
        args = [tensor(np.ascontiguousarray(padded(feeds[n]))) for n in self.inputs]
        args += self._zeros
        dtype = np.int64 if extra.dtype.kind in "iu" else np.float32
        args.append(tensor(np.ascontiguousarray(padded(extra.astype(dtype)))))
        loss, grads = self.vm["main_loss_adjoint"](*args)
        return float(loss.numpy()), [g.numpy()[:rows] for g in grads]


def _projection_loss(out: Any) -> Any:
    """The Relax function (output, v) -> sum(output * v)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    o = relax.Var("output", relax.TensorType(out.shape, out.dtype))
    v = relax.Var("v", relax.TensorType(out.shape, out.dtype))
    with bb.function("projection_loss", [o, v]):
        with bb.dataflow():
            result = bb.emit_output(relax.op.sum(relax.op.multiply(o, v)))
        bb.emit_func_output(result)
    return bb.get()["projection_loss"]


def contributions(
    ctx: ScoreContext, stats: Any, tensors: list[str], loss: str = "ce", seed: int = 0,
    draws: int = 1,
) -> tuple[dict[str, np.ndarray], GradientRunner | None]:
    """Per tensor: [samples, positions] of a * dL/da over the non-sample axes other than
    the layout axis: their mean for `ce` (Taylor), their sum for `projection` (dL/dm of a
    mask scaling the position's channel everywhere in the sample: Fisher).

    `projection` draws v standard normal `draws` times per batch (seeded, in that order),
    zero at padded tokens; each draw adds its own rows (batch by batch, draw-major).
    """
    if not tensors:
        return {}, None
    proto = stats.proto
    first_output = proto.graph.output[0].name
    capture = ActivationCapture(proto, [*tensors, first_output])
    runner: GradientRunner | None = None
    rng = np.random.default_rng(seed)
    tokens = token_mask(proto, stats.calib.arrays) if loss == "projection" else None
    parts: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    for index, (feeds, values) in enumerate(zip(
        stats.calib.batches(stats.batch_size),
        capture.stream(stats.calib, stats.batch_size),
        strict=True,
    )):
        rows = next(iter(feeds.values())).shape[0]
        if runner is None:
            shapes = {n: v.shape for n, v in feeds.items()}
            shapes.update({n: values[n].shape for n in tensors})
            bad = [n for n in tensors if values[n].shape[:1] != (rows,)]
            if bad:
                raise UsageError(
                    f"criterion '{'taylor' if loss == 'ce' else 'fisher'}': tensor(s) {bad} "
                    "do not have the samples on axis 0"
                )
            runner = GradientRunner(proto, tensors, shapes, loss)
        out = np.asarray(values[first_output])
        if loss == "ce":
            extras = [out.reshape(rows, -1).argmax(1)]
        else:
            mask = batch_mask(tokens, index, stats.batch_size)
            extras = []
            for _ in range(draws):
                v = rng.standard_normal(out.shape).astype(np.float32)
                if mask is not None and out.shape[:2] == mask.shape:  # [B, S, ...] outputs
                    v *= mask.reshape(*mask.shape, *[1] * (out.ndim - 2))
                extras.append(v)
        for extra in extras:
            _, grads = runner.gradients(feeds, extra)
            for name, grad in zip(tensors, grads, strict=True):
                axis = ctx.analysis.layouts[name].axis
                prod = np.asarray(values[name], np.float64) * grad
                prod = np.moveaxis(prod, axis, 1).reshape(rows, prod.shape[axis], -1)
                parts[name].append(prod.mean(2) if loss == "ce" else prod.sum(2))
    return {n: np.concatenate(p) for n, p in parts.items()}, runner


class GradientCriterion(Criterion):
    """Shared by the gradient criteria: `contributions` once per ScoreContext (one TVM
    compile, one pass over the calibration data), then scored group by group."""

    loss: ClassVar[str] = "ce"
    draws: ClassVar[int] = 1

    def __init__(self) -> None:
        self._ctx: ScoreContext | None = None
        self._contrib: dict[str, np.ndarray] = {}
        self.compile_seconds = 0.0
        self.score_seconds = 0.0

    def _contributions(self, ctx: ScoreContext, stats: Any) -> dict[str, np.ndarray]:
        if self._ctx is not ctx:
            _import_tvm()
            start = time.perf_counter()
            self._contrib, runner = contributions(ctx, stats, taylor_tensors(ctx),
                                                  loss=self.loss, draws=self.draws)
            self.score_seconds = time.perf_counter() - start
            self.compile_seconds = runner.compile_seconds if runner else 0.0
            self._ctx = ctx
        return self._contrib


@CRITERIA.register("taylor")
class Taylor(GradientCriterion):
    """Molchanov et al. 2017, "Pruning Convolutional Neural Networks for Resource
    Efficient Inference" (first-order Taylor expansion of the loss).

    Score = mean over calibration samples of |mean over the unit's positions of
    a * dL/da| at the inputs of the group's reducing consumers, with L the
    cross-entropy against the model's own argmax predictions; gradients come from
    Apache TVM Relax (`compress-ir[tvm]`). See the module docstring.
    """

    summary: ClassVar[str] = "|activation x gradient| of a pseudo-label loss (Molchanov 2017)"
    needs_calibration: ClassVar[bool] = True

    def score(self, group: ChannelGroup, ctx: ScoreContext) -> np.ndarray:
        stats = require_calibration(ctx, self.name)
        sites = _by_tensor(consumer_sites(group, ctx))
        if any(ctx.analysis.layouts[t].axis == 0 for t in sites):
            raise UnscorableGroup(
                f"criterion 'taylor': channels of group [{group.label()}] lie on the sample "
                "axis of a tensor"
            )
        contrib = self._contributions(ctx, stats)
        parts = []
        for tensor, site in sites.items():
            values = contrib[tensor][:, site.positions]  # [samples, k]
            count = np.bincount(site.unit_index, minlength=group.size)
            onehot = np.zeros((site.unit_index.size, group.size))
            onehot[np.arange(site.unit_index.size), site.unit_index] = 1.0
            per_unit = values @ onehot  # [samples, units]: sum over each unit's positions
            here = np.flatnonzero(count)
            theta = np.abs(per_unit[:, here] / count[here]).mean(0)
            parts.append((here, theta))
        return unit_means(group.size, parts)
