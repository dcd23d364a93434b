"""Logs and progress: -q/-v, --log-file, progress on stderr (bar on a TTY, periodic lines
otherwise), nothing but results on stdout; `run` and `compress` as argparse subcommands."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import cli
from oracle import tiny_net

from compress_ir import logs
from compress_ir.cli import build_root_parser
from compress_ir.core.errors import EXIT_OK


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_net(), str(path))
    return path


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    return path


@pytest.fixture(autouse=True)
def _reset_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.PROGRESS_ENV, raising=False)  # conftest turns progress off
    yield
    for name in (logs.LOGGER, "tvm", logs.PROGRESS_LOGGER):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True




PRUNE = "channel-prune{criterion=thinet,ratio=0.5}"


def test_quiet_is_silent_and_log_file_has_the_details(
    capsys: pytest.CaptureFixture[str], model: Path, calib: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "PROGRESS_INTERVAL_S", 0.0)
    log = tmp_path / "run.log"
    code, out, err = cli(capsys, model, "--pass", PRUNE, "--calib", calib, "-q",
                         "--log-file", log)
    assert (code, out, err) == (EXIT_OK, "", "")
    text = log.read_text()
    assert "INFO compress_ir.api: running channel-prune" in text
    assert "calibration: done" in text  # progress goes to the log too


def test_verbose_logs_on_stderr_never_stdout(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    code, out, err = cli(capsys, model, "--pass", "channel-prune", "-v")
    assert code == EXIT_OK
    assert "INFO: running channel-prune" in err and "INFO" not in out
    assert "macs" in out  # the table


def test_periodic_progress_lines_when_not_a_tty(
    capsys: pytest.CaptureFixture[str], model: Path, calib: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "PROGRESS_INTERVAL_S", 0.0)
    code, out, err = cli(capsys, model, "--pass", PRUNE, "--calib", calib)
    assert code == EXIT_OK
    lines = [line for line in err.splitlines() if "calibration:" in line]
    # one line per batch of the static-batch-1 model (4 samples), with the total
    assert "compress-ir: calibration: 4/4 batch" in lines[-1], err
    assert "calibration:" not in out  # no progress line on stdout


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    logs.setup_logging(0)
    assert list(logs.progress(range(5), desc="sensitivity scan", unit="group")) == list(range(5))
    shown = term.getvalue()  # tqdm redraws at most every 0.1 s and clears the bar at the end
    assert "sensitivity scan:" in shown and "/5 [" in shown and "%|" in shown


def test_progress_is_off_for_library_users(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert list(logs.progress(range(3), desc="x")) == [0, 1, 2]
    assert term.getvalue() == ""


def test_stdout_to_log_captures_prints_and_stdout_handlers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "l.log"
    logs.setup_logging(0, str(log))
    chatty = logging.getLogger("tvm.test.chatty")
    with logs.stdout_to_log("tvm.test.stdout"):
        import sys

        chatty.addHandler(logging.StreamHandler(sys.stdout))  # what MetaSchedule does
        chatty.propagate = False
        print("tuning round 1")
        chatty.warning("a handler bound to stdout")
    chatty.warning("after the block")
    out, _ = capsys.readouterr()
    assert out == ""
    text = log.read_text()
    for line in ("tuning round 1", "a handler bound to stdout", "after the block"):
        assert line in text


def test_run_and_compress_are_subcommands(capsys: pytest.CaptureFixture[str],
                                          model: Path) -> None:
    root = build_root_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"compress", "run", "report"}
    code, out, _ = cli(capsys, "run", "--help")
    assert code == EXIT_OK and out.startswith("usage: compress-ir run")
    code, out, _ = cli(capsys, "--help")
    assert code == EXIT_OK and "--config RECIPE" in out and "compress-ir run" in out
    # explicit and implied `compress` do the same
    code_a, out_a, _ = cli(capsys, "compress", model, "--pass", "channel-prune")
    code_b, out_b, _ = cli(capsys, model, "--pass", "channel-prune")
    assert code_a == code_b == EXIT_OK and out_a == out_b


def test_metaschedule_loggers_do_not_reach_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """MetaSchedule's own logger setup (a console handler on sys.stdout), as tuning calls it."""
    pytest.importorskip("tvm")
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    log = tmp_path / "l.log"
    logs.setup_logging(0, str(log))
    with logs.stdout_to_log("tvm.meta_schedule.stdout"):
        (task,) = get_loggers_from_work_dir(str(tmp_path / "work"), ["dense"])
        logging.getLogger("tvm.s_tir.meta_schedule").info("TaskScheduler picks Task #0")
    logging.getLogger("tvm.s_tir.meta_schedule").info("tuning summary table")
    out, _ = capsys.readouterr()
    assert out == ""
    text = log.read_text()
    for line in ("Logging directory", "TaskScheduler picks Task #0", "tuning summary table"):
        assert line in text


def test_phase_reports_a_long_step(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(logs, "PROGRESS_INTERVAL_S", 0.05)
    logs.setup_logging(0)
    with logs.phase("TVM build for x86"):
        time.sleep(0.3)
    _, err = capsys.readouterr()
    assert "compress-ir: TVM build for x86: running (0 s)" in err
    logs.setup_logging(-1)
    with logs.phase("quiet"):
        time.sleep(0.2)
    assert capsys.readouterr() == ("", "")


def test_console_handler_follows_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    logs.setup_logging(0)
    first.close()  # e.g. a test's captured stream, gone after that test
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("compress_ir.test").warning("still shown")
    assert "WARNING: still shown" in second.getvalue()


def test_progress_can_be_turned_off(capsys: pytest.CaptureFixture[str], model: Path,
                                    calib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setenv(logs.PROGRESS_ENV, "off")
    code, _, err = cli(capsys, model, "--pass", PRUNE, "--calib", calib)
    assert code == EXIT_OK and err == ""
