"""Turn the ONNX importer's TE clip kernels back into Relax ops that ConvertLayout sees through.

Why: TVM 0.27's ONNX frontend imports Clip (ReLU6 in MobileNets) as two `call_tir`s of TE
`maximum` / `minimum` PrimFuncs. ConvertLayout cannot look inside a `call_tir`, so every
NHWC conv is followed by a transpose back to NCHW before the clip and another one after it,
and everything downstream (residual adds, the global mean) stays NCHW. Replacing
`call_tir(max_k, (x, s))` by `R.maximum(x, s)` — only when the PrimFunc provably is the
element-wise max/min of `x` with a 0-d tensor `s` — gives the layout pass plain broadcast ops.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.relax.expr_functor import PyExprMutator, mutator

from compress_ir.backend.schedule.analysis import root_blocks
from compress_ir.backend.schedule.rewrite import rewrite_functions

# TIR element-wise binary expression -> the Relax op that computes it with broadcasting.
LIFTABLE_BINARY: dict[type, object] = {
    tirx.Max: relax.op.maximum,
    tirx.Min: relax.op.minimum,
}


def _static(exprs: list) -> list[int] | None:
    """Integer values of constant extents; None if any is symbolic (those are not lifted)."""
    if not all(isinstance(e, tirx.IntImm) for e in exprs):
        return None
    return [int(e) for e in exprs]


def _same_vars(indices: list, iter_vars: list) -> bool:
    return len(indices) == len(iter_vars) and all(
        idx.same_as(iv.var) for idx, iv in zip(indices, iter_vars, strict=True))


def scalar_binary_op(func: tirx.PrimFunc) -> object | None:
    """The Relax op `func` computes if it is `out[i] = op(a[i], s[()])` over all of `out`, else
    None. Checked on the TIR itself, not the function's name, so a lookalike is never lifted."""
    if len(func.params) != 3:
        return None
    try:
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        blocks = root_blocks(sch)
    except Exception:  # noqa: BLE001 - not a schedulable single-function module: leave it
        return None
    a, s, out = sch.mod["main"].params  # TIR 0.27: buffer parameters are the params
    if any(getattr(p, "shape", None) is None for p in (a, s, out)) or len(s.shape) != 0:
        return None
    if len(a.shape) != len(out.shape) or a.dtype != out.dtype or s.dtype != out.dtype:
        return None
    dims = _static(out.shape)
    if dims is None or _static(a.shape) != dims:
        return None
    if len(blocks) != 1 or not blocks[0].is_spatial:
        return None
    block = sch.get(blocks[0].rv)
    store = block.body
    if not isinstance(store, tirx.BufferStore) or not store.buffer.same_as(out):
        return None
    ivs = list(block.iter_vars)
    loops = [sch.get(lp) for lp in sch.get_loops(blocks[0].rv)]
    extents_ok = (_static([iv.dom.min for iv in ivs]) == [0] * len(dims)
                  and _static([iv.dom.extent for iv in ivs]) == dims
                  and _static([lp.min for lp in loops]) == [0] * len(dims)
                  and _static([lp.extent for lp in loops]) == dims)
    op = LIFTABLE_BINARY.get(type(store.value))
    if op is None or not extents_ok or not _same_vars(list(store.indices), ivs):
        return None
    lhs, rhs = store.value.a, store.value.b
    if not (isinstance(lhs, TensorLoad) and lhs.source.same_as(a)
            and _same_vars(list(lhs.indices), ivs)):
        return None
    if not (isinstance(rhs, TensorLoad) and rhs.source.same_as(s) and len(rhs.indices) == 0):
        return None
    return op


@mutator
class _Lifter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_in = mod
        self.lifted = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401 - visitor hook
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
            return call
        callee, args = call.args[0], call.args[1]
        if not isinstance(callee, tvm.ir.GlobalVar) or not isinstance(args, relax.Tuple):
            return call
        func = self.mod_in[callee]
        if not isinstance(func, tirx.PrimFunc) or len(args.fields) != 2:
            return call
        op = scalar_binary_op(func)
        if op is None:
            return call
        self.lifted += 1
        return op(args.fields[0], args.fields[1])


def lift_scalar_elementwise(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Replace provable TE max/min-with-scalar `call_tir`s by Relax ops; returns the module
    (unused PrimFuncs removed) and how many calls were lifted."""
    lifter = _Lifter(mod)
    return rewrite_functions(lifter, mod, lambda: lifter.lifted, dce=True)


@tvm.transform.module_pass(opt_level=0, name="LiftScalarElementwise")
def LiftScalarElementwise(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: N802
    """Pass form of `lift_scalar_elementwise` for use in a `Sequential`."""
    return lift_scalar_elementwise(mod)[0]
