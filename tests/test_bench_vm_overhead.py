"""`tools/bench_vm_overhead.py` runs end to end: both engines compute the same chain."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_vm_overhead  # noqa: E402


def test_chain_has_one_kernel_per_matmul_and_matches_onnxruntime(
        capsys: pytest.CaptureFixture) -> None:
    assert bench_vm_overhead.chain(5).graph.node[-1].name == "mm4"
    assert bench_vm_overhead.main(["--lengths", "2,4", "--calls", "3", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    errors = [float(e) for e in re.findall(r"\| (\d\.\de[+-]\d+) \|", out)]
    assert len(errors) == 2 and max(errors) < 1e-5, out
    assert re.search(r"^tvm: -?[0-9.]+ us per kernel", out, re.M), out
    assert re.search(r"^ort: -?[0-9.]+ us per kernel", out, re.M), out
