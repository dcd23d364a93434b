"""Padded token positions are left out of calibration statistics (core/padding.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_ir.api import compress
from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.padding import token_mask, valid_rows

B, S, V, K = 8, 12, 40, 16


def _encoder(seed: int = 0) -> onnx.ModelProto:
    """ids -> embedding -> MatMul -> Relu -> MatMul -> x mask: a padded-batch encoder.

    Embedding rows V/2.. are huge: the padding below uses them, so rows taken at padded
    positions would dominate any statistic they enter.
    """
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((V, K)).astype(np.float32)
    emb[V // 2:] *= 50.0
    inits = [numpy_helper.from_array(emb, "emb"),
             numpy_helper.from_array(rng.standard_normal((K, K)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((K, K)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((K, K)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["h3"], name="mm3"),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["mf", "axis2"], ["m3"], name="unsq"),
        helper.make_node("Mul", ["h3", "m3"], ["y"], name="masked"),
    ]
    graph = helper.make_graph(
        nodes, "padded",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calibration(pad_id: int, mask_pads: bool = True) -> CalibrationSet:
    """The same real tokens; padded tails (ids `pad_id`) of random length per sample."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V // 2, (B, S))
    lengths = rng.integers(3, S - 2, B)
    real = np.arange(S)[None, :] < lengths[:, None]
    ids = np.where(real, ids, pad_id)
    mask = real if mask_pads else np.ones_like(real)
    return CalibrationSet({"input_ids": ids.astype(np.int64),
                           "attention_mask": mask.astype(np.int64)}, f"pads-{pad_id}")


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer
            if i.name.startswith(("w", "mm"))}


def test_token_mask_and_row_matching() -> None:
    proto = _encoder()
    calib = _calibration(V - 1)
    mask = token_mask(proto, calib.arrays)
    assert mask is not None and mask.shape == (B, S)
    np.testing.assert_array_equal(mask, calib.arrays["attention_mask"] != 0)
    assert token_mask(proto, _calibration(V - 1, mask_pads=False).arrays) is None  # no pads
    x3 = np.zeros((B, S, K))
    np.testing.assert_array_equal(valid_rows(x3, mask), mask.reshape(-1))
    np.testing.assert_array_equal(valid_rows(np.zeros((B * S, K)), mask), mask.reshape(-1))
    assert valid_rows(np.zeros((B, 4, S, S)), mask) is None  # per-head scores: not tokens
    assert valid_rows(np.zeros((B, S + 1, K)), mask) is None


@pytest.mark.parametrize("spec", [
    "sparsify{criterion=obs,sparsity=0.5,skip-first=false,skip-last=false,correct=false}",
    "sparsify{criterion=obs,pattern=2:4,skip-first=false,skip-last=false}",
])
def test_sparsify_obs_ignores_what_sits_at_padded_positions(spec: str) -> None:
    """Two calibration sets that differ only in the ids at masked positions give the same
    sparse model; with the mask all ones (the pads counted as tokens) they do not."""
    proto = _encoder()
    a = _weights(compress(proto, spec, calibration=_calibration(V - 1)).model)
    b = _weights(compress(proto, spec, calibration=_calibration(0)).model)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    a1 = _weights(compress(proto, spec, calibration=_calibration(V - 1, False)).model)
    b1 = _weights(compress(proto, spec, calibration=_calibration(0, False)).model)
    assert any(not np.allclose(a1[n], b1[n], rtol=1e-4, atol=1e-5) for n in a1)


@pytest.mark.parametrize("spec", [
    ["channel-prune{criterion=act-mean,ratio=0.5}"],
    ["channel-prune{criterion=thinet,ratio=0.5}"],
    ["channel-prune{criterion=l2,ratio=0.5}", "reconstruct{holdout=0}"],
])
def test_channel_statistics_and_refits_skip_padded_positions(spec: list[str]) -> None:
    """act-mean scores, ThiNet's samples and reconstruct's refit use real tokens only."""
    proto = _encoder()
    a = compress(proto, spec, calibration=_calibration(V - 1)).model
    b = compress(proto, spec, calibration=_calibration(0)).model
    for (na, wa), (nb, wb) in zip(_weights(a).items(), _weights(b).items(), strict=True):
        assert na == nb
        np.testing.assert_array_equal(wa, wb, err_msg=na)
    a1 = compress(proto, spec, calibration=_calibration(V - 1, False)).model
    b1 = compress(proto, spec, calibration=_calibration(0, False)).model
    assert any(wa.shape != wb.shape or not np.array_equal(wa, wb) for wa, wb in
               zip(_weights(a1).values(), _weights(b1).values(), strict=True))
