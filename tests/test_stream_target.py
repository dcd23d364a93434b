"""Stream targets: a layer that feeds a residual Add is fit to the original stream after that
Add minus the current skip input, so it absorbs the error upstream layers left in the stream
(`reconstruct{target=stream}`, `sparsify{correct-to=stream}`)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_channel_ops import Net
from test_reconstruct_heldout import _calib, _fresh_error, _inits

from compress_ir.api import compress

PRUNE = "channel-prune{ratio=0.5}"
EXACT = "holdout=0,ridge=1e-12,samples=100000"


def _two_blocks(features: int = 8, hidden: int = 16) -> onnx.ModelProto:
    """Two residual FFN blocks, s_i = s_{i-1} + FFN_i(s_{i-1}), as torch exports Linear."""
    n = Net(seed=3)
    s = n.input(["N", features])
    for i in (1, 2):
        h = n.op("Add", [n.op("MatMul", [s, n.rand((features, hidden), f"w{i}a")], f"m{i}a"),
                         n.rand((hidden,), f"b{i}a", fan=4)], f"a{i}a")
        r = n.op("Relu", [h], f"r{i}")
        f = n.op("Add", [n.op("MatMul", [r, n.rand((hidden, features), f"w{i}b")], f"m{i}b"),
                         n.rand((features,), f"b{i}b", fan=4)], f"a{i}b")
        s = n.op("Add", [s, f], f"s{i}")
    return n.build(s)


def _capture(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The named tensors of `model` on `x`, by onnxruntime (outputs added to a copy)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, None)
                          for k in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, {"x": x})


def test_stream_target_is_the_least_squares_fit_to_the_original_stream() -> None:
    proto = _two_blocks(features=6)
    calib = _calib((6,), 256)
    out = compress(proto, [PRUNE, f"reconstruct{{target=stream,{EXACT}}}"],
                   calibration=calib)
    layers = {r["node"]: r for r in out.report["passes"][1]["details"]["layers"]}
    assert {k: r["target"] for k, r in layers.items()} == {"m1b": "stream", "m2b": "stream"}
    assert layers["m2b"]["level"] > layers["m1b"]["level"]
    # block 2's down projection, re-derived here: least squares of the original s2 minus
    # the output model's s1 on the output model's hidden units (block 1 already refit)
    x = calib.arrays["x"]
    (want_s2,) = _capture(proto, ["s2"], x)
    hidden, skip = _capture(out.model, ["r2", "s1"], x)
    design = np.hstack([hidden, np.ones((len(x), 1))]).astype(np.float64)
    coef = np.linalg.lstsq(design, (want_s2 - skip).astype(np.float64), rcond=None)[0]
    model = out.model
    inits = _inits(model)
    m2b = next(n for n in model.graph.node if n.name == "m2b")
    a2b = next(n for n in model.graph.node if n.name == "a2b")
    np.testing.assert_allclose(inits[m2b.input[1]], coef[:-1], atol=1e-4)
    np.testing.assert_allclose(inits[a2b.input[1]], coef[-1], atol=1e-4)


def test_stream_target_beats_the_layer_target_on_the_output() -> None:
    proto = _two_blocks(features=6)
    calib = _calib((6,), 256)
    layer = compress(proto, [PRUNE, f"reconstruct{{{EXACT}}}"], calibration=calib).model
    stream = compress(proto, [PRUNE, f"reconstruct{{target=stream,{EXACT}}}"],
                      calibration=calib).model
    feeds = {"x": _calib((6,), 512, seed=5).arrays["x"]}
    # s2 is the model's output: the stream target minimises exactly its error
    assert _fresh_error(stream, proto, feeds) < 0.95 * _fresh_error(layer, proto, feeds)


def test_stream_target_needs_current_inputs() -> None:
    with pytest.raises(Exception, match="target=stream needs inputs=current"):
        compress(_two_blocks(features=6), [PRUNE, "reconstruct{target=stream,inputs=original}"],
                 calibration=_calib((6,), 8))


SPARSE = "sparsify{pattern=2:4,skip-first=false,skip-last=false,holdout=0"


def test_sparsify_correct_to_stream_lowers_the_output_error_and_keeps_2_4() -> None:
    proto = _two_blocks()
    calib = _calib((8,), 256)
    feeds = {"x": _calib((8,), 512, seed=5).arrays["x"]}
    layer = compress(proto, [SPARSE + "}"], calibration=calib)
    stream = compress(proto, [SPARSE + ",correct-to=stream}"], calibration=calib)
    rows = {r["node"]: r for r in stream.report["passes"][0]["details"]["layers"]}
    # the down projections feed residual Adds; the up projections do not
    assert {k: r.get("correct_to") for k, r in rows.items()} == {
        "m1a": None, "m1b": "stream", "m2a": None, "m2b": "stream"}
    inits = _inits(stream.model)
    for node in stream.model.graph.node:
        if node.op_type == "MatMul":
            w = inits[node.input[1]]  # [K, N]: groups of 4 along K
            assert ((w.reshape(-1, 4, w.shape[1]) != 0).sum(1) <= 2).all()
    # s2 is the output: the stream target aims at exactly its error
    assert _fresh_error(stream.model, proto, feeds) < 0.97 * _fresh_error(layer.model, proto, feeds)


def test_sparsify_stream_target_of_the_last_layer_is_its_least_squares_refit() -> None:
    """At sparsity 0 OBS prunes nothing, so what is written is the refit the stream target
    starts from: block 2's down projection equals least squares of (original s2 - current
    s1 - bias) on the current hidden units, derived here from onnxruntime captures."""
    proto = _two_blocks()
    calib = _calib((8,), 256)
    spec = ("sparsify{sparsity=0,skip-first=false,skip-last=false,holdout=0,damp=1e-9,"
            "correct-to=stream,solver=obs}")
    out = compress(proto, [spec], calibration=calib)
    x = calib.arrays["x"]
    (want_s2,) = _capture(proto, ["s2"], x)
    hidden, skip = _capture(out.model, ["r2", "s1"], x)
    inits = _inits(out.model)
    bias = inits[next(n for n in out.model.graph.node if n.name == "a2b").input[1]]
    coef = np.linalg.lstsq(hidden.astype(np.float64),
                           (want_s2 - skip - bias).astype(np.float64), rcond=None)[0]
    w = inits[next(n for n in out.model.graph.node if n.name == "m2b").input[1]]
    np.testing.assert_allclose(w, coef, atol=1e-4)
