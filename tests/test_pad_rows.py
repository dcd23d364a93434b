"""A ragged token count is carried padded through row-wise layers, exactly.

`schedule/pad_rows.py` gives each matmul with a constant weight over ragged rows (ViT's
197) a twin on rows rounded up to the row tile, carries it through bias / residual adds,
GELU and LayerNorm, and crops where a layer mixes rows or the graph ends. Each case is
compiled for x86 and compared with onnxruntime on the original model, and the rewrite
must have happened (a LayerNorm over padded rows in the prepared module) or, where rows
are whole tiles, not.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

tvm = pytest.importorskip("tvm")
from test_schedule import X86, _check, _encoder, _import, _model, _w  # noqa: E402

from compress_ir.backend.schedule.pad_rows import pad_rows, ragged  # noqa: E402


def _norm_rows(model) -> list[int]:
    """Row counts of the LayerNorms after the rewrite."""
    mod, _ = pad_rows(_import(model)[0])
    lines = [ln for ln in mod["main"].script().splitlines() if "R.nn.layer_norm(" in ln]
    return [int(ln.split("R.Tensor((")[1].split(")")[0].split(",")[-2]) for ln in lines]


@pytest.mark.parametrize("seq", [19, 23])
def test_encoder_over_ragged_rows_is_padded_and_exact(seq: int) -> None:
    rng = np.random.default_rng(seq)
    model = _encoder(rng, seq=seq, hidden=32, heads=2, ffn=64)
    assert ragged(seq)
    assert _norm_rows(model) == [24, 24]  # both LayerNorms run on the padded stream
    _check(model, rng.standard_normal((1, seq, 32)).astype(np.float32))


def test_whole_tiles_are_left_alone() -> None:
    rng = np.random.default_rng(3)
    model = _encoder(rng, seq=24, hidden=32, heads=2, ffn=64)
    assert pad_rows(_import(model)[0])[1] == 0


def test_a_row_mixing_consumer_reads_the_crop() -> None:
    """Between two Linears, a softmax over the tokens (same shape as its input, but it
    mixes rows) and a mean over them: both must see the 19 real rows only."""
    rng = np.random.default_rng(4)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W1"], ["h"]), n("Softmax", ["h"], ["s"], axis=1),
             n("ReduceMean", ["h"], ["m"], axes=[1], keepdims=1), n("Sub", ["s", "m"], ["c"]),
             n("MatMul", ["c", "W2"], ["y"])]
    model = _model(nodes, [_w(rng, "W1", (16, 32)), _w(rng, "W2", (32, 8))], [1, 19, 16])
    assert pad_rows(_import(model)[0])[1] >= 1
    x = rng.standard_normal((1, 19, 16)).astype(np.float32) + 3.0  # padded zeros != data
    _check(model, x)


def test_the_default_build_pads_rows() -> None:
    from compress_ir.backend.schedule.pipeline import prepare

    rng = np.random.default_rng(5)
    prepared = prepare(_import(_encoder(rng, seq=19, hidden=32, heads=2, ffn=64))[0],
                       tvm.target.Target(X86)).script()
    assert "T.int64(24), T.int64(32)" in prepared  # a [1, 24, 32] buffer: padded rows
