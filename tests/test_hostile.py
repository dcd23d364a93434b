"""Issue 10: hostile and careless input. One test group per numbered finding.

Promises (README "Promises"): exit code in the documented set, one line on stderr,
no traceback, input bytes unchanged, no stray files, nothing overwritten that is
not the user's output, no hang, no memory bomb.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import cli, one_error
from onnx import TensorProto, helper, numpy_helper
from oracle import tiny_net

from compress_ir.api import compress
from compress_ir.cli import main
from compress_ir.core.boundary import classify, one_line
from compress_ir.core.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_NUMERIC,
    EXIT_OK,
    EXIT_USAGE,
    CompressIRError,
    ModelLoadError,
    NumericMismatchError,
    OutputError,
    UsageError,
)
from compress_ir.core.model import Model
from compress_ir.core.passes import PASSES, Pass, PassContext, PassResult, register_pass

ROOT = Path(__file__).resolve().parents[1]






def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_net(), str(path))
    return path


# --- 1: outputs can destroy inputs -------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
@pytest.mark.parametrize("flag", ["--report", "-o"])
def test_output_naming_the_input_is_refused(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, spelling: str, flag: str
) -> None:
    before = model.read_bytes()
    target = {"same": model, "dotted": tmp_path / "sub" / ".." / "m.onnx",
              "symlink": tmp_path / "link.onnx", "hardlink": tmp_path / "hard.onnx"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        target.symlink_to(model)
    elif spelling == "hardlink":
        os.link(model, target)
    code, _, err = cli(capsys, model, "--pass", "channel-prune", flag, target)
    assert code == EXIT_USAGE
    one_error(err)
    assert model.read_bytes() == before
    assert not [p for p in listing(tmp_path) if p.startswith(".cir-")]


def test_output_naming_external_data_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(tiny_net(), str(path), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    data = (tmp_path / "w.bin").read_bytes()
    code, _, err = cli(capsys, path, "--pass", "channel-prune", "--report", tmp_path / "w.bin")
    assert code == EXIT_USAGE and "input" in one_error(err)
    assert (tmp_path / "w.bin").read_bytes() == data


def test_two_outputs_on_one_file_are_refused(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.onnx"
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "-o", out, "--report",
                       tmp_path / "." / "out.onnx")
    assert code == EXIT_USAGE and "same file" in one_error(err)
    assert not out.exists()


def test_output_inside_the_artifact_folder_is_refused(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    art = tmp_path / "art"
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--target", "x86",
                       "--artifact", art, "--report", art / "meta.json")
    assert code == EXIT_USAGE and "inside" in one_error(err)
    assert not art.exists()


# --- 2: writing replaces what is not a regular file --------------------------------------


def test_report_dash_means_stdout_and_only_json(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    fake = io.TextIOWrapper(buf, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", fake)
    code = main([str(model), "--pass", "channel-prune", "--report", "-"])
    fake.flush()
    assert code == EXIT_OK
    report = json.loads(buf.getvalue().decode())
    assert report["pipeline"].startswith("channel-prune")
    assert not (tmp_path / "-").exists()


def test_dash_o_writes_the_model_to_stdout(model: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "compress_ir.cli", str(model), "--pass",
                           "channel-prune", "-o", "-"], capture_output=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr
    proto = onnx.load_from_string(proc.stdout)
    onnx.checker.check_model(proto)
    assert not (tmp_path / "-").exists()


def test_report_to_dev_stdout_writes_through(model: Path, tmp_path: Path) -> None:
    was_link = os.path.islink("/dev/stdout")
    proc = subprocess.run([sys.executable, "-m", "compress_ir.cli", str(model), "--pass",
                           "channel-prune", "--quiet", "--report", "/dev/stdout"],
                          capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["schema"] == 1
    assert os.path.islink("/dev/stdout") == was_link  # never replaced by a regular file


def test_report_to_dev_stdout_redirected_to_a_file(model: Path, tmp_path: Path) -> None:
    """`--report /dev/stdout > file`: the JSON goes to the file, /dev/stdout stays a link."""
    was_link = os.path.islink("/dev/stdout")
    with open(tmp_path / "captured.json", "wb") as fh:
        proc = subprocess.run([sys.executable, "-m", "compress_ir.cli", str(model), "--pass",
                               "channel-prune", "--report", "/dev/stdout"],
                              stdout=fh, stderr=subprocess.PIPE, cwd=tmp_path, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads((tmp_path / "captured.json").read_text())["schema"] == 1  # no table
    assert os.path.islink("/dev/stdout") == was_link


def test_fifo_output_is_written_through_not_replaced(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--quiet", "--report", fifo)
    reader.join(30)
    assert code == EXIT_OK, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])["schema"] == 1


def test_symlink_output_is_not_replaced(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real.json"
    real.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--report", link)
    assert code == EXIT_USAGE and "symbolic link" in one_error(err)
    assert link.is_symlink() and real.read_text() == "keep"


def test_directory_output_is_refused(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "-o", tmp_path)
    assert code == EXIT_USAGE and "directory" in one_error(err)


# --- 3: sparse_initializer external data -------------------------------------------------


def _sparse_external_model(folder: Path, location: str) -> tuple[Path, bytes, np.ndarray]:
    """tiny_net with conv2.w as a sparse initializer whose values live in external data."""
    proto = tiny_net()
    w = numpy_helper.to_array(proto.graph.initializer[2]).copy()
    w[:, :4] = 0
    flat = w.reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[idx].astype(np.float32), "conv2.w")
    values.data_location = TensorProto.EXTERNAL
    raw = flat[idx].astype(np.float32).tobytes()
    values.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(idx, ""), list(w.shape))
    del proto.graph.initializer[2]
    proto.graph.sparse_initializer.append(sparse)
    path = folder / "sparse.onnx"
    path.write_bytes(proto.SerializeToString())
    return path, raw, w


def test_sparse_external_data_is_read_from_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path, raw, w = _sparse_external_model(folder, "values.bin")
    (folder / "values.bin").write_bytes(raw)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "values.bin").write_bytes(b"\x00" * len(raw))  # must not be used
    monkeypatch.chdir(elsewhere)
    result = compress(path, "channel-prune{ratio=0.0}", check=False)
    from compress_ir.frontends.onnx import load_onnx

    assert {i.name for i in result.model.graph.initializer} >= {"conv2.w"}
    loaded = {i.name: numpy_helper.to_array(i)
              for i in load_onnx(path).to_proto().graph.initializer}
    np.testing.assert_array_equal(loaded["conv2.w"], w)


def test_sparse_external_data_outside_the_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path, raw, _ = _sparse_external_model(folder, "../secret.bin")
    (tmp_path / "secret.bin").write_bytes(raw)
    code, _, err = cli(capsys, path, "--pass", "channel-prune", "-o", tmp_path / "o.onnx")
    assert code == EXIT_MODEL and "outside the model's folder" in one_error(err)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("location", ["a\x00b.bin", "/etc/passwd", "../../x", "fifo.bin",
                                      "sub"])
def test_bad_external_locations_are_clean_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, location: str
) -> None:
    proto = tiny_net()
    init = proto.graph.initializer[0]
    init.ClearField("raw_data")
    del init.float_data[:]
    init.data_location = TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", location
    os.mkfifo(tmp_path / "fifo.bin")
    (tmp_path / "sub").mkdir()
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    code, _, err = cli(capsys, path, "--pass", "channel-prune")
    assert code == EXIT_MODEL
    one_error(err)


# --- 4: run loads only the artifact's own library ----------------------------------------


def _fake_artifact(folder: Path, library: str = "model.so", lib_bytes: bytes | None = None,
                   **meta_extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "compress-ir-artifact", "schema": 1, "target": "x86", "device": "cpu",
            "library": library, "inputs": [{"name": "x", "shape": [1, 3, 8, 8],
                                            "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [1, 4, 8, 8], "dtype": "float32"}],
            "target_spec": {"family": "x86"}, **meta_extra}
    (folder / "meta.json").write_text(json.dumps(meta))
    if lib_bytes is not None:
        (folder / "model.so").write_bytes(lib_bytes)
    return folder


def _elf(machine: int, etype: int = 3) -> bytes:
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5], head[6] = 2, 1, 1
    head[16:18] = etype.to_bytes(2, "little")
    head[18:20] = machine.to_bytes(2, "little")
    return bytes(head)


@pytest.mark.parametrize("library", ["../evil.so", "/tmp/evil.so", "sub/model.so", "..",
                                     "evil\x00.so", 7, ["model.so"]])
def test_run_refuses_a_library_outside_the_artifact(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, library: object
) -> None:
    (tmp_path / "evil.so").write_bytes(_elf(62))
    art = _fake_artifact(tmp_path / "art", library=library, lib_bytes=_elf(62))
    code, _, err = cli(capsys, "run", art)
    assert code == EXIT_MODEL
    one_error(err)


@pytest.mark.parametrize("lib_bytes,fragment", [
    (_elf(183), "aarch64"), (b"garbage" * 10, "not an ELF"), (_elf(62, etype=2), "shared"),
    (b"", "not an ELF")])
def test_run_checks_the_library_before_loading_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lib_bytes: bytes, fragment: str
) -> None:
    art = _fake_artifact(tmp_path / "art", lib_bytes=lib_bytes)
    code, _, err = cli(capsys, "run", art)
    assert code == EXIT_MODEL and fragment in one_error(err)


# --- 5: hangs ----------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers (the issue's hanging RPC server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(2)
    for c in held:
        c.close()
    srv.close()


def _real_shared_object() -> bytes:
    import tvm_ffi

    libs = sorted(Path(tvm_ffi.__file__).parent.rglob("*.so"))
    return libs[0].read_bytes()


def test_rpc_server_that_never_answers_times_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, silent_server: int
) -> None:
    pytest.importorskip("tvm")
    art = _fake_artifact(tmp_path / "art", lib_bytes=_real_shared_object())
    t0 = time.monotonic()
    code, _, err = cli(capsys, "run", art, "--rpc", f"127.0.0.1:{silent_server}",
                       "--rpc-timeout", "1")
    assert code == EXIT_USAGE and "no answer within 1 s" in one_error(err)
    assert time.monotonic() - t0 < 30


def test_tracker_with_unknown_key_fails_fast(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("tornado")
    pytest.importorskip("tvm")
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=19800, port_end=19900, silent=True)
    try:
        art = _fake_artifact(tmp_path / "art", lib_bytes=_real_shared_object())
        code, _, err = cli(capsys, "run", art, "--rpc", f"127.0.0.1:{tracker.port}:nokey",
                           "--rpc-timeout", "20")
    finally:
        tracker.terminate()
    assert code == EXIT_USAGE and "no device 'nokey'" in one_error(err)


def test_image_folder_with_a_fifo_does_not_hang(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "a.png")
    os.mkfifo(folder / "b.png")
    code, _, err = cli(capsys, model, "--calib", folder,
                       "--pass", "channel-prune{criterion=act-mean}")
    assert code == EXIT_OK, err


# --- 6: memory bombs ---------------------------------------------------------------------


def test_constant_folding_bomb_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one = numpy_helper.from_array(np.ones((1, 1), np.float32), "one")
    shape = numpy_helper.from_array(np.array([2**15, 2**14], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["one", "shape"], ["big"], name="bomb"),
         helper.make_node("Add", ["x", "big"], ["y"], name="add")], "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**15, 2**14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**15, 2**14])], [one, shape])
    path = tmp_path / "bomb.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(path))
    assert path.stat().st_size < 4096
    code, _, err = cli(capsys, path, "--pass", "channel-prune")
    line = one_error(err)
    assert code == EXIT_MODEL and "'bomb'" in line and "GiB" in line


def test_tensor_claiming_huge_dims_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    proto = tiny_net()
    proto.graph.initializer[0].dims[:] = [2**40, 3, 3, 3]
    path = tmp_path / "huge.onnx"
    path.write_bytes(proto.SerializeToString())
    code, _, err = cli(capsys, path, "--pass", "channel-prune")
    assert code == EXIT_MODEL and "conv1.w" in one_error(err)


# --- 7: tracebacks and wrong exit codes --------------------------------------------------


def _npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _calib_files(tmp_path: Path) -> dict[str, Path]:
    good = _npy_bytes(np.zeros((2, 3, 8, 8), np.float32))
    files = {
        "scalar.npy": _npy_bytes(np.float32(3)),
        "pickled.npy": _npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True),
        "truncated.npy": good[: len(good) // 2],
        "lying.npy": good.replace(b"(2, 3, 8, 8)", b"(9, 3, 8, 8)"),
        "header.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}",
        "notzip.npz": b"this is not a zip file",
        "nan.npy": _npy_bytes(np.full((2, 3, 8, 8), np.nan, np.float32)),
    }
    out = {name: tmp_path / name for name in files}
    for name, data in files.items():
        out[name].write_bytes(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", _npy_bytes(np.array([object()], dtype=object), allow_pickle=True))
    out["object.npz"] = tmp_path / "object.npz"
    out["object.npz"].write_bytes(buf.getvalue())
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _npy_bytes(np.zeros((8_000_000,), np.float32)))  # 32 MB of zeros
    out["bomb.npz"] = tmp_path / "bomb.npz"
    return out


@pytest.mark.parametrize("name", ["scalar.npy", "pickled.npy", "truncated.npy", "lying.npy",
                                  "header.npy", "notzip.npz", "object.npz", "nan.npy",
                                  "bomb.npz"])
def test_bad_calibration_files_are_usage_errors(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, name: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import compress_ir.core.array_files as af

    files = _calib_files(tmp_path)  # bomb.npz: 32 KB on disk, 32 MB inflated, cap 16 MB
    monkeypatch.setattr(af.read_npz, "__defaults__", (16 << 20,))
    monkeypatch.setattr(af.read_npy, "__defaults__", (16 << 20,))
    code, _, err = cli(capsys, model, "--calib", files[name],
                       "--pass", "channel-prune{criterion=act-mean}")
    assert code == EXIT_USAGE, err
    assert name in one_error(err)


@pytest.mark.parametrize("argv", [
    ["--calib", "random:abc"], ["--calib", "random:-3"], ["--calib", "random:1e8"],
    ["--calib", "random:100000000000"], ["--calib-size", "0x0", "--calib", "IMAGES"],
    ["--calib-samples", "0", "--calib", "random:4"], ["--calib-std", "0", "--calib", "IMAGES"],
    ["--calib-std", "nan", "--calib", "IMAGES"], ["--seed", "-1"], ["--tolerance", "nan"],
    ["--tolerance", "inf"],
])
def test_bad_values_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, argv: list[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    argv = [str(folder) if a == "IMAGES" else a for a in argv]
    code, _, err = cli(capsys, model, "--pass", "channel-prune{criterion=act-mean}", *argv)
    assert code == EXIT_USAGE, err
    one_error(err)


def test_decompression_bomb_image_is_refused(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 Mpx in a few KB
    assert (folder / "bomb.png").stat().st_size < 1 << 20
    code, _, err = cli(capsys, model, "--calib", folder, "--calib-size", "8x8",
                       "--pass", "channel-prune{criterion=act-mean}")
    assert code == EXIT_USAGE and "bomb" in one_error(err)


@pytest.mark.parametrize("change", [
    {"inputs": [{"name": "x", "shape": [-1, 3], "dtype": "float32"}]},
    {"inputs": [{"name": "x", "shape": [1], "dtype": "object"}]},
    {"inputs": "x"}, {"outputs": []}, {"device": "tpu"}, {"target": 3},
    {"inputs": [{"name": "x", "shape": [2**40, 2**20], "dtype": "float32"}]},
    {"schema": 99}, {"format": "other"},
])
def test_tampered_meta_json_is_exit_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, change: dict
) -> None:
    art = _fake_artifact(tmp_path / "art", lib_bytes=_elf(62), **change)
    code, _, err = cli(capsys, "run", art)
    assert code == EXIT_MODEL
    one_error(err)


class _Raises(Pass):
    in_place = False
    summary = "test only: raises what the test asks for"
    error: BaseException = RuntimeError("boom")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        raise type(self).error


@pytest.fixture
def raising_pass() -> Iterator[type[_Raises]]:
    name = "test-hostile-raises"
    register_pass(name)(_Raises)
    try:
        yield _Raises
    finally:
        PASSES._items.pop(name, None)


@pytest.mark.parametrize("error,code", [
    (TypeError("bad\nthing"), EXIT_INTERNAL), (KeyboardInterrupt(), EXIT_INTERRUPTED),
    (UsageError("two\nlines"), EXIT_USAGE), (MemoryError(), EXIT_MODEL),
])
def test_every_failure_is_one_line_with_a_documented_code(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path,
    raising_pass: type[_Raises], error: BaseException, code: int
) -> None:
    raising_pass.error = error
    before = listing(tmp_path)
    got, _, err = cli(capsys, model, "--pass", "test-hostile-raises", "-o", tmp_path / "o.onnx",
                      "--report", tmp_path / "r.json")
    assert got == code and code in EXIT_CODES
    line = one_error(err)
    if code == EXIT_INTERNAL:
        assert "please report" in line
    # no model; the report is written on every outcome (by design), saying what failed
    assert listing(tmp_path) == sorted([*before, "r.json"])
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "error"
    debug_code, _, debug_err = cli(capsys, model, "--pass", "test-hostile-raises", "--debug")
    assert debug_code == code and "Traceback" in debug_err


class _SigTerm(Pass):
    in_place = False
    summary = "test only: SIGTERMs its own process while outputs are staged"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts the sleep
        raise AssertionError("SIGTERM did not interrupt")


def test_sigterm_exits_130_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    register_pass("test-hostile-sigterm")(_SigTerm)
    try:
        before = listing(tmp_path)
        code, _, err = cli(capsys, model, "--pass", "test-hostile-sigterm", "-o",
                           tmp_path / "o.onnx")
    finally:
        PASSES._items.pop("test-hostile-sigterm", None)
    assert code == EXIT_INTERRUPTED and "interrupted" in one_error(err)
    assert listing(tmp_path) == before
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler,
                                                None) or callable(signal.getsignal(signal.SIGTERM))


def test_sigint_in_a_subprocess_exits_130_without_traceback(tmp_path: Path) -> None:
    """Ctrl-C during work: exit 130, one line, no staging files left."""
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_net(), str(path))
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from compress_ir.core.passes import register_pass, Pass\n"
            "from compress_ir.cli import main\n"
            "class Slow(Pass):\n"
            "    summary = 'slow'\n    in_place = False\n"
            "    def run(self, model, ctx):\n"
            "        print('ready', flush=True); time.sleep(60)\n"
            "register_pass('test-slow')(Slow)\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), "--pass", "test-slow",
                             "-o", str(tmp_path / "o.onnx")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED
    one_error(err.decode())
    assert listing(tmp_path) == ["m.onnx"]


def test_missing_optional_package_names_the_extra() -> None:
    exc = ModuleNotFoundError("No module named 'tvm'", name="tvm")
    code, message = classify(exc)
    assert code == EXIT_USAGE and "compress-ir[tvm]" in message


def test_read_errors_are_not_reported_as_write_errors(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    code, _, err = cli(capsys, model, "--calib", tmp_path / "missing.npy",
                       "--pass", "channel-prune{criterion=act-mean}")
    assert code == EXIT_USAGE and "cannot write" not in one_error(err)


# --- 8: partial results ------------------------------------------------------------------


def test_failed_report_leaves_no_model_behind(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from compress_ir.core import safety

    real = safety.Commit.stage_file

    def failing(self: safety.Commit, dest: safety.Destination, data: bytes) -> None:
        if dest.label == "--report":
            raise OutputError("cannot write --report: disk full (simulated)")
        real(self, dest, data)

    monkeypatch.setattr(safety.Commit, "stage_file", failing)
    before = listing(tmp_path)
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "-o", tmp_path / "o.onnx",
                       "--report", tmp_path / "r.json")
    assert code == EXIT_USAGE
    one_error(err)
    assert listing(tmp_path) == before  # the model was staged with the report: not written


def test_unwritable_report_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "-o", tmp_path / "o.onnx",
                       "--report", tmp_path / "file" / "r.json")
    assert code == EXIT_USAGE
    one_error(err)
    assert not (tmp_path / "o.onnx").exists()


def test_replacing_an_artifact_keeps_other_files(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    art = _fake_artifact(tmp_path / "art", lib_bytes=_elf(62))
    (art / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, model, "--target", "x86", "--artifact", art)
    assert code == EXIT_USAGE and "notes.txt" in one_error(err)
    assert (art / "notes.txt").read_text() == "mine"


# --- 9: noise ----------------------------------------------------------------------------


class _Noisy(Pass):
    in_place = False
    summary = "test only: numpy warnings, then a multi-line error"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        np.log(np.zeros(2) - 1)
        np.ones(2) / np.zeros(2)
        raise UsageError("first line\n  second line\n")


def test_no_numpy_warnings_and_one_line(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    register_pass("test-hostile-noisy")(_Noisy)
    try:
        code, _, err = cli(capsys, model, "--pass", "test-hostile-noisy")
    finally:
        PASSES._items.pop("test-hostile-noisy", None)
    assert code == EXIT_USAGE
    assert "first line second line" in one_error(err)
    assert "RuntimeWarning" not in err


def test_one_line_collapses_and_bounds() -> None:
    assert one_line("a\n\n  b \n") == "a b"
    assert len(one_line("x" * 10_000)) <= 800


# --- 10: validation ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--pass", "channel-prune{scope=sensitivity,plot=x.onnx}"],
    ["--pass", "channel-prune{scope=sensitivity,tolerance=nan}"],
    ["--pass", "channel-prune{ratio=nan}"],
    ["--pass", "channel-prune", "--target", "x86", "--rpc", "host:99999"],
    ["--pass", "channel-prune", "--target", "x86", "--rpc", "host:0"],
    ["--pass", "channel-prune", "--target", "x86", "--rpc-timeout", "0"],
])
def test_option_ranges(capsys: pytest.CaptureFixture[str], model: Path, argv: list[str]) -> None:
    code, _, err = cli(capsys, model, *argv)
    assert code == EXIT_USAGE, err
    one_error(err)


def test_a_250_character_output_name_works(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / ("o" * 245 + ".onnx")
    report = tmp_path / ("r" * 245 + ".json")
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "-o", out, "--report", report)
    assert code == EXIT_OK, err
    onnx.checker.check_model(onnx.load(str(out)))
    assert json.loads(report.read_text())["schema"] == 1


# --- 11: the API raises only the library's errors ----------------------------------------


@pytest.mark.parametrize("kwargs,error", [
    ({"model": 123}, UsageError),
    ({"model": "DIR"}, ModelLoadError),
    ({"output": "DIR"}, OutputError),
    ({"output": 5}, UsageError),
    ({"tolerance": math.nan}, UsageError),
    ({"seed": -1}, UsageError),
    ({"seed": 1.5}, UsageError),
    ({"calib_samples": 0, "calibration": "random:2"}, UsageError),
    ({"pipeline": 42}, UsageError),
    ({"pipeline": "channel-prune{ratio=2}"}, UsageError),
])
def test_api_raises_library_errors(
    model: Path, tmp_path: Path, kwargs: dict, error: type[CompressIRError]
) -> None:
    args = {"model": model, "pipeline": "channel-prune"}
    args.update({k: (tmp_path if v == "DIR" else v) for k, v in kwargs.items()})
    with pytest.raises(error):
        compress(args.pop("model"), args.pop("pipeline"), **args)


def test_api_wraps_unexpected_exceptions(model: Path, raising_pass: type[_Raises]) -> None:
    raising_pass.error = ValueError("kaboom")
    with pytest.raises(CompressIRError) as info:
        compress(model, "test-hostile-raises")
    assert info.value.exit_code == EXIT_INTERNAL
    assert isinstance(info.value.__cause__, ValueError)


class _Wrong(Pass):
    in_place = False
    summary = "test only: a reference that differs"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        reference = model.to_proto()
        for init in reference.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(init), init.name))
        return PassResult(model.copy(), modified=True, reference=reference)


def test_api_numeric_mismatch_keeps_its_class(model: Path) -> None:
    register_pass("test-hostile-wrong")(_Wrong)
    try:
        with pytest.raises(NumericMismatchError, match="test-hostile-wrong") as info:
            compress(model, "test-hostile-wrong")
    finally:
        PASSES._items.pop("test-hostile-wrong", None)
    assert info.value.exit_code == EXIT_NUMERIC


def test_api_model_failing_the_checker_is_a_model_error(tmp_path: Path) -> None:
    proto = tiny_net()
    proto.graph.node[0].input[1] = "conv2.w"  # wrong weight shape for conv1
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError):
        compress(path, "channel-prune")



# --- README ------------------------------------------------------------------------------


def test_readme_states_the_codes_and_the_limits() -> None:
    """The promises section lists every exit code and the limits the code enforces."""
    from compress_ir.core import limits

    text = (ROOT / "README.md").read_text().split("### Promises, exit codes and limits")[1]
    section = text.split("\n## ", 1)[0]
    for code in EXIT_CODES:
        assert f"| {code} |" in section, code
    assert f"{limits.MAX_TENSOR_BYTES // limits.GIB} GiB" in section
    assert f"{limits.MAX_FOLD_BYTES // limits.MIB} MiB" in section
    assert f"{limits.MAX_CALIB_BYTES // limits.GIB} GiB" in section
    assert f"{limits.MAX_IMAGE_PIXELS // limits.MIB} Mpx" in section
    assert f"{limits.DEFAULT_RPC_TIMEOUT:g} s" in section


def test_run_output_onto_the_artifact_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    art = _fake_artifact(tmp_path / "art", lib_bytes=_elf(62))
    for target in (art / "meta.json", art / "model.so", art / "." / "meta.json"):
        before = target.read_bytes()
        code, _, err = cli(capsys, "run", art, "--output", target)
        assert code == EXIT_USAGE and "refusing to overwrite" in one_error(err)
        assert target.read_bytes() == before


def test_sigterm_during_a_tvm_build_cleans_up(tmp_path: Path) -> None:
    """SIGTERM mid-compile: exit 130, no staging folder, no TVM temp dir left behind."""
    pytest.importorskip("tvm")
    # a model whose compile lasts long enough to be hit (tiny_net's ends within a second)
    model = tmp_path / "m.onnx"
    shutil.copyfile(ROOT / "tools" / "models" / "mnist_resnet.onnx", model)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen([sys.executable, "-m", "compress_ir.cli", str(model), "--target",
                             "x86", "--artifact", str(tmp_path / "art"), "--quiet"],
                            stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(tmp_path.glob(".cir-*")):
        time.sleep(0.05)  # the staging folder exists once the build has started
    assert proc.poll() is None, "the build finished before it could be interrupted"
    time.sleep(1.0)  # inside TVM's compile: the ResNet takes several seconds there
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    # TVM's C++ destructors may log a warning while the interrupted build unwinds; our
    # line is the last one and there is no traceback
    text = err.decode()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == "compress-ir: error: interrupted"
    assert [p for p in listing(tmp_path) if not p.startswith("tmp")] == ["m.onnx"]
    # `.ses` (a 51-byte id file) is written into TMPDIR by a dependency on every run,
    # successful ones too; TVM's and our temp folders must all be gone
    assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []


def test_onnxruntime_failure_is_one_line_without_its_own_log(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A model the checker accepts but onnxruntime cannot run: the channel dim is
    symbolic, check inputs give it 1, conv1 wants 3."""
    proto = tiny_net()
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    code = main([str(path), "--pass", "channel-prune"])
    _, err = capfd.readouterr()
    assert code in (EXIT_USAGE, EXIT_MODEL)  # the check inputs' fault or the model's
    assert "cannot run" in one_error(err)
    assert "\x1b[" not in err  # no coloured onnxruntime log line


def test_plot_is_committed_with_the_other_outputs(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path,
    raising_pass: type[_Raises]
) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sens.png"
    prune = f"channel-prune{{scope=sensitivity,plot={plot}}}"
    raising_pass.error = RuntimeError("a later pass fails")
    code, _, err = cli(capsys, model, "--calib", "random:4", "--pass",
                       f"{prune},test-hostile-raises")
    assert code == EXIT_INTERNAL
    one_error(err)
    assert listing(tmp_path) == ["m.onnx"]  # no plot, no temp file
    report = tmp_path / "r.json"
    code, _, err = cli(capsys, model, "--calib", "random:4", "--pass", prune,
                       "--report", report)
    assert code == EXIT_OK, err
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(report.read_text())["passes"][0]["spec"].endswith(f"plot={plot}}}")
    code, _, err = cli(capsys, model, "--calib", "random:4", "--pass", prune,
                       "--report", plot)
    assert code == EXIT_USAGE and "same file" in one_error(err)


def test_an_output_under_another_file_output_is_refused(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    """Found by the fuzz suite: -o X --report X/r.json used to leave a temp file."""
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "-o", tmp_path / "x",
                       "--report", tmp_path / "x" / "r.json")
    assert code == EXIT_USAGE and "written as a file" in one_error(err)
    assert listing(tmp_path) == ["m.onnx"]


def test_library_symlinked_out_of_the_artifact_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "evil.so").write_bytes(_elf(62))
    art = _fake_artifact(tmp_path / "art")
    (art / "model.so").symlink_to(tmp_path / "evil.so")
    code, _, err = cli(capsys, "run", art)
    assert code == EXIT_MODEL and "outside the artifact folder" in one_error(err)
