"""CI gates and the report as a CI artifact: status on every outcome, exit 4 naming the gate,
--require-verified, --eval feeding gates, provenance, fidelity vs the original, `--report -`."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import cli
from oracle import tiny_net

from compress_ir.core.errors import EXIT_MODEL, EXIT_OK, EXIT_USAGE, UsageError
from compress_ir.gates import EXIT_GATE, evaluate_gates, gate_metrics, parse_gate


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_net(), str(path))
    return path




def test_gate_parser_is_strict_and_never_evaluates() -> None:
    gate = parse_gate(" macs<=0.6 ")
    assert (gate.metric, gate.op, gate.bound) == ("macs", "<=", 0.6)
    assert parse_gate("eval.top-1 >= 9.5e-1").bound == 0.95
    for bad in ("macs", "macs <= ", "macs =< 0.5", "__import__('os') < 1", "macs <= 0.5 or 1",
                "macs <= abc", "1 <= macs"):
        with pytest.raises(UsageError, match="METRIC OP NUMBER"):
            parse_gate(bad)


def test_gate_metrics_come_from_the_report() -> None:
    report = {"before": {"macs": 100, "params": 10, "bytes": 50},
              "after": {"macs": 40, "params": 5, "bytes": 30},
              "ratios": {"macs": 0.4, "params": 0.5, "bytes": 0.6},
              "fidelity": {"cosine": 0.99, "rel_error": 0.1},
              "target": {"verify": {"ran": False, "reason": "cross-compiled"},
                         "benchmark": {"ratios": {"tvm_vs_ort_original": 0.7,
                                                  "ort_compressed_vs_original": 0.8}}},
              "eval": {"accuracy": 0.97}}
    m = gate_metrics(report)
    assert (m["macs"], m["macs_before"], m["params_after"]) == (0.4, 100, 5)
    assert (m["fidelity"], m["rel_error"], m["latency"], m["latency_ort"]) == (0.99, 0.1, 0.7, 0.8)
    assert (m["accuracy"], m["eval.accuracy"], m["verified"]) == (0.97, 0.97, 0.0)
    rows = evaluate_gates(["macs <= 0.4", "macs < 0.4", "latency_tvm_vs_ort <= 1"], report,
                          require_verified=True)
    assert [r["ok"] for r in rows] == [True, False, False, False]
    assert "not measured" in rows[2]["reason"] and "cross-compiled" in rows[3]["reason"]


def test_gate_failure_exits_4_names_the_gate_and_writes_everything(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    code, stdout, stderr = cli(capsys, model, "--pass", "channel-prune{ratio=0.5}", "-o", out,
                               "--report", report, "--gate", "macs <= 0.9",
                               "--gate", "params <= 0.01")
    assert code == EXIT_GATE
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compress-ir: error: gate failed: "), stderr
    assert "'params <= 0.01'" in lines[0] and "macs <= 0.9" not in lines[0]
    assert "macs" in stdout  # the run completed: its table is still shown
    data = json.loads(report.read_text())
    assert data["status"] == "gate-failed" and data["error"] == lines[0][len("compress-ir: "
                                                                            "error: "):]
    assert [(g["gate"], g["ok"]) for g in data["gates"]] == [
        ("macs <= 0.9", True), ("params <= 0.01", False)]
    assert data["gates"][1]["value"] == data["ratios"]["params"]
    assert out.exists()  # the model is written (gates judge it; --eval reads it)


def test_bad_gate_is_a_usage_error_before_the_run(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    report = tmp_path / "r.json"
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--gate", "macs ~ 1",
                       "--report", report)
    assert code == EXIT_USAGE and "gate 'macs ~ 1'" in err
    assert json.loads(report.read_text())["status"] == "error"


def test_report_status_and_provenance_when_ok(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    code, _, err = cli(capsys, model, "--pass", "channel-prune{ratio=0.5}", "-o", out,
                       "--report", report, "--quiet")
    assert code == EXIT_OK, err
    data = json.loads(report.read_text())
    assert data["status"] == "ok" and data["error"] is None
    assert data["sha256"]["input"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert data["sha256"]["output"] == hashlib.sha256(out.read_bytes()).hexdigest()
    versions = data["versions"]
    assert versions["onnx"] == onnx.__version__ and versions["onnxruntime"] == ort.__version__
    assert versions["numpy"] == np.__version__ and versions["compress-ir"]
    (entry,) = data["passes"]
    assert entry["seconds"] > 0 and entry["peak_rss_mb"] > 0 and "peak_rss_growth_mb" in entry
    layers = {row["node"]: row for row in data["layers"]}
    assert layers["conv1"]["params_before"] == 8 * 3 * 3 * 3 + 8
    assert layers["conv1"]["params_after"] == 4 * 3 * 3 * 3 + 4  # ratio 0.5 of 8 channels
    assert layers["conv2"]["macs_before"] == 4 * 8 * 8 * 8 * 3 * 3


def test_fidelity_is_measured_against_the_original(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    calib = tmp_path / "x.npy"
    x = np.random.default_rng(7).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.save(calib, x)
    code, _, err = cli(capsys, model, "--pass", "channel-prune{ratio=0.5}", "-o", out,
                       "--calib", calib, "--report", report, "--quiet")
    assert code == EXIT_OK, err
    fid = json.loads(report.read_text())["fidelity"]
    assert fid["against"] == "original" and "6 samples" in fid["inputs"]
    # independently: both models in onnxruntime on the same samples (batch 1 model)
    sess_a = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    sess_b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    cos, rel = [], []
    for sample in x:
        a = sess_a.run(None, {"x": sample[None]})[0].ravel().astype(np.float64)
        b = sess_b.run(None, {"x": sample[None]})[0].ravel().astype(np.float64)
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        rel.append(np.abs(a - b).max() / np.abs(a).max())
    assert fid["cosine"] == pytest.approx(np.mean(cos), abs=1e-5)
    assert fid["cosine_min"] == pytest.approx(min(cos), abs=1e-5)
    assert fid["rel_error"] == pytest.approx(max(rel), rel=1e-4)
    assert 0 < fid["cosine"] < 0.999  # pruning half the channels changes the outputs


EVAL_HOOK = '''
import onnx

def metrics(path):
    model = onnx.load(path)
    return {"nodes": len(model.graph.node), "accuracy": 0.93}

def broken(path):
    raise RuntimeError("dataset missing")

def not_numbers(path):
    return {"accuracy": "high"}
'''


def test_eval_hook_feeds_gates(capsys: pytest.CaptureFixture[str], model: Path,
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_eval.py").write_text(EVAL_HOOK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_eval", raising=False)
    report = tmp_path / "r.json"
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--eval", "my_eval:metrics",
                       "--gate", "accuracy >= 0.9", "--gate", "eval.nodes == 3",
                       "--report", report, "--quiet")
    assert code == EXIT_OK, err
    data = json.loads(report.read_text())
    assert data["eval"] == {"nodes": 3.0, "accuracy": 0.93}
    assert all(g["ok"] for g in data["gates"])
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--eval", "my_eval:metrics",
                       "--gate", "accuracy >= 0.95", "--quiet")
    assert code == EXIT_GATE and "'accuracy >= 0.95' (accuracy = 0.93)" in err
    for spec, fragment in (("my_eval:broken", "raised RuntimeError: dataset missing"),
                           ("my_eval:not_numbers", "dict of metric name -> number"),
                           ("my_eval:nope", "no function 'nope'"),
                           ("no_such_module:f", "cannot import"),
                           ("my_eval", "expected module:function")):
        code, _, err = cli(capsys, model, "--pass", "channel-prune", "--eval", spec, "--quiet")
        assert code == EXIT_USAGE and fragment in err, (spec, err)
        assert len(err.strip().splitlines()) == 1


def test_require_verified_without_a_build_fails(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    code, _, err = cli(capsys, model, "--pass", "channel-prune", "--require-verified", "-q")
    assert code == EXIT_GATE and "require-verified" in err and "no --target build" in err


def test_error_status_for_an_invalid_model(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    bad, report = tmp_path / "bad.onnx", tmp_path / "r.json"
    bad.write_bytes(b"not a model")
    code, _, err = cli(capsys, bad, "--pass", "channel-prune", "--report", report)
    assert code == EXIT_MODEL
    data = json.loads(report.read_text())
    assert data["status"] == "error" and str(bad) in data["error"]
    assert data["sha256"]["input"] == hashlib.sha256(b"not a model").hexdigest()
    assert data["versions"]["onnx"] == onnx.__version__


def test_report_dash_prints_only_the_json(capsys: pytest.CaptureFixture[str], model: Path
                                          ) -> None:
    code, stdout, stderr = cli(capsys, model, "--pass", "channel-prune", "--report", "-")
    assert code == EXIT_OK, stderr
    data = json.loads(stdout)  # the whole of stdout is one JSON document
    assert data["status"] == "ok" and data["pipeline"] == "channel-prune"
    assert stderr == ""


def test_report_dash_on_failure_is_still_json(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00")
    code, stdout, stderr = cli(capsys, bad, "--pass", "channel-prune", "--report", "-")
    assert code == EXIT_MODEL and stderr.startswith("compress-ir: error: ")
    assert json.loads(stdout)["status"] == "error"


def test_api_gate_failure_carries_the_result(model: Path) -> None:
    from compress_ir.api import CompressOptions, compress
    from compress_ir.gates import GateFailedError

    with pytest.raises(GateFailedError, match="'macs <= 0.1'") as info:
        compress(str(model), CompressOptions(passes=["channel-prune"], gates=["macs <= 0.1"]))
    result = info.value.result
    assert result.report["status"] == "gate-failed"
    assert result.model.graph.node  # the compressed model is there for the caller
    assert info.value.exit_code == EXIT_GATE == 4


def test_benchmark_statistics_and_interleaving() -> None:
    from compress_ir.backend.benchmark import interleaved, summarize

    stats = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert (stats["median_ms"], stats["p90_ms"], stats["min_ms"], stats["mean_ms"]) == (
        5.5, 9.0, 1.0, 5.5)
    assert stats["cv"] == pytest.approx(3.02765 / 5.5, abs=1e-4)
    assert stats["tail"] == pytest.approx(9.0 / 5.5 - 1, abs=1e-4)
    calls: list[str] = []
    timers = {k: (lambda k=k: calls.append(k) or 1.0) for k in ("a", "b", "c")}
    samples = interleaved(timers, repeat=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_latency_gates_carry_benchmark_warnings() -> None:
    report = {"ratios": {}, "before": {}, "after": {},
              "target": {"verify": {"ran": True, "ok": True},
                         "benchmark": {"ratios": {"tvm_vs_ort_original": 0.5},
                                       "warnings": ["tvm: CV 30% > 10%"]}}}
    (row,) = evaluate_gates(["latency <= 0.6"], report)
    assert row["ok"] and "CV 30%" in row["warning"]


def test_fidelity_is_per_sample_on_a_dynamic_batch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = Path(__file__).resolve().parents[1] / "tools" / "models" / "mnist_resnet.onnx"
    x = np.random.default_rng(3).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    code, _, err = cli(capsys, model, "--pass", "channel-prune{ratio=0.5}", "-o", out,
                       "--calib", tmp_path / "x.npy", "--report", report, "--quiet")
    assert code == EXIT_OK, err
    fid = json.loads(report.read_text())["fidelity"]
    name = ort.InferenceSession(str(model)).get_inputs()[0].name
    a = ort.InferenceSession(str(model)).run(None, {name: x})[0].astype(np.float64)
    b = ort.InferenceSession(str(out)).run(None, {name: x})[0].astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert fid["cosine"] == pytest.approx(cos.mean(), abs=1e-5)
    assert fid["cosine_min"] == pytest.approx(cos.min(), abs=1e-5)
