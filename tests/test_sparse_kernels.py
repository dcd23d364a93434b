"""Sparse formats and TIR kernels: compiled sparse == numpy dense on random shapes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from compress_ir.backend.sparse import formats as fmt  # noqa: E402
from compress_ir.backend.sparse import kernels_cpu as kcpu  # noqa: E402
from compress_ir.backend.sparse import kernels_cuda as kcuda  # noqa: E402

LLVM = {"kind": "llvm"}
BLOCKS = [(1, 1), (1, 4), (4, 1), (8, 1), (4, 4), (2, 3)]


def block_sparse(rng: np.random.Generator, rows: int, cols: int, block: tuple[int, int],
                 sparsity: float) -> np.ndarray:
    """Random matrix whose zeros come in whole (r, c) blocks."""
    r, c = block
    keep = rng.random((rows // r, cols // c)) >= sparsity
    mask = np.kron(keep, np.ones(block, dtype=bool))
    return (rng.standard_normal((rows, cols)) * mask).astype(np.float32)


def run_prim(func, args: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    ex = tvm.compile(mod, target=tvm.target.Target(LLVM))
    dev = tvm.cpu()
    bufs = [tvm.runtime.tensor(a, dev) for a in args]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32), dev)
    ex["main"](*bufs, out)
    return out.numpy()


def conv_ref(xp: np.ndarray, w: np.ndarray, stride: int, dil: int) -> np.ndarray:
    """Plain numpy conv on a padded NCHW input (independent of the kernels)."""
    nb, _, hp, wp = xp.shape
    co, _, kh, kw = w.shape
    oh = (hp - dil * (kh - 1) - 1) // stride + 1
    ow = (wp - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((nb, co, oh, ow), np.float64)
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, :, a * dil:a * dil + stride * (oh - 1) + 1:stride,
                       b * dil:b * dil + stride * (ow - 1) + 1:stride]
            out += np.einsum("ncij,oc->noij", patch, w[:, :, a, b])
    return out


def loop_decode(bsr) -> np.ndarray:
    """Dense matrix of a BSR by plain loops (independent of `formats.bsr_decode`)."""
    r, c = bsr.block
    out = np.zeros(bsr.shape, dtype=bsr.data.dtype)
    for i in range(bsr.shape[0] // r):
        for j in range(bsr.indptr[i], bsr.indptr[i + 1]):
            k = bsr.indices[j]
            out[i * r:(i + 1) * r, k * c:(k + 1) * c] = bsr.data[j]
    return out


@given(block=st.sampled_from(BLOCKS), nbr=st.integers(1, 6), nbc=st.integers(1, 6),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**16))
def test_bsr_roundtrip(block, nbr, nbc, sparsity, seed):
    rng = np.random.default_rng(seed)
    w = block_sparse(rng, nbr * block[0], nbc * block[1], block, sparsity)
    bsr = fmt.to_bsr(w, block)
    assert np.array_equal(loop_decode(bsr), w)
    assert bsr.indices.dtype == np.int32 and bsr.indptr.dtype == np.int32  # kernel contract
    assert bsr.nnzb == int(np.count_nonzero(np.abs(w).reshape(
        nbr, block[0], nbc, block[1]).sum(axis=(1, 3))))
    assert bsr.indptr[-1] == bsr.nnzb


def test_choose_block_follows_zero_structure():
    rng = np.random.default_rng(0)
    w = block_sparse(rng, 64, 32, (8, 1), 0.8)
    assert fmt.choose_block(w, 0.7)[0] == (8, 1)
    unstructured = rng.standard_normal((64, 32)).astype(np.float32)
    unstructured[rng.random((64, 32)) < 0.85] = 0
    assert fmt.choose_block(unstructured, 0.7)[0] == (1, 1)
    assert fmt.choose_block(unstructured, 0.95) is None
    # block_sparsity counted by hand on a tiny case
    tiny = np.zeros((4, 4), np.float32)
    tiny[0, 0] = 1
    assert fmt.block_sparsity(tiny, (2, 2)) == 0.75


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_roundtrip_and_detect(nm):
    n, m = nm
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 16)).astype(np.float32).reshape(6, -1, m)
    drop = np.argsort(rng.random(w.shape), axis=2) >= n
    w[drop] = 0
    w = w.reshape(6, 16)
    assert fmt.detect_nm(w) is not None
    dn, dm = fmt.detect_nm(w)
    assert dn / dm <= n / m
    assert np.array_equal(fmt.to_nm(w, n, m).to_dense(), w)
    assert fmt.detect_nm(np.ones((2, 8), np.float32)) is None


@settings(max_examples=6, deadline=None)
@given(m=st.sampled_from([1, 3, 17]), block=st.sampled_from(BLOCKS), nbr=st.integers(1, 5),
       nbc=st.integers(1, 5), sparsity=st.sampled_from([0.5, 0.9, 1.0]),
       seed=st.integers(0, 2**16))
def test_bsr_matmul_rowvec_matches_numpy(m, block, nbr, nbc, sparsity, seed):
    rng = np.random.default_rng(seed)
    n, k = nbr * block[0], nbc * block[1]
    w = block_sparse(rng, n, k, block, sparsity)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bsr = fmt.to_bsr(w, block)
    vt = np.ascontiguousarray(bsr.data.transpose(0, 2, 1))
    if bsr.nnzb == 0:
        vt, idx = np.zeros((1, block[1], block[0]), np.float32), np.zeros(1, np.int32)
    else:
        idx = bsr.indices
    y = run_prim(kcpu.bsr_matmul_rowvec(m, k, n, block, bsr.nnzb), [x, vt, bsr.indptr, idx],
                 (m, n))
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


@settings(max_examples=5, deadline=None)
@given(kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       dil=st.sampled_from([1, 2]), block=st.sampled_from([(1, 1), (4, 1), (2, 3)]),
       hw=st.integers(5, 19), seed=st.integers(0, 2**16))
def test_bsr_conv2d_direct_matches_numpy(kernel, stride, dil, block, hw, seed):
    rng = np.random.default_rng(seed)
    c_in, c_out, nb = 3, 8, 2  # reduction c_in*k*k = 3 or 27: every block here tiles it
    w2 = block_sparse(rng, c_out, c_in * kernel * kernel, block, 0.7)
    w = w2.reshape(c_out, c_in, kernel, kernel)
    xp = rng.standard_normal((nb, c_in, hw, hw)).astype(np.float32)
    ref = conv_ref(xp, w, stride, dil)
    bsr = fmt.to_bsr(w2, block)
    vals, idx = bsr.data, bsr.indices
    if bsr.nnzb == 0:
        vals, idx = np.zeros((1, *block), np.float32), np.zeros(1, np.int32)
    func = kcpu.bsr_conv2d_direct(xp.shape, ref.shape, (kernel, kernel), (stride, stride),
                                  (dil, dil), block, bsr.nnzb)
    y = run_prim(func, [xp, vals, bsr.indptr, idx], ref.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1, 13])
def test_nm_kernel_matches_numpy(p):
    rng = np.random.default_rng(2)
    n, k = 8, 16
    w = rng.standard_normal((n, k)).astype(np.float32).reshape(n, -1, 4)
    w[np.argsort(rng.random(w.shape), axis=2) >= 2] = 0
    w = w.reshape(n, k)
    packed = fmt.to_nm(w, 2, 4)
    x = rng.standard_normal((2, k, p)).astype(np.float32)
    y = run_prim(kcpu.nm_matmul_cols(2, k, n, p, (2, 4)), [x, packed.values, packed.offsets],
                 (2, n, p))
    np.testing.assert_allclose(y, np.einsum("nk,bkp->bnp", w.astype(np.float64), x),
                               rtol=1e-5, atol=1e-5)


def test_generated_funcs_are_marked_scheduled():
    funcs = [kcpu.bsr_matmul_rowvec(2, 8, 8, (4, 1), 3),
             kcpu.bsr_conv2d_direct((1, 2, 5, 5), (1, 4, 3, 3), (3, 3), (1, 1), (1, 1), (4, 1), 2),
             kcpu.nm_matmul_cols(1, 8, 4, 3, (2, 4))]
    for f in funcs:
        assert bool(f.attrs["tir.is_scheduled"]) and bool(f.attrs["tirx.is_scheduled"])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: CUDA compile check")
def test_cuda_kernels_compile():
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    funcs = [kcuda.bsr_matmul_cuda(5, 24, 32, (4, 2), 20),
             kcuda.bsr_conv2d_cuda((2, 6, 9, 9), (2, 8, 7, 7), (3, 3), (1, 1), (1, 1), (4, 1), 30),
             kcuda.nm_matmul_cols_cuda(1, 24, 32, 5, (2, 4))]
    for f in funcs:
        ex = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target)
        assert ex is not None
