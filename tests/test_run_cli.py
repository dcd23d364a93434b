"""`compress-ir MODEL --target T` (compile, verify, benchmark, report) and
`compress-ir run ARTIFACT` (inputs, outputs, exit codes), in-process through main()."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_backend_build import tiny_model

from compress_ir.cli import main
from compress_ir.core.errors import EXIT_MODEL, EXIT_NUMERIC, EXIT_OK, EXIT_USAGE
from compress_ir.targets import resolve_target

pytest.importorskip("tvm")

SHAPE = (1, 3, 8, 8)


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compress-ir: error: "), stderr
    return lines[0]


def ort_run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"x": x}), strict=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One CLI run: prune, write the model, compile for x86, verify, benchmark, report."""
    root = tmp_path_factory.mktemp("cli")
    model = root / "tiny.onnx"
    onnx.save_model(tiny_model(channels=12), str(model))
    out = root / "small.onnx"
    report = root / "r.json"
    code = main([str(model), "--pass", "channel-prune{ratio=0.5}", "-o", str(out), "--target",
                 "x86", "--benchmark", "--repeat", "3", "--report", str(report), "--quiet"])
    assert code == EXIT_OK
    return {"root": root, "model": model, "out": out, "report": report,
            "artifact": root / "small.x86"}


def test_report_target_section(built: dict[str, Path]) -> None:
    report = json.loads(built["report"].read_text())
    section = report["target"]
    assert section["spec"]["name"] == "x86" and section["spec"]["family"] == "x86"
    assert Path(section["artifact"]) == built["artifact"]  # default: next to -o, .<target>
    assert section["artifact_bytes"] > section["library_bytes"] > 0
    assert section["build"]["seconds"]["total"] > 0
    assert section["verify"]["ran"] and section["verify"]["ok"]
    bench = section["benchmark"]
    for key in ("onnxruntime_original", "onnxruntime_compressed", "tvm"):
        assert 0 < bench[key]["min_ms"] <= bench[key]["median_ms"], key
        assert bench[key]["repeat"] == 3
    for key, value in bench["ratios"].items():
        assert value is not None and value > 0, key
    assert bench["ratios"]["tvm_vs_ort_compressed"] == pytest.approx(
        bench["tvm"]["median_ms"] / bench["onnxruntime_compressed"]["median_ms"], rel=1e-3)
    # channel-prune's round-to came from the target (x86 host vector width)
    stats = report["passes"][0]["stats"]
    assert stats["round_to"] == resolve_target("x86").round_to


def test_run_with_input_file_matches_onnxruntime(built: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    want = ort_run(built["out"], x)
    for form in (str(tmp_path / "x.npy"), f"x={tmp_path / 'x.npy'}"):
        result = tmp_path / "y.npz"
        code, out, err = cli(capsys, "run", built["artifact"], "--input", form,
                             "--output", result)
        assert code == EXIT_OK, err
        assert "y: [1, 5] float32" in out
        with np.load(result) as got:
            assert sorted(got.files) == sorted(want)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
        result.unlink()
    np.savez(tmp_path / "in.npz", x=x)
    code, out, _ = cli(capsys, "run", built["artifact"], "--inputs", tmp_path / "in.npz",
                       "--repeat", "2")
    assert code == EXIT_OK and "latency: median" in out


def test_run_random_inputs(built: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", built["artifact"])
    assert code == EXIT_OK
    assert "y: [1, 5] float32" in out and "feat: [1, 12, 1, 1] float32" in out  # output: kept
    step = resolve_target("x86").round_to  # conv1: 12 channels, half kept, rounded up
    w1 = {i.name: i for i in onnx.load(str(built["out"])).graph.initializer}["w1"]
    assert w1.dims[0] == min(12, -(-6 // step) * step)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda d: ["--input", _npy(d, np.zeros((2, 3, 8, 8), np.float32))], ["'x'", "shape"]),
        (lambda d: ["--input", _npy(d, np.zeros(SHAPE, np.float64))], ["'x'", "dtype"]),
        (lambda d: ["--inputs", _npz(d, z=np.zeros(SHAPE, np.float32))], ["'z'"]),
        (lambda d: ["--input", str(d / "missing.npy")], ["'x'", "missing.npy"]),
        (lambda d: ["--input", _npy(d, np.zeros(SHAPE, np.float32)), "--input",
                    _npy(d, np.zeros(SHAPE, np.float32))], ["already has a value"]),
        (lambda d: ["--rpc", "nowhere"], ["host:port"]),
        (lambda d: ["--repeat", "-1"], ["--repeat"]),
    ],
)
def test_run_usage_errors(built: dict[str, Path], tmp_path: Path, make: object,
                          fragments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", built["artifact"], *make(tmp_path))
    assert code == EXIT_USAGE, err
    line = one_line(err)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


def _npy(folder: Path, arr: np.ndarray) -> str:
    path = folder / f"a{len(list(folder.iterdir()))}.npy"
    np.save(path, arr)
    return str(path)


def _npz(folder: Path, **arrays: np.ndarray) -> str:
    path = folder / "a.npz"
    np.savez(path, **arrays)
    return str(path)


def test_run_bad_artifacts(built: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "run", tmp_path)
    assert code == EXIT_USAGE and "meta.json" in one_line(err)
    broken = tmp_path / "broken"
    shutil.copytree(built["artifact"], broken)
    (broken / "meta.json").write_text("{not json")
    code, _, err = cli(capsys, "run", broken)
    assert code == EXIT_MODEL and "meta.json" in one_line(err)
    (broken / "meta.json").write_text(json.dumps({"format": "compress-ir-artifact", "schema": 9}))
    code, _, err = cli(capsys, "run", broken)
    assert code == EXIT_MODEL and "schema 9" in one_line(err)


def test_target_without_pass_compiles_as_is(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "net.onnx"
    onnx.save_model(tiny_model(), str(model))
    code, out, err = cli(capsys, model, "--target", "x86:avx2")
    assert code == EXIT_OK, err
    artifact = tmp_path / "net.x86-avx2"  # default: next to the input
    meta = json.loads((artifact / "meta.json").read_text())
    assert meta["target"] == "x86:avx2" and meta["verify"]["ok"]
    assert "target x86:avx2" in out and "verify vs onnxruntime" in out
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = cli(capsys, "run", artifact, "--input", tmp_path / "x.npy", "--output",
                       tmp_path / "y.npz")
    assert code == EXIT_OK, err
    with np.load(tmp_path / "y.npz") as got:
        np.testing.assert_allclose(got["y"], ort_run(model, x)["y"], rtol=1e-4, atol=1e-4)


def test_mismatch_exits_1_and_leaves_no_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from compress_ir.backend import schedule
    from compress_ir.backend.build import fixed_input_specs, import_relax

    other = tiny_model(seed=9)
    real = schedule.compile_relax
    monkeypatch.setattr(schedule, "compile_relax", lambda mod, target, *a, **k: real(
        import_relax(other, fixed_input_specs(other, 1), "other"), target, *a, **k))
    model = tmp_path / "net.onnx"
    onnx.save_model(tiny_model(), str(model))
    code, out, err = cli(capsys, model, "--target", "x86", "--artifact", tmp_path / "art",
                         "-o", tmp_path / "small.onnx", "--report", tmp_path / "r.json")
    assert code == EXIT_NUMERIC and "differs from onnxruntime" in one_line(err)
    # no model, no artifact; the report (status check-failed) is written for CI
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "r.json"]
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "check-failed"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["MODEL", "--target", "arm:rpi9"], ["'arm:rpi9'", "arm:rpi4", "cuda:sm_90"]),
        (["MODEL", "--pass", "channel-prune", "--benchmark"], ["--benchmark needs --target"]),
        (["MODEL", "--pass", "channel-prune", "--artifact", "d"], ["--artifact needs --target"]),
        (["MODEL", "--target", "x86", "--batch", "0"], ["--batch"]),
        (["MODEL", "--target", "x86", "--tune-trials", "-3"], ["tune-trials"]),
        (["MODEL", "--target", '{"kind": "llvm", "mcpu": "nonsense9"}'], ["TVM rejects"]),
        (["MODEL"], ["at least one --pass", "--target"]),
    ],
)
def test_compile_usage_errors(tmp_path: Path, argv: list[str], fragments: list[str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "net.onnx"
    onnx.save_model(tiny_model(), str(model))
    code, out, err = cli(capsys, *[str(model) if a == "MODEL" else a for a in argv])
    assert code == EXIT_USAGE, err
    line = err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_list_targets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--list-targets")
    assert code == EXIT_OK
    for name in ("arm", "arm:rpi4", "arm:a76", "x86", "x86:avx2", "x86:avx512", "cuda:sm_75",
                 "cuda:sm_90"):
        assert f"  {name} " in out
