"""Model loaders (installed as `compress_ir.frontends`)."""

from compress_ir.frontends.onnx import load_onnx, save_onnx  # noqa: F401
