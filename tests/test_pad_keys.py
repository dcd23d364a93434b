"""Attention with a ragged token count is padded to whole vectors of keys, exactly.

`schedule/pad_keys.py` rewrites matmul(q, k^T) -> scale / mask / cast -> softmax -> matmul(p, v)
when the key count is not a multiple of the vector width (ViT's 197): K^T gets zero columns,
V zero rows, masks zero padding, and a key bias sends the padded keys' probability to 0;
queries are padded to the row tile and cropped after P.V. Each case is compiled for x86 and
compared with onnxruntime on the original model; the rewrite must have happened (or, where
the pattern does not hold, not happened), so a silent no-op cannot pass.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

tvm = pytest.importorskip("tvm")
from test_schedule import X86, _check, _import, _model, _w  # noqa: E402

from compress_ir.backend.schedule.pad_keys import pad_attention_keys  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402
from compress_ir.backend.schedule.rewrite import round_up  # noqa: E402

LANES = 8  # what the bare x86 target of these tests vectorises by


def _attention(rng: np.random.Generator, queries: int, keys: int, *, mask: str = "",
               cast: bool = False, probs_out: bool = False, hidden: int = 16,
               heads: int = 2) -> onnx.ModelProto:
    """One attention: Q from the input x [1, queries, hidden]; K and V from x itself
    (self-attention) or from a constant memory of `keys` tokens (cross-attention).

    mask: '' none, 'keys' an additive [1, 1, 1, keys] mask, 'full' [1, 1, queries, keys],
    'causal' a boolean Where;
    cast: Cast(float) around the softmax, as the TorchScript exporter writes it;
    probs_out: the probabilities also feed a second consumer (the output then adds their
    row sums, which are 1): the old chain must survive for that reader.
    """
    dh = hidden // heads
    n = helper.make_node
    src = "x" if keys == queries else "mem"
    nodes = [n("MatMul", ["x", "Wq"], ["q"]), n("MatMul", [src, "Wk"], ["k"]),
             n("MatMul", [src, "Wv"], ["v"]),
             n("Reshape", ["q", "q_shape"], ["qr"]), n("Reshape", ["k", "kv_shape"], ["kr"]),
             n("Reshape", ["v", "kv_shape"], ["vr"]),
             n("Transpose", ["qr"], ["qh"], perm=[0, 2, 1, 3]),
             n("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1]),
             n("Transpose", ["vr"], ["vh"], perm=[0, 2, 1, 3]),
             n("MatMul", ["qh", "kt"], ["sc"]), n("Div", ["sc", "sqrt_d"], ["s1"])]
    inits = [_w(rng, f"W{p}", (hidden, hidden)) for p in "qkv"]
    inits += [numpy_helper.from_array(np.array([1, queries, heads, dh], np.int64), "q_shape"),
              numpy_helper.from_array(np.array([1, keys, heads, dh], np.int64), "kv_shape"),
              numpy_helper.from_array(np.array(np.sqrt(dh), np.float32), "sqrt_d")]
    if src == "mem":
        inits.append(_w(rng, "mem", (1, keys, hidden)))
    last = "s1"
    if mask == "causal":  # GPT-2 through dynamo: Where(causal, s, float32 min)
        causal = np.tril(np.ones((queries, keys), bool))[None, None]
        inits += [numpy_helper.from_array(causal, "causal"),
                  numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32),
                                          "fmin")]
        nodes.append(n("Where", ["causal", last, "fmin"], ["s2"]))
        last = "s2"
    elif mask:
        shape = (1, 1, 1, keys) if mask == "keys" else (1, 1, queries, keys)
        m = np.where(rng.random(shape) < 0.3, -10000.0, 0.0).astype(np.float32)
        m[..., 0] = 0.0  # every row keeps a key
        inits.append(numpy_helper.from_array(m, "mask"))
        nodes.append(n("Add", [last, "mask"], ["s2"]))
        last = "s2"
    if cast:
        nodes.append(n("Cast", [last], ["s3"], to=onnx.TensorProto.FLOAT))
        last = "s3"
    nodes.append(n("Softmax", [last], ["p"], axis=-1))
    p = "p"
    if cast:
        nodes.append(n("Cast", ["p"], ["pc"], to=onnx.TensorProto.FLOAT))
        p = "pc"
    nodes += [n("MatMul", [p, "vh"], ["ctx"]),
              n("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              n("Reshape", ["ctxt", "merge_shape"], ["y0"])]
    inits.append(numpy_helper.from_array(np.array([1, queries, hidden], np.int64),
                                         "merge_shape"))
    if probs_out:
        nodes += [n("ReduceSum", [p, "axes"], ["ps"], keepdims=0),
                  n("ReduceMean", ["ps"], ["pm"], axes=[1, 2], keepdims=1),
                  n("Add", ["y0", "pm"], ["y"])]
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    else:
        nodes.append(n("Identity", ["y0"], ["y"]))
    return _model(nodes, inits, [1, queries, hidden])


def _softmax_widths(model: onnx.ModelProto) -> list[int]:
    """The key count of every softmax after the rewrite (static Relax shapes)."""
    mod, rewrites = pad_attention_keys(_import(model)[0], LANES)
    text = mod["main"].script()
    lines = [ln for ln in text.splitlines() if "R.nn.softmax(" in ln]
    return [int(ln.split("R.Tensor((")[1].split(")")[0].split(",")[-1]) for ln in lines]


@pytest.mark.parametrize("queries,keys,mask,cast", [
    (21, 21, "", False),        # self-attention, ragged: 21 -> 24 keys, 24 queries
    (21, 21, "keys", True),     # key mask padded with zeros, TorchScript's casts kept
    (13, 13, "full", False),    # a [q, k] mask: rows and columns padded
    (19, 19, "causal", False),  # Where's condition padded with False
    (12, 37, "keys", False),    # cross-attention: queries already whole tiles, keys 37 -> 40
])
def test_ragged_attention_is_padded_and_exact(queries: int, keys: int, mask: str,
                                              cast: bool) -> None:
    rng = np.random.default_rng(queries * 100 + keys)
    model = _attention(rng, queries, keys, mask=mask, cast=cast)
    assert _softmax_widths(model) == [round_up(keys, LANES)]
    x = rng.standard_normal((1, queries, 16)).astype(np.float32)
    stats = _check(model, x)  # compiled for x86, against onnxruntime on the original
    assert stats.counts.get("fallback", 0) == 0, stats.fallback_reasons


def test_probabilities_read_elsewhere_stay_exact() -> None:
    """A second reader of the probabilities keeps the original chain alive beside the
    padded one; both results are right."""
    rng = np.random.default_rng(5)
    model = _attention(rng, 21, 21, probs_out=True)
    assert sorted(_softmax_widths(model)) == [21, 24]
    _check(model, rng.standard_normal((1, 21, 16)).astype(np.float32))


def test_whole_vectors_of_keys_are_left_alone() -> None:
    rng = np.random.default_rng(6)
    model = _attention(rng, 32, 32)
    mod = _import(model)[0]
    assert pad_attention_keys(mod, LANES)[1] == 0
    assert pad_attention_keys(mod, 16)[1] == 0


def test_the_default_build_pads() -> None:
    """`prepare` applies the rewrite for CPU targets (the softmax PrimFunc is 24 wide)."""
    rng = np.random.default_rng(8)
    prepared = prepare(_import(_attention(rng, 21, 21))[0], tvm.target.Target(X86)).script()
    assert "T.int64(24)" in prepared and "softmax" in prepared
