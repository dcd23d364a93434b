"""Realistic check inputs (ids in range, masks, calibration samples) and the error metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from bert_like import TYPES, VOCAB, bert_like
from onnx import TensorProto, helper, numpy_helper
from oracle import tiny_net

from compress_ir.api import compress
from compress_ir.cli import main
from compress_ir.core import numeric
from compress_ir.core.calibration import load_calibration
from compress_ir.core.errors import CompressIRError, ModelRunError, UsageError
from compress_ir.core.feeds import input_kinds
from compress_ir.core.passes import PASSES
from compress_ir.frontends.onnx import load_onnx

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


# -- realistic inputs ---------------------------------------------------------------
def test_input_kinds_follow_the_model() -> None:
    kinds = input_kinds(load_onnx(bert_like()).to_proto())
    assert (kinds["input_ids"].kind, kinds["input_ids"].high) == ("ids", VOCAB)
    assert (kinds["token_type_ids"].kind, kinds["token_type_ids"].high) == ("ids", TYPES)
    assert kinds["attention_mask"].kind == "mask"
    assert "type_emb" in kinds["token_type_ids"].why


def test_random_inputs_stay_in_their_tables() -> None:
    proto = load_onnx(bert_like()).to_proto()
    feeds = numeric.random_inputs(proto, seed=3, shapes={"input_ids": (8, 24)})
    ids, types, mask = feeds["input_ids"], feeds["token_type_ids"], feeds["attention_mask"]
    assert ids.shape == types.shape == mask.shape == (8, 24)
    assert ids.dtype == np.int64 and 0 <= ids.min() and ids.max() < VOCAB
    assert set(np.unique(types)) == {0, 1}
    assert set(np.unique(mask)) == {0, 1}
    for row in mask:  # a padded batch: ones, then a tail of zeros
        n = int(row.sum())
        assert 12 <= n < 24 and row[:n].all() and not row[n:].any()
    numeric.run(proto, feeds)  # and the model runs on them
    # what the check used to feed: integers 0..3, out of the 2-row token-type table
    old = {k: np.random.default_rng(0).integers(0, 4, (1, 1)) for k in feeds}
    old["token_type_ids"][:] = 3
    with pytest.raises(ModelRunError, match="indices element out of data bounds"):
        numeric.run(proto, old)


def test_random_calibration_is_realistic_too() -> None:
    proto = load_onnx(bert_like()).to_proto()
    calib = load_calibration("random:16", proto, seed=1)
    ids = calib.arrays["input_ids"]
    assert ids.shape == (16, 40)  # samples x the assumed sequence (capped by the table)
    assert ids.min() >= 0 and ids.max() < VOCAB  # never negative (was normal -> int)
    assert calib.arrays["token_type_ids"].max() < TYPES
    shaped = load_calibration("random:2", proto, input_shapes={"input_ids": (1, 7)})
    assert shaped.arrays["attention_mask"].shape == (2, 7)


# -- every pass on a BERT-shaped encoder, with the default check ----------------------
# passes that refit a pruned model to the original: they follow a prune, on calibration data
AFTER_PRUNE = ("reconstruct", "refit-norms", "distill")
SPEC = {"distill": "distill{epochs=2}"}  # a short run: the check, not the recovery


def _run_spec(name: str) -> tuple[str, str | None]:
    """(pipeline, calibration) that runs pass `name` on a BERT export."""
    if name in AFTER_PRUNE:
        return f"channel-prune{{ratio=0.5}},{SPEC.get(name, name)}", "random:8"
    return name, None


@pytest.mark.parametrize("name", PASSES.names())
def test_every_pass_runs_on_bert_with_the_check(name: str) -> None:
    pipeline, calib = _run_spec(name)
    result = compress(bert_like(), pipeline, calibration=calib)
    for check in result.report["checks"]:
        assert check["ok"] and check["rel_error"] <= TOL, check
    passes = {p["name"]: p for p in result.report["passes"]}
    assert name in passes


def test_bert_prune_matches_its_oracle_at_a_given_shape() -> None:
    result = compress(bert_like(), "channel-prune{ratio=0.5}", input_shapes={"input_ids": (2, 33)})
    stats = result.report["passes"][0]["stats"]
    assert stats["groups_pruned"] >= 1  # the FFN's hidden units
    assert result.report["ratios"]["macs"] < 1
    assert result.report["checks"][0]["ok"]


def test_a_pass_that_cannot_apply_says_why() -> None:
    with pytest.raises(CompressIRError, match="needs calibration data"):
        compress(bert_like(), "reconstruct")
    with pytest.raises(CompressIRError, match="criterion 'taylor' needs a classifier"):
        compress(bert_like(), "channel-prune{criterion=taylor}", calibration="random:4")


def test_check_inputs_that_do_not_fit_are_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A position table shorter than the given sequence: one line, exit 2, no ORT log."""
    with pytest.raises(UsageError, match=r"cannot run the input model.*input_ids\[1, 64\]"):
        compress(bert_like(max_positions=40), "fold-bn", input_shapes={"input_ids": (1, 64)})
    path = tmp_path / "bert.onnx"
    onnx.save(bert_like(max_positions=40), path)
    assert main([str(path), "--pass", "fold-bn", "--input-shape", "input_ids=1,64"]) == 2
    err = capsys.readouterr().err
    assert "indices element out of data bounds" in err and len(err.strip().splitlines()) == 1


# -- the error metric ---------------------------------------------------------------
def _sigmoid_head(bias: float, split: bool) -> onnx.ModelProto:
    """sigmoid(x @ W + bias); `split` computes x @ W as two halves of K (same math)."""
    k, n = 64, 32
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    inits = [numpy_helper.from_array(np.full(n, bias, np.float32), "b")]
    if split:
        inits += [numpy_helper.from_array(w[: k // 2], "w1"),
                  numpy_helper.from_array(w[k // 2 :], "w2")]
        for name, v in (("s0", 0), ("s1", k // 2), ("s2", k), ("ax", 1)):
            inits.append(numpy_helper.from_array(np.array([v], np.int64), name))
        nodes = [helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["xa"]),
                 helper.make_node("Slice", ["x", "s1", "s2", "ax"], ["xb"]),
                 helper.make_node("MatMul", ["xa", "w1"], ["ha"]),
                 helper.make_node("MatMul", ["xb", "w2"], ["hb"]),
                 helper.make_node("Add", ["hb", "ha"], ["h0"])]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"])]
    nodes += [helper.make_node("Add", ["h0", "b"], ["h"]),
              helper.make_node("Sigmoid", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, k])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [4, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_saturated_sigmoid_is_no_false_alarm() -> None:
    """(a) Every output is a saturated sigmoid near 0; the two models are the same math."""
    x = (np.random.default_rng(1).standard_normal((4, 64)) * 3).astype(np.float32)
    want = numeric.run(_sigmoid_head(-16.0, False), {"x": x})["y"]
    got = numeric.run(_sigmoid_head(-16.0, True), {"x": x})["y"]
    assert want.max() < 1e-3  # saturated: everything is near zero
    assert numeric.max_relative_error(got, want) > TOL  # the old metric: a false alarm
    assert numeric.rel_error(got, want) <= TOL
    assert numeric.compare(_sigmoid_head(-16.0, True), _sigmoid_head(-16.0, False),
                           feeds={"x": x}) <= TOL


def test_wrong_slice_is_still_caught_on_a_saturated_head() -> None:
    """(b) A valid model with the wrong input channels of a consumer fails the oracle."""
    proto = tiny_net()
    proto.graph.node.append(helper.make_node("Sigmoid", ["y"], ["p"], name="sigmoid"))
    proto.graph.node[-2].input.append("conv2.b")  # shift the logits deep into saturation
    proto.graph.initializer.append(numpy_helper.from_array(
        np.array([-8.0, -6.0, -9.0, -7.0], np.float32), "conv2.b"))
    proto.graph.output[0].name = "p"
    result = compress(proto, "channel-prune{ratio=0.5}")
    assert result.report["checks"][0]["ok"]
    reference = result.model
    wrong = onnx.ModelProto()
    wrong.CopyFrom(reference)
    w2 = next(i for i in wrong.graph.initializer if i.name == "conv2.w")
    values = numpy_helper.to_array(w2)
    w2.CopyFrom(numpy_helper.from_array(np.roll(values, 1, axis=1), "conv2.w"))
    onnx.checker.check_model(wrong)
    want = numeric.run(reference, {"x": np.ones((1, 3, 8, 8), np.float32)})["p"]
    assert np.median(want) < 0.01  # mostly background, as a detector's map is
    assert numeric.compare(wrong, reference) > 100 * TOL


def test_rel_error_edge_cases() -> None:
    a = np.array([1.0, np.nan, np.inf, -2.0])
    assert numeric.rel_error(a, a.copy()) == 0.0  # the same NaN/inf where they agree
    assert numeric.rel_error(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == float("inf")
    assert numeric.rel_error(np.zeros(3), np.zeros(4)) == float("inf")
    assert numeric.rel_error(np.zeros(0), np.zeros(0)) == 0.0
    # large values are judged relative to themselves, small ones at the output's spread
    want = np.array([1000.0, 0.0, 0.0, 0.0])
    assert numeric.rel_error(want + [1.0, 0, 0, 0], want) == pytest.approx(1 / (1000 + 433.0127),
                                                                           rel=1e-5)
    assert numeric.rel_error(np.array([0.5, 0, 0, 1]), np.array([0.0, 0, 0, 1])) > 0.3


def test_calibration_data_that_does_not_fit_is_named(tmp_path: Path) -> None:
    data = {"input_ids": np.zeros((4, 8), np.int64), "attention_mask": np.ones((4, 8), np.int64),
            "token_type_ids": np.full((4, 8), 3, np.int64)}  # out of the 2-row table
    np.savez(tmp_path / "bad.npz", **data)
    spec = str(tmp_path / "bad.npz")
    with pytest.raises(UsageError, match="cannot run the input model.*out of data bounds"):
        compress(bert_like(), "channel-prune{criterion=apoz}", calibration=spec)
    with pytest.raises(CompressIRError, match=r"calibration data .*bad.npz: onnxruntime fails") \
            as info:
        compress(bert_like(), "channel-prune{criterion=apoz}", calibration=spec, check=False)
    assert "internal error" not in str(info.value)


REAL = ROOT / "tests" / "fixtures" / "real"


@pytest.mark.parametrize("fixture", ["bert_ts", "bert_dynamo"])
@pytest.mark.parametrize("name", PASSES.names())
def test_every_pass_on_real_bert_exports(fixture: str, name: str) -> None:
    """transformers BertModel exported by both torch exporters (the corpus fixtures)."""
    path = REAL / f"{fixture}.onnx"
    if not path.exists():
        pytest.skip(f"{path.name}: the real-export corpus is not in this checkout")
    from compress_ir.frontends.placeholders import fill_placeholders

    proto = fill_placeholders(onnx.load(path), seed=0)
    pipeline, calib = _run_spec(name)
    result = compress(proto, pipeline, calibration=calib)
    assert all(c["ok"] for c in result.report["checks"]), result.report["checks"]
    assert result.report["shapes"]["values"]["token_type_ids"].startswith("ids 0..1")
