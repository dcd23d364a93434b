"""Sparse and entropy encodings: every format decodes to exactly what was encoded,
hand-worked examples give the textbook bytes, and the 2-D view matches the layer math."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress_ir import formats as enc
from compress_ir.core.errors import UsageError
from compress_ir.formats import encoding

DTYPES = (np.float32, np.float64, np.float16, np.int8, np.int32)


@st.composite
def sparse_matrices(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(0, 17))
    cols = draw(st.integers(0, 23))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    m = (rng.standard_normal((rows, cols)) * 10).astype(dtype)
    m[rng.random((rows, cols)) < sparsity] = 0
    return m


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)


# --- round trips (property-based) ----------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(sparse_matrices())
def test_csr_round_trip(m: np.ndarray) -> None:
    csr = enc.csr_encode(m)
    _same(enc.csr_decode(csr), m)
    assert csr.data.size == np.count_nonzero(m)


@settings(max_examples=80, deadline=None)
@given(sparse_matrices(), st.integers(1, 9), st.integers(1, 9))
def test_bsr_round_trip(m: np.ndarray, r: int, c: int) -> None:
    bsr = enc.bsr_encode(m, (r, c))
    _same(enc.bsr_decode(bsr), m)
    assert bsr.data.shape[1:] == (r, c)
    assert all(np.any(b) for b in bsr.data)  # only blocks holding a non-zero are stored


@settings(max_examples=80, deadline=None)
@given(sparse_matrices(), st.integers(1, 8))
def test_relative_index_round_trip(m: np.ndarray, bits: int) -> None:
    rel = enc.relative_encode(m, bits)
    _same(enc.relative_decode(rel), m)
    assert int(rel.gaps.max(initial=0)) < 2**bits
    assert rel.gaps.size == np.count_nonzero(m) + rel.fillers
    packed = rel.packed_gaps()
    assert len(packed) == -(-rel.gaps.size * bits // 8)
    assert np.array_equal(enc.unpack_bits(packed, bits, rel.gaps.size), rel.gaps)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-300, 300), max_size=400), st.integers(0, 2**31))
def test_huffman_round_trip(values: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    skewed = np.asarray(values, dtype=np.int64)[rng.permutation(len(values))] // rng.integers(1, 60)
    code = enc.huffman_encode(skewed)
    assert np.array_equal(enc.huffman_decode(code), skewed)
    alphabet, lengths = enc.huffman_table_decode(code.table())  # the stored table suffices
    rebuilt = enc.Huffman(alphabet, lengths, code.payload, code.nbits, code.count)
    assert np.array_equal(enc.huffman_decode(rebuilt), skewed)
    if skewed.size:
        _, counts = np.unique(skewed, return_counts=True)
        lengths = code.lengths.astype(np.int64)
        assert code.nbits == int((lengths * counts).sum())
        assert len(code.payload) == -(-code.nbits // 8)
        if counts.size > 1:  # a complete prefix code: Kraft sum exactly 1
            assert np.isclose(np.sum(2.0 ** -lengths), 1.0)
            p = counts / counts.sum()
            entropy = float(-(p * np.log2(p)).sum())
            assert entropy - 1e-9 <= code.nbits / skewed.size < entropy + 1


@settings(max_examples=60, deadline=None)
@given(sparse_matrices(), st.integers(1, 6))
def test_codebook_round_trip(m: np.ndarray, levels: int) -> None:
    shared = np.round(m.astype(np.float64) / 10 * levels) / levels  # few distinct values
    book = enc.codebook_encode(shared)
    _same(enc.codebook_decode(book), shared)
    assert book.values.size == np.unique(shared).size
    if (shared == 0).any():
        assert book.values[0] == 0
    assert 2**book.bits >= book.values.size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**20 - 1), max_size=200), st.integers(20, 64))
def test_pack_bits_round_trip(values: list[int], bits: int) -> None:
    v = np.asarray(values, dtype=np.uint64)
    assert np.array_equal(enc.unpack_bits(enc.pack_bits(v, bits), bits, v.size), v)


# --- hand-worked examples ------------------------------------------------------------


def test_relative_index_fillers_by_hand() -> None:
    # Zeros between 1 and 2: 7. With 2 bits a gap is at most 3: one filler (gap 3,
    # value 0) covers positions 1-4, then gap 3 reaches position 8.
    m = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 2, 0]], dtype=np.float32)
    rel = enc.relative_encode(m, 2)
    assert rel.gaps.tolist() == [0, 3, 3]
    assert rel.values.tolist() == [1, 0, 2]
    assert rel.fillers == 1
    assert rel.packed_gaps() == bytes([0b00111100])


def test_relative_index_exact_multiple_gap() -> None:
    # 4 zeros with bits=2 (gaps up to 3): the filler (3, 0) skips 0..2 and sits at 3;
    # the value follows at 4 with gap 0.
    m = np.array([0, 0, 0, 0, 7], dtype=np.float32)
    rel = enc.relative_encode(m, 2)
    assert rel.gaps.tolist() == [3, 0]
    assert rel.values.tolist() == [0, 7]


def test_huffman_textbook_example() -> None:
    # CLRS 16.3: frequencies a:45 b:13 c:12 d:16 e:9 f:5 -> lengths 1,3,3,3,4,4, 224 bits.
    symbols = np.repeat(np.arange(6), [45, 13, 12, 16, 9, 5])
    code = enc.huffman_encode(symbols)
    assert code.lengths.tolist() == [1, 3, 3, 3, 4, 4]
    assert code.nbits == 224
    assert len(code.payload) == 28
    assert code.table() == bytes([0, 1, 3, 3, 3, 4, 4])  # flag + lengths of symbols 0..5


def test_huffman_single_symbol_and_empty() -> None:
    code = enc.huffman_encode(np.full(9, 7))
    assert code.nbits == 9 and np.array_equal(enc.huffman_decode(code), np.full(9, 7))
    empty = enc.huffman_encode(np.zeros(0, np.int64))
    assert empty.nbits == 0 and enc.huffman_decode(empty).size == 0


def test_huffman_rejects_floats() -> None:
    with pytest.raises(UsageError):
        enc.huffman_encode(np.array([0.5, 1.0]))


def test_csr_and_bsr_bytes_by_hand() -> None:
    m = np.zeros((3, 8), np.float32)
    m[0, 1], m[0, 6], m[2, 3] = 1, 2, 3
    csr = enc.csr_encode(m)
    assert csr.indices.dtype == np.uint8 and csr.indptr.tolist() == [0, 2, 2, 3]
    assert csr.nbytes == 3 * 4 + 3 + 4  # values, uint8 columns, uint8 row pointers
    bsr = enc.bsr_encode(m, (1, 4))  # blocks (0,0) (0,1) (2,0) are non-zero
    assert bsr.indices.tolist() == [0, 1, 0] and bsr.indptr.tolist() == [0, 2, 2, 3]
    assert bsr.nbytes == 3 * 4 * 4 + 3 + 4


def test_index_dtype_grows_with_the_largest_index() -> None:
    assert enc.index_dtype(255) == np.uint8
    assert enc.index_dtype(256) == np.uint16
    assert enc.index_dtype(70000) == np.uint32
    m = np.zeros((1, 300), np.float32)
    m[0, 299] = 1
    assert enc.csr_encode(m).indices.dtype == np.uint16


# --- the (out, reduction) view -------------------------------------------------------


def test_weight_view_matches_layer_math() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 6))
    b = rng.standard_normal((6, 4))  # Gemm transB=0 / MatMul B (K, N)
    for op in ("Gemm", "MatMul"):
        view = enc.weight_view(op, b)
        assert view.shape == (4, 6)
        assert np.allclose(a @ b, a @ view.T)
        assert np.array_equal(enc.unview(op, view, b.shape), b)
    bt = b.T.copy()  # Gemm transB=1 stores (N, K)
    view = enc.weight_view("Gemm", bt, trans_b=True)
    assert np.allclose(a @ bt.T, a @ view.T)
    assert np.array_equal(enc.unview("Gemm", view, bt.shape, trans_b=True), bt)
    w = rng.standard_normal((8, 3, 2, 2))
    view = enc.weight_view("Conv", w)
    assert view.shape == (8, 12) and np.array_equal(view[5], w[5].ravel())
    assert np.array_equal(enc.unview("Conv", view, w.shape), w)


def test_weight_view_rejects_other_ops_and_ranks() -> None:
    with pytest.raises(UsageError, match="Relu"):
        enc.weight_view("Relu", np.zeros((2, 2)))
    with pytest.raises(UsageError, match="2-D"):
        enc.weight_view("MatMul", np.zeros((2, 2, 2)))


def test_chunked_bit_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large layers are bit-packed in chunks; chunk borders must not change the stream."""
    rng = np.random.default_rng(5)
    symbols = rng.geometric(0.3, 1000)
    whole = enc.huffman_encode(symbols)
    packed = enc.pack_bits(symbols % 32, 5)
    monkeypatch.setattr(encoding, "_CHUNK", 7)
    chunked = enc.huffman_encode(symbols)
    assert chunked.payload == whole.payload and chunked.nbits == whole.nbits
    assert enc.pack_bits(symbols % 32, 5) == packed
    assert np.array_equal(enc.huffman_decode(chunked), symbols)
