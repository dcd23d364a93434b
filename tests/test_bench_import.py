"""The benchmark builds what `compress-ir --target` builds.

`tools/bench_tvm.py` and `tools/profile_ops.py` time TVM against onnxruntime; they must
import a model the way the CLI does (normalized first), or a Caffe2-era zoo export that
the CLI builds fails in the bench (SqueezeNet, ResNet-50 and ShuffleNet from the onnx
package's zoo, opset 9: TVM's layout pass rejects an opset-9 Dropout's output tuple and
a variadic Sum; `normalize_for_tvm` removes the one and splits the other).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_tvm  # noqa: E402


def test_bench_imports_a_caffe2_zoo_model_as_the_cli_does() -> None:
    proto = bench_tvm.load_light("squeezenet", 0)
    name, shape = bench_tvm.input_spec(proto)
    target = tvm.target.Target({"kind": "llvm"})
    with pytest.raises(tvm.error.InternalError):  # why the bench normalizes first
        prepare(from_onnx(proto, shape_dict={name: shape}, keep_params_in_input=False), target)
    prepared = prepare(bench_tvm.import_as_cli(proto, {name: shape}), target)
    assert any("conv2d" in gv.name_hint for gv, _ in prepared.functions_items())
