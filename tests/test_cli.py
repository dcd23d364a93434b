"""The `compress-ir` command-line contract: exit codes, one-line errors without a
traceback, the report file, and help generated from the pass registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from cli_helpers import cli, one_error
from onnx import numpy_helper
from oracle import tiny_net

from compress_ir import __version__
from compress_ir.cli import passes_help
from compress_ir.core.errors import (
    EXIT_MODEL,
    EXIT_NUMERIC,
    EXIT_OK,
    EXIT_USAGE,
    ModelLoadError,
)
from compress_ir.core.model import Model
from compress_ir.core.passes import PASSES, Pass, PassContext, PassResult, register_pass

ROOT = Path(__file__).resolve().parents[1]
REPORT_KEYS = {"schema", "input", "output", "pipeline", "before", "after", "ratios", "passes",
               "checks"}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_net(), str(path))
    return path


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    data = tiny_net().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def unknown_op(tmp_path: Path) -> Path:
    proto = tiny_net()
    proto.graph.node[1].op_type = "Frobnicate"
    path = tmp_path / "unknown_op.onnx"
    onnx.save_model(proto, str(path))
    return path






# --- 0: success ------------------------------------------------------------------------


def test_success_writes_model_and_report(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "out" / "small.onnx", tmp_path / "r.json"
    code, stdout, stderr = cli(capsys, model, "--pass", "channel-prune{ratio=0.5}",
                               "-o", out, "--report", report)
    assert code == EXIT_OK, stderr
    assert stderr == ""
    onnx.checker.check_model(onnx.load(str(out)))
    data = json.loads(report.read_text())
    assert REPORT_KEYS <= set(data)
    assert data["schema"] == 1
    assert data["input"] == str(model) and data["output"] == str(out)
    assert data["pipeline"] == "channel-prune"
    assert data["after"]["macs"] < data["before"]["macs"]
    assert data["after"]["params"] < data["before"]["params"]
    assert data["ratios"]["macs"] == pytest.approx(data["after"]["macs"] / data["before"]["macs"],
                                                   abs=1e-4)
    assert [p["name"] for p in data["passes"]] == ["channel-prune"]
    assert data["passes"][0]["modified"] is True
    assert [c["ok"] for c in data["checks"]] == [True]
    # the table on stdout
    assert f"{model} -> {out}" in stdout
    assert "macs" in stdout and "check channel-prune" in stdout


def test_quiet_and_no_output(capsys: pytest.CaptureFixture[str], model: Path) -> None:
    code, stdout, stderr = cli(capsys, model, "--pass", "channel-prune", "--quiet")
    assert (code, stdout, stderr) == (EXIT_OK, "", "")
    assert sorted(p.name for p in model.parent.iterdir()) == ["tiny.onnx"]


def test_no_check_skips_numeric_checks(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    report = tmp_path / "r.json"
    code, _, _ = cli(capsys, model, "--pass", "channel-prune", "--no-check", "--quiet",
                     "--report", report)
    assert code == EXIT_OK
    assert json.loads(report.read_text())["checks"] == []


def test_pass_is_repeatable_and_takes_comma_lists(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    reports = []
    for i, argv in enumerate([
        ["--pass", "channel-prune{ratio=0.25}", "--pass", "channel-prune{scope=global}"],
        ["--pass", "channel-prune{ratio=0.25},channel-prune{scope=global}"],
    ]):
        report = tmp_path / f"r{i}.json"
        code, _, err = cli(capsys, model, *argv, "--quiet", "--report", report)
        assert code == EXIT_OK, err
        reports.append(json.loads(report.read_text()))
    for data in reports:
        assert data["pipeline"] == "channel-prune{ratio=0.25},channel-prune{scope=global}"
        assert [p["spec"] for p in data["passes"]] == [
            "channel-prune{ratio=0.25}", "channel-prune{scope=global}"]
    assert reports[0]["after"] == reports[1]["after"]
    assert reports[0]["after"]["macs"] < reports[0]["before"]["macs"]


def test_list_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = cli(capsys, "--list-passes")
    assert code == EXIT_OK
    assert "channel-prune: " in stdout
    for fragment in ("ratio=0.5", "criterion=l2", "scope=uniform", "round-to=0",
                     "min-channels=1", "exclude=[]"):
        assert fragment in stdout, fragment
    criteria_line = next(ln for ln in stdout.splitlines() if ln.strip().startswith("criteria:"))
    assert {"l1", "l2"} <= set(criteria_line.split(":", 1)[1].replace(",", " ").split())
    for name in PASSES.names():
        assert f"  {name}: " in stdout


def test_help_lists_the_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = cli(capsys, "--help")
    assert code == EXIT_OK
    assert "channel-prune: remove whole channels" in stdout
    assert "ratio=0.5" in stdout
    assert "exit codes: 0 ok, 1 numeric check failed, 2 usage, 3 unsupported/invalid model" in (
        " ".join(stdout.split()))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = cli(capsys, "--version")
    assert (code, stdout.strip()) == (EXIT_OK, f"compress-ir {__version__}")


# --- 2: usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        ([], ["input model is required"]),
        (["MODEL"], ["at least one --pass"]),
        (["MODEL", "--pass", "chanel-prune"], ["unknown pass 'chanel-prune'", "channel-prune"]),
        (["MODEL", "--pass", "channel-prune{ratoi=0.5}"], ["'ratoi'", "ratio", "exclude"]),
        (["MODEL", "--pass", "channel-prune{ratio=abc}"], ["'abc'"]),
        (["MODEL", "--pass", "channel-prune{ratio=1.5}"], ["ratio"]),
        (["MODEL", "--pass", "channel-prune{criterion=magic}"], ["'magic'", "l1, l2"]),
        (["MODEL", "--pass", "channel-prune{ratio=0.5"], ["unclosed"]),
        (["MODEL", "--pass", ""], ["empty pass name"]),
        (["MODEL", "--pass", "channel-prune", "--frobnicate"], ["--frobnicate"]),
        (["MODEL", "--pass", "channel-prune", "--tolerance", "abc"], ["--tolerance"]),
        (["MODEL", "--pass", "channel-prune", "--tolerance", "-1"], ["--tolerance", ">= 0"]),
        (["MODEL", "--pass", "channel-prune", "--tolerance", "nan"], ["--tolerance"]),
        (["MODEL", "--pass", "channel-prune", "-o", "FILE/out.onnx"], ["cannot write"]),
        (["MODEL", "--pass", "channel-prune", "--report", "FILE/r.json"], ["cannot write"]),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, argv: list[str],
    fragments: list[str],
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    argv = [str(model) if a == "MODEL" else a.replace("FILE/", f"{a_file}/") for a in argv]
    code, stdout, stderr = cli(capsys, *argv)
    assert code == EXIT_USAGE, stderr
    line = one_error(stderr)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert stdout == ""


# --- 3: invalid model --------------------------------------------------------------------


def test_truncated_model_exits_3(
    capsys: pytest.CaptureFixture[str], truncated: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.onnx"
    code, stdout, stderr = cli(capsys, truncated, "--pass", "channel-prune", "-o", out)
    assert code == EXIT_MODEL
    assert str(truncated) in one_error(stderr)
    assert stdout == "" and not out.exists()


def test_unknown_op_exits_3(capsys: pytest.CaptureFixture[str], unknown_op: Path) -> None:
    code, _, stderr = cli(capsys, unknown_op, "--pass", "channel-prune")
    assert code == EXIT_MODEL
    line = one_error(stderr)
    for fragment in (str(unknown_op), "'relu1'", "'Frobnicate'"):
        assert fragment in line


def test_missing_model_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, stderr = cli(capsys, tmp_path / "nope.onnx", "--pass", "channel-prune")
    assert code == EXIT_MODEL
    assert "nope.onnx: no such file" in one_error(stderr)


def test_debug_shows_the_exception(capsys: pytest.CaptureFixture[str], truncated: Path) -> None:
    """--debug adds the traceback and changes nothing else: same exit code, same last line."""
    code, _, plain = cli(capsys, truncated, "--pass", "channel-prune")
    debug_code, _, err = cli(capsys, truncated, "--pass", "channel-prune", "--debug")
    assert debug_code == code == EXIT_MODEL
    assert "Traceback" in err and ModelLoadError.__name__ in err
    assert err.strip().splitlines()[-1] == plain.strip()


# --- 1: numeric check failed -------------------------------------------------------------


class _WrongReference(Pass):
    """Claims to be exact but hands the checker a reference that computes something else."""

    summary = "test only: returns the model with a reference that differs"
    in_place = False

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        reference = model.to_proto()
        for init in reference.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(init), init.name))
        return PassResult(model.copy(), modified=True, reference=reference)


@pytest.fixture
def wrong_reference_pass() -> Iterator[str]:
    name = "test-wrong-reference"
    register_pass(name)(_WrongReference)
    try:
        yield name
    finally:
        PASSES._items.pop(name, None)  # leave the registry as other tests expect it


def test_numeric_mismatch_exits_1_writes_no_model_but_the_report(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, wrong_reference_pass: str
) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, stderr = cli(capsys, model, "--pass", f"channel-prune,{wrong_reference_pass}",
                               "-o", out, "--report", report)
    assert code == EXIT_NUMERIC
    line = one_error(stderr)
    assert f"pass '{wrong_reference_pass}' (after channel-prune)" in line
    assert "differs from its reference" in line and "tolerance" in line
    assert stdout == "" and not out.exists()
    data = json.loads(report.read_text())  # CI needs the report also when the run fails
    assert data["status"] == "check-failed"
    assert data["error"] == line.removeprefix("compress-ir: error: ")


def test_numeric_mismatch_passes_without_check(
    capsys: pytest.CaptureFixture[str], model: Path, wrong_reference_pass: str
) -> None:
    code, _, stderr = cli(capsys, model, "--pass", wrong_reference_pass, "--no-check", "--quiet")
    assert code == EXIT_OK, stderr


def test_help_is_generated_from_the_registry(
    capsys: pytest.CaptureFixture[str], wrong_reference_pass: str
) -> None:
    assert wrong_reference_pass in passes_help()
    code, stdout, _ = cli(capsys, "--help")
    assert code == EXIT_OK
    assert f"{wrong_reference_pass}: test only" in stdout
    code, stdout, _ = cli(capsys, "--list-passes")
    assert f"{wrong_reference_pass}: test only" in stdout


# --- real processes: no traceback on user errors -----------------------------------------


def _run(argv: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_module_entry_point_user_errors(model: Path, truncated: Path) -> None:
    usage = _run([sys.executable, "-m", "compress_ir.cli", model, "--pass", "chanel-prune"])
    assert usage.returncode == EXIT_USAGE
    assert "unknown pass 'chanel-prune'" in one_error(usage.stderr)
    bad = _run([sys.executable, "-m", "compress_ir.cli", truncated, "--pass", "channel-prune"])
    assert bad.returncode == EXIT_MODEL
    assert str(truncated) in one_error(bad.stderr)
    assert bad.stdout == ""


def test_console_script(model: Path, unknown_op: Path, tmp_path: Path) -> None:
    exe = shutil.which("compress-ir")
    if exe is None:
        pytest.skip("the compress-ir console script is not installed")
    out = tmp_path / "small.onnx"
    ok = _run([exe, model, "--pass", "channel-prune{ratio=0.5}", "-o", out, "--quiet"])
    assert (ok.returncode, ok.stdout, ok.stderr) == (EXIT_OK, "", "")
    assert out.stat().st_size > 0
    bad = _run([exe, unknown_op, "--pass", "channel-prune"])
    assert bad.returncode == EXIT_MODEL
    assert "'Frobnicate'" in one_error(bad.stderr)
    flag = _run([exe, model, "--pass", "channel-prune", "--frobnicate"])
    assert flag.returncode == EXIT_USAGE
    assert "--frobnicate" in one_error(flag.stderr)
