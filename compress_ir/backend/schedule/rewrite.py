"""Shared pieces of the Relax rewrites that run before legalization.

Why: `canonical`, `lift`, `pad_keys`, `pad_rows`, `fast_sigmoid`, `broadcast_rank` and
`batch_norm` all run a `PyExprMutator` over every Relax function (a module they did not
change is returned as it was, so a no-op costs nothing downstream), and read op names,
ranks and static shapes the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax


def rewrite_functions(rewriter: relax.PyExprMutator, mod: tvm.IRModule,
                      count: Callable[[], int], dce: bool = False
                      ) -> tuple[tvm.IRModule, int]:
    """Visit each Relax function with `rewriter`; returns (module, `count()` afterwards).

    `dce`: drop bindings and functions nothing reads any more (a rewrite that leaves the
    old chain in place for other readers).
    """
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    changed = count()
    if not changed:
        return mod, 0
    out = rewriter.builder_.get()
    return (relax.transform.DeadCodeElimination()(out) if dce else out), changed


def op_name(expr: relax.Expr | None) -> str | None:
    """`relax.matmul` etc. for a call of a Relax op; None for anything else."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def tensor_ndim(expr: relax.Expr) -> int | None:
    """Rank of a tensor expression (TVM 0.27: from its Relax type); None when unknown."""
    ndim = getattr(getattr(expr, "ty", None), "ndim", -1)
    return None if ndim is None or ndim < 0 else int(ndim)


def static_shape(expr: relax.Expr | None) -> list[int] | None:
    """Static shape of a tensor expression; None when symbolic or not a tensor."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    try:
        return [int(d) for d in shape.values]
    except (TypeError, ValueError):
        return None


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple
