"""`tools/bench_conv_chain.py` runs end to end: both builds match onnxruntime, the feature
switch really changes the build (prefetch on: `prefetcht1` in the code, off: none), and
the table has its three rows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_conv_chain  # noqa: E402


def test_chain_tool_times_both_builds_and_onnxruntime(capsys: pytest.CaptureFixture) -> None:
    assert bench_conv_chain.main(["--layers", "32x64x3,64x32x1", "--size", "5",
                                  "--repeat", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    errors = [float(e) for e in re.findall(r"rel\. error vs onnxruntime ([0-9.e+-]+)", out)]
    assert len(errors) == 2 and max(errors) < 1e-5, out
    for row in ("| tvm_on |", "| tvm_off |", "| ort |"):
        assert row in out, out


def test_prefetch_switch_changes_the_build() -> None:
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from compress_ir.backend.schedule import compile_relax

    model = bench_conv_chain.chain_model([(64, 96, 3)], 5)
    mod = from_onnx(model, shape_dict={"x": [1, 64, 5, 5]}, keep_params_in_input=False)

    def asm() -> str:
        exe, _ = compile_relax(mod, tvm.target.Target({"kind": "llvm"}))
        mods = [exe.mod, *exe.mod.imports]
        return "".join(m.inspect_source("asm") for m in mods if m.kind == "llvm")

    assert "prefetcht1" in asm()
    with bench_conv_chain.FEATURES["prefetch"]():
        assert "prefetcht1" not in asm()


def test_tall_tiles_switch_changes_the_tile() -> None:
    """On: 14-row tiles of 32 channels on AVX-512 (196 positions); off: 7, as under TVM's
    own 1 KB stack limit."""
    from compress_ir.backend.schedule import cpu as cpu_rules

    params = cpu_rules.CpuParams(lanes=16, registers=32)
    assert cpu_rules.window_tile(256, 196, params) == (14, 32)
    with bench_conv_chain.FEATURES["tall-tiles"]():
        assert cpu_rules.window_tile(256, 196, params) == (7, 32)
    assert cpu_rules.window_tile(256, 196, params) == (14, 32)
