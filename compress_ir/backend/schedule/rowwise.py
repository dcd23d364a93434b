"""Row-wise normalisations (softmax, LayerNorm, RMSNorm): one row per parallel iteration.

Why: these functions are chains of reductions over the last axis and element-wise passes
over the same rows (softmax: max, exp, sum, divide; LayerNorm: sum, mean, variance,
normalise). No other CPU rule fits a function with several reductions, so TVM's fallback
ran them as scalar single-threaded loops, each pass over the whole tensor (MiniLM: 19 such
calls, 3.2 ms of 35). Here every block is computed inside the output's row loop: a row is
read from cache by each pass, rows run in parallel, element-wise passes are vectorised and
each reduction is split into `lanes` partial accumulators (rfactor) so it vectorises too.
A row length that is not a multiple of the vector width (ViT's 197 tokens) keeps scalar
reductions (still row-parallel, still one pass per row in cache).
"""

from __future__ import annotations

from tvm import s_tir

from compress_ir.backend.schedule.analysis import BlockInfo, root_blocks


def _row_kinds(sch: s_tir.Schedule, info: BlockInfo, n: int) -> str:
    """Iterator kinds with a unit axis in the last output position dropped (`keepdims=1`:
    ReduceMean(x, -1) of shape [.., 1] is a per-row value like a keepdims=0 one)."""
    iters = sch.get(info.rv).iter_vars
    kinds = info.kinds
    if len(iters) > n - 1 and kinds[n - 1] == "S" and int(iters[n - 1].dom.extent) == 1 \
            and (len(kinds) == n or kinds[n:] == "R"):
        kinds = kinds[:n - 1] + kinds[n:]
    return kinds


def _fits(sch: s_tir.Schedule, infos: list[BlockInfo]) -> bool:
    """Reduce each row over its last axis, then write whole rows again (broadcast back).

    Every block works on the output's rows: full rows (`S`*n), one value per row
    (`S`*(n-1): max, sum, mean; also kept as a unit axis) or a reduction over the last axis
    (`S`*(n-1) + `R`), and the output is a full row. Pooling and ReduceMean alone (the
    output is the reduced tensor) and matmuls (their reduction keeps all n output axes)
    never match.
    """
    out = infos[-1]
    n = len(out.kinds)
    if out.kinds != "S" * n or n < 2:
        return False
    row_kinds = {"S" * n, "S" * (n - 1), "S" * (n - 1) + "R"}
    if any(_row_kinds(sch, i, n) not in row_kinds for i in infos):
        return False
    return any(i.is_reduction for i in infos)


def _vectorize_last(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    loops = sch.get_loops(block)
    if len(loops) < 2:  # only the row loop (a per-row scalar such as the mean)
        return
    ext = sch.get(loops[-1]).extent
    ext = int(ext) if hasattr(ext, "value") else None
    if ext is None or ext < lanes:
        return
    if ext % lanes == 0:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[-1])


def _rfactor_lanes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int
                   ) -> s_tir.schedule.SBlockRV | None:
    """Split a root reduction's last loop into `lanes` partial accumulators (rfactor).

    Must run while the block still owns its loop nest (rfactor refuses a block that shares
    its loops); the partial-sum block is returned for vectorising once it sits in the row
    loop. None when the row length is not a multiple of the vector width.
    """
    loops = sch.get_loops(block)
    ext = sch.get(loops[-1]).extent
    if not hasattr(ext, "value") or int(ext) % lanes or int(ext) < 2 * lanes:
        return None
    _, inner = sch.split(loops[-1], [None, lanes])
    return sch.rfactor(inner, factor_axis=len(loops) - 1)


def _vectorize_partials(sch: s_tir.Schedule, rf: s_tir.schedule.SBlockRV) -> None:
    """Vectorise the partial-sum lanes: the innermost loop after compute_at, data-parallel
    in the partial-sum block (its last reduce loop walks the row in vector steps)."""
    loops = sch.get_loops(rf)
    if len(loops) < 3:
        return
    # compute_at regenerates the two inner loops in block-iterator order (lanes first)
    lane_first = sch.get(rf).iter_vars[0].iter_type == 0 and \
        sch.get(rf).iter_vars[-1].iter_type != 0
    if lane_first:
        sch.reorder(loops[-1], loops[-2])
        loops = sch.get_loops(rf)
    sch.vectorize(loops[-1])


def rule_rowwise(sch: s_tir.Schedule, lanes: int) -> str | None:
    """Schedule a softmax / LayerNorm / RMSNorm-shaped function row by row (see module)."""
    infos = root_blocks(sch)
    if len(infos) < 2 or not _fits(sch, infos):
        return None
    out = infos[-1]
    # element-wise producers read once (softmax's x - max feeding exp) are recomputed in
    # their consumer instead of stored; blocks read twice (exp, mean) stay materialised
    for info in infos[:-1]:
        if info.is_spatial and len(sch.get_consumers(info.rv)) == 1:
            try:
                sch.compute_inline(info.rv)
            except s_tir.ScheduleError:
                continue
    partials = [rf for i in root_blocks(sch) if i.is_reduction
                for rf in [_rfactor_lanes(sch, i.rv, lanes)] if rf is not None]
    loops = sch.get_loops(out.rv)
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(row)  # rows of exp / rsqrt work: worth the threads even when small
    kept = [i for i in root_blocks(sch) if i.name != out.name]
    for info in reversed(kept):
        sch.compute_at(info.rv, row, preserve_unit_loops=False)
    _vectorize_last(sch, out.rv, lanes)
    for info in kept:
        if info.is_spatial:
            _vectorize_last(sch, info.rv, lanes)
    for rf in partials:
        _vectorize_partials(sch, rf)
    return "rowwise"
