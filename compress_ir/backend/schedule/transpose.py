"""Cache-blocked transposes (the NCHW <-> NHWC copies at a CNN's input and output).

Why: the generic injective schedule vectorises the output's innermost axis. For the input
transpose NCHW -> NHWC that axis is the 3 colour channels: every vector lane then
computes its own div/mod of a fused index and gathers from three planes (MobileNetV2 and
ResNet: 0.3 ms for 150 K elements, 0.23-0.05x onnxruntime's reorder). Here the loop that
is contiguous in the input and the loop that is contiguous in the output are both split
into small tiles and placed innermost, so a tile reads and writes a handful of cache lines
each, with no index arithmetic per element; the outer loops run in parallel.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from compress_ir.backend.schedule.analysis import root_blocks

TILE = 16  # elements per tile side: one cache line of fp32 on either side


def _tile(extent: int) -> int:
    """Largest divisor of `extent` up to TILE (tiles must divide: no predicates)."""
    return max(d for d in range(1, min(extent, TILE) + 1) if extent % d == 0)


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


def rule_transpose(sch: s_tir.Schedule, lanes: int) -> str | None:
    """A function that is one transpose block whose innermost axes differ on both sides."""
    infos = root_blocks(sch)
    if len(infos) != 1 or not infos[0].is_spatial:
        return None
    block = sch.get(infos[0].rv)
    perm = _permutation(block)
    if perm is None:
        return None
    loops = sch.get_loops(infos[0].rv)
    if len(loops) != len(perm):
        return None
    extents = [int(sch.get(lp).extent) for lp in loops]
    last, src = len(loops) - 1, perm[-1]  # output-contiguous loop, input-contiguous loop
    if src == last or extents[last] % lanes == 0 and extents[src] == 1:
        return None  # already contiguous on both sides: the injective rule vectorises it
    last_o, last_i = sch.split(loops[last], [None, _tile(extents[last])])
    src_o, src_i = sch.split(loops[src], [None, _tile(extents[src])])
    outer = [last_o if k == last else src_o if k == src else lp for k, lp in enumerate(loops)]
    sch.reorder(*outer, src_i, last_i)
    sch.parallel(sch.fuse(*outer))
    sch.unroll(last_i)
    return "transpose-tile"
