"""Keep register tiles of up to `STACK_BYTES` on the stack, where LLVM can promote them.

Why: TVM's `LowerTVMBuiltin` serves every CPU buffer of 1 KB or more
(`runtime::kMaxStackAlloca`) from `TVMBackendAllocWorkspace`. A register tile's
accumulators then live behind a pointer that escapes into a call, so LLVM loads and stores
them around every FMA. That capped the AVX-512 micro-kernel at 7 rows x 32 channels
(896 bytes), where onnxruntime's MLAS runs 12 x 32. With taller tiles on the stack, a
197 x 384 -> 1536 matmul (ViT-S FFN-up) went from 1.85 to 1.68 ms, 1536 -> 384 from 1.81 to
1.67 ms (Intel Xeon, 1 thread; the same tiles in workspace memory: 3.4-3.6 ms).

How: a TIR pass, run after the standard lowering and before `LowerTVMBuiltin`, marks every
constant-size "global" allocation of at most `STACK_BYTES` with TVM's
`disable_lower_builtin` annotation, which leaves it an `alloca` in the function's entry
block (per call and per parallel task: nothing is shared between threads). Larger buffers
keep the workspace allocator. The pass is installed as a named TIR pipeline,
`PIPELINE`, for CPU builds.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from compress_ir.backend.schedule.stmt_rewrite import post_order

STACK_BYTES = 2048  # accumulator tiles up to 14 rows x 32 fp32 channels (1792 bytes)
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # TVM's transform::kDisableLowerTVMBuiltin
PIPELINE = "compress_ir.cpu"


def allocation_bytes(buffer: tirx.Buffer) -> int | None:
    """Bytes of a constant-shape buffer (vector dtypes count their lanes), else None."""
    count = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        count *= int(extent)
    dtype = tvm.DataType(buffer.dtype)
    return count * dtype.lanes * ((dtype.bits + 7) // 8)


def _keep_on_stack(alloc: tirx.AllocBuffer) -> bool:
    size = allocation_bytes(alloc.buffer)
    return (alloc.buffer.scope() == "global" and size is not None and size <= STACK_BYTES
            and DISABLE_LOWER_BUILTIN not in alloc.annotations)


def _mark(stmt: tirx.Stmt) -> tirx.Stmt | None:
    """A small allocation with the annotation, or None to leave the node."""
    if not isinstance(stmt, tirx.AllocBuffer) or not _keep_on_stack(stmt):
        return None
    annotations = dict(stmt.annotations)
    annotations[DISABLE_LOWER_BUILTIN] = tirx.IntImm("bool", 1)
    return tirx.AllocBuffer(stmt.buffer, annotations, stmt.span)


def _is_cpu(func: tirx.PrimFunc) -> bool:
    target = func.attrs.get("target") if func.attrs is not None else None
    return target is None or target.kind.name in ("llvm", "c")


@tirx.transform.prim_func_pass(opt_level=0, name="compress_ir.StackTiles")
def stack_tiles(func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
                ) -> tirx.PrimFunc:
    """Mark the small allocations of a CPU function to stay on the stack."""
    if not _is_cpu(func):
        return func
    body = post_order(func.body, _mark)
    return func if body.same_as(func.body) else func.with_body(body)


def _pipeline(**kwargs: object) -> tuple:
    """TVM's s_tir pipeline with `stack_tiles` after its main passes."""
    main, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir", **kwargs)
    return tvm.transform.Sequential([main, stack_tiles]), finalize_host, finalize_device


tvm.tirx.register_tir_pipeline(PIPELINE, _pipeline)
