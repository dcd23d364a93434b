"""Fuzz suite (issue 10): structure-aware mutations of ONNX protos, meta.json,
calibration files, pipeline text and output paths; every case must keep the
CLI's promises (see tests/fuzz_cases.py). Derandomised and small here so CI is
fast and reproducible; `python tools/fuzz.py` runs the long, random version.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from fuzz_cases import (
    Case,
    base_model,
    calib_cases,
    meta_cases,
    onnx_cases,
    path_cases,
    pipeline_cases,
    run_case,
)
from hypothesis import HealthCheck, given, settings

EXAMPLES = int(os.environ.get("COMPRESS_IR_FUZZ_EXAMPLES", "30"))
CI = settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)


def _check(case: Case) -> None:
    broken = run_case(case)
    assert not broken, f"{broken} for argv={case.argv} note={case.note!r}"


@CI
@given(case=onnx_cases())
def test_fuzz_onnx_protos(case: Case) -> None:
    _check(case)


@CI
@given(case=calib_cases())
def test_fuzz_calibration_files(case: Case) -> None:
    _check(case)


@CI
@given(case=pipeline_cases())
def test_fuzz_pipeline_text(case: Case) -> None:
    _check(case)


@CI
@given(case=path_cases())
def test_fuzz_output_paths(case: Case) -> None:
    _check(case)


@pytest.fixture(scope="module")
def real_artifact() -> tuple[str, bytes]:
    """meta.json text and model.so bytes of a real x86 build of the tiny model."""
    pytest.importorskip("tvm")
    from compress_ir.backend import build
    from compress_ir.targets import host

    if not host.is_x86_64():
        pytest.skip("the meta.json family runs the x86 artifact on this host")
    with tempfile.TemporaryDirectory() as tmp:
        art = build(base_model(), "x86", Path(tmp) / "art")
        return (art.path / "meta.json").read_text(), (art.path / "model.so").read_bytes()


def test_fuzz_meta_json(real_artifact: tuple[str, bytes]) -> None:
    meta_text, library = real_artifact

    @settings(CI, max_examples=max(10, EXAMPLES // 2))
    @given(case=meta_cases(meta_text, library))
    def run(case: Case) -> None:
        _check(case)

    run()
