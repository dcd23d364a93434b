"""Give ConvertLayout only the op forms its layout rules handle (TVM 0.27 workarounds).

Why: TVM 0.27's ConvertLayout aborts with `std::bad_alloc` on an `R.squeeze` whose axis
is negative (its squeeze layout rule indexes the layout string with the raw axis); torch's
dynamo exporter writes `Squeeze(x, [-2])` in every attention block. The rewrite to the
equivalent non-negative axis is exact; the layout pass then converts the model as usual.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from compress_ir.backend.schedule.rewrite import rewrite_functions, tensor_ndim


@mutator
class _Canonicalizer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401 - visitor hook
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.squeeze"):
            return call
        axes = call.attrs.axis
        ndim = tensor_ndim(call.args[0])
        if axes is None or ndim is None or all(int(a) >= 0 for a in axes):
            return call
        self.rewritten += 1
        return relax.op.squeeze(call.args[0], [int(a) % ndim for a in axes])


def canonicalize_axes(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Negative squeeze axes made non-negative; returns the module and how many calls changed."""
    mutator_ = _Canonicalizer(mod)
    return rewrite_functions(mutator_, mod, lambda: mutator_.rewritten)


@tvm.transform.module_pass(opt_level=0, name="CanonicalizeAxes")
def CanonicalizeAxes(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802
    """Pass form of `canonicalize_axes` for use in a `Sequential`."""
    return canonicalize_axes(mod)[0]
