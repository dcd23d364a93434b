"""TensorFlow in through tf2onnx: SavedModel, TFLite and .keras files convert to ONNX that
computes what Keras computes, and channel-prune works on the NHWC graph tf2onnx makes.
Skipped without tensorflow and tf2onnx (CI installs neither; each conversion starts
TensorFlow in a child process, ~20-50 s)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
tf = pytest.importorskip("tensorflow")
import onnxruntime as ort  # noqa: E402

from compress_ir.core.errors import ModelLoadError, UsageError  # noqa: E402
from compress_ir.frontends.tensorflow import compress, convert, main  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="x")
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = keras.layers.Conv2D(12, 1, activation="relu", name="pw")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(inp, keras.layers.Dense(5, name="fc")(y))
    d = tmp_path_factory.mktemp("keras")
    model.export(str(d / "saved"))
    model.save(str(d / "m.keras"))
    (d / "m.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", model(x).numpy())
    return {"saved": d / "saved", "tflite": d / "m.tflite", "keras": d / "m.keras",
            "x": d / "x.npy", "y": d / "y.npy"}


@pytest.mark.parametrize("kind", ["saved", "tflite", "keras"])
def test_convert_matches_keras(keras_files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    out = convert(keras_files[kind], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, y = np.load(keras_files["x"]), np.load(keras_files["y"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5)


def test_compress_prunes_the_converted_graph(keras_files: dict[str, Path], tmp_path: Path
                                             ) -> None:
    result = compress(keras_files["saved"], "channel-prune{ratio=0.5}",
                      output=tmp_path / "small.onnx")
    groups = result.report["passes"][0]["details"]["groups"]
    assert sum(g["status"] == "pruned" for g in groups) == 2  # c1 (through BN, dw) and pw
    assert result.report["ratios"]["macs"] < 0.5
    assert result.report["input"] == str(keras_files["saved"])


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        convert(tmp_path / "missing.tflite", tmp_path / "m.onnx")
    (tmp_path / "m.onnx.txt").write_text("x")
    with pytest.raises(UsageError, match="not a SavedModel"):
        convert(tmp_path / "m.onnx.txt", tmp_path / "m.onnx")
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    assert main([str(tmp_path / "bad.tflite"), str(tmp_path / "m.onnx")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tf2onnx failed" in err
    assert not (tmp_path / "m.onnx").exists()
