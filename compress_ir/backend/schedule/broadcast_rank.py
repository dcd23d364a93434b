"""Give a lower-rank constant operand of a broadcast op its full rank, so layouts convert.

Why: Caffe2- and TF-era exports scale and shift per channel with a constant of shape
[C, 1, 1] against an [N, C, H, W] tensor (Inception v2: BatchNormalization, then Mul and Add
by `Unsqueeze(w, [1, 2])`). TVM 0.27's ConvertLayout has no layout for an operand of lower
rank, so it wrapped every such Mul/Add in an NHWC -> NCHW transpose and back, and the
average pools behind them stayed NCHW (a 3x3 pool vectorised over 14-wide rows with a
bounds test per lane: 0.26 ms where onnxruntime takes 0.02). Broadcasting right-aligns
shapes, so [C, 1, 1] and [1, C, 1, 1] are the same operand: the rewrite is exact.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir.expr import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from compress_ir.backend.schedule.rewrite import op_name, rewrite_functions, tensor_ndim

# broadcast op name -> the Relax op that rebuilds the call with the reshaped operand
BROADCAST_BINARY = {"relax.add": relax.op.add, "relax.subtract": relax.op.subtract,
                    "relax.multiply": relax.op.multiply, "relax.divide": relax.op.divide,
                    "relax.maximum": relax.op.maximum, "relax.minimum": relax.op.minimum,
                    "relax.power": relax.op.power}


@mutator
class _ExpandRank(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401 - visitor hook
        call = super().visit_call_(call)
        if op_name(call) not in BROADCAST_BINARY or len(call.args) != 2:
            return call
        ranks = [tensor_ndim(a) for a in call.args]
        if None in ranks or ranks[0] == ranks[1]:
            return call
        full = max(ranks)
        args = list(call.args)
        for i, arg in enumerate(args):
            if ranks[i] < full and ranks[i] > 0 and isinstance(arg, GenericConst):
                data = arg.value.numpy()
                args[i] = relax.const(data.reshape((1,) * (full - ranks[i]) + data.shape),
                                      str(data.dtype))
        if all(a.same_as(b) for a, b in zip(args, call.args, strict=True)):
            return call
        self.rewritten += 1
        return BROADCAST_BINARY[op_name(call)](*args)


def expand_broadcast_rank(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Lower-rank constant operands of binary broadcast ops reshaped to the full rank;
    returns the module and how many calls changed."""
    mutator_ = _ExpandRank(mod)
    return rewrite_functions(mutator_, mod, lambda: mutator_.rewritten)


@tvm.transform.module_pass(opt_level=0, name="ExpandBroadcastRank")
def ExpandBroadcastRank(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802
    """Pass form of `expand_broadcast_rank` for use in a `Sequential`."""
    return expand_broadcast_rank(mod)[0]
