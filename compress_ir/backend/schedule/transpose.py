"""Cache-blocked transposes (the NHWC -> NCHW copies where a CNN's feature maps leave).

Why: the generic injective schedule vectorises the output's innermost axis (image width
for NHWC -> NCHW) and walks the channels outermost, so each vector gathers one float from
16 cache lines and the next channel reloads the same lines after a whole image row
(112x112x96: 1.5 ms, 43 KB per row over L1). Here the output's innermost loop (one vector)
and the input's innermost loop (up to 16 channels) form a tile that stays in L1: measured
on the function alone (TVM time_evaluator, znver4), 112x112x96 1.51 -> 0.45 ms and
112x112x16 0.14 -> 0.05 ms. Output rows that a full vector does not divide take the
widest power-of-two vector that does (ResNet's 56x56 maps: 8 lanes, 256x56x56 5.5 -> 0.55
ms on an Intel AVX-512 host; 1024x14x14 with 2 lanes 0.25 -> 0.15 ms). Rows of odd width
(NCHW -> NHWC with 3 colours, 7x7 maps) stay with the injective rule's short-axis loops,
faster there or equal (0.02 vs 0.06 ms; 0.060 vs 0.063 ms).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from compress_ir.backend.schedule.analysis import root_blocks, subexprs
from compress_ir.backend.schedule.parallel import parallel

TILE = 16  # input-side tile: one cache line of fp32
MIN_WIDTH = 2  # odd rows (3 colours, 7x7) stay injective: no faster tiled


def _tile(extent: int) -> int:
    """Largest divisor of `extent` up to TILE (tiles must divide: no predicates)."""
    return max(d for d in range(1, min(extent, TILE) + 1) if extent % d == 0)


def _vector_width(extent: int, lanes: int) -> int | None:
    """The widest power-of-two vector, of `lanes` down to MIN_WIDTH, that divides the
    output rows: ResNet's 56- and 28-wide feature maps take 8 and 4 lanes (no predicates)."""
    width = lanes
    while width >= MIN_WIDTH:
        if extent % width == 0:
            return width
        width //= 2
    return None


def _permutation(block: tirx.SBlock) -> list[int] | None:
    """Output-loop position of each input index when the block is a pure transpose."""
    body = block.body
    if not (isinstance(body, tirx.BufferStore) and isinstance(body.value, TensorLoad)):
        return None
    ivars = [iv.var for iv in block.iter_vars]
    load = list(body.value.indices)
    store = list(body.indices)
    if len(load) != len(ivars) or len(store) != len(ivars) or not all(
            a.same_as(b) for a, b in zip(store, ivars, strict=True)):
        return None
    perm = []
    for idx in load:
        pos = next((k for k, v in enumerate(ivars) if idx.same_as(v)), None)
        if pos is None:
            return None
        perm.append(pos)
    if sorted(perm) != list(range(len(ivars))) or perm == sorted(perm):
        return None
    return perm


def _schedule_transpose(sch: s_tir.Schedule, rv: s_tir.schedule.SBlockRV, lanes: int) -> bool:
    """Tile one pure-transpose block (see the module docstring); False if it does not fit."""
    perm = _permutation(sch.get(rv))
    if perm is None:
        return False
    loops = sch.get_loops(rv)
    if len(loops) != len(perm):
        return False
    extents = [int(sch.get(lp).extent) for lp in loops]
    last, src = len(loops) - 1, perm[-1]  # output-contiguous loop, input-contiguous loop
    width = _vector_width(extents[last], lanes)
    if src == last or width is None or extents[src] == 1:
        return False  # contiguous already, or stores that do not fill vectors: injective
    last_o, last_i = sch.split(loops[last], [None, width])
    src_o, src_i = sch.split(loops[src], [None, _tile(extents[src])])
    outer = [last_o if k == last else src_o if k == src else lp for k, lp in enumerate(loops)]
    sch.reorder(*outer, src_i, last_i)
    parallel(sch, sch.fuse(*outer))
    sch.vectorize(last_i)
    return True


def rule_transpose(sch: s_tir.Schedule, lanes: int) -> str | None:
    """A function that is one transpose block whose innermost axes differ on both sides."""
    infos = root_blocks(sch)
    if len(infos) != 1 or not infos[0].is_spatial:
        return None
    return "transpose-tile" if _schedule_transpose(sch, infos[0].rv, lanes) else None


def _reads_computed_index(block: tirx.SBlock) -> bool:
    """A load whose index is computed from a float (a resize's floor((x + .5) * s - .5))."""
    if not isinstance(block.body, tirx.BufferStore):
        return False
    return any(isinstance(node, tirx.Cast) and "int" in str(node.ty)
               and "float" in str(node.value.ty)
               for load in subexprs(block.body.value) if isinstance(load, TensorLoad)
               for index in load.indices for node in subexprs(index))


def rule_gather_transpose(sch: s_tir.Schedule, lanes: int) -> str | None:
    """A resize (reads at computed indices) feeding a transpose out of NHWC: two passes.

    Why: inlined into the transpose, the resize is vectorised along the output's image rows,
    and each lane reads its four neighbours at computed indices one channel stride apart:
    gathers (LR-ASPP's 8x bilinear upsample to 21x160x160: 0.85 ms, onnxruntime's NCHWc
    upsample and reorder 0.28 ms). In NHWC the channels are contiguous and every lane of a
    vector shares the computed indices; the transpose then runs as a cache-blocked tile.
    """
    infos = root_blocks(sch)
    if len(infos) != 2 or not all(i.is_spatial for i in infos):
        return None
    gather, out = (sch.get(i.rv) for i in infos)
    if not _reads_computed_index(gather):
        return None
    if _permutation(out) is None or not _schedule_transpose(sch, infos[1].rv, lanes):
        return None
    loops = sch.get_loops(infos[0].rv)
    if len(loops) < 2:
        return None
    inner = loops[-1]
    if int(sch.get(inner).extent) % lanes == 0:
        inner = sch.split(inner, [None, lanes])[1]
    elif int(sch.get(inner).extent) > 4 * lanes:
        return None  # a wide ragged channel axis: left to the injective rule
    parallel(sch, sch.fuse(*loops[:-1]))
    sch.vectorize(inner)  # the lanes share the computed indices of one pixel
    return "gather-transpose"
