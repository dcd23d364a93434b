"""TVM build + export + verify + run: x86 round trip against onnxruntime, atomic artifact
directories, the aarch64 cross build, CUDA libraries carrying compiled GPU code, RPC."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_ir.backend import BuildOptions, build, load_artifact, run_artifact, time_artifact
from compress_ir.core.errors import NumericMismatchError, UnsupportedModelError, UsageError

tvm = pytest.importorskip("tvm")

META_KEYS = {"format", "schema", "target", "tvm_target", "device", "library", "inputs",
             "outputs", "tvm_version", "compress_ir_version", "model_sha256", "build", "verify"}
EM_X86_64, EM_AARCH64, EM_CUDA = 62, 183, 190


def tiny_model(seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv -> relu -> conv/2 -> relu -> (gemm y[N,5], global pool feat)."""
    rng = np.random.default_rng(seed)
    c = channels
    weights = {"w1": rng.standard_normal((c, 3, 3, 3)), "b1": rng.standard_normal(c),
               "w2": rng.standard_normal((c, c, 3, 3)) * 0.2,
               "wg": rng.standard_normal((c * 16, 5)) * 0.1, "bg": rng.standard_normal(5)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["feat"], name="gap"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", c, 1, 1])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not ELF"
    return struct.unpack_from("<H", head, 18)[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def x86_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("x86") / "tiny.x86"
    build(tiny_model(), "x86", out, BuildOptions(batch=2))
    return out


def test_x86_meta_and_library(x86_artifact: Path) -> None:
    meta = json.loads((x86_artifact / "meta.json").read_text())
    assert META_KEYS <= set(meta)
    assert (meta["format"], meta["schema"], meta["target"], meta["device"], meta["library"]) == (
        "compress-ir-artifact", 1, "x86", "cpu", "model.so")
    assert meta["inputs"] == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "float32",
                               "fixed_dims": {"0": "N"}}]
    assert meta["outputs"] == [{"name": "y", "shape": [2, 5], "dtype": "float32"},
                               {"name": "feat", "shape": [2, 8, 1, 1], "dtype": "float32"}]
    assert meta["tvm_version"] == tvm.__version__
    assert meta["build"]["options"]["batch"] == 2 and meta["build"]["seconds"]["total"] > 0
    verify = meta["verify"]
    assert verify["ran"] and verify["ok"] and verify["where"] == "local"
    assert 0 <= verify["rel_error"] <= 1e-4
    assert elf_machine(x86_artifact / "model.so") == EM_X86_64
    assert sorted(p.name for p in x86_artifact.iterdir()) == ["meta.json", "model.so"]


def test_x86_round_trip_matches_onnxruntime(x86_artifact: Path) -> None:
    x = np.random.default_rng(42).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = run_artifact(x86_artifact, {"x": x})
    want = ort_outputs(tiny_model(), {"x": x})
    assert list(got) == ["y", "feat"]
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_run_rejects_bad_inputs(x86_artifact: Path) -> None:
    x = np.zeros((2, 3, 8, 8), np.float32)
    cases = [({"x": x[:1]}, ["'x'", "shape"]), ({"x": x.astype(np.float64)}, ["'x'", "dtype"]),
             ({"x": x, "z": x}, ["'z'"]), ({}, ["'x'", "missing"])]
    for feeds, fragments in cases:
        with pytest.raises(UsageError) as info:
            run_artifact(x86_artifact, feeds)
        for fragment in fragments:
            assert fragment in str(info.value)


def test_time_artifact(x86_artifact: Path) -> None:
    timing = time_artifact(x86_artifact, repeat=3)
    assert timing["repeat"] == 3 and timing["method"] == "vm.time_evaluator"
    assert 0 < timing["min_ms"] <= timing["median_ms"]


def test_rpc_localhost(x86_artifact: Path) -> None:
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=19300, port_end=19400, silent=True)
    try:
        address = f"127.0.0.1:{server.port}"
        x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
        remote = run_artifact(x86_artifact, {"x": x}, rpc=address)
        want = ort_outputs(tiny_model(), {"x": x})
        for name in want:
            np.testing.assert_allclose(remote[name], want[name], rtol=1e-4, atol=1e-4)
        timing = time_artifact(x86_artifact, rpc=address, repeat=2)
        assert timing["where"] == f"rpc {address}" and timing["median_ms"] > 0
    finally:
        server.terminate()
    with pytest.raises(UsageError, match="cannot reach RPC 127.0.0.1:1"):
        run_artifact(x86_artifact, rpc="127.0.0.1:1")
    with pytest.raises(UsageError, match="host:port"):
        run_artifact(x86_artifact, rpc="nowhere")


def test_rpc_tracker_key(x86_artifact: Path) -> None:
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install tornado)")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=19500, port_end=19600, silent=True)
    server = rpc.Server(host="127.0.0.1", port=19600, port_end=19700, key="board-x86",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        address = f"127.0.0.1:{tracker.port}:board-x86"
        x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
        got = run_artifact(x86_artifact, {"x": x}, rpc=address)
        np.testing.assert_allclose(got["y"], ort_outputs(tiny_model(), {"x": x})["y"],
                                   rtol=1e-4, atol=1e-4)
    finally:
        server.terminate()
        tracker.terminate()


def test_dynamic_non_batch_dim_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(UnsupportedModelError, match=r"input 'x': dim 2 \(H\) is dynamic; "
                       r"fix it with --input-shape x=1,3,\d+,8"):
        build(model, "x86", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(UsageError, match="batch"):
        BuildOptions(batch=0)


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_module = importlib.import_module("compress_ir.backend.build")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_module, "_export", broken)
    with pytest.raises(OSError):
        build(tiny_model(), "x86", tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_mismatch_keeps_the_previous_artifact(tmp_path: Path, x86_artifact: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A miscompiled module (here: another model's weights) fails the check; the old
    artifact in the destination stays as it was and no temp dir is left behind."""
    from compress_ir.backend import schedule
    from compress_ir.backend.build import fixed_input_specs, import_relax

    out = tmp_path / "tiny.x86"
    shutil.copytree(x86_artifact, out)
    before = (out / "meta.json").read_bytes()
    other = tiny_model(seed=7)
    real = schedule.compile_relax

    def miscompile(mod: object, target: object, *args: object, **kwargs: object) -> object:
        wrong = import_relax(other, fixed_input_specs(other, 2), "other")
        return real(wrong, target, *args, **kwargs)

    monkeypatch.setattr(schedule, "compile_relax", miscompile)
    with pytest.raises(NumericMismatchError, match="differs from onnxruntime"):
        build(tiny_model(), "x86", out, BuildOptions(batch=2))
    assert (out / "meta.json").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a compress-ir artifact"):
        build(tiny_model(), "x86", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_arm_needs_the_cross_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="apt-get install gcc-aarch64-linux-gnu"):
        build(tiny_model(), "arm", tmp_path / "a")


@pytest.fixture
def needs_cross() -> None:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")


def test_arm_cross_build_is_aarch64(tmp_path: Path, needs_cross: None) -> None:
    art = build(tiny_model(), "arm:rpi4", tmp_path / "tiny.arm-rpi4")
    assert elf_machine(art.library) == EM_AARCH64
    assert art.meta["tvm_target"]["mcpu"] == "cortex-a72" and art.meta["device"] == "cpu"
    assert art.meta["verify"]["ran"] is False and "aarch64" in art.meta["verify"]["reason"]
    assert load_artifact(art.path).meta == art.meta


def _fatbin(data: bytes) -> bytes:
    at = data.find(bytes.fromhex("50ed55ba"))
    assert at >= 0, "no fatbin in the library"
    header_size, fat_size = struct.unpack_from("<HQ", data, at + 6)
    return data[at : at + header_size + fat_size]


def test_cuda_library_carries_compiled_gpu_code(tmp_path: Path) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) not installed")
    art = build(tiny_model(), "cuda:sm_86", tmp_path / "tiny.cuda-sm_86")
    data = art.library.read_bytes()
    assert b"__global__" not in data, "CUDA C source left in the library"
    fatbin = _fatbin(data)
    elf = fatbin.find(b"\x7fELF")
    assert elf >= 0 and struct.unpack_from("<H", fatbin, elf + 18)[0] == EM_CUDA
    assert struct.pack("<Q", 6) + b"fatbin" in data  # the module's format field
    assert elf_machine(art.library) == EM_X86_64  # host code
    gpu = art.meta["gpu_code"]
    assert gpu["arch"] == "sm_86" and gpu["modules"] >= 1 and gpu["bytes"] > 0
    assert art.meta["device"] == "cuda"
    if not tvm.cuda(0).exist:
        assert art.meta["verify"] == {"ran": False,
                                      "reason": "no CUDA GPU on this machine; not verified"}
        try:  # TVM's own loader walks the re-packed blob up to the cuda module
            tvm.runtime.load_module(str(art.library))
        except Exception as exc:  # noqa: BLE001 - no CUDA runtime in this TVM build
            assert "load_from_bytes.cuda" in str(exc), exc
    else:
        assert art.meta["verify"]["ok"]


@pytest.fixture(autouse=True)
def _no_stray_dirs(tmp_path: Path) -> Iterator[None]:
    yield
    assert leftovers(tmp_path) == []


def _payload(fmt: str, code: bytes) -> bytes:
    """A "cuda" module payload as TVM writes it: fmt, a function table, then the code."""
    table = struct.pack("<Q", 1) + struct.pack("<Q", 4) + b"kern" + b"\x00" * 24
    return (struct.pack("<Q", len(fmt)) + fmt.encode() + table
            + struct.pack("<Q", len(code)) + code)


def test_payload_split_finds_source_and_prebuilt_fatbin() -> None:
    """A GPU host's TVM compiles CUDA C during the build (through `compile_hook`, our
    fatbin labelled "cubin"); the packer must take that as well as source."""
    from compress_ir.backend import cuda_pack

    src = b"extern \"C\" __global__ void kern(float* x) { x[0] = 1.0f; }"
    fmt, table, code = cuda_pack._split_payload(_payload("cuda", src))
    assert (fmt, code) == ("cuda", src) and table.startswith(struct.pack("<Q", 1))
    fat = cuda_pack.FATBIN_MAGIC + b"\x01\x00\x10\x00" + bytes(range(64))
    fmt, _, code = cuda_pack._split_payload(_payload("cubin", fat))
    assert (fmt, code) == ("cubin", fat)
    with pytest.raises(ValueError, match="no fatbin found"):  # NVRTC's bare cubin (ELF)
        cuda_pack._split_payload(_payload("cubin", b"\x7fELF" + bytes(60)))


def test_compile_hook_compiles_with_nvcc_and_restores_the_callback() -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) not installed")
    import tvm_ffi

    from compress_ir.backend import cuda_pack

    name = cuda_pack.CALLBACK
    original = tvm_ffi.get_global_func(name, allow_missing=True)
    tvm_ffi.register_global_func(name, lambda code, *_: b"sentinel", override=True)
    try:
        info = cuda_pack.GpuCode()
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_86"})
        with cuda_pack.compile_hook("sm_86", target, info):
            out = bytes(tvm_ffi.get_global_func(name)(
                'extern "C" __global__ void k(float* x) { x[0] = 2.0f; }'))
        assert out.startswith(cuda_pack.FATBIN_MAGIC) and info.nvcc_seconds > 0
        assert bytes(tvm_ffi.get_global_func(name)("x")) == b"sentinel"  # restored
    finally:
        if original is not None:
            tvm_ffi.register_global_func(name, original, override=True)


def test_gpu_benchmark_times_the_original_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On this host's GPU (as over RPC) the ratio that means something is the compressed vs
    the original artifact on that GPU; a TVM-GPU / onnxruntime-CPU ratio is not given."""
    from types import SimpleNamespace

    from compress_ir.backend import benchmark as bench
    from compress_ir.backend.artifact import TensorSpec

    class FakeSession:  # a GPU's timings: the compressed artifact twice as fast
        def __init__(self, art: object, *_: object, **__: object) -> None:
            self.where, self.ms = "local", art.ms

        def timer(self, feeds: object) -> object:
            return lambda: self.ms

        def close(self) -> None:
            pass

    monkeypatch.setattr(bench, "Session", FakeSession)
    monkeypatch.setattr(bench, "local_run_blocker", lambda meta: None)
    spec = [TensorSpec("x", (1, 3, 8, 8), "float32")]
    art = SimpleNamespace(inputs=spec, meta={"device": "cuda"}, device="cuda", ms=1.0)
    original = SimpleNamespace(inputs=spec, meta={"device": "cuda"}, device="cuda", ms=2.0)
    out = bench.benchmark(tiny_model(), tiny_model(), art, repeat=3, original_art=original)
    assert out["ratios"]["tvm_vs_tvm_original"] == 0.5
    assert out["ratios"]["tvm_vs_ort_compressed"] is None
    assert out["ratios"]["tvm_vs_ort_original"] is None
    assert any("this host's GPU" in w for w in out["warnings"])


def test_cuda_code_is_compiled_without_fast_math() -> None:
    """`--use_fast_math` makes powf(x, 2) exp2(2 log2 x): NaN for x < 0 (LayerNorm as Pow)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) not installed")
    from tvm.support import nvcc

    from compress_ir.backend import cuda_pack

    src = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = powf(x[threadIdx.x], 2.0f); }'
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_86"})
    with target:
        fast = bytes(nvcc.compile_cuda(src, target_format="ptx", arch="sm_86", compiler="nvcc"))
        with cuda_pack.exact_math():
            exact = bytes(nvcc.compile_cuda(src, target_format="ptx", arch="sm_86",
                                            compiler="nvcc"))
    assert b"lg2.approx" in fast  # TVM's default: the NaN-prone approximation
    assert b"lg2.approx" not in exact
    assert cuda_pack.NO_FAST_MATH not in os.environ  # restored
