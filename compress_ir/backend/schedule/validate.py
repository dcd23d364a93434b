"""Lower one scheduled PrimFunc on its own, so a broken schedule is caught before codegen.

Why: schedule primitives are meant to preserve semantics, but some accept inputs they
cannot handle (reverse_compute_inline of an intermediate with two consumers drops its
definition; the function then fails deep inside `tvm.compile` with no hint of which rule
caused it). Running the structural part of TVM's TIR pipeline (block lowering, buffer
flattening, vectorisation, memory verification) on each function alone costs milliseconds,
names the function, and lets the caller fall back to TVM's default handling for it.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx


def _passes() -> list[tvm.transform.Pass]:
    st, tt = s_tir.transform, tirx.transform
    return [
        st.CanonicalizeLoop(), st.LowerCrossThreadReduction(), st.LowerInitBlock(),
        st.PlanAndUpdateBufferAllocationLocation(), st.ConvertBlocksToOpaque(),
        st.CompactBufferAllocation(), st.LowerMatchBuffer(), st.StmtSimplify(),
        st.LowerOpaqueBlock(), tt.FlattenBuffer(), tt.VectorizeLoop(True),
        tt.StorageRewrite(), tt.StmtSimplify(),
    ]


def lowering_error(func: tirx.PrimFunc, target: tvm.target.Target | None = None) -> str | None:
    """None if `func` lowers through TVM's structural TIR passes, else a one-line reason."""
    func = func.with_attr("global_symbol", "main")
    if target is not None:
        func = func.with_attr("target", target)
    mod = tvm.IRModule({"main": func})
    try:
        tvm.transform.Sequential(_passes())(mod)
    except (RuntimeError, ValueError, TypeError) as exc:  # tvm errors derive from these
        return first_line(exc)
    return None


def first_line(exc: BaseException) -> str:
    """The error's own message line (TVM prefixes tracebacks), at most 200 characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln),
               lines[-1] if lines else type(exc).__name__)
    return f"{type(exc).__name__}: {msg}"[:200]
