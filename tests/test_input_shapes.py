"""Symbolic input dims: --input-shape, calibration shapes, assumed defaults, MACs, TVM specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from bert_like import FFN, HIDDEN, bert_like

from compress_ir.api import compress
from compress_ir.backend.build import fixed_input_specs
from compress_ir.cli import main
from compress_ir.core import numeric
from compress_ir.core.errors import UnsupportedModelError, UsageError
from compress_ir.core.metrics import mac_count, model_metrics
from compress_ir.core.shapes import parse_input_shape, resolve_shapes
from compress_ir.frontends.onnx import load_onnx
from compress_ir.frontends.placeholders import fill_placeholders

DBNET = Path(__file__).resolve().parent / "fixtures" / "shapes" / "dbnet_dynamic_hw.onnx"


def bert_macs(batch: int, seq: int) -> int:
    """MACs of tests/bert_like.py written out by hand (not by the code under test)."""
    qkv = 3 * seq * HIDDEN * HIDDEN
    attention = 2 * seq * seq * HIDDEN  # q @ k^T and probs @ v
    out = seq * HIDDEN * HIDDEN
    ffn = 2 * seq * HIDDEN * FFN
    pooler = HIDDEN * HIDDEN
    return batch * (qkv + attention + out + ffn + pooler)


@pytest.fixture(scope="module")
def dbnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dbnet") / "dbnet.onnx"
    onnx.save(fill_placeholders(onnx.load(DBNET), seed=0), path)
    return path


def test_parse_input_shape() -> None:
    assert parse_input_shape("x=1,3,640,640") == ("x", (1, 3, 640, 640))
    assert parse_input_shape("in:0=2x128") == ("in:0", (2, 128))
    assert parse_input_shape("a=b=4") == ("a=b", (4,))  # the last '=' separates the dims
    for bad in ("x", "=1,2", "x=1,a", "x="):
        with pytest.raises(UsageError, match="--input-shape"):
            parse_input_shape(bad)


def test_named_dims_are_shared_across_inputs() -> None:
    proto = bert_like()
    plan = resolve_shapes(proto, {"input_ids": (2, 16)})
    assert plan.inputs == {"input_ids": (2, 16), "attention_mask": (2, 16),
                           "token_type_ids": (2, 16)}
    assert plan.dims["sequence"].source == "input-shape" and not plan.assumed


def test_defaults_are_realistic_and_stated() -> None:
    plan = resolve_shapes(bert_like(max_positions=40))
    # sequence 128 cannot run on a 40-row position table: the assumption is capped
    assert plan.assumed == {"batch": 1, "sequence": 40}
    assert any("position table" in n for n in plan.notes)
    assert resolve_shapes(bert_like(max_positions=512)).assumed == {"batch": 1, "sequence": 128}
    db = resolve_shapes(load_onnx(DBNET).to_proto())
    assert db.inputs == {"x": (1, 3, 224, 224)}
    assert {k: d.role for k, d in db.dims.items()} == {
        "batch": "batch", "height": "spatial", "width": "spatial"}


@pytest.mark.parametrize("shapes, message", [
    ({"ids": (1, 8)}, "no input 'ids'"),
    ({"input_ids": (1, 8, 2)}, "rank 2"),
    ({"input_ids": (1, 0)}, "positive"),
    ({"input_ids": (1, 8), "attention_mask": (1, 9)}, "'sequence' is 9 here"),
])
def test_bad_input_shapes_are_usage_errors(shapes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_shapes(bert_like(), shapes)


def test_a_static_dim_cannot_be_overridden() -> None:
    with pytest.raises(UsageError, match=r"--input-shape x: dim 1 is fixed to 3"):
        resolve_shapes(load_onnx(DBNET).to_proto(), {"x": (1, 4, 64, 64)})


def test_cli_bad_input_shape_exit_2(dbnet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in ((["--input-shape", "y=1,3,64,64"], "no input 'y'"),
                          (["--input-shape", "x=1,3,64"], "x: the input has rank 4"),
                          (["--input-shape", "x=1,3,64,64", "--input-shape", "x=1,3,64,64"],
                           "given twice")):
        assert main([str(dbnet), "--pass", "fold-bn", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_macs_at_the_stated_shape() -> None:
    proto = load_onnx(bert_like(max_positions=512)).to_proto()
    assert mac_count(proto, {"input_ids": (1, 128)}) == (bert_macs(1, 128), [])
    assert mac_count(proto, {"input_ids": (4, 20)}) == (bert_macs(4, 20), [])
    assert model_metrics(proto)["macs"] == bert_macs(1, 128)  # the stated assumption
    # what the report used to say: every symbolic dim as 1, 370x too small here
    assert bert_macs(1, 128) > 300 * bert_macs(1, 1)


def _runtime_macs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int:
    """Conv/ConvTranspose MACs from the shapes onnxruntime actually produces."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    convs = [n for n in work.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    exposed = {o.name for o in work.graph.output} | set(feeds)
    for name in dict.fromkeys(t for n in convs for t in (n.input[0], n.output[0])):
        if name not in exposed:
            work.graph.output.append(onnx.ValueInfoProto(name=name))
    got = {**feeds, **numeric.run(work, feeds)}
    weights = {i.name: tuple(i.dims) for i in work.graph.initializer}
    total = 0
    for n in convs:  # a Conv costs per output element, a ConvTranspose per input element
        per = int(np.prod(weights[n.input[1]][1:]))
        total += got[n.output[0] if n.op_type == "Conv" else n.input[0]].size * per
    return total


def test_dbnet_check_and_macs_at_640(dbnet: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Acceptance: the check at --input-shape x=1,3,640,640 passes, MACs at that shape."""
    report = tmp_path / "r.json"
    code = main([str(dbnet), "--pass", "channel-prune{ratio=0.5}", "--input-shape",
                 "x=1,3,640,640", "--report", str(report), "-o", str(tmp_path / "small.onnx")])
    out = capsys.readouterr().out
    assert code == 0, out
    r = json.loads(report.read_text())
    assert r["shapes"]["inputs"] == {"x": [1, 3, 640, 640]} and r["shapes"]["assumed"] == {}
    assert r["checks"][0]["ok"] and r["checks"][0]["rel_error"] <= 1e-4
    assert "shapes: x=1x3x640x640" in out
    original = load_onnx(dbnet).to_proto()
    small = onnx.load(tmp_path / "small.onnx")
    x = np.zeros((1, 3, 640, 640), np.float32)
    for proto, key in ((original, "before"), (small, "after")):
        assert r[key]["macs"] == _runtime_macs(proto, {"x": x}), key
    # what the report said before: the detector at 1x1 pixels, ~900x too few MACs
    assert r["before"]["macs"] > 500 * model_metrics(original, {"x": (1, 3, 1, 1)})["macs"]


def test_dbnet_default_states_assumed_dims(dbnet: Path) -> None:
    result = compress(str(dbnet), "channel-prune{ratio=0.5}")
    shapes = result.report["shapes"]
    assert shapes["assumed"] == {"batch": 1, "height": 224, "width": 224}
    assert shapes["inputs"] == {"x": [1, 3, 224, 224]}
    assert result.report["checks"][0]["ok"]


def test_calibration_shapes_win_over_assumptions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = {"input_ids": rng.integers(0, 50, (6, 12)),
            "attention_mask": np.ones((6, 12), np.int64),
            "token_type_ids": rng.integers(0, 2, (6, 12))}
    np.savez(tmp_path / "c.npz", **data)
    result = compress(bert_like(), "channel-prune{ratio=0.5}", calibration=str(tmp_path / "c.npz"))
    shapes = result.report["shapes"]
    assert shapes["dims"]["sequence"]["source"] == "calibration"
    assert shapes["inputs"]["input_ids"] == [1, 12] and shapes["assumed"] == {"batch": 1}
    check = result.report["checks"][0]
    assert check["ok"] and check["inputs"] == f"calibration {tmp_path / 'c.npz'} (4 samples)"
    with pytest.raises(UsageError, match="the calibration data has 12"):
        compress(bert_like(), "fold-bn", calibration=str(tmp_path / "c.npz"),
                 input_shapes={"input_ids": (1, 16)})


def test_tvm_input_specs_take_input_shapes() -> None:
    """What `--target` builds with; no TVM needed to resolve the shapes."""
    db = load_onnx(DBNET).to_proto()
    with pytest.raises(UnsupportedModelError, match=r"fix it with --input-shape x=1,3,224,224"):
        fixed_input_specs(db, 1)
    specs = fixed_input_specs(db, 2, {"x": (2, 3, 96, 64)})
    assert [(s.name, s.shape) for s in specs] == [("x", (2, 3, 96, 64))]
    bert = bert_like()
    specs = fixed_input_specs(bert, 1, {"input_ids": (1, 24)})  # shared dims follow by name
    assert {s.name: s.shape for s in specs} == {"input_ids": (1, 24), "attention_mask": (1, 24),
                                                "token_type_ids": (1, 24)}
    with pytest.raises(UnsupportedModelError, match="--input-shape input_ids=1,40"):
        fixed_input_specs(bert, 1)


def test_macs_budget_counts_at_the_given_shape(dbnet: Path) -> None:
    result = compress(str(dbnet), "channel-prune{target-macs=0.5}",
                      input_shapes={"x": (1, 3, 128, 96)})
    alloc = result.report["passes"][0]["details"]["allocation"]
    assert alloc["original"] == result.report["before"]["macs"]  # the same shapes
    assert alloc["estimated"] == alloc["achieved"] == result.report["after"]["macs"]
    assert alloc["reached"] and alloc["achieved_fraction"] <= 0.5
    assert result.report["checks"][0]["ok"]


def test_html_and_markdown_reports_state_the_shapes(dbnet: Path) -> None:
    from compress_ir.report_html import render_html, render_markdown

    report = compress(str(dbnet), "channel-prune{ratio=0.5}",
                      input_shapes={"x": (1, 3, 96, 64)}).report
    line = "MACs and checks at x=1x3x96x64"
    assert line in render_markdown(report) and line in render_html(report)
    assumed = compress(str(dbnet), "fold-bn").report
    assert "assumed symbolic dims: batch=1, height=224, width=224" in render_markdown(assumed)
