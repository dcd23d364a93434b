"""A device farm on localhost (tools/rpc_farm.py): tracker + 2 servers under one key.

Runs, benchmarks and tunes through the tracker the way a farm of boards is used, and
checks the failures a farm has: a key it does not know, all boards busy, a board dying in
the middle of a run, tuning without a tracker. One farm per module (each server imports
TVM: ~10-30 s to start on a small machine). The server logs are read to see which
boards served sessions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from cli_helpers import cli, one_error
from onnx import TensorProto, helper, numpy_helper

from compress_ir.core.errors import EXIT_GATE, EXIT_USAGE, UsageError

pytest.importorskip("tvm")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")

ROOT = Path(__file__).resolve().parents[1]
TINY_CNN = ROOT / "tools" / "models" / "tiny_cnn.onnx"
KEY = "x86"


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _farm_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rpc_farm", ROOT / "tools" / "rpc_farm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def farm():  # noqa: ANN201 - the tools module's Farm
    with _farm_module().Farm(servers=2, key=KEY, threads=1) as f:
        yield f


def _sessions(farm) -> dict[int, int]:  # noqa: ANN001
    """Sessions each live server has served so far (from its log), by port."""
    return {p.port: p.log.read_text(errors="replace").count("connected from")
            for p in farm.servers if p.alive()}


def _server_port(where: str) -> int:
    found = re.search(r"server 127\.0\.0\.1:(\d+)", where)
    assert found, where
    return int(found.group(1))


@pytest.fixture(scope="module")
def pruned_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN, pruned, built for x86 (not verified: the tests check outputs)."""
    from compress_ir.api import compress
    from compress_ir.backend import BuildOptions, build

    out = tmp_path_factory.mktemp("rpc")
    pruned = compress(str(TINY_CNN), "channel-prune{ratio=0.5}").model
    onnx.save(pruned, out / "pruned.onnx")
    build(pruned, "x86", out / "pruned.x86", BuildOptions(verify=False))
    return out / "pruned.x86"


def test_farm_has_two_servers_under_one_key(farm) -> None:  # noqa: ANN001
    summary = farm.summary()
    assert summary["queue_info"][KEY]["free"] == 2, summary
    ports = sorted(s["addr"][1] for s in summary["server_info"])
    assert ports == sorted(p.port for p in farm.servers), summary
    assert farm.address() == f"127.0.0.1:{farm.tracker.port}:{KEY}"


def test_run_through_the_tracker_matches_onnxruntime(farm, pruned_artifact: Path) -> None:  # noqa: ANN001
    from compress_ir.backend import run_artifact

    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = run_artifact(pruned_artifact, {"input": x}, rpc=farm.address())
    want = ort_outputs(onnx.load(pruned_artifact.parent / "pruned.onnx"), {"input": x})
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_benchmark_times_original_and_compressed_on_the_same_device(
    farm, capsys: pytest.CaptureFixture[str], tmp_path: Path  # noqa: ANN001
) -> None:
    report = tmp_path / "r.json"
    args = [TINY_CNN, "--pass", "channel-prune{ratio=0.5}", "-o", tmp_path / "p.onnx",
            "--target", "x86", "--artifact", tmp_path / "p.x86", "--benchmark",
            "--repeat", "5", "--rpc", farm.address(), "--report", report, "-q"]
    code, _, err = cli(capsys, *args, "--gate", "latency <= 1000")
    assert code == 0, err
    doc = json.loads(report.read_text())
    bench = doc["target"]["benchmark"]
    tvm, orig = bench["tvm"], bench["tvm_original"]
    # one session: the same server of the farm timed both, interleaved
    assert tvm["where"] == orig["where"] and farm.address() in tvm["where"], bench
    assert _server_port(tvm["where"]) in [p.port for p in farm.servers]
    assert tvm["repeat"] == orig["repeat"] == 5
    assert bench["ratios"]["tvm_vs_tvm_original"] == pytest.approx(
        tvm["median_ms"] / orig["median_ms"], rel=1e-3)
    # no ratio across machines (onnxruntime ran here, TVM on the board)
    assert bench["ratios"]["tvm_vs_ort_original"] is None
    assert bench["onnxruntime_original"]["where"] == "local"
    gate, = doc["gates"]
    assert gate["metric"] == "latency" and gate["value"] == bench["ratios"]["tvm_vs_tvm_original"]
    assert doc["target"]["verify"]["ran"] and "rpc" in doc["target"]["verify"]["where"]
    # the same ratio fails a gate it exceeds (exit 4), the report says so
    code, _, err = cli(capsys, *args[:-1], "--gate", "latency <= 0.000001")
    assert code == EXIT_GATE, err
    assert "latency" in err and json.loads(report.read_text())["status"] == "gate-failed"


def test_unknown_key_is_one_line(
    farm, capsys: pytest.CaptureFixture[str], pruned_artifact: Path  # noqa: ANN001
) -> None:
    code, _, err = cli(capsys, "run", pruned_artifact, "--rpc",
                       f"{farm.tracker_address}:nokey", "--rpc-timeout", "20")
    assert code == EXIT_USAGE
    assert f"has no device 'nokey' (known: {KEY})" in one_error(err)


def test_no_free_device_times_out_with_a_reason(
    farm, capsys: pytest.CaptureFixture[str], pruned_artifact: Path  # noqa: ANN001
) -> None:
    from compress_ir.backend.runner import open_remote

    held = [open_remote(farm.address(), 30) for _ in range(farm.free(KEY))]
    try:
        assert farm.free(KEY) == 0
        t0 = time.monotonic()
        code, _, err = cli(capsys, "run", pruned_artifact, "--rpc", farm.address(),
                           "--rpc-timeout", "2")
        assert time.monotonic() - t0 < 30
    finally:
        del held
    line = one_error(err)
    assert code == EXIT_USAGE
    assert f"no free '{KEY}' device within 2 s (all 2 busy" in line, line


def test_tuning_over_rpc_needs_a_tracker(tmp_path: Path) -> None:
    from compress_ir.backend import BuildOptions

    with pytest.raises(UsageError, match="tuning over RPC needs a tracker"):
        BuildOptions(tune_trials=2, rpc="127.0.0.1:9090")
    from compress_ir.backend.schedule.remote import remote_tuning

    with pytest.raises(UsageError, match="cannot reach RPC tracker 127.0.0.1:1"):
        remote_tuning("127.0.0.1:1:x86", 5)


def _dense_relu() -> onnx.ModelProto:
    """One MetaSchedule task (MatMul + ReLU fused), the smallest model worth tuning."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((256, 128)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "dense_relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 128])],
                              [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_tuning_through_the_tracker_uses_every_board(farm, tmp_path: Path) -> None:  # noqa: ANN001
    """MetaSchedule's RPCRunner measures candidates and the default on the farm's servers.

    Slow (MetaSchedule's own start-up dominates: ~1 min on 2 idle cores), like the local
    tuning tests in test_schedule.py.
    """
    pytest.importorskip("xgboost", reason="MetaSchedule needs xgboost-cpu installed")
    from compress_ir.backend import BuildOptions, build
    from compress_ir.backend.artifact import load_artifact

    boards = farm.free(KEY)
    before = _sessions(farm)
    model = _dense_relu()
    art = build(model, "x86", tmp_path / "tuned.x86",
                BuildOptions(tune_trials=2, rpc=farm.address(), verify=False))
    after = _sessions(farm)
    meta = load_artifact(art.path).meta
    stats = meta["schedule"]
    assert meta["tuning_rpc"] == {"rpc": farm.address(), "servers": boards,
                                  "session_timeout_s": 120.0}
    assert stats["tuned_tasks"] == 1 and stats["measured_candidates"] >= 1, stats
    assert stats["measured_defaults"] == 1 and not stats["default_errors"], stats
    # real times on both sides (a failed candidate would be recorded at 1e10 s)
    (choice,) = stats["choices"].values()
    assert 0 < choice["tuned_us"] < 1e6 and 0 < choice["default_us"] < 1e6, choice
    # every candidate and the default were measured in sessions on the farm's servers,
    # both servers took part (2 candidates go out at once, one worker per board)
    served = {port: after[port] - before.get(port, 0) for port in after}
    assert sum(served.values()) >= stats["measured_candidates"] + 1, served
    assert all(n >= 1 for n in served.values()), served
    from compress_ir.backend import run_artifact

    x = np.random.default_rng(6).standard_normal((8, 256)).astype(np.float32)
    got = run_artifact(art, {"x": x})
    want = ort_outputs(model, {"x": x})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-4)


def test_a_server_dying_mid_run_is_one_line(farm, pruned_artifact: Path) -> None:  # noqa: ANN001
    """Last in this module: it kills one of the farm's servers."""
    from compress_ir.backend.artifact import load_artifact
    from compress_ir.backend.runner import Session

    art = load_artifact(pruned_artifact)
    x = {"input": np.zeros((1, 3, 32, 32), np.float32)}
    session = Session(art, farm.address(), 20)
    try:
        session.run(x)  # it works before
        port = _server_port(session.where)
        index = next(i for i, p in enumerate(farm.servers) if p.port == port)
        farm.kill_server(index)
        t0 = time.monotonic()
        with pytest.raises(UsageError) as info:
            session.run(x)
        assert time.monotonic() - t0 < 30
    finally:
        session.close()
    message = str(info.value)
    assert message.startswith(f"RPC {farm.address()}: lost the device during "), message
    assert f"server 127.0.0.1:{port}" in message and "\n" not in message, message


class _Record:
    def __init__(self, secs: float) -> None:
        self.run_secs = [secs]


class _Db:
    """The three database calls `measured_tasks` makes, over {workload: best seconds}."""

    def __init__(self, best: dict[str, float]) -> None:
        self.best = best

    def has_workload(self, mod: str) -> bool:
        return mod in self.best

    def commit_workload(self, mod: str) -> str:
        return mod

    def get_top_k(self, workload: str, k: int) -> list[_Record]:
        return [_Record(self.best[workload])][:k]


def test_failed_candidates_do_not_count_as_measured() -> None:
    pytest.importorskip("tvm.s_tir.meta_schedule")
    from compress_ir.backend.schedule.remote import measured_tasks

    # MetaSchedule commits a candidate that failed to build or run with 1e10 s
    assert measured_tasks(_Db({"a": 1e10, "b": 1e10}), ["a", "b", "c"]) == 0
    assert measured_tasks(_Db({"a": 1e10, "b": 2e-5}), ["a", "b", "c"]) == 1


@pytest.mark.skipif(not os.environ.get("COMPRESS_IR_ARM_ROOTFS"),
                    reason="opt-in: COMPRESS_IR_ARM_ROOTFS names the rootfs of "
                           "tools/arm/setup_rootfs.sh (qemu servers take ~1 min to start)")
def test_arm_server_under_qemu_runs_an_arm_artifact(tmp_path: Path) -> None:
    """A qemu-aarch64 server of the farm, through the tracker: the arm build is checked there."""
    from compress_ir.backend import BuildOptions, build, run_artifact

    pruned = onnx.load(TINY_CNN)
    with _farm_module().Farm(servers=0, arm_servers=1,
                             rootfs=os.environ["COMPRESS_IR_ARM_ROOTFS"]) as arm:
        address = arm.address(arm.arm_key)
        art = build(pruned, "arm", tmp_path / "cnn.arm", BuildOptions(rpc=address))
        assert art.meta["verify"]["ran"] and art.meta["verify"]["ok"], art.meta["verify"]
        x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
        got = run_artifact(art, {"input": x}, rpc=address)
    want = ort_outputs(pruned, {"input": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
