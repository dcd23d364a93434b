"""Size report: byte counts worked out by hand on tiny weights, layer discovery
(transB, MatMul, shared initializers), totals, and the report's `sizes` table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compress_ir.api import compress
from compress_ir.core.errors import UsageError
from compress_ir.core.report import format_report
from compress_ir.passes.analysis.size_report import deep_compression_bytes, size_report


def model(nodes: list, inits: dict[str, np.ndarray], x: list[int], y: list[int],
          extra_outputs: tuple = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y), *extra_outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_model() -> onnx.ModelProto:
    w = np.zeros((2, 8), np.float32)  # transB=1: stored (N, K), the view as is
    w[0, 0], w[0, 7], w[1, 7] = 1, 2, 1
    b = np.zeros(2, np.float32)
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                 {"w": w, "b": b}, [1, 8], [1, 2])


def test_gemm_bytes_by_hand() -> None:
    sizes = size_report(gemm_model(), block=(1, 4), verify=True)
    (layer,) = sizes["layers"]
    assert (layer["node"], layer["view"], layer["nnz"], layer["distinct"]) == ("fc", [2, 8], 3, 2)
    b = layer["bytes"]
    assert b["dense"] == 16 * 4
    assert b["csr"] == 3 * 4 + 3 + 3  # fp32 values, uint8 columns, uint8 row pointers
    assert b["bsr"] == 3 * 16 + 3 + 3  # blocks (0,0) (0,1) (1,1) of 1x4 fp32
    dc = layer["deep_compression"]
    # flat positions 0, 7, 15 -> gaps 0, 6, 7 at 5 bits (fc) = 15 bits -> 2 bytes;
    # values 1, 2, 1 -> codebook [1, 2], 1-bit codes -> 1 byte; codebook 8 bytes
    assert (dc["entries"], dc["fillers"], dc["index_bits"], dc["code_bits"]) == (3, 0, 5, 1)
    assert (dc["index_bytes"], dc["code_bytes"], dc["codebook_bytes"]) == (2, 1, 8)
    assert b["dc_pq"] == 11
    # Huffman: gaps {0,6,7} once each -> lengths 2,2,1 = 5 bits (1 byte) + table
    # (flag, dtype, 3 symbols, 3 lengths: 8 < flag + 8 dense lengths); codes [0,1,0] ->
    # lengths 1,1 = 3 bits (1 byte) + table (flag + 2 dense lengths)
    assert (dc["huffman_index_bytes"], dc["huffman_code_bytes"]) == (1 + 8, 1 + 3)
    # neither pays on so few weights: header byte + fixed-width streams + codebook
    assert dc["huffman_used"] == {"index": False, "codes": False}
    assert b["dc"] == 1 + 2 + 1 + 8
    total = sizes["total"]
    assert total["other_bytes"] == 8  # the bias
    assert total["factors"]["csr"] == pytest.approx(64 / 18, abs=1e-3)
    assert total["factors_with_other"]["dc"] == pytest.approx(72 / 20, abs=1e-3)


def test_conv_gap_overflow_inserts_a_filler() -> None:
    w = np.zeros((1, 1, 1, 300), np.float32)
    w[0, 0, 0, 0], w[0, 0, 0, 299] = 0.5, -0.25
    proto = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                  {"w": w}, [1, 1, 1, 300], [1, 1, 1, 1])
    (layer,) = size_report(proto, verify=True)["layers"]
    dc = layer["deep_compression"]
    # gap 298 > 255 (8 bits for conv): filler (255, 0) then (42, -0.25)
    assert (dc["entries"], dc["fillers"], dc["index_bits"]) == (3, 1, 8)
    # codebook [0, 0.5, -0.25] -> 2-bit codes: 6 bits -> 1 byte; gaps 3 bytes; book 12 bytes
    assert (dc["index_bytes"], dc["code_bytes"], dc["codebook_bytes"]) == (3, 1, 12)
    assert layer["bytes"]["csr"] == 2 * 4 + 2 * 2 + 2  # columns need uint16 (299)
    narrow = size_report(proto, index_bits={"conv": 4})["layers"][0]["deep_compression"]
    assert (narrow["fillers"], narrow["index_bits"]) == (18, 4)  # 298 // 16 fillers


def test_unshared_values_are_stored_raw() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 300)).astype(np.float32)  # 2400 distinct values > 256
    proto = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  {"w": w}, [1, 8], [1, 300])
    (layer,) = size_report(proto, verify=True)["layers"]
    assert layer["view"] == [300, 8]  # MatMul B (K, N) -> (N, K)
    dc = layer["deep_compression"]
    assert dc["code_bits"] == 32 and dc["codebook"] == 0 and dc["code_bytes"] == 2400 * 4


def test_layer_discovery() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    w3 = rng.standard_normal((2, 4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="again"),  # same initializer
        helper.make_node("Gemm", ["b", "w"], ["y"], name="gemm"),  # transB=0 -> view w.T
        helper.make_node("MatMul", ["x", "w3"], ["z"], name="batched"),  # 3-D B: skipped
    ]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 1, 4])
    proto = model(nodes, {"w": w, "w3": w3}, [1, 4], [1, 4], (z,))
    sizes = size_report(proto)
    assert [layer["node"] for layer in sizes["layers"]] == ["first"]
    assert sizes["total"]["other_bytes"] == w3.nbytes


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from([0.0, 0.5, 0.95]), st.sampled_from([None, 2, 16, 300]),
       st.integers(2, 8))
def test_deep_compression_streams_decode_and_add_up(
    seed: int, rows: int, cols: int, sparsity: float, levels: int | None, bits: int
) -> None:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((rows, cols))
    if levels is not None:  # weight-shared: few distinct values
        m = np.round(m * levels / 4) / levels
    m[rng.random(m.shape) < sparsity] = 0
    dc = deep_compression_bytes(m, bits, verify=True)  # raises if a stream does not decode
    entries = dc["entries"]
    assert dc["index_bytes"] == -(-entries * bits // 8)
    assert dc["code_bytes"] == -(-entries * dc["code_bits"] // 8)
    assert dc["dc_pq"] == dc["index_bytes"] + dc["code_bytes"] + dc["codebook_bytes"]
    assert dc["dc"] == 1 + dc["codebook_bytes"] + min(
        dc["index_bytes"], dc["huffman_index_bytes"]) + min(
        dc["code_bytes"], dc["huffman_code_bytes"])
    assert entries >= np.count_nonzero(m)
    if dc["codebook"]:
        assert 2 ** dc["code_bits"] >= dc["codebook"] + (dc["fillers"] > 0)


def test_bad_block_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="block"):
        size_report(gemm_model(), block=(0, 4))


def test_pruned_and_shared_model_shrinks() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    proto = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  {"w": w}, [1, 64], [1, 64])
    shared = compress(proto, "share-weights{bits=4}").model
    before, after = size_report(proto, verify=True), size_report(shared, verify=True)
    assert before["total"]["bytes"]["csr"] == after["total"]["bytes"]["csr"]  # same zeros
    assert after["layers"][0]["deep_compression"]["code_bits"] == 4  # 15 values + zero filler
    assert after["total"]["bytes"]["dc"] < before["total"]["bytes"]["dc"]
    assert after["total"]["factors"]["dc"] > after["total"]["factors"]["csr"] > 1


def test_format_report_sizes_section() -> None:
    assert "sizes" in compress(gemm_model(), "share-weights{bits=1}").report  # automatic
    result = compress(gemm_model(), "share-weights{bits=1}", sizes=False)
    plain = format_report(result.report)
    assert "weight sizes" not in plain
    result.report["sizes"] = size_report(result.model)
    text = format_report(result.report)
    assert text.startswith(plain)
    assert "weight sizes: 1 layers" in text and "BSR 1x4" in text
    assert "DC +Huffman" in text and "fc" in text.splitlines()[-1]
