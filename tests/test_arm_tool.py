"""tools/arm: the qemu checker of aarch64 artifacts, tested on the host without qemu.

runner.py is the half that runs inside the arm64 rootfs; it is plain Python + numpy + TVM,
so it runs unchanged here on an x86 artifact, and its outputs are checked against
onnxruntime. check_artifact.py's refusals (non-aarch64 target or library, missing rootfs,
mismatched model) are checked through its command line. The real qemu run is slow (~20 s
for a tiny CNN); it runs only when COMPRESS_IR_ARM_ROOTFS names a rootfs made by
tools/arm/setup_rootfs.sh.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
ARM = ROOT / "tools" / "arm"
ARM_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"arm_{name}", ARM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


runner = _module("runner")
check = _module("check_artifact")


def _tiny_cnn() -> onnx.ModelProto:
    """Conv-Relu-Conv-Add-Relu -> (GAP-Gemm logits, feature map): two outputs, a residual."""
    rng = np.random.default_rng(7)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32),
                                       name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["feat"]),
        helper.make_node("GlobalAveragePool", ["feat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, 8, 8])],
        [init("w1", (4, 3, 3, 3)), init("b1", (4,)), init("w2", (4, 4, 3, 3)), init("b2", (4,)),
         init("wf", (5, 4)), init("bf", (5,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _meta(target: str, tvm_target: dict) -> dict:
    return {"format": "compress-ir-artifact", "schema": 1, "target": target,
            "tvm_target": tvm_target, "device": "cpu", "library": "model.so",
            "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [1, 5], "dtype": "float32"},
                        {"name": "feat", "shape": [1, 4, 8, 8], "dtype": "float32"}]}


def _build(model: onnx.ModelProto, out: Path, target: str) -> Path:
    """An artifact made with raw TVM, as the build step does: model.so + meta.json."""
    tvm = pytest.importorskip("tvm")
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc

    tvm_target = ARM_TARGET if target == "arm" else {"kind": "llvm"}
    mod = from_onnx(model, shape_dict={"x": [1, 3, 8, 8]}, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target(tvm_target))
    out.mkdir(parents=True)
    if target == "arm":
        ex.export_library(str(out / "model.so"),
                          fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    else:
        ex.export_library(str(out / "model.so"))
    (out / "meta.json").write_text(json.dumps(_meta(target, tvm_target)))
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model on disk and its x86 artifact (built once, ~2 s)."""
    root = tmp_path_factory.mktemp("arm_tool")
    model = _tiny_cnn()
    onnx.save(model, root / "tiny.onnx")
    return {"root": root, "model": root / "tiny.onnx",
            "x86": _build(model, root / "x86", "x86")}


@pytest.fixture(scope="module")
def arm_artifact(work: dict[str, Path]) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")
    return _build(onnx.load(work["model"]), work["root"] / "arm", "arm")


def _ort(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "feat"], sess.run(["logits", "feat"], {"x": x}), strict=True))


# --- runner.py: meta.json parsing and input handling -------------------------------------

def _write_meta(tmp_path: Path, meta: dict, library: bool = True) -> Path:
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    if library:
        (tmp_path / "model.so").write_bytes(b"")
    return tmp_path


def test_load_meta_accepts_the_artifact_format(tmp_path: Path) -> None:
    meta = _meta("arm", ARM_TARGET)
    meta["outputs"][1]["shape"] = [None, 4, 8, 8]  # the build writes null for unknown dims
    meta = runner.load_meta(str(_write_meta(tmp_path, meta)))
    assert [s["name"] for s in meta["outputs"]] == ["logits", "feat"]


@pytest.mark.parametrize("change, library, reason", [
    ({"format": "onnx"}, True, "'format' is not"),
    ({"schema": 2}, True, "unsupported schema 2"),
    ({"library": "../model.so"}, True, "file name inside the artifact"),
    ({}, False, "library 'model.so' is missing"),
    ({"inputs": []}, True, "'inputs' must be a non-empty list"),
    ({"inputs": [{"name": "x", "shape": [1, -3], "dtype": "float32"}]}, True, "non-negative"),
    ({"inputs": [{"name": "x", "shape": [None, 3], "dtype": "float32"}]}, True, "non-neg"),
    ({"outputs": [{"name": "y", "shape": [1.5], "dtype": "float32"}]}, True, "or null"),
    ({"inputs": [{"name": "x", "shape": [1], "dtype": "floaty"}]}, True, "unknown dtype"),
    ({"outputs": [{"name": "y", "shape": [1], "dtype": "float32"}] * 2}, True, "duplicate"),
    ({"outputs": [{"name": "y", "shape": [1]}]}, True, "needs name, shape, dtype"),
])
def test_load_meta_rejects_bad_meta(tmp_path: Path, change: dict, library: bool,
                                    reason: str) -> None:
    artifact = _write_meta(tmp_path, {**_meta("arm", ARM_TARGET), **change}, library)
    with pytest.raises(runner.RunnerError, match=reason) as info:
        runner.load_meta(str(artifact))
    assert info.value.exit_code == runner.EXIT_ARTIFACT


def test_load_meta_without_meta_or_for_cuda_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(runner.RunnerError, match="no meta.json") as info:
        runner.load_meta(str(tmp_path))
    assert info.value.exit_code == runner.EXIT_USAGE
    meta = {**_meta("cuda", {"kind": "cuda", "arch": "sm_80"}), "device": "cuda"}
    with pytest.raises(runner.RunnerError, match="device 'cuda'") as info:
        runner.load_meta(str(_write_meta(tmp_path, meta)))
    assert info.value.exit_code == runner.EXIT_USAGE


def test_ordered_inputs_follows_meta_order_and_checks_specs() -> None:
    meta = {"inputs": [{"name": "b", "shape": [2], "dtype": "int64"},
                       {"name": "a", "shape": [1, 2], "dtype": "float32"}]}
    a, b = np.ones((1, 2), np.float32), np.arange(2, dtype=np.int64)
    got = runner.ordered_inputs(meta, {"a": a, "b": b})
    assert got[0] is not a and np.array_equal(got[0], b) and np.array_equal(got[1], a)
    for bad, reason in [({"a": a}, r"missing \['b'\]"),
                        ({"a": a, "b": b, "c": b}, r"unexpected \['c'\]"),
                        ({"a": a.astype(np.float64), "b": b}, "got float64"),
                        ({"a": np.ones((2, 1), np.float32), "b": b}, r"wants float32\[1, 2\]")]:
        with pytest.raises(runner.RunnerError, match=reason):
            runner.ordered_inputs(meta, bad)


# --- runner.py end to end on an x86 artifact (same code path as inside the rootfs) --------

def test_runner_main_matches_onnxruntime(work: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    rc = runner.main([str(work["x86"]), "--inputs", str(tmp_path / "in.npz"),
                      "--outputs", str(out), "--repeat", "2"])
    assert rc == 0
    timing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(timing["run_s"]) == 2 and timing["median_run_s"] > 0
    want = _ort(work["model"], x)
    with np.load(out) as got:
        assert sorted(got.files) == ["feat", "logits"]
        for name, ref in want.items():
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob("*.tmp*")), "temporary output left behind"


def test_runner_main_rejects_wrong_inputs(work: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "in.npz", y=np.zeros((1, 3, 8, 8), np.float32))
    rc = runner.main([str(work["x86"]), "--inputs", str(tmp_path / "in.npz"),
                      "--outputs", str(tmp_path / "out.npz")])
    assert rc == runner.EXIT_USAGE
    assert "missing ['x']" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()


def test_split_outputs_checks_the_count() -> None:
    class Fake:
        def __init__(self, v: float) -> None:
            self.v = v

        def numpy(self) -> np.ndarray:
            return np.full((1,), self.v)

    meta = {"outputs": [{"name": "p"}, {"name": "q"}]}
    got = runner.split_outputs(meta, [Fake(1.0), Fake(2.0)])
    assert got["p"][0] == 1.0 and got["q"][0] == 2.0
    with pytest.raises(runner.RunnerError, match="returned 1 outputs"):
        runner.split_outputs(meta, Fake(1.0))  # a single tensor for a two-output artifact


# --- check_artifact.py: refusals and helpers ----------------------------------------------

def test_elf_machine_reads_real_libraries(work: dict[str, Path], arm_artifact: Path) -> None:
    assert check.elf_machine(work["x86"] / "model.so") == "x86-64"
    assert check.elf_machine(arm_artifact / "model.so") == "aarch64"


def test_elf_machine_rejects_non_elf(tmp_path: Path) -> None:
    (tmp_path / "model.so").write_bytes(b"#!/bin/sh\n" * 4)
    with pytest.raises(check.ModelLoadError, match="not an ELF"):
        check.elf_machine(tmp_path / "model.so")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = check.main(argv)
    return rc, capsys.readouterr().err


def test_refuses_x86_artifact(work: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _cli([str(work["x86"]), "--model", str(work["model"]),
                    "--rootfs", str(tmp_path)], capsys)
    assert rc == 2 and "is not aarch64" in err


def test_refuses_library_that_contradicts_meta(work: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    lying = shutil.copytree(work["x86"], tmp_path / "lying")
    (lying / "meta.json").write_text(json.dumps(_meta("arm", ARM_TARGET)))
    rc, err = _cli([str(lying), "--model", str(work["model"]), "--rootfs", str(tmp_path)],
                   capsys)
    assert rc == 2 and "built for x86-64, not aarch64" in err


def test_missing_rootfs_tells_how_to_make_it(work: dict[str, Path], arm_artifact: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static not installed (apt-get install qemu-user-static)")
    rc, err = _cli([str(arm_artifact), "--model", str(work["model"]),
                    "--rootfs", str(tmp_path / "none")], capsys)
    assert rc == 2 and "setup_rootfs.sh" in err and str(tmp_path / "none") in err
    half = _fake_rootfs(tmp_path, "exit 1").path  # python and tvm there, no stamp: interrupted
    rc, err = _cli([str(arm_artifact), "--model", str(work["model"]), "--rootfs", str(half)],
                   capsys)
    assert rc == 2 and "incomplete" in err and "setup_rootfs.sh" in err


def test_usage_errors(work: dict[str, Path], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _cli([str(tmp_path), "--model", str(work["model"])], capsys)
    assert rc == 2 and "no meta.json" in err
    rc, err = _cli([str(work["x86"]), "--model", str(tmp_path / "nope.onnx")], capsys)
    assert rc == 2 and "no such ONNX model" in err
    rc, err = _cli([str(work["x86"]), "--model", str(work["model"]), "--repeat", "0"], capsys)
    assert rc == 2 and "--repeat" in err


def test_make_inputs_are_seeded_and_typed() -> None:
    meta = {"inputs": [{"name": "x", "shape": [2, 3], "dtype": "float32"},
                       {"name": "ids", "shape": [4], "dtype": "int64"},
                       {"name": "m", "shape": [4], "dtype": "bool"}]}
    a, b, c = (check.make_inputs(meta, s) for s in (0, 0, 1))
    assert {k: (v.dtype.name, v.shape) for k, v in a.items()} == {
        "x": ("float32", (2, 3)), "ids": ("int64", (4,)), "m": ("bool", (4,))}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x"], c["x"])
    assert a["ids"].min() >= 0 and a["ids"].max() < 4


def test_make_inputs_with_the_model_keep_ids_inside_their_table() -> None:
    """A 2-row table (BERT token types) gets ids 0/1 and runs in onnxruntime; blind small
    ints (0..3) would index out of it and onnxruntime would refuse the reference run."""
    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 3])], [table])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"inputs": [{"name": "ids", "shape": [1, 64], "dtype": "int64"}]}
    blind = check.make_inputs(meta, 0)
    assert blind["ids"].max() >= 2  # the case the model-aware draw exists for
    feeds = check.make_inputs(meta, 0, proto)
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].shape == (1, 64)
    assert set(np.unique(feeds["ids"])) <= {0, 1}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, feeds)[0].shape == (1, 64, 3)


def test_reference_outputs_refuses_another_model(work: dict[str, Path], tmp_path: Path) -> None:
    meta = _meta("arm", ARM_TARGET)
    feeds = check.make_inputs(meta, 0)
    want, seconds = check.reference_outputs(work["model"], meta, feeds)
    assert seconds > 0
    for name, ref in _ort(work["model"], feeds["x"]).items():  # optimised graph: not bit-exact
        np.testing.assert_allclose(want[name], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(check.UsageError, match="do not match the artifact"):
        check.reference_outputs(work["model"], meta, {"y": feeds["x"]})
    meta["outputs"].append({"name": "extra", "shape": [1], "dtype": "float32"})
    with pytest.raises(check.UsageError, match=r"no output\(s\) \['extra'\]"):
        check.reference_outputs(work["model"], meta, feeds)


def test_same_model_compares_the_build_hash(work: dict[str, Path]) -> None:
    proto = check.load_model(work["model"])
    meta = _meta("arm", ARM_TARGET)
    assert check.same_model(proto, meta) is None  # raw-TVM artifacts carry no hash
    meta["model_sha256"] = hashlib.sha256(work["model"].read_bytes()).hexdigest()
    assert check.same_model(proto, meta) is True
    meta["model_sha256"] = "0" * 64
    assert check.same_model(proto, meta) is False


def test_compare_flags_wrong_and_missing_outputs() -> None:
    meta = _meta("arm", ARM_TARGET)
    want = {"logits": np.array([1.0, -2.0]), "feat": np.ones(3)}
    errors = check.compare(meta, {"logits": np.array([1.0, -2.2])}, want)
    # |diff| / (|want| + std(want)): 0.2 / (2.0 + 1.5) at the second element
    assert errors["logits"] == pytest.approx(0.2 / 3.5) and errors["feat"] == float("inf")


# --- check_artifact.py's qemu plumbing, with a stand-in "qemu" that runs the host python ---

def _fake_rootfs(tmp_path: Path, script: str) -> check.Rootfs:
    """A rootfs layout whose 'qemu' is a shell script (no emulation: plumbing only)."""
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / check.PYTHON).write_text("")
    (root / check.SITE / "tvm").mkdir(parents=True)
    qemu = tmp_path / "qemu-aarch64-static"
    qemu.write_text("#!/bin/sh\n" + script + "\n")
    qemu.chmod(0o755)
    return check.Rootfs(root, str(qemu))


def test_run_under_qemu_copies_in_runs_and_reads_back(work: dict[str, Path],
                                                       tmp_path: Path) -> None:
    # argv is: qemu -L ROOT ROOT/usr/bin/python3.11 -s -B runner.py ...: drop the first 3.
    fs = _fake_rootfs(tmp_path, f'shift 3; exec "{sys.executable}" "$@"')
    meta = check.load_meta(work["x86"])
    feeds = check.make_inputs(meta, 5)
    got, timing = check.run_under_qemu(fs, work["x86"], meta, feeds, repeat=2)
    assert len(timing["run_s"]) == 2 and timing["qemu_wall_s"] > 0
    errors = check.compare(meta, got, _ort(work["model"], feeds["x"]))
    assert max(errors.values()) < 1e-5, errors
    assert list((fs.path / "tmp").iterdir()) == [], "work dir left inside the rootfs"


def test_run_under_qemu_reports_crash_and_timeout(work: dict[str, Path],
                                                  tmp_path: Path) -> None:
    meta = check.load_meta(work["x86"])
    feeds = check.make_inputs(meta, 0)
    fs = _fake_rootfs(tmp_path / "a", 'echo "qemu: uncaught target signal 11" >&2; exit 139')
    with pytest.raises(check.QemuRunError, match="exit 139.*signal 11") as info:
        check.run_under_qemu(fs, work["x86"], meta, feeds)
    assert info.value.exit_code == 1
    fs = _fake_rootfs(tmp_path / "b", "exec sleep 5")
    with pytest.raises(check.QemuRunError, match="within 0.5 s"):
        check.run_under_qemu(fs, work["x86"], meta, feeds, timeout=0.5)


# --- the real thing, opt-in: a qemu run of the cross-compiled artifact --------------------

def test_qemu_run_matches_onnxruntime(work: dict[str, Path], arm_artifact: Path,
                                      tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rootfs = os.environ.get("COMPRESS_IR_ARM_ROOTFS")
    if not rootfs:
        pytest.skip("set COMPRESS_IR_ARM_ROOTFS to a rootfs from tools/arm/setup_rootfs.sh "
                    "to run the aarch64 artifact under qemu (~20 s)")
    out = tmp_path / "result.json"
    rc = check.main([str(arm_artifact), "--model", str(work["model"]), "--rootfs", rootfs,
                     "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["ok"] and set(result["errors"]) == {"logits", "feat"}
    assert capsys.readouterr().out.startswith("PASS: ")
    # A wrong model for the same artifact must fail: the check can fail.
    other = _tiny_cnn()
    for init in other.graph.initializer:
        if init.name == "wf":
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), "wf"))
    onnx.save(other, tmp_path / "other.onnx")
    rc = check.main([str(arm_artifact), "--model", str(tmp_path / "other.onnx"),
                     "--rootfs", rootfs])
    assert rc == 1 and capsys.readouterr().out.startswith("FAIL: ")
