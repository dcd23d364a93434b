"""Sigmoid on the TVM CPU path: a vector polynomial, computed once per element it defines.

EfficientNet-style blocks: SiLU (x * sigmoid(x)) after each conv, and a squeeze-excitation
whose per-channel sigmoid scales a whole feature map. Checked against onnxruntime, also
at inputs where exp overflows in a naive 1 / (1 + exp(-x)).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

tvm = pytest.importorskip("tvm")
from tvm import tirx  # noqa: E402
from tvm_helpers import build_vs_onnxruntime, import_model, one_input_model  # noqa: E402

from compress_ir.backend.schedule.cpu import cpu_params, schedule_cpu_func  # noqa: E402
from compress_ir.backend.schedule.fast_sigmoid import sigmoid_as_exp  # noqa: E402
from compress_ir.backend.schedule.pipeline import prepare  # noqa: E402
from compress_ir.targets.registry import spec_of_tvm_target  # noqa: E402

X86 = tvm.target.Target({"kind": "llvm"})
SHAPE = [1, 16, 12, 12]


def _se_model(seed: int = 0) -> onnx.ModelProto:
    """conv -> SiLU -> squeeze-excitation (pool, conv, SiLU, conv, sigmoid) -> scale."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["c"], ["cs"]),
             helper.make_node("Mul", ["c", "cs"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Conv", ["p", "W2", "B2"], ["q"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["q"], ["qs"]),
             helper.make_node("Mul", ["q", "qs"], ["r"]),
             helper.make_node("Conv", ["r", "W3", "B3"], ["e"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["e"], ["g"]),
             helper.make_node("Mul", ["a", "g"], ["y"])]
    inits = [w("W1", (32, 16, 1, 1)), w("B1", (32,)), w("W2", (8, 32, 1, 1)), w("B2", (8,)),
             w("W3", (32, 8, 1, 1)), w("B3", (32,))]
    return one_input_model(nodes, inits, SHAPE, [1, 32, 12, 12], "se", opset=17, ir_version=8)



@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_silu_and_excitation_match_onnxruntime(scale: float) -> None:
    """scale 60: conv outputs reach |x| ~ 100, where exp(-x) overflows float32."""
    model = _se_model()
    x = (np.random.default_rng(1).standard_normal(SHAPE) * scale).astype(np.float32)
    got, rel, stats = build_vs_onnxruntime(model, x, X86)
    assert np.isfinite(got).all()
    assert rel <= 1e-5, rel
    assert "fallback" not in stats.rules.values(), stats.rules


def test_no_scalar_sigmoid_left() -> None:
    """Every sigmoid becomes exp (then `fast_exp`): no `T.sigmoid` reaches LLVM's libm call."""
    mod, changed = sigmoid_as_exp(import_model(_se_model()))
    assert changed == 3
    prepared = prepare(import_model(_se_model()), X86)
    scripts = [f.script() for _, f in prepared.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert not any("T.sigmoid" in s for s in scripts)
    assert sum("fast_exp" in s for s in scripts) >= 3


def _stores(func: tirx.PrimFunc, buffer: str) -> list[str]:
    """Right-hand sides of the stores into `buffer`, as TVMScript text."""
    pattern = re.compile(rf"^\s*{re.escape(buffer)}\[[^\]]*\] = (.*)$")
    return [m.group(1) for line in func.script().splitlines() if (m := pattern.match(line))]


def test_excitation_computed_once_per_channel() -> None:
    """The excitation conv's epilogue (bias, sigmoid) must not be inlined into the multiply
    that broadcasts it over the feature map: that recomputed exp per pixel (EfficientNet-B0's
    excitation kernels took 0.3-0.7 ms each; the whole model runs 4 % faster without it)."""
    prepared = prepare(import_model(_se_model()), X86)
    cpu = cpu_params(spec_of_tvm_target(X86))
    scaled = [f for _, f in prepared.functions_items() if isinstance(f, tirx.PrimFunc)
              and "conv2d" in f.script() and len(f.params) == 5]  # x_se, W, B, feature map, out
    assert len(scaled) == 1, [gv.name_hint for gv, _ in prepared.functions_items()]
    func, rule, _ = schedule_cpu_func(scaled[0], cpu, X86)
    assert rule == "contraction-gemv", rule
    product = re.compile(r"^\w+\[[^\]]*\] \* \w+\[[^\]]*\]$")  # one load times another
    values = _stores(func, func.params[-1].name)
    assert values and all(product.match(v) for v in values), values
