"""Run a Relax `PyExprMutator` over every Relax function of a module.

Why: the Relax rewrites before legalization (`canonical`, `lift`, `pad_keys`, `pad_rows`)
share this loop; a module they did not change is returned as it was (same object), so a
no-op costs nothing downstream.
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
