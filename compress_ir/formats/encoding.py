"""Sparse and entropy encodings of weight matrices, each with its exact decoder.

Why: a size report is only honest if every byte it quotes comes from a real encoding
that decodes back to the same weights. Each encoder here returns the arrays it would
store; `nbytes` is measured on those arrays, and the tests round-trip every format.

Every encoder takes the (out, reduction) matrix of `formats.view.weight_view`; the TVM
BSR kernels pack with `bsr_encode` too, so one BSR block here is one block there.

Index dtypes: CSR/BSR index arrays use the smallest unsigned integer type that holds
their largest value (uint8, uint16, uint32 or uint64), chosen per array; values keep
the weight dtype (fp32 for the size report).

Formats:
- CSR: data, column indices, row pointers.
- BSR (r, c): dense (r, c) blocks with block-column indices and block-row pointers; a
  matrix whose shape is not a multiple of the block is zero-padded (the decoder crops).
- Relative index (Han et al. 2016, §2): the non-zeros of the row-major flattened view
  as (gap, value) pairs, gap = zeros skipped since the previous entry, stored in `bits`
  bits; a gap larger than 2^bits - 1 is bridged by filler entries (gap 2^bits - 1,
  value 0). Row starts follow from the cumulative positions, so no row pointer is stored.
- Canonical Huffman over integer symbols: per-symbol code lengths plus a bit-packed
  payload; `nbits` is the exact payload length in bits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from compress_ir.core.errors import UsageError


def index_dtype(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds `max_value` (>= 0)."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"index {max_value} does not fit in 64 bits")


def _small(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    return a.astype(index_dtype(int(a.max()) if a.size else 0))


def _as_matrix(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise UsageError(f"expected a 2-D matrix, got shape {list(m.shape)}")
    return m


# ---------------------------------------------------------------- CSR


@dataclass(frozen=True)
class CSR:
    """Compressed sparse rows of a 2-D matrix."""

    shape: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray  # column of each stored value
    indptr: np.ndarray  # row i holds data[indptr[i]:indptr[i+1]]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes


def csr_encode(matrix: np.ndarray) -> CSR:
    """Store only the non-zeros of `matrix`, row by row."""
    m = _as_matrix(matrix)
    rows, cols = np.nonzero(m)
    indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m.shape[0]), out=indptr[1:])
    return CSR((m.shape[0], m.shape[1]), m[rows, cols].copy(), _small(cols), _small(indptr))


def csr_decode(csr: CSR) -> np.ndarray:
    """The dense matrix a CSR stands for."""
    out = np.zeros(csr.shape, dtype=csr.data.dtype)
    counts = np.diff(csr.indptr.astype(np.int64))
    rows = np.repeat(np.arange(csr.shape[0]), counts)
    out[rows, csr.indices.astype(np.int64)] = csr.data
    return out


# ---------------------------------------------------------------- BSR


@dataclass(frozen=True)
class BSR:
    """Block sparse rows: dense (r, c) blocks, stored where the block has a non-zero.

    The one BSR of the project: the size report measures it and the TVM kernels
    consume it (`with_index_dtype(np.int32)`, their index contract).
    """

    shape: tuple[int, int]  # the unpadded matrix shape
    block: tuple[int, int]
    data: np.ndarray  # (nblocks, r, c)
    indices: np.ndarray  # block column of each stored block
    indptr: np.ndarray  # block row i holds data[indptr[i]:indptr[i+1]]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    @property
    def nnzb(self) -> int:
        """Stored blocks."""
        return int(self.indices.shape[0])

    def with_index_dtype(self, dtype: np.dtype | type) -> BSR:
        """The same blocks with `indices` and `indptr` cast (kernels want fixed int32)."""
        return BSR(self.shape, self.block, self.data, self.indices.astype(dtype),
                   self.indptr.astype(dtype))


def bsr_encode(matrix: np.ndarray, block: tuple[int, int]) -> BSR:
    """Cut `matrix` (zero-padded to a multiple of `block`) into blocks; keep non-zero ones."""
    m = _as_matrix(matrix)
    r, c = int(block[0]), int(block[1])
    if r < 1 or c < 1:
        raise UsageError(f"block shape must be positive, got {block}")
    rows, cols = -(-m.shape[0] // r), -(-m.shape[1] // c)
    padded = np.zeros((rows * r, cols * c), dtype=m.dtype)
    padded[: m.shape[0], : m.shape[1]] = m
    blocks = padded.reshape(rows, r, cols, c).transpose(0, 2, 1, 3)  # (rows, cols, r, c)
    keep = blocks.reshape(rows, cols, r * c).any(axis=2)
    brow, bcol = np.nonzero(keep)
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return BSR((m.shape[0], m.shape[1]), (r, c), blocks[brow, bcol].copy(), _small(bcol),
               _small(indptr))


def bsr_decode(bsr: BSR) -> np.ndarray:
    """The dense matrix a BSR stands for (padding cropped)."""
    r, c = bsr.block
    rows, cols = -(-bsr.shape[0] // r), -(-bsr.shape[1] // c)
    blocks = np.zeros((rows, cols, r, c), dtype=bsr.data.dtype)
    brow = np.repeat(np.arange(rows), np.diff(bsr.indptr.astype(np.int64)))
    blocks[brow, bsr.indices.astype(np.int64)] = bsr.data
    dense = blocks.transpose(0, 2, 1, 3).reshape(rows * r, cols * c)
    return dense[: bsr.shape[0], : bsr.shape[1]].copy()


# ---------------------------------------------------------------- bit packing


_CHUNK = 1 << 18  # codes expanded to bits per step: bounds memory on large layers


def _code_bits(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Bits (one uint8 each, MSB first) of variable-length codes written back to back."""
    width = int(lengths.max()) if lengths.size else 0
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    pos = 0
    for start in range(0, codes.size, _CHUNK):
        code = codes[start : start + _CHUNK].astype(np.uint64)
        length = lengths[start : start + _CHUNK]
        aligned = code << (np.uint64(width) - length.astype(np.uint64))  # left-align
        bits = ((aligned[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)
        chunk = bits[np.arange(width)[None, :] < length[:, None]]
        out[pos : pos + chunk.size] = chunk
        pos += chunk.size
    return out


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers < 2^bits into a big-endian bit stream (last byte padded)."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if not 1 <= bits <= 64:
        raise UsageError(f"bits must be in 1..64, got {bits}")
    if v.size and bits < 64 and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    return np.packbits(_code_bits(v, np.full(v.size, bits, dtype=np.int64))).tobytes()


def unpack_bits(payload: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` integers of `bits` bits each."""
    flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: count * bits]
    weights = np.uint64(1) << np.arange(bits - 1, -1, -1, dtype=np.uint64)
    return (flat.reshape(count, bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


# ---------------------------------------------------------------- relative index


@dataclass(frozen=True)
class RelativeIndex:
    """Deep Compression's sparse format: (gap, value) entries over the flattened matrix."""

    shape: tuple[int, ...]
    bits: int
    gaps: np.ndarray  # zeros skipped before each entry, each < 2^bits
    values: np.ndarray  # the entry values; 0 for fillers

    @property
    def fillers(self) -> int:
        """Entries that only bridge a gap too long for `bits` bits."""
        return int(np.count_nonzero(self.values == 0))

    def packed_gaps(self) -> bytes:
        """The gap stream as stored: `bits` bits per entry."""
        return pack_bits(self.gaps, self.bits)


def relative_encode(matrix: np.ndarray, bits: int) -> RelativeIndex:
    """Non-zeros of `matrix` (row-major) as gaps of at most 2^bits - 1, with filler zeros."""
    if not 1 <= bits <= 32:
        raise UsageError(f"relative index bits must be in 1..32, got {bits}")
    flat = np.asarray(matrix).ravel()
    pos = np.flatnonzero(flat)
    gaps = np.diff(pos, prepend=-1) - 1  # zeros before each non-zero
    span = (1 << bits) - 1
    fillers = gaps // (span + 1)  # each filler consumes span zeros plus its own slot
    last = gaps - fillers * (span + 1)
    n = int(fillers.sum()) + pos.size
    out_gaps = np.full(n, span, dtype=np.int64)
    out_values = np.zeros(n, dtype=flat.dtype)
    ends = np.cumsum(fillers + 1) - 1  # slot of each real entry, after its fillers
    out_gaps[ends] = last
    out_values[ends] = flat[pos]
    return RelativeIndex(tuple(np.shape(matrix)), bits, _small(out_gaps), out_values)


def relative_decode(rel: RelativeIndex) -> np.ndarray:
    """The dense array a relative-index stream stands for."""
    size = int(np.prod(rel.shape))
    out = np.zeros(size, dtype=rel.values.dtype)
    pos = np.cumsum(rel.gaps.astype(np.int64) + 1) - 1
    if pos.size and pos[-1] >= size:
        raise ValueError("relative index runs past the end of the matrix")
    out[pos] = rel.values
    return out.reshape(rel.shape)


# ---------------------------------------------------------------- canonical Huffman


@dataclass(frozen=True)
class Huffman:
    """A canonical Huffman code and the payload it produced.

    `alphabet` (sorted symbols) and `lengths` (code length of each) fully define the
    code; `payload` holds `nbits` bits (the rest of its last byte is zero padding).
    """

    alphabet: np.ndarray
    lengths: np.ndarray  # uint8, one per alphabet symbol
    payload: bytes
    nbits: int
    count: int  # symbols encoded

    def table(self) -> bytes:
        """The code table as stored (`huffman_table_decode` reads it back).

        The cheaper of: flag 0 + one length byte per symbol 0..max (0 = unused; for
        small non-negative alphabets such as gaps and codebook codes), or flag 1 +
        dtype byte + the sorted alphabet + one length byte each.
        """
        if self.alphabet.size and int(self.alphabet.min()) >= 0 and (
            int(self.alphabet.max()) + 1 <= self.alphabet.nbytes + self.lengths.nbytes + 1
        ):
            dense = np.zeros(int(self.alphabet.max()) + 1, dtype=np.uint8)
            dense[self.alphabet.astype(np.int64)] = self.lengths
            return b"\x00" + dense.tobytes()
        kind = _TABLE_DTYPES.index(self.alphabet.dtype)
        return bytes([1, kind]) + self.alphabet.tobytes() + self.lengths.tobytes()

    @property
    def table_nbytes(self) -> int:
        return len(self.table())

    @property
    def nbytes(self) -> int:
        """Payload plus code table."""
        return len(self.payload) + self.table_nbytes


_TABLE_DTYPES = [np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.int64)]


def huffman_table_decode(table: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(alphabet, lengths) from `Huffman.table()` bytes."""
    raw = np.frombuffer(table, dtype=np.uint8)
    if raw[0] == 0:
        alphabet = np.flatnonzero(raw[1:])
        return alphabet, raw[1:][alphabet]
    dtype = _TABLE_DTYPES[raw[1]]
    n = (raw.size - 2) // (dtype.itemsize + 1)
    alphabet = np.frombuffer(table[2 : 2 + n * dtype.itemsize], dtype=dtype)
    return alphabet, raw[2 + n * dtype.itemsize :]


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal prefix-code lengths for positive symbol `counts` (1 bit for a lone symbol)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 1:
        return np.ones(1, dtype=np.int64)
    heap: list[tuple[int, int, list[int]]] = [
        (int(c), i, [i]) for i, c in enumerate(counts)
    ]
    heapq.heapify(heap)
    lengths = np.zeros(counts.size, dtype=np.int64)
    tie = counts.size
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: shorter codes first, ties by alphabet order."""
    order = np.lexsort((np.arange(lengths.size), lengths))
    codes = np.zeros(lengths.size, dtype=np.uint64)
    code, prev = 0, int(lengths[order[0]])
    for rank, idx in enumerate(order):
        length = int(lengths[idx])
        if rank:
            code = (code + 1) << (length - prev)
        codes[idx], prev = code, length
    return codes


def huffman_encode(symbols: np.ndarray) -> Huffman:
    """Canonical Huffman coding of an integer sequence."""
    s = np.asarray(symbols).ravel()
    if s.size and not np.issubdtype(s.dtype, np.integer):
        raise UsageError(f"Huffman symbols must be integers, got {s.dtype}")
    s = s.astype(np.int64)
    if s.size == 0:
        return Huffman(np.zeros(0, np.uint8), np.zeros(0, np.uint8), b"", 0, 0)
    alphabet, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    lengths = huffman_lengths(counts)
    if lengths.max() > 64:
        raise ValueError("Huffman code longer than 64 bits")
    codes = _canonical_codes(lengths)
    sym_len, sym_code = lengths[inverse], codes[inverse]
    stream = _code_bits(sym_code, sym_len)
    stored = alphabet if alphabet.min() < 0 else _small(alphabet)
    return Huffman(stored, lengths.astype(np.uint8), np.packbits(stream).tobytes(),
                   int(stream.size), int(s.size))


def huffman_decode(code: Huffman) -> np.ndarray:
    """Decode `code.count` symbols from the payload with the canonical code table.

    Every bit offset is decoded at once (vectorised over the code lengths); the chain
    of offsets actually used is then followed from offset 0.
    """
    if code.count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = code.lengths.astype(np.int64)
    width = int(lengths.max())
    bits = np.unpackbits(np.frombuffer(code.payload, dtype=np.uint8))[: code.nbits]
    bits = np.concatenate([bits, np.zeros(width, np.uint8)]).astype(np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))  # canonical order
    codes = _canonical_codes(code.lengths.astype(np.int64)).astype(np.int64)
    n = code.nbits
    symbol_at = np.full(n, -1, dtype=np.int64)
    length_at = np.zeros(n, dtype=np.int64)
    window = np.zeros(n, dtype=np.int64)
    for length in range(1, width + 1):
        window = (window << 1) | bits[length - 1 : length - 1 + n]
        of_len = order[lengths[order] == length]
        if of_len.size == 0:
            continue
        first = codes[of_len[0]]
        offset = window - first
        hit = (symbol_at < 0) & (offset >= 0) & (offset < of_len.size)
        symbol_at[hit] = of_len[offset[hit]]
        length_at[hit] = length
    out = np.empty(code.count, dtype=np.int64)
    steps, syms = length_at.tolist(), symbol_at.tolist()
    p = 0
    for i in range(code.count):
        if p >= n or syms[p] < 0:
            raise ValueError(f"corrupt Huffman payload at bit {p}")
        out[i] = syms[p]
        p += steps[p]
    return np.asarray(code.alphabet, dtype=np.int64)[out]


# ---------------------------------------------------------------- codebooks


@dataclass(frozen=True)
class Codebook:
    """Weight sharing as stored: distinct values plus one small index per weight."""

    values: np.ndarray  # the codebook, value 0 at index 0 when the matrix has zeros
    codes: np.ndarray  # index into `values` for each element of the input (same shape)

    @property
    def bits(self) -> int:
        """Bits per code: ceil(log2(codebook size)), at least 1."""
        return max(1, int(np.ceil(np.log2(max(self.values.size, 1)))))


def codebook_encode(array: np.ndarray) -> Codebook:
    """Codebook of the distinct values of `array` (zero first when present)."""
    a = np.asarray(array)
    values = np.unique(a)
    if (values == 0).any():
        values = np.concatenate([[a.dtype.type(0)], values[values != 0]]).astype(a.dtype)
    ranks = np.argsort(values, kind="stable")
    codes = ranks[np.searchsorted(values[ranks], a)]
    return Codebook(values, _small(codes).reshape(a.shape) if a.size else codes)


def codebook_decode(book: Codebook) -> np.ndarray:
    """The array a codebook stands for."""
    return book.values[book.codes.astype(np.int64)]

