"""Default CPU schedules: register-tiled, vectorised, parallel loops without any tuning.

Why: TVM's default Relax pipeline leaves CPU loops as written (scalar, single-threaded),
20-150x slower than onnxruntime. Conv and matmul become, after the NHWC layout conversion
in `pipeline.py`, one reduction block whose innermost spatial axis (output channels) is
contiguous in both the output and the weights, so one generic micro-kernel serves conv,
grouped/depthwise conv, dense, matmul and pooling (a grouped conv's channel tile stays
inside one group, its input read a broadcast): tile (rows x channels) in registers,
vectorise channels, accumulate over the reduce axes, write back through the fused
epilogue (bias, residual add, relu) and parallelise the outer loops. Rows are output
positions (y*W + x), the constant weights are packed at compile time as [C/tile, ..., tile]
so the kernel streams them, and deep layers (more channels than positions) loop over
channel blocks outermost. Few-row contractions (dense layers) use a weight-streaming GEMV
kernel instead. Schedules are semantics-preserving TIR primitives, so a rule can only make
code faster or fail (then the next rule, and finally TVM's default, is used); a result
that does not lower (a primitive TVM accepted but cannot handle) counts as a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.target import Target

from compress_ir.backend.schedule import rowwise, stack_tiles, transpose
from compress_ir.backend.schedule.analysis import BlockInfo, reads_var, root_blocks, subexprs
from compress_ir.backend.schedule.parallel import parallel, scheduling, work
from compress_ir.backend.schedule.prefetch import PREFETCH_ATTR
from compress_ir.backend.schedule.validate import first_line, lowering_error
from compress_ir.targets.spec import TargetSpec


@dataclass(frozen=True)
class CpuParams:
    """What a CPU offers the micro-kernel: fp32 lanes per vector and vector registers."""

    lanes: int
    registers: int


def cpu_params(spec: TargetSpec) -> CpuParams:
    """Vector width and register count, from the target spec (their one source)."""
    if spec.device != "cpu":
        raise ValueError(f"target {spec.name} is not a CPU target")
    return CpuParams(lanes=spec.lanes, registers=spec.vector_registers)


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


PAD_ROWS = 8  # the register tile's largest row count (AVX2, NEON; rows padded to it)
WIDE_ROWS = 14  # ... on 16-lane vectors (the tile is a stack array up to 2 KB)
WIDE_LANES = 16  # taller tiles measured on AVX-512 only; narrower vectors keep PAD_ROWS
PAD_MARGIN = 0.05  # a padded window tile must beat the exact one by this fraction


def choose_tile(channels: int, rows: int, cpu: CpuParams) -> tuple[int, int]:
    """Pick (row tile, channel tile) for the register micro-kernel.

    Channels: one or two vectors (measured on AVX2: tiles of 3-4 vectors are 3-10x slower,
    LLVM splits such wide vector types badly), three when two do not divide the channels
    (48, 144, 240), split into unrolled vectors by the caller (side by side on Zen 5:
    EfficientNet-B0 0.965, MobileNetV2 0.979, pruned Inception v2 0.966 of the time; where
    two vectors divide, three were no better; 5 and 7 vectors for 80 / 112 channels were
    slower). Rows: exact divisors only (no predicate in the kernel; `window_tile` cuts a
    conv's last row tile short where none fits). Per reduce step the kernel loads `vecs`
    weight vectors, broadcasts `rows` inputs and issues `rows*vecs` FMAs into as many
    accumulators, which must fit in the register file next to the operands (spills cost
    more than they save): maximise FMAs per load under that budget, at most `row_cap` rows,
    and the tile at most `stack_tiles.STACK_BYTES` so
    that its accumulators are a stack array LLVM keeps in registers (`accumulator_scope`;
    under TVM's own 1 KB limit, 7 x 32 channels on 16 lanes against a workspace tile: side
    by side, pruned ResNet-50 0.949, MobileNetV2 0.942, RegNetX 0.933, ShuffleNet v1 0.920
    of the time; transformers 1.00).
    """
    lanes = cpu.lanes
    ch_opts = [k * lanes for k in (2, 1) if channels % (k * lanes) == 0]
    if channels % (2 * lanes) and channels % (3 * lanes) == 0:
        ch_opts.insert(0, 3 * lanes)  # 48, 144, 240 on 16 lanes: three unrolled vectors
    if not ch_opts:
        part = max(d for d in _divisors(channels) if d <= lanes)
        # two partial vectors per tile (24 = 2 x 12 on 16 lanes) share each input broadcast
        ch_opts = [2 * part if part < lanes and channels % (2 * part) == 0 else part]
    budget = cpu.registers - 4  # accumulators + weight vectors + broadcast: no spills
    best, best_score = (1, ch_opts[0]), -1.0
    for ch in ch_opts:
        vecs = max(1, -(-ch // lanes))
        for row in _divisors(rows):
            if row > row_cap(lanes) or row * vecs > budget or not _fits_stack(row, ch):
                continue
            score = _tile_score(row, vecs)
            if score > best_score + 1e-9:
                best, best_score = (row, ch), score
    return best


def row_cap(lanes: int) -> int:
    """The most rows of a register tile on vectors of `lanes` fp32 lanes.

    Why: per reduce step a tile of r rows x v vectors issues r*v FMAs for r broadcasts and
    v weight loads. On AVX-512, 7 x 2 vectors was the tallest tile under TVM's 1 KB stack
    limit; with tiles up to 2 KB kept on the stack (`stack_tiles`), 14 x 2 (28 of the 32
    registers) is taller still, as in onnxruntime's MLAS (12 x 2). Side by side on an Intel
    Xeon, 1 thread, 8-row tiles -> 14: ViT-S 76.7 -> 74.1 ms, ResNet-50 69.1 -> 64.8,
    ResNet-18 28.5 -> 27.5, BERT-base equal. One-vector tiles (16-channel groups, pruned
    widths) up to 14 rows too: MobileNetV2 6.05 -> 5.88 and 6.06 -> 5.63 ms (two runs),
    pruned GoogLeNet 6.71 -> 6.63, pruned Inception v2 9.29 -> 9.18 (on Zen 5, before the
    stack pass, 14 one-vector rows were 1-3 % slower). Narrower vectors (AVX2, NEON) were
    not measured with taller tiles and keep `PAD_ROWS`.
    """
    return WIDE_ROWS if lanes >= WIDE_LANES else PAD_ROWS


def _fits_stack(rows: int, channels: int) -> bool:
    """The fp32 accumulator tile is a stack array (see `accumulator_scope`)."""
    return rows * channels * 4 <= stack_tiles.STACK_BYTES


def accumulator_scope(rows: int, channels: int) -> str:
    """Storage scope of a register tile's accumulators.

    Why: TVM serves every "local" buffer, and every "global" one of 1 KB or more, from
    `TVMBackendAllocWorkspace`: a call pair per tile, and LLVM cannot keep a tile in
    registers across the write-back, so each tile stored its accumulators and read them
    back. A "global" buffer under 1 KB, or up to `stack_tiles.STACK_BYTES` in our CPU
    pipeline, is a stack array that LLVM promotes to registers:
    the tile's epilogue (bias, ReLU, store) then runs on the accumulators themselves
    (a chain of 64-channel 1x1 convs at 56x56: 0.894 of the time).
    """
    return "global" if _fits_stack(rows, channels) else "local"


def _tile_score(rows: int, vecs: int) -> float:
    """FMAs per load of one reduce step: rows x vecs FMAs for rows + vecs loads."""
    return rows * vecs / (rows + vecs)


def window_tile(channels: int, positions: int, cpu: CpuParams) -> tuple[int, int]:
    """`choose_tile` for the output positions of a conv or pool window.

    Why: exact divisors leave 1 row for 13x13 = 169 positions and 3 for 27x27 (SqueezeNet,
    Inception v3's 17x17), so the kernel broadcast each input to one or three FMAs
    (SqueezeNet 0.43x onnxruntime). There the tile takes the most rows `choose_tile` allows
    for its channels and the last tile is cut short by a predicate that is the same for
    every lane of a vector (175 positions for 169 with 7-row tiles: SqueezeNet 8.6 -> 3.4 ms
    with 8-row tiles, the output bit-identical), when the fuller tile's work, padded
    positions included, is smaller by `PAD_MARGIN` (BERT-base's 1536 attention rows: 14
    rows padded to 1540 ran 203 ms, the exact 12 rows 194 ms).
    """
    row_t, ch_t = choose_tile(channels, positions, cpu)
    if positions <= PAD_ROWS:
        return row_t, ch_t
    # the most rows any count of positions allows (840 = lcm(1..8), also a multiple of
    # 10, 12 and 14), then pad to them when that beats the exact tile net of the padded
    # positions' work
    most, _ = choose_tile(channels, 840, cpu)
    padded = -(-positions // most) * most
    lanes = cpu.lanes

    def cost(rows: int, ch: int, pos: int) -> float:
        return pos / _tile_score(rows, max(1, -(-ch // lanes)))

    pad_t = choose_tile(channels, padded, cpu)
    if cost(*pad_t, padded) < (1 - PAD_MARGIN) * cost(row_t, ch_t, positions):
        return pad_t
    return row_t, ch_t


def _vectorize_inner(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    loops = sch.get_loops(block)
    if loops:
        sch.vectorize(loops[-1])


def schedule_injective(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV,
                       cpu: CpuParams) -> None:
    """Parallel + vector loops for a root spatial block.

    When the innermost axis is a whole number of vectors, it is vectorised on its own and
    the rest fused and parallelised: vector lanes then never straddle an outer index. A
    longer ragged row (120 channels on 16 lanes) runs rows in parallel, each a plain loop
    LLVM vectorises: vectorised over fused loops, a lane that can straddle a row computes
    its own div/mod and loads by gather, even between buffers of equal shape (TVM does not
    fold the index back to the flat address). A short innermost axis (< lanes) keeps its two
    inner loops plain under a parallel outer loop. Otherwise (one loop, or an axis of
    unknown length) all loops are fused, vectorised by `lanes`, the rest parallel.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    last = _extent(sch, loops[-1])
    ragged = last is not None and last > cpu.lanes and last % cpu.lanes != 0
    if len(loops) > 1 and last is not None and last > 1 and (
            ragged or _lane_divmod(sch, block)):
        # Vectorised, every lane paid a div/mod and a gather (or the loop ran scalar):
        # - a ragged row over fused loops: a padded matmul's copy-in/out of 197 tokens made
        #   ViT-S's attention matmuls 2-3x slower than onnxruntime; MobileNetV3's hardswish
        #   on 14x14x120 took 39 us instead of 4;
        # - a read whose address is a div/mod of the lane (an NHWC channel shuffle, a crop
        #   of group-padded channels; ShuffleNet's shuffle + BN + ReLU on 14x14x272: 89 us
        #   instead of 23).
        # Rows in parallel, the row a plain loop that LLVM vectorises with a remainder.
        parallel(sch, sch.fuse(*loops[:-1]))
        return
    if len(loops) > 1 and last is not None and last % cpu.lanes == 0:
        outer, inner = sch.split(loops[-1], [None, cpu.lanes])
        parallel(sch, sch.fuse(*loops[:-1], outer))
        sch.vectorize(inner)
        return
    if len(loops) > 1 and last is not None and 1 < last < cpu.lanes:
        # A short innermost axis (an NHWC stem's padding, 226x226x3) that does not fill a
        # vector: fused, the scalar loop paid a div/mod per element; here the two inner
        # axes stay plain loops (contiguous, unrolled by LLVM) under one parallel loop.
        outer = loops[:-2] if len(loops) > 2 else loops[:-1]
        parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _extent(sch, fused)
    if ext is None or ext <= 1:
        return
    if ext % cpu.lanes == 0 and ext >= 2 * cpu.lanes:
        outer, inner = sch.split(fused, [None, cpu.lanes])
        parallel(sch, outer)
        sch.vectorize(inner)
    else:
        parallel(sch, fused)


_DIVMOD = (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod)


def _lane_divmod(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Some read index divides or takes a remainder of the block's innermost axis (after
    simplification within the axes' bounds), so vector lanes along it need not be
    contiguous and each would compute its own address."""
    from tvm.sym import Analyzer

    stmt = sch.get(block)
    if not stmt.iter_vars:
        return False
    lane = stmt.iter_vars[-1].var
    analyzer = Analyzer()
    for iv in stmt.iter_vars:
        analyzer.bind(iv.var, iv.dom)

    for region in stmt.reads:
        for rng in region.region:
            index = analyzer.simplify(rng.min)
            if any(isinstance(e, _DIVMOD) and reads_var(e, lane) for e in subexprs(index)):
                return True
    return False


def _last_extent(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int | None:
    """Extent of the last axis of the buffer a block writes."""
    writes = sch.get(block).writes
    shape = writes[0].source.shape if writes else []
    return int(shape[-1]) if shape and isinstance(shape[-1], tirx.IntImm) else None


def _inline_spatial(sch: s_tir.Schedule, infos: list[BlockInfo], keep: set[str]) -> None:
    """Inline element-wise producers into their consumers where TIR allows it."""
    for info in infos:
        if info.name in keep or not info.is_spatial:
            continue
        try:
            sch.compute_inline(info.rv)
        except s_tir.ScheduleError:
            continue


def _schedule_remaining(sch: s_tir.Schedule, skip: set[str], cpu: CpuParams) -> None:
    for info in root_blocks(sch):
        if info.name in skip or not info.is_spatial:
            continue
        schedule_injective(sch, info.rv, cpu)


def rule_reduction_tile(sch: s_tir.Schedule, cpu: CpuParams) -> str | None:
    """Register-tiled micro-kernel for a function with exactly one reduction block."""
    infos = root_blocks(sch)
    reductions = [i for i in infos if i.is_reduction]
    if len(reductions) != 1:
        return None
    main = reductions[0]
    kinds = main.kinds
    if "O" in kinds or "S" not in kinds or kinds.index("R") < kinds.rindex("S"):
        return None  # only the canonical S...S R...R nests that legalization emits
    _inline_copies(sch, infos)
    if not main.contraction:
        # Pooling: its padding (-inf for max) is read through the bounds test instead of
        # a separate pass over the whole input; the loop body is a max/add, memory-bound,
        # so the test costs less than the pass (ResNet max-pool 0.065 -> 0.029 ms). Only
        # when the vector axis (the last) is not padded: in an NCHW pool the test varies
        # per lane of a row vector (Inception v2's 3x3 average pools ran 10x onnxruntime).
        pads = [i for i in infos[:[i.name for i in infos].index(main.name)]
                if _last_extent(sch, i.rv) == _last_extent(sch, main.rv)]
        _inline_spatial(sch, pads, set())
    loops = sch.get_loops(main.rv)
    if len(loops) != len(kinds):
        return None
    extents = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents):
        return None
    n_sp = kinds.count("S")
    spatial, reduce_ = loops[:n_sp], loops[n_sp:]

    ch_ext = extents[n_sp - 1]
    positions = 1
    for e in extents[:n_sp - 1]:
        positions *= e
    gemv_cpu = _gemv_params(ch_ext, cpu)
    gemv = positions <= GEMV_MAX_ROWS and gemv_cpu is not None
    if not gemv and main.contraction and _pad_contraction(sch, main, extents, n_sp, cpu):
        loops = sch.get_loops(main.rv)
        extents = [_extent(sch, lp) for lp in loops]
        spatial, reduce_ = loops[:n_sp], loops[n_sp:]
        ch_ext = extents[n_sp - 1]
        positions = 1
        for e in extents[:n_sp - 1]:
            positions *= e
    packed = None
    group = _tile_channels(sch, main, ch_ext)
    # rows: output positions y*W + x of a window (conv, pool), else the next-to-last axis
    row_ext = extents[n_sp - 3] * extents[n_sp - 2] if n_sp >= 3 else \
        extents[n_sp - 2] if n_sp >= 2 else 1
    row_t, ch_t = window_tile(group, row_ext, cpu) if n_sp >= 3 else \
        choose_tile(group, row_ext, cpu)
    if not gemv and main.contraction:
        packed = _pack_weight(sch, main, ch_t)

    # Epilogue: accumulate in a local tile, then fold element-wise consumers into the
    # write-back; producers that are pure padding/reshape stay separate (scheduled below).
    # a GEMV chunk's accumulators stay "local": on the stack (chunks under 1 KB) the
    # MLP layers of a batch-1 model ran 1.07x slower
    wb = sch.cache_write(main.rv, 0, "local" if gemv else accumulator_scope(row_t, ch_t))
    _fold_epilogue(sch, main.name, sch.get(wb).name_hint)

    if gemv:
        return _gemv_tile(sch, main, wb, spatial, reduce_, ch_ext, gemv_cpu)
    if n_sp >= 3:
        # Rows = output positions y*W + x: more exact divisors to tile by (14 -> 2 rows,
        # 196 -> 4), so tiles may span two image rows. Block iterators, accumulator and
        # write-back are all re-indexed by position: with (y, x) indices a tile's region is
        # a bounding box of whole rows, and its write-back would store other tiles' outputs.
        width = extents[n_sp - 2]
        n_all = len(kinds)
        sch.transform_block_layout(main.rv, tirx.IndexMap.from_func(
            lambda *ax: (*ax[:n_sp - 3], ax[n_sp - 3] * width + ax[n_sp - 2], *ax[n_sp - 1:]),
            ndim=n_all))
        fuse_yx = tirx.IndexMap.from_func(
            lambda *ax: (*ax[:-3], ax[-3] * width + ax[-2], ax[-1]), ndim=n_sp)
        sch.transform_layout(main.rv, ("write", 0), fuse_yx)
        sch.transform_block_layout(wb, fuse_yx)
        loops = sch.get_loops(main.rv)
        spatial, reduce_ = loops[:n_sp - 1], loops[n_sp - 1:]
    ch_o, ch_i = sch.split(spatial[-1], [None, ch_t])
    if n_sp >= 2:
        row_o, row_i = sch.split(spatial[-2], [None, row_t])
        # More output channels than positions (deep layers): weights dominate the traffic,
        # so keep one weight slice hot across all positions (channel blocks outermost).
        weight_outer = ch_ext > positions
        outer = [ch_o, *spatial[:-2], row_o] if weight_outer else [*spatial[:-2], row_o, ch_o]
        sch.reorder(*outer, *reduce_, row_i, ch_i)
    else:
        row_i, weight_outer = None, False
        outer = [ch_o]
        sch.reorder(ch_o, *reduce_, ch_i)
    blocks = _extent(sch, ch_o)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    parallel(sch, par)
    if weight_outer and packed is not None and blocks:
        sch.annotate(par, PREFETCH_ATTR, blocks)  # see prefetch.py
    sch.reverse_compute_at(wb, par, preserve_unit_loops=True)
    if row_i is not None and row_t > 1:
        sch.unroll(row_i)
    if ch_t == 3 * cpu.lanes:  # as one 48-wide vector type it ran 25x slower
        thirds, ch_i = sch.split(ch_i, [3, None])
        sch.unroll(thirds)
    if ch_t > cpu.lanes and ch_t % cpu.lanes:  # two partial vectors, unrolled (as one
        halves, ch_i = sch.split(ch_i, [2, None])  # 24-wide vector type, MobileNetV2 ran
        sch.unroll(halves)  # 1.5x slower)
    sch.vectorize(ch_i)  # before decompose: only a block with its init is a reduction block
    init = sch.decompose_reduction(main.rv, reduce_[0])
    _vectorize_tile(sch, init, ch_t, cpu.lanes)
    _vectorize_tile(sch, wb, ch_t, cpu.lanes)
    skip = {main.name, sch.get(wb).name_hint, sch.get(init).name_hint}
    if packed is not None:
        skip.add(sch.get(packed).name_hint)
    _schedule_remaining(sch, skip, cpu)
    return "contraction-tile" if main.contraction else "reduction-tile"


def _floordiv_divisors(expr: object, var: tirx.Var) -> set[int]:
    """Constant divisors `d` of every `floordiv(e, d)` in `expr` whose `e` reads `var`."""
    return {int(node.b.value) for node in subexprs(expr)
            if isinstance(node, tirx.FloorDiv) and isinstance(node.b, tirx.IntImm)
            and reads_var(node.a, var)}


def _tile_channels(sch: s_tir.Schedule, main: BlockInfo, channels: int) -> int:
    """The output channels a channel tile must divide: a grouped conv's group width.

    Why: a grouped conv reads input channel `c // G * G + rc` for output channel `c`; a
    vector spanning two groups turns each input read into a gather (RegNetX-400MF, group
    width 16, ran 0.30x onnxruntime with 32-channel tiles). Within one group the read is a
    broadcast, as in a dense conv.
    """
    block = sch.get(main.rv)
    out_var = block.iter_vars[main.kinds.rindex("S")].var
    width = channels
    for region in block.reads:
        for rng in region.region:
            for d in _floordiv_divisors(rng.min, out_var):
                if channels % d == 0:
                    width = min(width, d)
    return width


def _pad_contraction(sch: s_tir.Schedule, main: BlockInfo, extents: list[int], n_sp: int,
                     cpu: CpuParams) -> bool:
    """Pad a matmul's rows / output channels up to the tile sizes (`pad_einsum`).

    Why: tiles must divide their axis exactly (no predicates in the micro-kernel), so a
    prime extent — ViT's 197 tokens, as rows and as the channels of Q.K^T — left 1x1 scalar
    tiles (ViT-S: 0.28x onnxruntime). Padding to 200 rows / 208 channels costs 2-6 % extra
    MACs on zeros and small copies in and out; the padded rows and columns are never stored
    to the result. Only rows when the channels already vectorise; nothing for conv windows
    (rows there are y*W+x positions with their own divisors).
    """
    if main.kinds.count("S") < 2 or n_sp < 2:
        return False
    rows, chans = extents[n_sp - 2], extents[n_sp - 1]
    row_pad = next((m for m in (PAD_ROWS, PAD_ROWS // 2) if -rows % m <= 0.1 * rows), 0)
    pad_rows = rows > PAD_ROWS and choose_tile(cpu.lanes, rows, cpu)[0] < 4 and row_pad
    # a half-vector tile (pruned widths such as 40) stays: padding would cost as much
    pad_chans = chans > cpu.lanes and \
        max(d for d in _divisors(chans) if d <= cpu.lanes) < cpu.lanes // 2
    if not (pad_rows or pad_chans):
        return False
    padding = [1] * len(main.kinds)
    if pad_rows:
        padding[n_sp - 2] = row_pad
    if pad_chans:
        padding[n_sp - 1] = cpu.lanes
    try:
        sch.pad_einsum(main.rv, padding)
    except s_tir.ScheduleError:
        return False
    return True


def _is_plain_copy(sch: s_tir.Schedule, info: BlockInfo) -> bool:
    """A spatial block that copies element for element (`out[i, j] = in[i, j]`: a 1x1 conv's
    zero padding); transposes and reshapes are not plain copies."""
    if not info.is_spatial:
        return False
    body = sch.get(info.rv).body
    if not (isinstance(body, tirx.BufferStore) and isinstance(body.value, TensorLoad)):
        return False
    store, load = list(body.indices), list(body.value.indices)
    return len(store) == len(load) and all(a.same_as(b) for a, b in zip(store, load, strict=True))


def _inline_copies(sch: s_tir.Schedule, infos: list[BlockInfo]) -> None:
    """Read through plain-copy producers instead of materialising them.

    Why: legalization pads every conv input, also with zero padding (1x1 convs), and the copy
    was a separate pass over the whole input (MobileNetV2: 1x1 expand convs 25-60 % faster
    without it). Real padding stays a separate block: inlined, its bounds test sits in the
    dense conv's inner loop (3x3 convs ran 2x slower).
    """
    for info in infos:
        if _is_plain_copy(sch, info):
            try:
                sch.compute_inline(info.rv)
            except s_tir.ScheduleError:
                continue


DEPTHWISE_MAX_COLS = 8


def rule_depthwise(sch: s_tir.Schedule, cpu: CpuParams) -> str | None:
    """Depthwise conv (NHWC, one input channel per group): per image row, tiles of
    (output columns x one vector of channels) accumulate the kh*kw taps in registers.

    Why: the generic kernel broadcasts one input per FMA and reduces over input channels;
    a depthwise conv has no such axis (its reduce is 3x3 taps with extent-1 channels), so
    that kernel spent its time on index arithmetic and on a separate padding pass, 3-6x
    slower than onnxruntime (MobileNetV2). Here both operands are channel vectors loaded
    contiguously (NHWC data, HWIO weight), the padding is read through its bounds test
    (inlined: no extra pass), the epilogue (bias, ReLU6, residual) is applied in the
    write-back, and image rows run in parallel. Only the nest `n, y, x, c | ry, rx, rc`
    with `rc` of extent 1 is taken; everything else goes to the generic kernel.
    """
    infos = root_blocks(sch)
    reductions = [i for i in infos if i.is_reduction]
    if len(reductions) != 1 or not reductions[0].contraction or reductions[0].kinds != "SSSSRRR":
        return None
    main = reductions[0]
    loops = sch.get_loops(main.rv)
    if len(loops) != 7:
        return None
    extents = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents) or extents[6] != 1:
        return None
    n, y, x, c, ry, rx, rc = loops
    channels, cols = extents[3], extents[2]
    ch_t = cpu.lanes if channels % cpu.lanes == 0 else max(
        d for d in _divisors(channels) if d <= cpu.lanes)
    col_t = max(d for d in _divisors(cols) if d <= DEPTHWISE_MAX_COLS)
    for info in infos:
        if info.is_spatial and info.name != main.name and sch.get_consumers(info.rv) and any(
                sch.get(b).name_hint == main.name for b in sch.get_consumers(info.rv)):
            sch.compute_inline(info.rv)  # padding: read through its bounds test
    wb = sch.cache_write(main.rv, 0, accumulator_scope(col_t, ch_t))
    _fold_epilogue(sch, main.name, sch.get(wb).name_hint)
    x_o, x_i = sch.split(x, [None, col_t])
    c_o, c_i = sch.split(c, [None, ch_t])
    sch.reorder(n, y, x_o, c_o, ry, rx, rc, x_i, c_i)
    par = sch.fuse(n, y)
    parallel(sch, par)
    sch.reverse_compute_at(wb, c_o, preserve_unit_loops=True)
    if col_t > 1:
        sch.unroll(x_i)
    sch.vectorize(c_i)
    init = sch.decompose_reduction(main.rv, ry)
    _vectorize_split(sch, init, cpu.lanes)
    _vectorize_split(sch, wb, cpu.lanes)
    _schedule_remaining(sch, {main.name, sch.get(wb).name_hint, sch.get(init).name_hint}, cpu)
    return "depthwise-tile"


PACK_WEIGHTS = True
LAYOUT_REWRITE_ATTR = "meta_schedule.layout_rewrite_preproc"


def _pack_weight(sch: s_tir.Schedule, main: BlockInfo, ch_t: int
                 ) -> s_tir.schedule.SBlockRV | None:
    """Pack the constant weight as [C/ch_t, ..., ch_t] so the kernel streams it contiguously.

    The copy is a layout-rewrite block that `pipeline.pack_weights` splits out of the
    function and folds into the constant at compile time (no runtime cost). Only weights
    the Relax side marked layout-free (constants) and whose last axis is the output-channel
    axis of the block are packed.
    """
    func = sch.mod["main"]
    free = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    if not PACK_WEIGHTS or not free or ch_t <= 1:
        return None
    free_names = {func.params[int(i)].name for i in free}
    block = sch.get(main.rv)
    out_var = block.iter_vars[[k for k, c in enumerate(main.kinds) if c == "S"][-1]].var
    for idx, region in enumerate(block.reads):
        buf = region.source
        last = region.region[-1].min if region.region else None
        if buf.name not in free_names or not last.same_as(out_var):
            continue
        ext = int(buf.shape[-1])
        if ext % ch_t != 0:
            return None
        copy = sch.cache_read(main.rv, idx, "global")
        sch.annotate(copy, LAYOUT_REWRITE_ATTR, True)
        pack = tirx.IndexMap.from_func(
            lambda *ax: (ax[-1] // ch_t, *ax[:-1], ax[-1] % ch_t), ndim=len(buf.shape))
        sch.transform_layout(main.rv, ("read", idx), pack)
        return copy
    return None


GEMV_MAX_ROWS = 4
GEMV_CHUNK = 256


def _gemv_params(channels: int, cpu: CpuParams) -> CpuParams | None:
    """The vector width for a GEMV over `channels` outputs: the widest power of two down to a
    quarter of the register (at least 4) that divides them, or None.

    Why: a classifier's 1000 outputs are no multiple of 16, and the row-tiled fallback then
    ran 10-wide vectors over a packed weight (MobileNetV2's 1280x1000 layer 0.118 ms alone);
    streaming the weight rows with 8-wide vectors takes 0.056 ms.
    """
    lanes, floor = cpu.lanes, min(cpu.lanes, max(cpu.lanes // 4, 4))
    while lanes >= floor:
        if channels % lanes == 0:
            return cpu if lanes == cpu.lanes else replace(cpu, lanes=lanes)
        lanes //= 2
    return None


def _gemv_tile(sch: s_tir.Schedule, main: BlockInfo, wb: s_tir.schedule.SBlockRV,
               spatial: list, reduce_: list, ch_ext: int, cpu: CpuParams) -> str:
    """Few output rows (dense layer, batch 1): stream weight rows contiguously.

    A row-tiled kernel would walk the [K, N] weight column-wise (a cache line per K step);
    here each thread owns a chunk of N and, per K step, updates the whole chunk from one
    contiguous weight row, the chunk's accumulators staying in L1.
    """
    lanes = cpu.lanes
    chunk = max(d for d in _divisors(ch_ext)
                if d % lanes == 0 and d <= max(lanes, min(GEMV_CHUNK, ch_ext // 2)))
    ch_o, ch_m, ch_v = sch.split(spatial[-1], [None, chunk // lanes, lanes])
    outer = [*spatial[:-1], ch_o]
    sch.reorder(*outer, *reduce_, ch_m, ch_v)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    parallel(sch, par)
    sch.reverse_compute_at(wb, par, preserve_unit_loops=True)
    sch.vectorize(ch_v)
    init = sch.decompose_reduction(main.rv, reduce_[0])
    _vectorize_split(sch, init, lanes)
    _vectorize_split(sch, wb, lanes)
    _schedule_remaining(sch, {main.name, sch.get(wb).name_hint, sch.get(init).name_hint}, cpu)
    return "contraction-gemv" if main.contraction else "reduction-gemv"


def _vectorize_tile(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, ch_t: int,
                    lanes: int) -> None:
    """Vectorise a register tile's init or write-back over its `ch_t` channels.

    Why: as one vector type of a width that is not a power of two, LLVM compiled the
    write-back of a folded epilogue badly. A pruned stem's 12-channel conv with
    BatchNorm + ReLU, `(acc + b) * s + t`, ran 0.63 ms against 0.12 ms for `acc + b` (Intel
    AVX-512, 1 thread). In 4-lane pieces it ran 0.13-0.15 ms. The 48-channel tile (three
    vectors in the update) took 0.53 ms as one 48-wide vector and 0.31-0.37 ms as three.
    Two partial vectors (24 = 2 x 12, 20 = 2 x 10) were slower split (0.22 -> 0.27 ms), so
    they stay as they are."""
    loop = sch.get_loops(block)[-1]
    ext = _extent(sch, loop)
    piece = None
    if ext == 3 * lanes == ch_t:
        piece = lanes
    elif ext is not None and ext == ch_t < lanes and ext & (ext - 1):
        piece = ext & -ext  # the largest power of two that divides the width
    if piece is not None and piece > 1:
        outer, loop = sch.split(loop, [None, piece])
        sch.unroll(outer)
    sch.vectorize(loop)


def _vectorize_split(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Vectorise a block's innermost loop in `lanes` pieces (wide vector types split badly)."""
    loop = sch.get_loops(block)[-1]
    ext = _extent(sch, loop)
    if ext is not None and ext > lanes and ext % lanes == 0:
        loop = sch.split(loop, [None, lanes])[-1]
    sch.vectorize(loop)


def _epilogue(sch: s_tir.Schedule, main_name: str, skip: set[str]) -> list[BlockInfo]:
    """Spatial root blocks after the reduction (its epilogue), in program order."""
    infos = root_blocks(sch)
    names = [b.name for b in infos]
    after = infos[names.index(main_name) + 1:]
    return [b for b in after if b.is_spatial and b.name not in skip]


def _sole_consumer(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """True when every in-function producer of `block` feeds `block` alone.

    Why: reverse_compute_inline redirects the producer's store to the consumer's output
    buffer, so an intermediate that another block also reads (GELU's `x` in
    `x * (1 + erf(x / sqrt2))`) would lose its definition — TVM does not refuse this, and
    the function then fails in FlattenBuffer ("used before its definition").
    """
    name = sch.get(block).name_hint
    for producer in sch.get_producers(block):
        consumers = [sch.get(c).name_hint for c in sch.get_consumers(producer)]
        if consumers != [name]:
            return False
    return True


def _same_domain(sch: s_tir.Schedule, a: s_tir.schedule.SBlockRV,
                 b: s_tir.schedule.SBlockRV) -> bool:
    """Both blocks iterate over the same spatial extents.

    Why: a padded matmul (`_pad_contraction`) writes back 200x208 while its consumer copies
    out 197x197; reverse-inlining that consumer makes the write-back store the padded
    domain straight into the smaller output. TVM does not refuse it: the kernel writes out
    of bounds (heap corruption at run time).
    """
    def extents(rv: s_tir.schedule.SBlockRV) -> list[int]:
        return [int(iv.dom.extent) for iv in sch.get(rv).iter_vars if iv.iter_type == 0]
    return extents(a) == extents(b)


def _fold_epilogue(sch: s_tir.Schedule, main_name: str, wb_name: str) -> None:
    """Fold the element-wise epilogue of the reduction into its write-back block `wb_name`.

    First every epilogue block that is not a function output is inlined into its consumers
    (an intermediate read twice, as in GELU, is recomputed: a few flops per element), which
    turns a DAG of element-wise blocks into one block per output; then each block whose
    producers feed it alone is reverse-inlined into the write-back. Blocks that cannot be
    folded stay at the root and are scheduled as injective loops afterwards (correct, just
    one more pass over the output).
    """
    root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for info in _epilogue(sch, main_name, {wb_name} | outputs):
        if not all(_same_domain(sch, c, info.rv) for c in sch.get_consumers(info.rv)):
            continue  # a broadcasting consumer would recompute it per element it writes
        try:
            sch.compute_inline(info.rv)
        except s_tir.ScheduleError:
            continue
    wb = sch.get_sblock(wb_name)
    for info in _epilogue(sch, main_name, {wb_name}):
        if not sch.get_producers(info.rv) or not _sole_consumer(sch, info.rv) \
                or not _same_domain(sch, info.rv, wb):
            continue
        try:
            sch.reverse_compute_inline(info.rv)
        except s_tir.ScheduleError:
            continue


def rule_injective(sch: s_tir.Schedule, cpu: CpuParams) -> str | None:
    """Element-wise / layout-transform functions: inline chains, parallel + vector loops."""
    infos = root_blocks(sch)
    if not infos or not all(i.is_spatial for i in infos):
        return None
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(
        sch.get_sblock(sch.mod["main"].body.block.name_hint))}
    _inline_spatial(sch, infos, outputs)
    _schedule_remaining(sch, set(), cpu)
    return "injective"


def rule_rowwise(sch: s_tir.Schedule, cpu: CpuParams) -> str | None:
    """Softmax / LayerNorm / RMSNorm: row-parallel, vectorised (`rowwise.py`)."""
    return rowwise.rule_rowwise(sch, cpu.lanes)


def rule_gather_transpose(sch: s_tir.Schedule, cpu: CpuParams) -> str | None:
    """A resize feeding an NHWC -> NCHW transpose: two vectorised passes (`transpose.py`)."""
    return transpose.rule_gather_transpose(sch, cpu.lanes)


def rule_transpose(sch: s_tir.Schedule, cpu: CpuParams) -> str | None:
    """Pure transposes whose output rows fill vectors (NHWC -> NCHW): L1 tiles (`transpose.py`)."""
    return transpose.rule_transpose(sch, cpu.lanes)


CpuRule = Callable[[s_tir.Schedule, CpuParams], "str | None"]

# Tried in order; the first rule that returns a name owns the function.
CPU_RULES: tuple[CpuRule, ...] = (rule_depthwise, rule_rowwise, rule_reduction_tile,
                                  rule_transpose, rule_gather_transpose, rule_injective)


def default_schedule(func: tirx.PrimFunc | tvm.IRModule, cpu: CpuParams,
                     target: Target | None = None
                     ) -> tuple[s_tir.Schedule | None, str, str | None]:
    """The first CPU rule that fits and lowers, as a Schedule (its trace can be replayed).

    Returns (schedule, rule, None), or (None, 'fallback', reason) when no rule fits or every
    rule's result fails to lower (`validate.lowering_error`): a schedule TVM cannot lower is
    never passed on. The trace is what `compete.py` stores in a tuning database so that the
    default rules compete with tuned schedules.
    """
    prim = func if isinstance(func, tirx.PrimFunc) else func["main"]
    with scheduling(work(prim)):
        return _first_rule(func, cpu, target)


def _first_rule(func: tirx.PrimFunc | tvm.IRModule, cpu: CpuParams, target: Target | None
                ) -> tuple[s_tir.Schedule | None, str, str | None]:
    refused = []
    for rule in CPU_RULES:
        sch = s_tir.Schedule(func)
        try:
            name = rule(sch, cpu)
        except (RuntimeError, ValueError) as exc:  # ScheduleError, InternalError
            refused.append(f"{rule.__name__}: {first_line(exc)}")
            continue
        if name is None:
            continue
        error = lowering_error(sch.mod["main"].with_attr("tirx.is_scheduled", True), target)
        if error is None:
            return sch, name, None
        refused.append(f"{name} schedule does not lower: {error}")
    return None, "fallback", "; ".join(refused) or "no rule matches the block structure"


def schedule_cpu_func(func: tirx.PrimFunc, cpu: CpuParams, target: Target | None = None
                      ) -> tuple[tirx.PrimFunc, str, str | None]:
    """Apply the first CPU rule that fits and lowers; returns (function, rule, reason).

    When none fits, the function is returned unchanged with rule 'fallback' (TVM's
    default handling) and the reason why each rule was refused.
    """
    sch, name, reason = default_schedule(func, cpu, target)
    if sch is None:
        return func, name, reason
    return sch.mod["main"].with_attr("tirx.is_scheduled", True), name, None
