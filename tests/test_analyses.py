"""Cached analyses (MLIR's preserved analyses) and the `channel-groups` analysis pass.

The channel analysis is computed once per model and pass context: an analysis-only
pass keeps it, a transform that reports a change drops it unless it declares it
preserved. Counted through the public seam `PassContext.analyses.computed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import networkx as nx
import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

import compress_ir.passes  # noqa: F401 - registers the passes
from compress_ir.api import compress
from compress_ir.core.errors import OutputError, UsageError
from compress_ir.core.model import Model
from compress_ir.core.passes import Pass, PassContext, PassResult
from compress_ir.core.pipeline import build_passes, run_checked
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.channel_groups import CHANNELS, channel_view

# conv1 (8 ch) -> relu -> conv2 (4 ch, a graph output: blocked)
TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    [conv1] h = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    [relu] r = Relu (h)
    [conv2] y = Conv <pads = [1, 1, 1, 1]> (r, w2)
}
"""


def model() -> Model:
    proto = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 3, 3))):
        value = (rng.standard_normal(shape) / 5).astype(np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    return load_onnx(proto)


class _Edit(Pass):
    """An in-place transform that reports a change (and edits nothing)."""

    name = "test-edit"
    in_place = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        return PassResult(model, modified=True)


class _EditPreserving(_Edit):
    preserves: ClassVar[frozenset[str]] = frozenset({CHANNELS})


def _counts(passes: list[Pass], m: Model, ctx: PassContext) -> list[int]:
    counts = []
    for p in passes:
        m = run_checked(p, m, ctx).model
        counts.append(ctx.analyses.computed[CHANNELS])
    return counts


def test_analysis_passes_share_one_channel_analysis_and_a_transform_drops_it() -> None:
    ctx = PassContext()
    passes = build_passes("channel-groups,channel-groups,channel-prune{ratio=0.5},"
                          "channel-groups")
    # two analysis passes and channel-prune read one analysis; after the prune, a new one
    assert _counts(passes, model(), ctx) == [1, 1, 1, 2]


def test_in_place_transform_drops_the_analysis_unless_it_preserves_it() -> None:
    ctx = PassContext()
    groups = build_passes("channel-groups")[0]
    counts = _counts([groups, _EditPreserving(), groups, _Edit(), groups], model(), ctx)
    assert counts == [1, 1, 1, 1, 2]


def test_another_model_is_analysed_afresh() -> None:
    """One entry per analysis, for the model the pipeline is on: another model replaces it."""
    ctx, a, b = PassContext(), model(), model()
    view_a = channel_view(a, ctx)
    assert channel_view(a, ctx) is view_a and ctx.analyses.computed[CHANNELS] == 1
    assert channel_view(b, ctx) is not view_a and ctx.analyses.computed[CHANNELS] == 2
    assert channel_view(a, ctx) is not view_a and ctx.analyses.computed[CHANNELS] == 3


def test_channel_groups_reports_without_changing_the_model() -> None:
    m = model()
    result = run_checked(build_passes("channel-groups")[0], m, PassContext())
    assert not result.modified and result.model is m
    rows = {tuple(r["producers"]): r for r in result.details["groups"]}
    assert rows[("conv1",)]["units"] == 8 and rows[("conv1",)]["blocked_by"] == []
    assert any("graph output 'y'" in r for r in rows[("conv2",)]["blocked_by"])
    assert result.stats == {"groups": 2, "groups_prunable": 1, "units_prunable": 8}


def test_dump_graphml_and_dot(tmp_path: Path) -> None:
    graphml, dot = tmp_path / "g.graphml", tmp_path / "g.dot"
    for path in (graphml, dot):
        (p,) = build_passes(f"channel-groups{{dump={path}}}")
        info = run_checked(p, model(), PassContext()).details["dump"]
        assert info["nodes"] == 3 and info["edges"] == 2
    g = nx.read_graphml(graphml)
    assert g.nodes["conv1"]["group"] != g.nodes["conv2"]["group"]
    assert g.nodes["conv2"]["blocked"].startswith("graph output 'y'")
    assert "group" not in g.nodes["relu"]
    carried = {(u, v): d.get("groups") for u, v, d in g.edges(data=True)}
    assert carried[("conv1", "relu")] == carried[("relu", "conv2")] == str(
        g.nodes["conv1"]["group"])
    text = dot.read_text()
    assert text.startswith("digraph channel_groups {") and text.rstrip().endswith("}")
    assert '"conv1" -> "relu"' in text and "tooltip=\"graph output 'y'" in text


def test_dump_needs_a_known_suffix() -> None:
    with pytest.raises(UsageError, match=r"\.dot, \.gv, \.graphml"):
        build_passes("channel-groups{dump=groups.png}")


def test_dump_through_the_api_is_planned_and_committed(tmp_path: Path) -> None:
    """Like a sensitivity plot: checked before any work, written with the other outputs."""
    source = tmp_path / "m.onnx"
    onnx.save(model().to_proto(), source)
    dump, out = tmp_path / "groups.dot", tmp_path / "out.onnx"
    result = compress(str(source), f"channel-groups{{dump={dump}}}", output=str(out))
    assert dump.read_text().startswith("digraph channel_groups {") and out.exists()
    assert result.report["passes"][0]["spec"] == f"channel-groups{{dump={dump}}}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    with pytest.raises(OutputError):
        compress(str(source), f"channel-groups{{dump={tmp_path / 'x.dot'}}}",
                 output=str(tmp_path / "x.dot"))


def test_channel_prune_run_directly_twice_analyses_twice() -> None:
    """Outside a pipeline nobody invalidates: channel-prune must not leave its sliced
    working copy in the cache for a second run on the same model."""
    m, ctx = model(), PassContext()
    (p,) = build_passes("channel-prune{ratio=0.5}")
    first, second = p.run(m, ctx), p.run(m, ctx)
    assert first.modified and second.modified
    assert ctx.analyses.computed[CHANNELS] == 2
    shapes = [{i.name: tuple(i.dims) for i in r.model.to_proto().graph.initializer}
              for r in (first, second)]
    assert shapes[0] == shapes[1] and shapes[0]["w1"] == (4, 3, 3, 3)
