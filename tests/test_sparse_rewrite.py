"""Relax sparse rewrite end to end: ONNX → from_onnx → rewrite_sparse → compile vs onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from compress_ir.backend.sparse import rewrite_sparse  # noqa: E402
from compress_ir.core.errors import UsageError  # noqa: E402

LLVM = {"kind": "llvm"}
ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
ARM_ROOTFS = Path.home() / ".cache" / "compress-ir" / "arm64-rootfs"
CHECK_ARTIFACT = Path(__file__).resolve().parent.parent / "tools" / "arm" / "check_artifact.py"


def block_sparse(rng, shape, block, sparsity):
    r, c = block
    rows, cols = shape
    keep = rng.random((rows // r, cols // c)) >= sparsity
    return (rng.standard_normal(shape) * np.kron(keep, np.ones(block))).astype(np.float32)


def nm_sparse(rng, shape, n, m):
    w = rng.standard_normal(shape).astype(np.float32).reshape(shape[0], -1, m)
    w[np.argsort(rng.random(w.shape), axis=2) >= n] = 0
    return w.reshape(shape)


def make_model(weights: dict[str, np.ndarray], nodes, inputs, outputs) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # fills output shapes
    onnx.checker.check_model(model)
    return model


def run_both(model, feeds, target=LLVM, **kw):
    mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in feeds.items()},
                    keep_params_in_input=False)
    new, stats = rewrite_sparse(mod, target, **kw)
    ex = tvm.compile(new, tvm.target.Target(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    outs = [out] if hasattr(out, "numpy") else list(out)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    return [o.numpy() for o in outs], ref, stats, new


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def mixed():
    return mixed_model()


def mixed_model():
    """Gemm(transB) → MatMul on a (2, 8, K) input, 1x1 Conv → Relu → 3x3 Conv, a dense Gemm."""
    rng = np.random.default_rng(0)
    weights = {
        "Wg": block_sparse(rng, (32, 16), (8, 1), 0.8), "bg": rng.standard_normal(32),
        "Bm": block_sparse(rng, (24, 32), (1, 4), 0.9).T.copy(),  # MatMul B (K=32, N=24)
        "C1": block_sparse(rng, (16, 8), (4, 1), 0.75).reshape(16, 8, 1, 1),
        "b1": rng.standard_normal(16),
        "C3": block_sparse(rng, (8, 16 * 9), (1, 1), 0.85).reshape(8, 16, 3, 3),
        "Wd": rng.standard_normal((24, 24)),
    }
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    weights["shp"] = np.array([16, 16], np.int64)
    weights["shp3"] = np.array([2, 8, 32], np.int64)
    nodes = [
        oh.make_node("Reshape", ["x", "shp"], ["x2"]),
        oh.make_node("Gemm", ["x2", "Wg", "bg"], ["g1"], transB=1),
        oh.make_node("Reshape", ["g1", "shp3"], ["g3"]),
        oh.make_node("MatMul", ["g3", "Bm"], ["mm"]),
        oh.make_node("Gemm", ["x2d", "Wd"], ["dense"], transB=1),
        oh.make_node("Conv", ["img", "C1", "b1"], ["c1"]),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "C3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    model = make_model(weights, nodes, {"x": [2, 8, 16], "x2d": [3, 24], "img": [1, 8, 9, 9]},
                       ["mm", "dense", "c3"])
    feeds = {"x": rng.standard_normal((2, 8, 16)).astype(np.float32),
             "x2d": rng.standard_normal((3, 24)).astype(np.float32),
             "img": rng.standard_normal((1, 8, 9, 9)).astype(np.float32)}
    return model, feeds


def test_mixed_model_rewritten_and_matches_onnxruntime(mixed):
    model, feeds = mixed
    outs, ref, stats, new = run_both(model, feeds, min_sparsity=0.7)
    for o, r in zip(outs, ref, strict=True):
        assert o.shape == r.shape
        assert rel_err(o, r) <= 1e-5
    got = {(e["op"], tuple(e["weight_shape"])): e for e in stats["rewritten"]}
    assert set(got) == {("gemm", (32, 16)), ("matmul", (32, 24)), ("conv2d", (16, 8, 1, 1)),
                        ("conv2d", (8, 16, 3, 3))}
    assert got[("gemm", (32, 16))]["block"] == [8, 1]
    assert got[("matmul", (32, 24))]["block"] == [1, 4]
    assert got[("conv2d", (16, 8, 1, 1))]["block"] == [4, 1]
    assert got[("conv2d", (8, 16, 3, 3))]["block"] == [1, 1]
    for e in stats["rewritten"]:
        assert e["format"] == "bsr" and e["nnz_blocks"] > 0 and e["sparsity"] >= 0.7
    # the dense Gemm stays a matmul and is reported with its reason
    assert [s for s in stats["skipped"] if "below threshold" in s["reason"]]
    script = new.script()
    assert script.count("R.matmul(") == 1 and "R.nn.conv2d(" not in script
    funcs = [f for _, f in new.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) == 4 and all(bool(f.attrs["tir.is_scheduled"]) for f in funcs)


def test_threshold_and_forced_block(mixed):
    model, feeds = mixed
    outs, ref, stats, _ = run_both(model, feeds, min_sparsity=0.95)
    assert stats["rewritten"] == []
    assert len(stats["skipped"]) == 5
    assert all("below threshold" in s["reason"] for s in stats["skipped"])
    outs, ref, stats, _ = run_both(model, feeds, min_sparsity=0.7, block=(4, 1))
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) <= 1e-5
    assert {tuple(e["block"]) for e in stats["rewritten"]} == {(4, 1)}
    names = {e["name"] for e in stats["rewritten"]}
    # 1x4- and 1x1-structured weights have no 4x1 zero blocks at 0.7: left dense, with reason
    assert len(names) == 2
    assert sum("block sparsity" in s["reason"] for s in stats["skipped"]) == 2


def test_nm_and_column_kernels():
    """2:4 weights pick the N:M kernel; a 1x1-sparse MatMul with m ≥ 8 goes column-major."""
    rng = np.random.default_rng(3)
    weights = {"W24": nm_sparse(rng, (16, 32), 2, 4),
               "C24": nm_sparse(rng, (8, 16), 2, 4).reshape(8, 16, 1, 1),
               "Bu": block_sparse(rng, (16, 16), (1, 1), 0.8)}
    nodes = [oh.make_node("Gemm", ["x", "W24"], ["a"], transB=1),
             oh.make_node("Relu", ["a"], ["ar"]),
             oh.make_node("MatMul", ["ar", "Bu"], ["y"]),
             oh.make_node("Conv", ["img", "C24"], ["z"]),
             oh.make_node("Transpose", ["ar"], ["arT"]),
             oh.make_node("MatMul", ["ar", "arT"], ["q"])]  # activation × activation
    model = make_model(weights, nodes, {"x": [9, 32], "img": [2, 16, 3, 5]}, ["y", "z", "q"])
    feeds = {"x": rng.standard_normal((9, 32)).astype(np.float32),
             "img": rng.standard_normal((2, 16, 3, 5)).astype(np.float32)}
    outs, ref, stats, _ = run_both(model, feeds, min_sparsity=0.5)
    for o, r in zip(outs, ref, strict=True):
        assert rel_err(o, r) <= 1e-5
    kinds = sorted((e["op"], e["format"], e["kernel"]) for e in stats["rewritten"])
    assert kinds == [("conv2d", "nm", "nm-cols"), ("gemm", "nm", "nm-cols"),
                     ("matmul", "bsr", "bsr-cols")]
    assert [s["reason"] for s in stats["skipped"]] == [
        "weight is not a constant (or a transposed 2-D constant)"]


def test_usage_errors(mixed):
    model, feeds = mixed
    mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in feeds.items()},
                    keep_params_in_input=False)
    with pytest.raises(UsageError, match="min_sparsity"):
        rewrite_sparse(mod, LLVM, min_sparsity=1.5)
    with pytest.raises(UsageError, match="block"):
        rewrite_sparse(mod, LLVM, block=(0, 4))
    with pytest.raises(UsageError, match="target kind"):
        rewrite_sparse(mod, {"kind": "c"})


def _rewritten(mixed, target):
    model, feeds = mixed
    mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in feeds.items()},
                    keep_params_in_input=False)
    new, stats = rewrite_sparse(mod, target, min_sparsity=0.7)
    assert len(stats["rewritten"]) == 4
    return new


def test_compiles_for_aarch64(mixed):
    ex = tvm.compile(_rewritten(mixed, ARM), tvm.target.Target(ARM))
    assert ex is not None


def test_runs_on_aarch64_under_qemu(mixed, tmp_path):
    """The NEON build of the sparse kernels, run for real in the arm64 rootfs under qemu."""
    missing = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static") if not shutil.which(t)]
    if missing or not ARM_ROOTFS.is_dir():
        pytest.skip(f"needs {missing or ''} {'' if ARM_ROOTFS.is_dir() else ARM_ROOTFS} "
                    "(tools/arm/setup_rootfs.sh) to run aarch64 code")
    from tvm.support import cc

    model, feeds = mixed
    ex = tvm.compile(_rewritten(mixed, ARM), tvm.target.Target(ARM))
    art = tmp_path / "artifact"
    art.mkdir()
    ex.export_library(str(art / "model.so"), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    spec = [{"name": o.name, "dtype": "float32",
             "shape": [d.dim_value for d in o.type.tensor_type.shape.dim]}
            for o in model.graph.output]
    meta = {"format": "compress-ir-artifact", "schema": 1, "library": "model.so",
            "device": "cpu", "target": "aarch64-neon", "tvm_target": ARM, "outputs": spec,
            "inputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"}
                       for k, v in feeds.items()]}
    (art / "meta.json").write_text(json.dumps(meta))
    onnx.save(model, tmp_path / "model.onnx")
    res = subprocess.run([sys.executable, str(CHECK_ARTIFACT), str(art), "--model",
                          str(tmp_path / "model.onnx"), "--tolerance", "1e-5", "--json",
                          str(tmp_path / "out.json")], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["ok"] and set(out["errors"]) == {"mm", "dense", "c3"}
    assert max(out["errors"].values()) <= 1e-5


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: CUDA compile check")
def test_compiles_for_cuda(mixed):
    target = {"kind": "cuda", "arch": "sm_80"}
    ex = tvm.compile(_rewritten(mixed, target), tvm.target.Target(target))
    assert ex is not None  # compile only: no GPU on the development machine
