"""Inference BatchNorm with constant statistics as one per-channel multiply-add.

Why: ONNX exports that keep BatchNormalization after each conv (Caffe2 / TF-era zoo models,
paddle2onnx, exports not traced in eval mode) import as `R.nn.batch_norm`, which FuseOps
did not fold into the conv before it: in a pruned Inception v2 every conv ran bare and its
BN + scale + ReLU were fused into the concat behind it (one more pass over each feature
map). TVM's `DecomposeOpsForInference` does the same rewrite but leaves the arithmetic on
the constants to `FoldConstant`, which compiles a kernel per folded op (Inception v2's
build 12 -> 26 s). Here scale = gamma / sqrt(var + eps) and shift = beta - mean * scale
are computed once with numpy (float64, then the data type) and the batch_norm's output
becomes `x * scale + shift` on the channel axis: a broadcast epilogue that fuses into the
conv and converts to NHWC with it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from compress_ir.backend.schedule.rewrite import op_name, rewrite_functions, tensor_ndim


def scale_shift(gamma: np.ndarray | None, beta: np.ndarray | None, mean: np.ndarray,
                var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) of inference BatchNorm; None gamma/beta: 1 / 0."""
    inv = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    scale = inv * (1.0 if gamma is None else gamma.astype(np.float64))
    shift = (0.0 if beta is None else beta.astype(np.float64)) - mean.astype(np.float64) * scale
    return scale, shift


@mutator
class _FoldBatchNorm(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def visit_tuple_getitem_(self, op: relax.TupleGetItem) -> relax.Expr:  # noqa: D401
        op = super().visit_tuple_getitem_(op)
        if op.index != 0:
            return op
        call = op.tuple_value
        if isinstance(call, relax.Var):
            call = self.lookup_binding(call)
        if op_name(call) != "relax.nn.batch_norm" or getattr(call.attrs, "training", False):
            return op
        x, *params = call.args
        ndim, dtype = tensor_ndim(x), str(getattr(getattr(x, "ty", None), "dtype", None))
        if ndim is None or dtype not in ("float32", "float16", "float64") or not all(
                isinstance(p, GenericConst) for p in params):
            return op
        gamma, beta, mean, var = (p.value.numpy() for p in params)
        scale, shift = scale_shift(gamma if call.attrs.scale else None,
                                   beta if call.attrs.center else None, mean, var,
                                   float(call.attrs.epsilon))
        shape = [1] * ndim
        shape[int(call.attrs.axis) % ndim] = scale.size
        self.rewritten += 1
        return relax.op.add(relax.op.multiply(x, relax.const(scale.reshape(shape).astype(dtype))),
                            relax.const(shift.reshape(shape).astype(dtype)))


def fold_batch_norm(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Every inference batch_norm with constant statistics as x * scale + shift; returns the
    module and how many were folded (the unused batch_norm calls are removed)."""
    mutator_ = _FoldBatchNorm(mod)
    return rewrite_functions(mutator_, mod, lambda: mutator_.rewritten, dce=True)


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
def FoldBatchNorm(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802
    """Pass form of `fold_batch_norm` for use in a `Sequential`."""
    return fold_batch_norm(mod)[0]
