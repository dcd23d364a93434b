"""Real torch exports with symbolic dims prune like their static twins (issue 9).

The fixtures in tests/fixtures/sym/ come from tools/make_sym_fixtures.py (both
torch exporters, dynamic batch / sequence, seeded weights kept: each < 100 KB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from oracle import TOLERANCE, prune_and_check

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.channel_groups import analyse_channels

FIXTURES = Path(__file__).parent / "fixtures" / "sym"
PRUNE = "channel-prune{ratio=0.5}"
CNNS = ["cnn_view_dynbatch_ts", "cnn_view_dynbatch_dynamo", "cnn_flatten_dynbatch_ts",
        "cnn_literal_dynbatch_ts"]


def load(name: str) -> onnx.ModelProto:
    return onnx.load(FIXTURES / f"{name}.onnx")


def test_fixtures_are_small():
    files = sorted(FIXTURES.glob("*.onnx"))
    assert len(files) == 7
    assert all(f.stat().st_size < 100_000 for f in files)


@pytest.mark.parametrize("name", CNNS)
def test_dynamic_batch_cnn_reaches_the_static_macs_ratio(name):
    """Acceptance: a dynamic-batch `x.view(x.size(0), -1)` CNN prunes as far as its
    static-batch export (same MACs ratio), the last conv included."""
    static = compress(load("cnn_view_static_ts"), PRUNE).report["ratios"]["macs"]
    dynamic = compress(load(name), PRUNE).report["ratios"]["macs"]
    assert dynamic == static
    assert static < 0.3  # both convs halved (0.38 when the last conv stayed whole)


@pytest.mark.parametrize("name", CNNS)
def test_dynamic_batch_cnn_oracle_at_other_batches(name):
    out = prune_and_check(load(name), PRUNE)
    assert sum(r["status"] == "pruned" for r in out.result.details["groups"]) == 2
    x = np.random.default_rng(3).standard_normal((5, 1, 8, 8)).astype(np.float32)
    got = numeric.session(out.pruned).run(None, {"x": x})[0]
    want = numeric.session(out.result.reference).run(None, {"x": x})[0]
    assert got.shape == (5, 10)
    assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


@pytest.mark.parametrize("name", ["attention_dyn_ts", "attention_dyn_dynamo"])
def test_attention_heads(name):
    """q/k/v are split into 4 heads of 8 from Shape-built targets; the analysis maps
    each channel to (head, position), keeps them coupled and names the barrier
    (Q.K^T is a MatMul of two activations); the projections after it prune."""
    proto = load(name)
    analysis = analyse_channels(load_onnx(proto))
    splits = analysis.head_splits
    assert len(splits) == 3
    for split in splits:
        assert split.table.shape == (4, 8)
    qkv = [g for g in analysis.groups if g.blocked and g.size == 8]  # 8 positions x 4 heads
    assert len(qkv) == 3
    for g in qkv:
        assert any("MatMul without a constant right-hand weight" in r for r in g.blocked)
    out = prune_and_check(proto, PRUNE)
    pruned = [r for r in out.result.details["groups"] if r["status"] == "pruned"]
    assert sorted(r["size"] for r in pruned) == [24, 32]  # out-projection and fc1
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 7, 32)).astype(np.float32)
    got = numeric.session(out.pruned).run(None, {"x": x})[0]
    want = numeric.session(out.result.reference).run(None, {"x": x})[0]
    assert got.shape == (3, 7, 6)
    assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()
