"""Framework files given where ONNX is expected: say which converter to use.

compress-ir reads ONNX only; PyTorch comes in through `compress_ir.frontends.torch`
(export in Python: a `.pt` file alone has no input shapes, and a pickled module
needs its class), TensorFlow/Keras/TFLite through `compress_ir.frontends.tensorflow`
(tf2onnx). The CLI turns these
files into one line that names the route instead of "not a readable ONNX model".
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from compress_ir.core.errors import ModelLoadError


def _torch_kind(path: Path) -> str:
    """TorchScript archives hold a `code/` folder; torch.save zips hold only `data.pkl`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return "a PyTorch file"
    if any("/code/" in n for n in names):
        return "a TorchScript module (load it with torch.jit.load)"
    return "a pickled PyTorch module or state dict (load it with torch.load)"


def _torch_message(path: Path) -> str:
    return (f"{_torch_kind(path)}; compress-ir reads ONNX: call "
            "compress_ir.frontends.torch.export(module, example_inputs, 'model.onnx') or "
            "compress_ir.frontends.torch.compress(...) (pip install 'compress-ir[torch]')")


def _is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


_TF = ("compress-ir reads ONNX: convert it with `python -m compress_ir.frontends.tensorflow "
       "{arg} model.onnx` (tf2onnx; pip install 'compress-ir[tensorflow]')")

_FOREIGN = (
    (lambda p: p.suffix.lower() in (".pt", ".pth"), _torch_message),
    (_is_saved_model, "a TensorFlow SavedModel; " + _TF.format(arg="DIR")),
    (lambda p: p.suffix.lower() == ".tflite", "a TFLite model; " + _TF.format(arg="FILE.tflite")),
    (lambda p: p.suffix.lower() in (".h5", ".keras"),
     "a Keras model; " + _TF.format(arg="FILE.keras")),
)


def foreign_model_error(path: str | os.PathLike) -> ModelLoadError | None:
    """The one-line error for a framework file given where ONNX is expected, else None."""
    p = Path(path)
    for test, message in _FOREIGN:
        if test(p):
            text = message(p) if callable(message) else message
            return ModelLoadError(f"{p}: {text}")
    return None
