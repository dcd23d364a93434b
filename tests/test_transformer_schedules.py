"""Transformer kernels on CPU: row-wise softmax/LayerNorm/RMSNorm and fast math, exact enough.

The row-wise rule (`schedule/rowwise.py`) must own every softmax and LayerNorm (a
fallback means TVM's scalar loops again), and each result is compared with onnxruntime,
also for a row length that is not a multiple of the vector width (no partial-sum split)
and for inputs whose exponentials under- and overflow. Fast math (`pipeline.cpu_math`)
must replace erf/exp by their polynomial forms and stay within the build check's
tolerance over the whole range where GELU and softmax are not saturated.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from test_schedule import X86, _check, _encoder, _import, _model, _w  # noqa: E402

from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402

TIGHT = 2e-6  # fast exp/erf are ~1e-7 relative: much tighter than the build's 1e-4


def _rules_of(stats, word: str) -> list[str]:
    return [r for n, r in stats.rules.items() if word in n]


def _softmax(length: int) -> onnx.ModelProto:
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [], [1, 3, 8, length])


@pytest.mark.parametrize("length", [64, 37])
def test_softmax_is_rowwise_and_matches(length: int, monkeypatch) -> None:
    monkeypatch.setattr("test_schedule.RTOL", TIGHT)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 3, 8, length)) * 30).astype(np.float32)  # exp under/overflow
    stats = _check(_softmax(length), x)
    assert _rules_of(stats, "softmax") == ["rowwise"], stats.as_dict()


def test_layernorm_is_rowwise_and_matches(monkeypatch) -> None:
    monkeypatch.setattr("test_schedule.RTOL", TIGHT)
    rng = np.random.default_rng(1)
    node = helper.make_node("LayerNormalization", ["x", "G", "Z"], ["y"], axis=-1,
                            epsilon=1e-5)
    model = _model([node], [_w(rng, "G", (48,)), _w(rng, "Z", (48,))], [1, 8, 48])
    stats = _check(model, (rng.standard_normal((1, 8, 48)) * 4 + 3).astype(np.float32))
    assert _rules_of(stats, "layer_norm") == ["rowwise"], stats.as_dict()


def test_rmsnorm_is_rowwise_and_matches(monkeypatch) -> None:
    """LLaMA's RMSNorm as exporters write it: x * 1/sqrt(mean(x^2) + eps) * g."""
    monkeypatch.setattr("test_schedule.RTOL", TIGHT)
    rng = np.random.default_rng(2)
    n = helper.make_node
    nodes = [n("Mul", ["x", "x"], ["sq"]),
             n("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             n("Add", ["ms", "eps"], ["mse"]), n("Sqrt", ["mse"], ["rms"]),
             n("Reciprocal", ["rms"], ["inv"]), n("Mul", ["x", "inv"], ["xn"]),
             n("Mul", ["xn", "G"], ["y"])]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"), _w(rng, "G", (64,))]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64])], inits),
        opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    stats = _check(model, rng.standard_normal((1, 8, 64)).astype(np.float32))
    assert stats.counts.get("fallback", 0) == 0, stats.fallback_reasons
    assert _rules_of(stats, "mean") == ["rowwise"], stats.as_dict()  # keepdims=1 rows


def test_gelu_uses_fast_erf_and_matches(monkeypatch) -> None:
    monkeypatch.setattr("test_schedule.RTOL", TIGHT)
    n = helper.make_node
    nodes = [n("Div", ["x", "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]),
             n("Add", ["e", "one"], ["e1"]), n("Mul", ["x", "e1"], ["m"]),
             n("Mul", ["m", "half"], ["y"])]
    consts = [numpy_helper.from_array(np.array(v, np.float32), k)
              for k, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
    model = _model(nodes, consts, [4, 256])
    x = np.linspace(-8, 8, 1024, dtype=np.float32).reshape(4, 256)  # beyond erf's saturation
    _check(model, x)
    prepared = prepare(_import(model)[0], tvm.target.Target(X86)).script()
    assert "fast_erf" in prepared and "T.erf(" not in prepared


def test_encoder_block_has_no_fallback(monkeypatch) -> None:
    """A BERT layer: every softmax/LayerNorm on the row-wise rule, nothing left to TVM."""
    rng = np.random.default_rng(7)
    model = _encoder(rng, seq=16, hidden=32, heads=2, ffn=64)
    stats = _check(model, rng.standard_normal((1, 16, 32)).astype(np.float32))
    assert stats.counts.get("fallback", 0) == 0, stats.fallback_reasons
    assert stats.counts.get("rowwise", 0) >= 2, stats.as_dict()  # softmax + LayerNorm


@pytest.mark.parametrize("rows,cin,cout", [(197, 64, 48), (197, 32, 197)])
def test_prime_token_count_matmul_is_padded_and_exact(rows: int, cin: int, cout: int,
                                                      monkeypatch) -> None:
    """ViT's 197 tokens: rows (and Q.K^T's 197 columns) padded to the tile, never stored.

    The second case also pads the output channels: the write-back then covers 200x208 while
    the result is 197x197, so the epilogue must stay a separate copy (reverse-inlining it
    wrote out of bounds and corrupted the heap). The kernel's own padding is what is tested
    here, so the Relax-level row padding (`pad_rows.py`, which would hand it 200 rows) is
    switched off.
    """
    from compress_ir.backend.schedule.cpu import cpu_params, schedule_cpu_func
    from compress_ir.targets.registry import spec_of_tvm_target

    monkeypatch.setattr("compress_ir.backend.schedule.pipeline.PadRows",
                        tvm.transform.module_pass(lambda mod, _ctx: mod, opt_level=0,
                                                  name="NoPadRows"))

    rng = np.random.default_rng(3)
    n = helper.make_node
    model = _model([n("MatMul", ["x", "W"], ["m"]), n("Add", ["m", "B"], ["y"])],
                   [_w(rng, "W", (cin, cout)), _w(rng, "B", (cout,))], [1, rows, cin])
    stats = _check(model, rng.standard_normal((1, rows, cin)).astype(np.float32))
    assert list(stats.rules.values()) == ["contraction-tile"], stats.as_dict()
    target = tvm.target.Target(X86)
    prepared = prepare(_import(model)[0], target)
    cpu = cpu_params(spec_of_tvm_target(target))
    (func,) = [f for _, f in prepared.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    scheduled, rule, _ = schedule_cpu_func(func, cpu, target)
    assert rule == "contraction-tile" and "_pad" in scheduled.script()
