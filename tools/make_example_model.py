"""Build ``tools/models/tiny_cnn.onnx``, a small but realistic CNN example model.

Why: the README, demos and quick manual checks of ``compress-ir`` need one model
that is small (about 150 KB), needs neither torch nor a download, and still has
the topologies channel pruning must get right: a residual Add that couples
channels across layers, a 1x1 projection shortcut, a depthwise (grouped) conv,
a squeeze-excite gate (GlobalAveragePool -> 1x1 convs -> Sigmoid -> Mul), a
channel Concat and a classifier head (GlobalAveragePool -> Flatten -> Gemm).

It is built with ``onnx.helper`` and numpy only. Weights are seeded and fan-in
scaled, and BatchNormalization statistics are sensible (positive variances and
scales), so the model's outputs are neither all equal nor exploding. The file is
byte-for-byte the same on every run with the same seed.

Run from the repository root::

    python tools/make_example_model.py                 # writes tools/models/tiny_cnn.onnx
    compress-ir tools/models/tiny_cnn.onnx --pass 'channel-prune{ratio=0.5}' -o /tmp/x.onnx

Graph (input ``input`` [1,3,32,32] float, output ``logits`` [1,10], opset 17)::

    stem     Conv3x3(3->16) BN ReLU                                    [1,16,32,32]
    res1     Conv3x3 BN ReLU Conv3x3 BN + identity, ReLU               [1,16,32,32]
    res2     Conv3x3/s2(16->32) BN ReLU Conv3x3 BN + Conv1x1/s2 BN, ReLU [1,32,16,16]
    dwsep    DWConv3x3(32, group=32) BN ReLU Conv1x1(32->48) BN ReLU   [1,48,16,16]
    se       GAP Conv1x1(48->12) ReLU Conv1x1(12->48) Sigmoid, Mul     [1,48,16,16]
    concat   [Conv3x3(48->24) BN ReLU, Conv1x1(48->24) BN ReLU]         [1,48,16,16]
    head     GAP Flatten Gemm(48->10)                                  [1,10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # opset 17 needs IR >= 8; older runtimes read IR 8
DEFAULT_OUT = Path(__file__).resolve().parent / "models" / "tiny_cnn.onnx"
NUM_CLASSES = 10


class GraphBuilder:
    """Collects nodes and initializers; every helper returns its output tensor name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def _const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def _weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)  # He init for ReLU nets
        return self._const(name, w)

    def _bias(self, name: str, n: int) -> str:
        return self._const(name, self.rng.normal(0.0, 0.05, n))

    def node(
        self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs: object
    ) -> str:
        out = out or f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(
        self, x: str, name: str, c_in: int, c_out: int, k: int,
        stride: int = 1, group: int = 1, bias: bool = False,
    ) -> str:
        """A square Conv with 'same' padding; no bias when a BN follows."""
        shape = (c_out, c_in // group, k, k)
        inputs = [x, self._weight(f"{name}.weight", shape, (c_in // group) * k * k)]
        if bias:
            inputs.append(self._bias(f"{name}.bias", c_out))
        pad = k // 2
        return self.node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad, pad, pad, pad], group=group)

    def bn(self, x: str, name: str, c: int) -> str:
        """Inference BatchNormalization with positive scale and variance."""
        inputs = [
            x,
            self._const(f"{name}.weight", self.rng.uniform(0.5, 1.5, c)),
            self._const(f"{name}.bias", self.rng.normal(0.0, 0.1, c)),
            self._const(f"{name}.running_mean", self.rng.normal(0.0, 0.1, c)),
            self._const(f"{name}.running_var", self.rng.uniform(0.5, 1.5, c)),
        ]
        return self.node("BatchNormalization", inputs, name, epsilon=1e-5)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def conv_bn_relu(
        self, x: str, name: str, c_in: int, c_out: int, k: int,
        stride: int = 1, group: int = 1, act: bool = True,
    ) -> str:
        y = self.conv(x, f"{name}.conv", c_in, c_out, k, stride, group)
        y = self.bn(y, f"{name}.bn", c_out)
        return self.relu(y, f"{name}.relu") if act else y

    def gemm(self, x: str, name: str, c_in: int, c_out: int, out: str | None = None) -> str:
        w = self._weight(f"{name}.weight", (c_out, c_in), c_in)
        inputs = [x, w, self._bias(f"{name}.bias", c_out)]
        return self.node("Gemm", inputs, name, out=out, transB=1)


def build_tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """The example model (see the module docstring for its layout)."""
    g = GraphBuilder(seed)
    x = g.conv_bn_relu("input", "stem", 3, 16, 3)

    # residual block with an identity shortcut: the Add couples stem and res1 channels
    y = g.conv_bn_relu(x, "res1.a", 16, 16, 3)
    y = g.conv_bn_relu(y, "res1.b", 16, 16, 3, act=False)
    x = g.relu(g.node("Add", [y, x], "res1.add"), "res1.relu")

    # residual block with a 1x1 stride-2 projection shortcut
    y = g.conv_bn_relu(x, "res2.a", 16, 32, 3, stride=2)
    y = g.conv_bn_relu(y, "res2.b", 32, 32, 3, act=False)
    s = g.conv_bn_relu(x, "res2.proj", 16, 32, 1, stride=2, act=False)
    x = g.relu(g.node("Add", [y, s], "res2.add"), "res2.relu")

    # depthwise-separable block
    x = g.conv_bn_relu(x, "dwsep.dw", 32, 32, 3, group=32)
    x = g.conv_bn_relu(x, "dwsep.pw", 32, 48, 1)

    # squeeze-excite gate
    s = g.node("GlobalAveragePool", [x], "se.pool")
    s = g.relu(g.conv(s, "se.fc1", 48, 12, 1, bias=True), "se.relu")
    s = g.node("Sigmoid", [g.conv(s, "se.fc2", 12, 48, 1, bias=True)], "se.gate")
    x = g.node("Mul", [x, s], "se.mul")

    # two branches joined by a channel Concat
    a = g.conv_bn_relu(x, "mix.b3x3", 48, 24, 3)
    b = g.conv_bn_relu(x, "mix.b1x1", 48, 24, 1)
    x = g.node("Concat", [a, b], "mix.concat", axis=1)

    # classifier head
    x = g.node("GlobalAveragePool", [x], "head.pool")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    g.gemm(x, "head.fc", 48, NUM_CLASSES, out="logits")

    graph = helper.make_graph(
        g.nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="compress-ir tools/make_example_model.py", producer_version="1",
        doc_string=f"tiny CNN example for compress-ir (random weights, seed {seed})",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def smoke_test(model: onnx.ModelProto) -> np.ndarray:
    """Run the model in onnxruntime; return the logits (finite, varied, shape [1,10])."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (logits,) = sess.run(["logits"], {"input": x})
    if logits.shape != (1, NUM_CLASSES) or not np.all(np.isfinite(logits)):
        raise SystemExit(f"bad logits: shape {logits.shape}, values {logits}")
    if np.ptp(logits) == 0:
        raise SystemExit("logits are all equal: the weights are degenerate")
    return logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT,
                        help=f"where to write the model (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--no-smoke-test", action="store_true",
                        help="skip the onnxruntime run of the built model")
    args = parser.parse_args(argv)

    model = build_tiny_cnn(args.seed)
    data = model.SerializeToString(deterministic=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out} ({len(data)} bytes, {len(model.graph.node)} nodes, {params} params)")
    if not args.no_smoke_test:
        logits = smoke_test(model)
        print(f"onnxruntime ok: logits {np.array2string(logits[0], precision=3)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
