"""TensorFlow in: SavedModel folders, `.tflite` and Keras files to ONNX through tf2onnx.

    pip install 'compress-ir[tensorflow]'
    python -m compress_ir.frontends.tensorflow saved_model_dir model.onnx
    from compress_ir.frontends.tensorflow import convert, compress
    convert("model.tflite", "model.onnx")
    result = compress("saved_model_dir", "channel-prune{ratio=0.5}", output="small.onnx")

tf2onnx runs in a child process of the same Python: TensorFlow's start-up (tens of
seconds, hundreds of MB, C++ log lines) then stays out of the compressing process,
and a converter crash becomes one error line. Keras files (`.keras`, `.h5`) are
loaded with Keras and exported as a SavedModel first (tf2onnx's own Keras path
predates Keras 3). tf2onnx keeps TensorFlow's NHWC layout with Transposes around
the convs; channel analysis follows them (tests/test_tensorflow_frontend.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress_ir.core.errors import EXIT_OK, CompressIRError, ModelLoadError, UsageError
from compress_ir.core.files import write_atomic

if TYPE_CHECKING:
    from compress_ir.api import CompressResult

INSTALL_HINT = "pip install 'compress-ir[tensorflow]'"
DEFAULT_OPSET = 17
_KERAS_TO_SAVED_MODEL = (
    "import sys, keras; keras.models.load_model(sys.argv[1], compile=False).export(sys.argv[2])"
)


def _kind(path: Path) -> str:
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved-model"
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix in (".keras", ".h5"):
        return "keras"
    raise UsageError(f"{path}: not a SavedModel folder, .tflite, .keras or .h5 file")


def _run(argv: list[str], what: str, timeout: float) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"{what}: conversion took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ModelLoadError(f"{what}: tf2onnx failed: {lines[-1] if lines else 'no output'}")


def convert(model: str | os.PathLike, output: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
            timeout: float = 900.0) -> Path:
    """Convert a TensorFlow/Keras/TFLite model to ONNX at `output` (atomically)."""
    src = Path(model)
    if not src.exists():
        raise ModelLoadError(f"{src}: no such file or folder")
    kind = _kind(src)
    for package in ("tensorflow", "tf2onnx"):
        if importlib.util.find_spec(package) is None:
            raise UsageError(f"{src}: converting needs {package}: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "keras":
            saved = Path(tmp) / "saved_model"
            _run(["-c", _KERAS_TO_SAVED_MODEL, str(src), str(saved)], str(src), timeout)
            src, kind = saved, "saved-model"
        onnx_path = Path(tmp) / "model.onnx"
        _run(["-m", "tf2onnx.convert", f"--{kind}", str(src), "--output", str(onnx_path),
              "--opset", str(opset)], str(model), timeout)
        write_atomic(output, onnx_path.read_bytes())
    return Path(output)


def compress(model: str | os.PathLike, pipeline: str | list[str] | None, **kwargs: Any
             ) -> CompressResult:
    """Convert, then run `compress_ir.api.compress` with the same keyword arguments."""
    from compress_ir.api import compress as compress_onnx
    from compress_ir.frontends.onnx import load_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = convert(model, Path(tmp) / "model.onnx")
        ir = load_onnx(path)
    ir.source = str(model)
    return compress_onnx(ir, pipeline, **kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compress_ir.frontends.tensorflow",
                                 description="Convert a TensorFlow model to ONNX via tf2onnx.")
    ap.add_argument("model", help="SavedModel folder, .tflite, .keras or .h5")
    ap.add_argument("output", help="ONNX file to write")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = ap.parse_args(argv)
    try:
        convert(args.model, args.output, opset=args.opset)
    except CompressIRError as exc:
        print(f"compress-ir: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
