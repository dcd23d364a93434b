"""TVM backend: build, export, verify and run compiled artifacts (optional `tvm` extra).

    from compress_ir.backend import BuildOptions, build, run_artifact
    art = build("model.onnx", "x86", "model.x86", BuildOptions(batch=1))
    outputs = run_artifact(art.path, {"x": x})

Importing this package does not import TVM.
"""

from compress_ir.backend.artifact import Artifact, TensorSpec, load_artifact
from compress_ir.backend.build import BuildOptions, build, default_artifact_dir
from compress_ir.backend.runner import parse_rpc, run_artifact, time_artifact

__all__ = ["Artifact", "BuildOptions", "TensorSpec", "build", "default_artifact_dir",
           "load_artifact", "parse_rpc", "run_artifact", "time_artifact"]
