"""Calibration loading, activation capture, and the statistics criteria read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from oracle import tiny_net

from compress_ir.core import numeric
from compress_ir.core.calibration import ActivationCapture, load_calibration
from compress_ir.core.errors import UsageError
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.calibration_stats import CalibrationStats
from compress_ir.passes.analysis.channel_groups import analyse_channels
from compress_ir.passes.weight_layers import RowSampler

ROOT = Path(__file__).resolve().parents[1]


def _proto() -> onnx.ModelProto:
    return load_onnx(tiny_net()).to_proto()


def test_random_spec_and_batches() -> None:
    calib = load_calibration("random:10", _proto(), seed=1)
    assert calib.size == 10 and calib.arrays["x"].shape == (10, 3, 8, 8)
    assert [b["x"].shape[0] for b in calib.batches(4)] == [4, 4, 2]


def test_npy_and_npz(tmp_path: Path) -> None:
    data = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "c.npy", data)
    np.savez(tmp_path / "c.npz", x=data)
    for name in ("c.npy", "c.npz"):
        calib = load_calibration(str(tmp_path / name), _proto())
        np.testing.assert_array_equal(calib.arrays["x"], data)
    assert load_calibration(str(tmp_path / "c.npz"), _proto(), samples=2).size == 2


def test_bad_calibration_is_a_usage_error(tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 5, 5), np.float32))
    with pytest.raises(UsageError, match="expects shape"):
        load_calibration(str(tmp_path / "wrong.npy"), _proto())
    np.savez(tmp_path / "other.npz", y=np.zeros((4, 3, 8, 8)), z=np.zeros((4, 3, 8, 8)))
    with pytest.raises(UsageError, match="no calibration data"):
        load_calibration(str(tmp_path / "other.npz"), _proto())
    with pytest.raises(UsageError, match="expected"):
        load_calibration(str(tmp_path / "missing.bin"), _proto())


def test_capture_matches_a_plain_run() -> None:
    proto = _proto()
    calib = load_calibration("random:6", proto)
    got = list(ActivationCapture(proto, ["r", "y"]).stream(calib, batch_size=4))
    assert [g["r"].shape[0] for g in got] == [1] * 6  # the model's batch is fixed at 1
    want = numeric.run(proto, {"x": calib.arrays["x"][:1]})["y"]
    np.testing.assert_allclose(got[0]["y"], want, rtol=1e-5, atol=1e-5)  # capture is optimised


def test_conv_rows_reproduce_the_conv_output() -> None:
    proto = _proto()
    calib = load_calibration("random:3", proto)
    batches = list(ActivationCapture(proto, ["r", "y"]).stream(calib, batch_size=3))
    batch = {k: np.concatenate([b[k] for b in batches]) for k in ("r", "y")}
    conv2 = next(n for n in proto.graph.node if n.name == "conv2")
    weight = onnx.numpy_helper.to_array(
        next(i for i in proto.graph.initializer if i.name == conv2.input[1])
    )
    rows, (n, i, j) = RowSampler(conv2, weight.shape).rows(batch["r"], 50, np.random.default_rng(0))
    predicted = rows @ weight.reshape(weight.shape[0], -1).T
    np.testing.assert_allclose(predicted, batch["y"][n, :, i, j], rtol=1e-4, atol=1e-5)


def test_stats_follow_the_layout() -> None:
    model = load_onnx(tiny_net())
    proto = model.to_proto()
    analysis = analyse_channels(model)
    calib = load_calibration("random:16", proto)
    stats = CalibrationStats(proto, analysis, calib, batch_size=5)
    st = stats.channel_stats("r")  # ReLU output feeding conv2
    r = np.concatenate([b["r"] for b in ActivationCapture(proto, ["r"]).stream(calib, 16)])
    np.testing.assert_allclose(st.mean, r.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(st.apoz, (r <= 0).mean(axis=(0, 2, 3)), rtol=1e-6)
    ranks = stats.feature_rank("r")
    want = np.linalg.matrix_rank(r.astype(np.float64)).mean(0)
    np.testing.assert_allclose(ranks, want)
    lin = [stats.linear(s) for s in analysis.slices if s.reduces]
    assert lin and all(x is not None for x in lin)
    assert lin[0].inputs.shape[1] == lin[0].weight.shape[1] == lin[0].channel.size


def test_image_folder_preprocessing(tmp_path: Path) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    from compress_ir.core.calibration import ImageOptions

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for i, arr in enumerate(pixels):
        image_mod.fromarray(arr).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    opts = ImageOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channel_order="BGR")
    calib = load_calibration(str(tmp_path), _proto(), image=opts)
    want = (pixels[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(calib.arrays["x"], want.transpose(0, 3, 1, 2), atol=1e-5)
