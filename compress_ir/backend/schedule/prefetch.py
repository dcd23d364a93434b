"""Software prefetch of the next weight slice in weight-outer conv/matmul kernels.

Why: in a deep layer (more output channels than positions) the register-tiled kernel loops
over channel blocks outermost, and each block's packed weight slice streams in from memory
during the block's first row tile, which then waits on memory while the block's other row
tiles compute from cache. In a whole model the weights never stay cached between runs, so
every slice arrives cold. On an Intel Xeon (AVX-512, 1 thread), a chain of four 512-channel
3x3 convs at 7x7: TVM 11.1 ms, onnxruntime 9.3 ms; with the next block's slice prefetched
into L2 while the current block's later row tiles compute, 8.7 ms (ResNet-18 -5 % at 1
thread, -17 % at 2).

How: `cpu.rule_reduction_tile` marks the fused parallel loop of such a kernel with
`PREFETCH_ATTR` = its number of channel blocks (an annotation: replayed traces keep it);
after the weights are packed (`pipeline.pack_weights`) this pass finds the kernel's
innermost reduce loop and, every `EVERY` steps of it, lets row tiles 1..SPAN of a block
request their share of the next block's lines, in the order that block will read them.
A prefetch never faults and never changes a value; only kernels whose weight read is
`W[block, r0, ..., rn, lane]` over the nest's own reduce loops are touched.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from compress_ir.backend.schedule.analysis import subexprs
from compress_ir.backend.schedule.stmt_rewrite import post_order

PREFETCH_ATTR = "compress_ir.prefetch_weight_blocks"
EVERY = 4  # reduce steps per issue point (a power of two: the test is one AND)
LOCALITY = 2  # llvm.prefetch locality 2 = prefetcht1: into L2, the slice is reused from there
CACHE_LINE = 64
SPAN = 4  # rows to spread a slice over: 1, 2, 8, 16 measured slower (512@7 and 256@14)


def insert_weight_prefetch(mod: tvm.IRModule) -> tvm.IRModule:
    """Every marked kernel of `mod` with its next-slice prefetches (others unchanged)."""
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            new = func.with_body(post_order(func.body, _prefetch_marked))
            if not new.body.same_as(func.body):
                updates[gv] = new
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def _prefetch_marked(loop: tirx.Stmt) -> tirx.Stmt | None:
    """The marked parallel loop with prefetches in its body, or None to leave it."""
    if not isinstance(loop, tirx.For) or PREFETCH_ATTR not in loop.annotations:
        return None
    body = loop.body
    blocks = int(loop.annotations[PREFETCH_ATTR])
    found = _update_nest(body, [])
    if found is None:
        return None
    loops, realize = found
    plan = _plan(loop, blocks, loops, realize)
    if plan is None:
        return None
    inner, stmt = plan

    def prefix(node: tirx.Stmt) -> tirx.Stmt | None:
        if not node.same_as(inner):
            return None
        return tirx.For(node.loop_var, node.min, node.extent, node.kind,
                        tirx.SeqStmt([stmt, node.body]), node.thread_binding,
                        node.annotations, node.step)

    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, post_order(body, prefix),
                    loop.thread_binding, loop.annotations, loop.step)


def _update_nest(stmt: tirx.Stmt, loops: list[tirx.For]
                 ) -> tuple[list[tirx.For], s_tir.SBlockRealize] | None:
    """The loops down to the reduction's update block (decompose_reduction's `*_update`)."""
    if isinstance(stmt, tirx.For):
        return _update_nest(stmt.body, [*loops, stmt])
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt:
            found = _update_nest(s, loops)
            if found is not None:
                return found
        return None
    if isinstance(stmt, s_tir.SBlockRealize) and stmt.block.name_hint.endswith("_update"):
        return loops, stmt
    return None


def _plan(par: tirx.For, blocks: int, loops: list[tirx.For], realize: s_tir.SBlockRealize
          ) -> tuple[tirx.For, tirx.Stmt] | None:
    """(innermost reduce loop, prefetch statement), or None when the nest is not the
    `W[block, reduce..., lane]` kernel this was measured on."""
    block = realize.block
    bound = {iv.var: val for iv, val in zip(block.iter_vars, realize.iter_values, strict=True)}
    found = _weight_load(block)
    if found is None:
        return None
    weight, red_vars = found
    loop_of = {lp.loop_var: lp for lp in loops}
    # each reduce index is a loop of the nest or, for a unit axis (a 1x1 kernel's), 0
    red_index, red_loops = [], []
    for v in red_vars:
        val = bound[v]
        lp = next((lp for var, lp in loop_of.items() if val.same_as(var)), None)
        if lp is not None:
            red_loops.append(lp)
            red_index.append(lp.loop_var)
        elif isinstance(val, tirx.IntImm) and int(val) == 0:
            red_index.append(val)
        else:
            return None
    if not red_loops or not red_index[-1].same_as(red_loops[-1].loop_var) or \
            [loops.index(lp) for lp in red_loops] != sorted(loops.index(lp) for lp in red_loops):
        return None
    shape = [int(d) for d in weight.source.shape]
    extent = int(par.extent)
    inner = red_loops[-1]
    if shape[0] != blocks or extent % blocks or extent // blocks < 2 \
            or int(inner.extent) % EVERY or not _unit_steps(inner):
        return None
    rows = extent // blocks
    lane = shape[-1]
    per_line = CACHE_LINE * 8 // weight.source.dtype.bits
    # The slice's lines, per issue point (inner index i, a multiple of EVERY), are EVERY
    # steps x `chunks` lines per step: `units`, dealt out `share` at a time to row tiles
    # 1, 2, ...; a row tile fetches its units of the next block's steps i..i+EVERY-1, so
    # the rows together request the whole slice, spread over as many rows as there are.
    chunks = -(-lane // per_line)
    units = EVERY * chunks
    share = -(-units // min(rows - 1, SPAN))
    row = tirx.floormod(par.loop_var, rows)
    nxt = tirx.floordiv(par.loop_var, rows) + 1
    fetches: list[tirx.Stmt] = []
    for j in range(share):
        unit = (row - 1) * share + j
        call = tirx.call_intrin("void", "tirx.prefetch", tirx.address_of(tirx.BufferLoad(
            weight.source, [nxt, *red_index[:-1],
                            inner.loop_var + tirx.floordiv(unit, chunks),
                            tirx.floormod(unit, chunks) * per_line])), 0, LOCALITY, 1)
        stmt = tirx.Evaluate(call)
        fetches.append(stmt if units % share == 0 else tirx.IfThenElse(unit < units, stmt, None))
    cond = tirx.all(row >= 1, (row - 1) * share < units, nxt < blocks,
                    tirx.floormod(inner.loop_var, EVERY) == 0)
    body = fetches[0] if len(fetches) == 1 else tirx.SeqStmt(fetches)
    return inner, tirx.IfThenElse(cond, body, None)


def _unit_steps(loop: tirx.For) -> bool:
    """A loop from 0 in steps of one (the reduce loops the rule leaves)."""
    step = loop.step
    return int(loop.min) == 0 and (step is None or int(step) == 1)


def _weight_load(block: s_tir.SBlock) -> tuple[TensorLoad, list[tirx.Var]] | None:
    """The read `W[block, r0, ..., rn, lane]` in the update's body and its r0..rn: block
    iterators that are reduce axes or unit axes (a 1x1 kernel's, legalised as spatial),
    the last one a reduce axis (the one the kernel's inner loop runs over)."""
    value = getattr(block.body, "value", None)
    if value is None:
        return None
    kinds = {iv.var: (int(iv.iter_type), iv.dom.extent) for iv in block.iter_vars}

    def reduce_like(e: object) -> bool:
        kind = kinds.get(e)
        return kind is not None and (kind[0] == tirx.IterVar.CommReduce or int(kind[1]) == 1)

    for e in subexprs(value):
        if not isinstance(e, TensorLoad) or len(e.indices) < 3:
            continue
        middle = list(e.indices)[1:-1]
        if all(reduce_like(i) for i in middle) and kinds[middle[-1]][0] == tirx.IterVar.CommReduce:
            return e, middle
    return None
