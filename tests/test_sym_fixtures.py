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
def test_attention_whole_heads(name):
    """q/k/v are split into 4 heads of 8 by Shape-built targets; the split carries the
    heads (they feed Q.K^T and P.V, per-head products), so q, k and v form one group
    of 4 heads and ratio 0.5 removes 2 whole heads -- with the out-projection's rows."""
    proto = load(name)
    analysis = analyse_channels(load_onnx(proto))
    assert len(analysis.head_splits) == 3
    for split in analysis.head_splits:
        assert split.table.shape == (4, 8)
        assert split.carried == split.axes[0]  # the heads axis
    (qkv,) = [g for g in analysis.groups if len(g.roots) == 3]
    assert qkv.size == 4 and qkv.prunable
    out = prune_and_check(proto, PRUNE)
    rows = {r["size"]: r for r in out.result.details["groups"]}
    assert rows[4]["status"] == "pruned" and rows[4]["kept"] == 2
    q_w = [i for i in out.pruned.graph.initializer if list(i.dims) == [32, 16]]
    assert len(q_w) == 3  # q, k, v keep 2 heads x 8
    assert out.result.details["groups"][-1]["status"] == "blocked"  # the graph output
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 7, 32)).astype(np.float32)
    got = numeric.session(out.pruned).run(None, {"x": x})[0]
    want = numeric.session(out.result.reference).run(None, {"x": x})[0]
    assert got.shape == (3, 7, 6)
    assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()
