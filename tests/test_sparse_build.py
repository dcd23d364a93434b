"""End to end: sparsify an ONNX model, compile it with sparse TVM kernels, verify, run.

This is the user path of issue 5 (`sparsify` → `--target x86 --sparse-kernels`): the
artifact's outputs are compared with onnxruntime on the sparsified ONNX by the build
itself, and again here through `compress-ir run`, so a rewrite that silently did
nothing or computed something else fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

from compress_ir.cli import main  # noqa: E402
from compress_ir.core import numeric  # noqa: E402


def _mlp(path: Path) -> None:
    """x[4,64] → Gemm 64→128 (transB) → Relu → MatMul 128→96 → Relu → Gemm 96→16."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(128).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((128, 96)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((16, 96)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3"], ["y"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("pattern", ["pattern=block,block=8x1", "pattern=unstructured"])
def test_sparsify_then_sparse_kernels(tmp_path: Path, pattern: str) -> None:
    src, out, art = tmp_path / "mlp.onnx", tmp_path / "sparse.onnx", tmp_path / "mlp.x86"
    report = tmp_path / "r.json"
    _mlp(src)
    code = main([str(src), "--pass", f"sparsify{{{pattern},sparsity=0.9,skip-first=false,"
                 "skip-last=false}", "-o", str(out), "--target", "x86", "--artifact", str(art),
                 "--sparse-kernels", "0.8", "--report", str(report), "--quiet"])
    assert code == 0
    target = json.loads(report.read_text())["target"]
    assert target["verify"]["ran"] and target["verify"]["ok"]
    assert target["verify"]["rel_error"] < 1e-4
    rewritten = target["sparse"]["rewritten"]
    assert len(rewritten) == 3, target["sparse"]
    if "block" in pattern:
        assert all(r["format"] == "bsr" and r["block_sparsity"] >= 0.8 for r in rewritten)

    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(art), "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npz"), "--quiet"]) == 0
    got = np.load(tmp_path / "y.npz")["y"]
    (want,) = numeric.run(onnx.load(str(out)), {"x": x}).values()
    assert numeric.rel_error(got, want) < 1e-4


def test_below_threshold_layers_stay_dense(tmp_path: Path) -> None:
    src, art, report = tmp_path / "mlp.onnx", tmp_path / "mlp.x86", tmp_path / "r.json"
    _mlp(src)
    assert main([str(src), "--pass", "sparsify{sparsity=0.5,skip-first=false,skip-last=false}",
                 "--target", "x86", "--artifact", str(art), "--sparse-kernels", "0.8",
                 "--report", str(report), "--quiet"]) == 0
    sparse = json.loads(report.read_text())["target"]["sparse"]
    assert sparse["rewritten"] == []
    assert len(sparse["skipped"]) == 3
