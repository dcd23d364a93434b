"""Bytes of every weight layer under dense, CSR, BSR and Deep-Compression storage.

Why: pruning and weight sharing shrink a model only once the zeros and the repeated
values are encoded away, and how much depends on the format. Every number here is
the length of an encoder's actual output (`compress_ir.formats`), so the report cannot claim
a size no decoder could read back.

Weight layers: the rule of `passes/weight_layers.py` (Conv, Gemm and MatMul with a
floating weight) where the weight is an initializer, seen as (out, reduction) matrices
(`compress_ir.formats.view`). An initializer shared by several nodes is counted once.
All formats store values as fp32; "other" initializers (biases, BN, shapes) are
counted at their stored size.

Deep Compression (Han et al. 2016) per layer:
- relative index: gaps in `index_bits` bits (default 8 for conv, 5 for fc as in the
  paper), filler zeros where a gap overflows;
- values: when the layer has at most `max_codebook` distinct values (weight sharing),
  one ceil(log2(k))-bit code per entry plus a fp32 codebook; otherwise raw fp32;
- "dc_pq" (pruning + quantisation) packs both streams at fixed width; "dc" codes the
  gap stream and the code stream with canonical Huffman (payload + code table each),
  each stream only where that is smaller than its fixed-width form (small layers,
  whose code tables outweigh the gain), plus one header byte recording the choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compress_ir import formats as enc
from compress_ir.core.errors import UsageError
from compress_ir.core.report import SECTIONS, human
from compress_ir.passes.weight_layers import initializer_layers, trans_b

DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}  # Han et al. 2016, §2
FORMATS = ("dense", "csr", "bsr", "dc_pq", "dc")


def deep_compression_bytes(
    matrix: np.ndarray, index_bits: int, max_codebook: int = 256, verify: bool = False
) -> dict[str, Any]:
    """Deep-Compression storage of one (out, reduction) matrix, stream by stream."""
    m = np.asarray(matrix, dtype=np.float32)
    rel = enc.relative_encode(m, index_bits)
    gap_bytes = len(rel.packed_gaps())
    huff_gaps = enc.huffman_encode(rel.gaps)
    distinct = int(np.unique(rel.values[rel.values != 0]).size)
    quantized = 0 < distinct <= max_codebook
    if quantized:
        book = enc.codebook_encode(rel.values)
        code_bytes = len(enc.pack_bits(book.codes, book.bits))
        codebook_bytes = book.values.nbytes
        huff_codes = enc.huffman_encode(book.codes)
        huff_code_bytes = huff_codes.nbytes
        code_bits = book.bits
    else:  # no sharing: raw fp32 values (Huffman over raw floats gains nothing)
        code_bytes = huff_code_bytes = rel.values.nbytes
        codebook_bytes, code_bits = 0, 32
    if verify:
        gaps = enc.huffman_decode(huff_gaps)
        values = (enc.codebook_decode(enc.Codebook(book.values, enc.huffman_decode(huff_codes)))
                  if quantized else rel.values)
        again = enc.relative_decode(enc.RelativeIndex(rel.shape, rel.bits, gaps, values))
        if not np.array_equal(again, m):
            raise AssertionError("Deep-Compression stream does not decode to the weights")
    # per stream, Huffman only where it pays; one header byte says which streams use it
    huffman = {"index": huff_gaps.nbytes < gap_bytes, "codes": huff_code_bytes < code_bytes}
    dc = 1 + min(huff_gaps.nbytes, gap_bytes) + min(huff_code_bytes, code_bytes) + codebook_bytes
    return {
        "entries": int(rel.gaps.size),
        "fillers": rel.fillers,
        "index_bits": index_bits,
        "code_bits": code_bits,
        "codebook": distinct if quantized else 0,
        "index_bytes": gap_bytes,
        "code_bytes": code_bytes,
        "codebook_bytes": codebook_bytes,
        "huffman_index_bytes": huff_gaps.nbytes,
        "huffman_code_bytes": huff_code_bytes,
        "dc_pq": gap_bytes + code_bytes + codebook_bytes,
        "huffman_used": huffman,
        "dc": dc,
    }


def layer_sizes(
    op: str, weight: np.ndarray, trans_b: bool, block: tuple[int, int], index_bits: int,
    max_codebook: int = 256, verify: bool = False,
) -> dict[str, Any]:
    """Sizes of one weight in every format, plus its sparsity and distinct values."""
    m = enc.weight_view(op, weight, trans_b).astype(np.float32)
    csr, bsr = enc.csr_encode(m), enc.bsr_encode(m, block)
    if verify and not (np.array_equal(enc.csr_decode(csr), m)
                       and np.array_equal(enc.bsr_decode(bsr), m)):
        raise AssertionError("CSR/BSR does not decode to the weights")
    dc = deep_compression_bytes(m, index_bits, max_codebook, verify)
    nnz = int(np.count_nonzero(m))
    return {
        "shape": list(np.shape(weight)),
        "view": list(m.shape),
        "params": int(m.size),
        "nnz": nnz,
        "sparsity": round(1.0 - nnz / m.size, 6) if m.size else 0.0,
        "distinct": int(np.unique(m[m != 0]).size),
        "bytes": {"dense": int(m.size * 4), "csr": csr.nbytes, "bsr": bsr.nbytes,
                  "dc_pq": dc["dc_pq"], "dc": dc["dc"]},
        "deep_compression": dc,
    }


def _factor(dense: int, size: int) -> float | None:
    return round(dense / size, 3) if size else None


def size_report(
    proto: onnx.ModelProto,
    block: tuple[int, int] = (1, 4),
    index_bits: dict[str, int] | None = None,
    max_codebook: int = 256,
    verify: bool = False,
) -> dict[str, Any]:
    """Per-layer and total bytes of the weights of `proto` in each storage format.

    `block` is the BSR block (rows, cols) of the (out, reduction) view; `index_bits`
    the relative-index width per layer kind ("conv", "fc"); `verify` decodes every
    encoding and raises if one does not give back the weights.
    """
    if len(block) != 2 or min(block) < 1:
        raise UsageError(f"BSR block must be two positive ints, got {block}")
    bits = {**DEFAULT_INDEX_BITS, **(index_bits or {})}
    layers = []
    for layer in initializer_layers(proto):
        row = layer_sizes(layer.op, layer.array, trans_b(layer.node), tuple(block),
                          bits[layer.kind], max_codebook, verify)
        layers.append({"node": layer.node.name, "op": layer.op, "weight": layer.weight, **row})
    weights = {layer["weight"] for layer in layers}
    other = sum(numpy_helper.to_array(i).nbytes for i in proto.graph.initializer
                if i.name not in weights)
    total = {f: sum(layer["bytes"][f] for layer in layers) for f in FORMATS}
    params = sum(layer["params"] for layer in layers)
    nnz = sum(layer["nnz"] for layer in layers)
    return {
        "block": list(block),
        "index_bits": bits,
        "layers": layers,
        "total": {
            "layers": len(layers),
            "params": params,
            "nnz": nnz,
            "sparsity": round(1.0 - nnz / params, 6) if params else 0.0,
            "bytes": total,
            "factors": {f: _factor(total["dense"], total[f]) for f in FORMATS},
            "other_bytes": int(other),
            "factors_with_other": {
                f: _factor(total["dense"] + other, total[f] + other) for f in FORMATS
            },
        },
    }


# -- the table for people (the core report prints it through `report.SECTIONS`) ------
_SIZE_FORMATS = (
    ("dense", "dense fp32"), ("csr", "CSR"), ("bsr", "BSR {r}x{c}"),
    ("dc_pq", "DC prune+quant"), ("dc", "DC +Huffman"),
)


def _tail(name: str, width: int) -> str:
    """Keep the informative end of a long node name, marked as cut."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def format_sizes(sizes: dict[str, Any], max_layers: int = 8) -> list[str]:
    """Weight storage per format (totals, factor vs dense fp32) and the largest layers."""
    total = sizes["total"]
    r, c = sizes["block"]
    lines = [
        f"weight sizes: {total['layers']} layers, {human(total['params'])} params, "
        f"sparsity {total['sparsity']:.1%}",
        f"  {'format':16}{'bytes':>10}{'factor':>9}",
    ]
    for key, label in _SIZE_FORMATS:
        factor = total["factors"][key]
        lines.append(f"  {label.format(r=r, c=c):16}{human(total['bytes'][key]):>10}"
                     f"{f'{factor:.2f}x' if factor else '-':>9}")
    layers = sorted(sizes["layers"], key=lambda row: -row["bytes"]["dense"])
    if layers:
        lines.append(f"  {'layer':24}{'view':>12}{'sparse':>8}{'values':>8}"
                     f"{'dense':>9}{'CSR':>9}{'DC':>9}")
    for row in layers[:max_layers]:
        view = "x".join(str(d) for d in row["view"])
        b = row["bytes"]
        lines.append(f"  {_tail(row['node'], 24):24}{view:>12}{row['sparsity']:>8.1%}"
                     f"{row['distinct']:>8}{human(b['dense']):>9}{human(b['csr']):>9}"
                     f"{human(b['dc']):>9}")
    if len(layers) > max_layers:
        lines.append(f"  ... {len(layers) - max_layers} more layers (see --report)")
    return lines


SECTIONS["sizes"] = format_sizes
