"""`--repro`: a failed numeric check writes the failing pass's input, cut to what differs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from cli_helpers import cli
from onnx import numpy_helper

from compress_ir.api import compress
from compress_ir.core.errors import EXIT_NUMERIC, NumericMismatchError, UsageError
from compress_ir.core.model import Model
from compress_ir.core.passes import PASSES, Pass, PassContext, PassResult, register_pass
from compress_ir.options import CompressOptions

# two independent heads: only y1 will differ
TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
two (float[1, 4] x) => (float[1, 3] y1, float[1, 3] y2) {
    [fc1] h1 = MatMul (x, w1)
    [act] y1 = Relu (h1)
    [fc2] y2 = MatMul (x, w2)
}
"""
W1 = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def proto() -> onnx.ModelProto:
    model = onnx.parser.parse_model(TEXT)
    model.graph.initializer.extend([numpy_helper.from_array(W1, "w1"),
                                    numpy_helper.from_array(-W1, "w2")])
    return model


def _w1(model: Model) -> np.ndarray:
    return np.asarray(model.tensors()["w1"].values)


class _DoublesW1(Pass):
    """In place: doubles w1 and claims the model it was given as its reference."""

    summary = "test only"
    in_place = True

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        reference = model.to_proto()
        model.tensors()["w1"].values = 2 * _w1(model)
        return PassResult(model, modified=True, reference=reference)


@pytest.fixture
def doubles_w1() -> Iterator[str]:
    name = "test-doubles-w1"
    register_pass(name)(_DoublesW1)
    try:
        yield name
    finally:
        PASSES._items.pop(name, None)  # leave the registry as other tests expect it


def test_reproducer_is_the_pass_input_cut_to_the_differing_output(
    tmp_path: Path, doubles_w1: str
) -> None:
    repro = tmp_path / "repro.onnx"
    with pytest.raises(NumericMismatchError) as info:
        compress(proto(), CompressOptions(passes=[f"fold-bn,{doubles_w1}"], repro=str(repro)))
    got = onnx.load(repro)
    onnx.checker.check_model(got)
    assert [n.name for n in got.graph.node] == ["fc1", "act"]  # fc2 feeds only y2: cut
    assert [o.name for o in got.graph.output] == ["y1"]
    assert [i.name for i in got.graph.initializer] == ["w1"]
    # the input as the in-place pass got it, not as it left it (doubled)
    assert np.array_equal(numpy_helper.to_array(got.graph.initializer[0]), W1)
    meta = {p.key: p.value for p in got.metadata_props}
    assert meta["compress_ir.repro.pass"] == doubles_w1
    assert meta["compress_ir.repro.outputs"] == "y1"
    assert info.value.report["repro"] == {
        "path": str(repro), "pass": doubles_w1, "outputs": ["y1"], "nodes": 2,
        "nodes_in_input": 3, "cut": True}


def test_no_reproducer_when_the_check_passes(tmp_path: Path) -> None:
    repro = tmp_path / "repro.onnx"
    result = compress(proto(), CompressOptions(passes=["sparsify{sparsity=0.25}"],
                                               repro=str(repro)))
    assert not repro.exists() and "repro" not in result.report


def test_repro_path_is_checked_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, doubles_w1: str
) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(proto(), source)
    code, _, err = cli(capsys, source, "--pass", doubles_w1, "--repro", source)
    assert code != EXIT_NUMERIC and "--repro" in err  # refused: it is the input model
    with pytest.raises(UsageError, match="--repro -"):
        compress(proto(), CompressOptions(passes=[doubles_w1], repro="-"))
    code, _, _ = cli(capsys, source, "--pass", doubles_w1, "--repro", tmp_path / "r.onnx")
    assert code == EXIT_NUMERIC and (tmp_path / "r.onnx").exists()
