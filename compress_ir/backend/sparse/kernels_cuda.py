"""CUDA sparse kernels as TIR PrimFuncs with explicit thread bindings.

Compile-checked only on the development machine (no GPU there). One thread computes one
output position (a row of X for a matmul, a pixel for a conv) for all r rows of one
block row, accumulating in registers over that block row's nonzero blocks; blockIdx.x
walks the block rows, so the weights of a block row are shared by a thread block.

2:4 sparse tensor cores: the TVM 0.27 codegen does register the PTX ops (`tirx.ptx.mma_sp`,
`tirx.ptx.mma_sp_f16acc`, ...), so a 2:4 kernel is possible in principle, but it is not
written here: mma.sp takes f16/bf16/tf32/int8 operands only (these fp32 models would lose
precision), and the per-thread fragment and sparsity-metadata layouts would have to be
hand-written in TIR and validated on a GPU, which the development machine lacks. N:M on
CUDA therefore uses the compact N:M layout below (fp32 CUDA cores).
"""

from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

from compress_ir.backend.sparse.kernels_cpu import SCHEDULED_ATTRS

THREADS = 128


def _ceil(a: int, b: int) -> int:
    return (a + b - 1) // b


def bsr_matmul_cuda(m: int, k: int, n: int, block: tuple[int, int], nnzb: int,
                    dtype: str = "float32") -> Any:
    """Y(m, n) = X(m, k) · Wᵀ, W in BSR with values (nnzb, c, r) (same layout as the CPU kernel)."""
    r, c = block
    nbr = n // r
    nz = max(nnzb, 1)
    tm = min(THREADS, max(32, m))
    zero = T.Cast(dtype, 0)

    @T.prim_func(private=True, s_tir=True, check_well_formed=False)
    def func(x: T.Buffer((m, k), dtype), v: T.Buffer((nz, c, r), dtype),
             indptr: T.Buffer((nbr + 1,), "int32"), indices: T.Buffer((nz,), "int32"),
             y: T.Buffer((m, n), dtype)):
        T.func_attr(SCHEDULED_ATTRS)
        with T.sblock("root"):  # S-TIR passes expect a root block
            with T.sblock("sparse"):  # ... holding one (opaque) compute block
                for bi in T.thread_binding(nbr, thread="blockIdx.x"):
                    for bm in T.thread_binding(_ceil(m, tm), thread="blockIdx.y"):
                        for tx in T.thread_binding(tm, thread="threadIdx.x"):
                            acc = T.decl_buffer((r,), dtype, scope="local")
                            if bm * tm + tx < m:
                                for rr in range(r):
                                    acc[rr] = zero
                                for j in range(indptr[bi], indptr[bi + 1]):
                                    for cc, rr in T.grid(c, r):
                                        acc[rr] = acc[rr] + (
                                            x[bm * tm + tx, indices[j] * c + cc] * v[j, cc, rr])
                                for rr in range(r):
                                    y[bm * tm + tx, bi * r + rr] = acc[rr]

    return func


def bsr_conv2d_cuda(x_shape: tuple[int, int, int, int], out_shape: tuple[int, int, int, int],
                    kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int], block: tuple[int, int], nnzb: int,
                    dtype: str = "float32") -> Any:
    """Direct sparse conv on a pre-padded NCHW input, values (nnzb, r, c); one thread per pixel."""
    nb, c_in, hp, wp = x_shape
    _, c_out, oh, ow = out_shape
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    r, c = block
    khw = kh * kw
    nbr = c_out // r
    npix = oh * ow
    tp = min(THREADS, max(32, npix))
    nz = max(nnzb, 1)
    zero = T.Cast(dtype, 0)

    @T.prim_func(private=True, s_tir=True, check_well_formed=False)
    def func(x: T.Buffer((nb, c_in, hp, wp), dtype), v: T.Buffer((nz, r, c), dtype),
             indptr: T.Buffer((nbr + 1,), "int32"), indices: T.Buffer((nz,), "int32"),
             y: T.Buffer((nb, c_out, oh, ow), dtype)):
        T.func_attr(SCHEDULED_ATTRS)
        with T.sblock("root"):  # S-TIR passes expect a root block
            with T.sblock("sparse"):  # ... holding one (opaque) compute block
                for bi in T.thread_binding(nb * nbr, thread="blockIdx.x"):
                    for bp in T.thread_binding(_ceil(npix, tp), thread="blockIdx.y"):
                        for tx in T.thread_binding(tp, thread="threadIdx.x"):
                            acc = T.decl_buffer((r,), dtype, scope="local")
                            if bp * tp + tx < npix:
                                for rr in range(r):
                                    acc[rr] = zero
                                for j in range(indptr[bi % nbr], indptr[bi % nbr + 1]):
                                    for cc, rr in T.grid(c, r):
                                        acc[rr] = acc[rr] + v[j, rr, cc] * x[
                                            bi // nbr, (indices[j] * c + cc) // khw,
                                            (bp * tp + tx) // ow * sh
                                            + (indices[j] * c + cc) % khw // kw * dh,
                                            (bp * tp + tx) % ow * sw
                                            + (indices[j] * c + cc) % kw * dw]
                                for rr in range(r):
                                    y[bi // nbr, bi % nbr * r + rr, (bp * tp + tx) // ow,
                                      (bp * tp + tx) % ow] = acc[rr]

    return func


def nm_matmul_cols_cuda(nb: int, k: int, n: int, p: int, nm: tuple[int, int],
                        dtype: str = "float32") -> Any:
    """Y(nb, n, p) = W · X(nb, k, p), W in compact N:M; one thread per output (row, p)."""
    kn, km = nm
    q = k // km * kn
    tp = min(THREADS, max(32, p))
    zero = T.Cast(dtype, 0)

    @T.prim_func(private=True, s_tir=True, check_well_formed=False)
    def func(x: T.Buffer((nb, k, p), dtype), v: T.Buffer((n, q), dtype),
             off: T.Buffer((n, q), "uint8"), y: T.Buffer((nb, n, p), dtype)):
        T.func_attr(SCHEDULED_ATTRS)
        with T.sblock("root"):  # S-TIR passes expect a root block
            with T.sblock("sparse"):  # ... holding one (opaque) compute block
                for bi in T.thread_binding(nb * n, thread="blockIdx.x"):
                    for bp in T.thread_binding(_ceil(p, tp), thread="blockIdx.y"):
                        for tx in T.thread_binding(tp, thread="threadIdx.x"):
                            acc = T.decl_buffer((1,), dtype, scope="local")
                            if bp * tp + tx < p:
                                acc[0] = zero
                                for j in range(q):
                                    acc[0] = acc[0] + v[bi % n, j] * x[
                                        bi // n, j // kn * km + T.Cast("int32", off[bi % n, j]),
                                        bp * tp + tx]
                                y[bi // n, bi % n, bp * tp + tx] = acc[0]

    return func
