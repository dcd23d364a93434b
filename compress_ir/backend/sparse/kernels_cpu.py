"""CPU (llvm) sparse kernels as scheduled TIR PrimFuncs.

Every function is specialised on static shapes and the number of nonzero blocks; the
structure (indptr/indices) comes in as constant tensors. Loops are already scheduled —
parallel outer loop, vectorised inner loop — and the functions carry
`tir.is_scheduled`/`tirx.is_scheduled` so default schedulers leave them alone, and
`op_pattern` opaque so FuseOps does not merge them into a generic fused function.
"""

from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

VEC = 8  # fp32 lanes of AVX2; LLVM splits it for 128-bit NEON
OPAQUE = 8  # relax OpPatternKind.kOpaque
# Accumulator scope: on llvm, "local" buffers become TVMBackendAllocWorkspace heap memory
# (loads/stores every step); a small "global" allocation is a stack alloca that LLVM
# promotes to registers (measured: 3x fewer memory ops in the inner loop).
ACC_SCOPE = "global"
SCHEDULED_ATTRS = {"tir.is_scheduled": True, "tirx.is_scheduled": True, "tirx.noalias": True,
                   "op_pattern": OPAQUE}


def bsr_matmul_rowvec(m: int, k: int, n: int, block: tuple[int, int], nnzb: int,
                      dtype: str = "float32") -> Any:
    """Y(m, n) = X(m, k) · Wᵀ, W (n, k) in BSR with values stored (nnzb, c, r).

    Parallel over block rows; the r outputs of a block are contiguous in Y and in the
    transposed block, so the inner loop is a vector FMA with X[m, col] broadcast. Best for
    r ≥ 4 and any m (m = 1 included).
    """
    r, c = block
    nbr = n // r
    nz = max(nnzb, 1)
    zero = T.Cast(dtype, 0)

    @T.prim_func(private=True, s_tir=True, check_well_formed=False)
    def func(x: T.Buffer((m, k), dtype), v: T.Buffer((nz, c, r), dtype),
             indptr: T.Buffer((nbr + 1,), "int32"), indices: T.Buffer((nz,), "int32"),
             y: T.Buffer((m, n), dtype)):
        T.func_attr(SCHEDULED_ATTRS)
        with T.sblock("root"):  # S-TIR passes expect a root block
            with T.sblock("sparse"):  # ... holding one (opaque) compute block
                for i in T.parallel(nbr):
                    for mi in range(m):
                        acc = T.decl_buffer((r,), dtype, scope=ACC_SCOPE)
                        for rr in T.vectorized(r):
                            acc[rr] = zero
                        for j in range(indptr[i], indptr[i + 1]):
                            for cc in range(c):
                                for rr in T.vectorized(r):
                                    acc[rr] = acc[rr] + x[mi, indices[j] * c + cc] * v[j, cc, rr]
                        for rr in T.vectorized(r):
                            y[mi, i * r + rr] = acc[rr]

    return func


def tile_width(rows: int, width: int) -> int:
    """Output columns per register tile (a multiple of VEC): r × tw accumulators stay within
    ~16 vector registers; 0 when the row is shorter than one vector."""
    budget = max(VEC, min(64, 128 // rows // VEC * VEC))
    return min(budget, width // VEC * VEC)


def bsr_conv2d_direct(x_shape: tuple[int, int, int, int], out_shape: tuple[int, int, int, int],
                      kernel: tuple[int, int], stride: tuple[int, int],
                      dilation: tuple[int, int], block: tuple[int, int], nnzb: int,
                      dtype: str = "float32") -> Any:
    """Direct sparse conv on a pre-padded NCHW input; W (C_out, C_in·kh·kw) in BSR (nnzb, r, c).

    Parallel over batch × output rows × block rows (block rows innermost, so concurrent
    tasks share the few input rows one output row needs). Along the row, an r × tw tile
    of accumulators collects w·X[ci, oh·s+a·d, ow·s+b·d] over the block row's nonzeros
    and is stored once; the tile is unrolled into VEC-lane vectors (so LLVM keeps it in
    registers), then a narrower vector tile and a scalar tail finish the row. A 1×1 conv
    is the same kernel; a matmul with its input transposed to (k, m) is a 1×1 conv with
    H = 1, W = m.
    """
    nb, c_in, hp, wp = x_shape
    _, c_out, oh, ow = out_shape
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    r, c = block
    khw = kh * kw
    nbr = c_out // r
    tw = tile_width(r, ow)
    nft = ow // tw if tw else 0
    vt = (ow - nft * tw) // VEC * VEC  # vector tail width
    st = ow - nft * tw - vt  # scalar tail width
    nz = max(nnzb, 1)
    zero = T.Cast(dtype, 0)

    @T.macro
    def tile(x, v, indptr, indices, y, t, start, nvec, lanes):
        acc = T.decl_buffer((r, nvec * lanes), dtype, scope=ACC_SCOPE)
        for rr, ov in T.grid(r, nvec):
            for ol in T.vectorized(lanes):
                acc[rr, ov * lanes + ol] = zero
        for j in range(indptr[t % nbr], indptr[t % nbr + 1]):
            for cc in T.unroll(c):
                # reduction index -> (input channel, input row, column offset), once per nonzero
                kk = indices[j] * c + cc
                ci = kk // khw
                hi = t // nbr % oh * sh + kk % khw // kw * dh
                wo = start * sw + kk % kw * dw
                for rr in T.unroll(r):
                    for ov in T.unroll(nvec):
                        for ol in T.vectorized(lanes):
                            acc[rr, ov * lanes + ol] = acc[rr, ov * lanes + ol] + v[j, rr, cc] * x[
                                t // (oh * nbr), ci, hi, wo + (ov * lanes + ol) * sw]
        for rr, ov in T.grid(r, nvec):
            for ol in T.vectorized(lanes):
                y[t // (oh * nbr), t % nbr * r + rr, t // nbr % oh, start + ov * lanes + ol] = (
                    acc[rr, ov * lanes + ol])

    @T.prim_func(private=True, s_tir=True, check_well_formed=False)
    def func(x: T.Buffer((nb, c_in, hp, wp), dtype), v: T.Buffer((nz, r, c), dtype),
             indptr: T.Buffer((nbr + 1,), "int32"), indices: T.Buffer((nz,), "int32"),
             y: T.Buffer((nb, c_out, oh, ow), dtype)):
        T.func_attr(SCHEDULED_ATTRS)
        with T.sblock("root"):  # S-TIR passes expect a root block
            with T.sblock("sparse"):  # ... holding one (opaque) compute block
                for t in T.parallel(nb * nbr * oh):
                    for ft in range(nft):
                        tile(x, v, indptr, indices, y, t, ft * max(tw, 1), max(tw, VEC) // VEC, VEC)
                    for _ in range(int(vt > 0)):
                        tile(x, v, indptr, indices, y, t, nft * tw, max(vt, VEC) // VEC, VEC)
                    for _ in range(int(st > 0)):
                        tile(x, v, indptr, indices, y, t, nft * tw + vt, 1, max(st, 1))

    return func


def nm_matmul_cols(nb: int, k: int, n: int, p: int, nm: tuple[int, int],
                   dtype: str = "float32") -> Any:
    """Y(nb, n, p) = W · X(nb, k, p) with W (n, k) in N:M (values and uint8 group offsets).

    No indptr: every row holds exactly k/m·n entries. Parallel over batch × rows, the
    p axis (pixels of a 1×1 conv, or m of a transposed matmul input) is vectorised.
    """
    kn, km = nm
    q = k // km * kn
    pv, pt = p // VEC, p % VEC
    zero = T.Cast(dtype, 0)

    @T.prim_func(private=True, s_tir=True, check_well_formed=False)
    def func(x: T.Buffer((nb, k, p), dtype), v: T.Buffer((n, q), dtype),
             off: T.Buffer((n, q), "uint8"), y: T.Buffer((nb, n, p), dtype)):
        T.func_attr(SCHEDULED_ATTRS)
        with T.sblock("root"):  # S-TIR passes expect a root block
            with T.sblock("sparse"):  # ... holding one (opaque) compute block
                for t in T.parallel(nb * n):
                    for ov in range(pv):
                        for ol in T.vectorized(VEC):
                            y[t // n, t % n, ov * VEC + ol] = zero
                    for ol in range(pt):
                        y[t // n, t % n, pv * VEC + ol] = zero
                    for j in range(q):
                        for ov in range(pv):
                            for ol in T.vectorized(VEC):
                                y[t // n, t % n, ov * VEC + ol] = (
                                    y[t // n, t % n, ov * VEC + ol] + v[t % n, j]
                                    * x[t // n, j // kn * km + T.Cast("int32", off[t % n, j]),
                                        ov * VEC + ol])
                        for ol in range(pt):
                            y[t // n, t % n, pv * VEC + ol] = (
                                y[t // n, t % n, pv * VEC + ol] + v[t % n, j]
                                * x[t // n, j // kn * km + T.Cast("int32", off[t % n, j]),
                                    pv * VEC + ol])

    return func
