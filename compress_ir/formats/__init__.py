"""Weight formats, below both the passes and the backend (numpy only).

Why a package of its own: the size report, `sparsify` and the TVM sparse kernels must
agree on what a weight matrix is and how its blocks are stored. Keeping the view and
the encoders here lets the passes and the backend share them without the backend
importing passes.

- `view`: the (out, reduction) matrix of a Conv/Gemm/MatMul weight and its inverse;
- `encoding`: CSR, BSR (the one BSR class), relative index, canonical Huffman,
  bit packing and codebooks, each with its exact decoder.
"""

from compress_ir.formats.encoding import (
    BSR,
    CSR,
    Codebook,
    Huffman,
    RelativeIndex,
    bsr_decode,
    bsr_encode,
    codebook_decode,
    codebook_encode,
    csr_decode,
    csr_encode,
    huffman_decode,
    huffman_encode,
    huffman_lengths,
    huffman_table_decode,
    index_dtype,
    pack_bits,
    relative_decode,
    relative_encode,
    unpack_bits,
)
from compress_ir.formats.view import VIEWS, has_view, unview, view_shape, weight_view

__all__ = [
    "BSR", "CSR", "Codebook", "Huffman", "RelativeIndex", "VIEWS", "bsr_decode", "bsr_encode",
    "codebook_decode", "codebook_encode", "csr_decode", "csr_encode", "has_view",
    "huffman_decode", "huffman_encode", "huffman_lengths", "huffman_table_decode",
    "index_dtype", "pack_bits", "relative_decode", "relative_encode", "unpack_bits", "unview",
    "view_shape", "weight_view",
]
