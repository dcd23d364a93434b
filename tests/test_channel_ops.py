"""Hand-built op-family tests for `channel-prune`.

Every model is tiny and built in code with seeded random weights (fan-in scaled so
activations stay O(1)). Each test runs the pass through the masked-model oracle
(`oracle.prune_and_check`) *and* asserts the structural change that proves the
pruning happened: shrunken weights, rewritten attributes and shape constants.
Barrier tests assert the right groups are blocked and that the reason names the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import TOLERANCE, prune_and_check

from compress_ir.core import numeric
from compress_ir.core.errors import VerificationError
from compress_ir.core.metrics import model_metrics
from compress_ir.core.model import infer_shapes
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.channel_groups import analyse_channels
from compress_ir.passes.analysis.importance import ScoreContext
from compress_ir.passes.analysis.importance.norms import L2Norm
from compress_ir.passes.transform.channel_prune import ChannelPruneOptions, plan_removal
from compress_ir.passes.transform.channel_slicing import apply_removal, masked_reference

PRUNE = "channel-prune{ratio=0.5}"


# -- model builder ------------------------------------------------------------------
class Net:
    """A tiny ONNX graph under construction; node `name` writes tensor `name`."""

    def __init__(self, opset: int = 17, seed: int = 0, domains: dict | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.domains = domains or {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    def input(self, shape: list[int], name: str = "x") -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def const(self, value, name: str | None = None, dtype=None) -> str:
        self.count += 1
        name = name or f"const{self.count}"
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def rand(self, shape, name: str | None = None, fan: int | None = None,
             positive: bool = False) -> str:
        fan = fan or max(1, int(np.prod(shape[1:])))
        value = self.rng.standard_normal(shape) / np.sqrt(fan)
        if positive:
            value = np.abs(value) + 0.5
        return self.const(value.astype(np.float32), name)

    def op(self, op: str, inputs: list[str], name: str, outputs: int = 1,
           domain: str | None = None, **attrs) -> str | list[str]:
        outs = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1,
             bias: bool = True, **attrs) -> str:
        inputs = [x, self.rand((cout, cin // group, k, k), f"{name}.w")]
        if bias:
            inputs.append(self.rand((cout,), f"{name}.b", fan=4))
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", inputs, name, group=group, **attrs)

    def bn(self, x: str, c: int, name: str) -> str:
        params = [self.rand((c,), f"{name}.scale", fan=1, positive=True),
                  self.rand((c,), f"{name}.bias", fan=4),
                  self.rand((c,), f"{name}.mean", fan=4),
                  self.rand((c,), f"{name}.var", fan=1, positive=True)]
        return self.op("BatchNormalization", [x, *params], name)

    def head(self, x: str, c: int, classes: int = 3, name: str = "fc") -> str:
        pooled = self.op("GlobalAveragePool", [x], f"{name}_gap")
        flat = self.op("Flatten", [pooled], f"{name}_flat")
        return self.op("Gemm", [flat, self.rand((classes, c), f"{name}.w"),
                                self.rand((classes,), f"{name}.b", fan=4)], name, transB=1)

    def build(self, *outputs: str, shapes: dict | None = None) -> onnx.ModelProto:
        """The model; output shapes come from inference unless given in `shapes`."""
        shapes = shapes or {}
        graph = helper.make_graph(
            self.nodes, "test", self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes.get(o)) for o in outputs],
            self.inits,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        model = helper.make_model(graph, opset_imports=opsets,
                                  ir_version=10 if self.opset >= 21 else 8)
        if len(shapes) < len(outputs):
            inferred = onnx.shape_inference.infer_shapes(model)
            del model.graph.output[:]
            model.graph.output.extend(inferred.graph.output)
        return model


# -- inspection helpers -------------------------------------------------------------
def node(proto: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.name == name)


def attr(proto: onnx.ModelProto, name: str, key: str):
    found = [a for a in node(proto, name).attribute if a.name == key]
    return helper.get_attribute_value(found[0]) if found else None


def value(proto: onnx.ModelProto, tensor: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == tensor)


def inp(proto: onnx.ModelProto, name: str, index: int = 1) -> np.ndarray:
    """The constant feeding input `index` of node `name`."""
    return value(proto, node(proto, name).input[index])


def kept_indices(original: np.ndarray, pruned: np.ndarray, axis: int = 0) -> list[int]:
    """Which slices of `original` along `axis` survive in `pruned` (in order)."""
    orig = np.moveaxis(original, axis, 0)
    kept = []
    for row in np.moveaxis(pruned, axis, 0):
        matches = [i for i in range(orig.shape[0]) if np.array_equal(orig[i], row)]
        assert len(matches) == 1, "pruned slice not found exactly once in the original"
        kept.append(matches[0])
    assert kept == sorted(kept), "surviving channels changed order"
    return kept


def row(outcome, producer: str) -> dict:
    """The plan row of the group that `producer` belongs to."""
    return next(r for r in outcome.result.details["groups"] if producer in r["producers"])


def conv_chain(act=None, channels: int = 8, opset: int = 17) -> tuple[Net, str]:
    """x -> conv1(3->channels) -> [act] ; returns the net and the last tensor."""
    n = Net(opset)
    t = n.conv(n.input([1, 3, 8, 8]), 3, channels, "conv1")
    return n, (act(n, t) if act else t)


# -- producers ----------------------------------------------------------------------
def test_conv():
    n, t = conv_chain()
    t = n.op("Relu", [t], "relu1")
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape == (4, 3, 3, 3)
    assert inp(out.pruned, "conv1", 2).shape == (4,)
    assert inp(out.pruned, "conv2").shape == (4, 4, 3, 3)
    # conv2 writes the graph output: its own channels stay, blocked by the output
    assert inp(out.pruned, "conv2", 2).shape == (4,)
    assert any("graph output 'conv2'" in r for r in row(out, "conv2")["blocked_by"])
    assert out.result.stats["groups_pruned"] == 1
    # the surviving conv2 input columns are exactly the kept conv1 filters
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    assert np.array_equal(inp(out.pruned, "conv2"), inp(out.original, "conv2")[:, kept])


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv(multiplier):
    n, t = conv_chain()
    t = n.conv(t, 8, 8 * multiplier, "dw", group=8)
    t = n.op("Relu", [t], "relu")
    proto = n.build(n.conv(t, 8 * multiplier, 4, "conv3", k=1))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "dw").shape == (4 * multiplier, 1, 3, 3)
    assert inp(out.pruned, "dw", 2).shape == (4 * multiplier,)
    assert attr(out.pruned, "dw", "group") == 4
    assert inp(out.pruned, "conv3").shape == (4, 4 * multiplier, 1, 1)
    # the depthwise filters follow their input channel
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    dw_rows = [c * multiplier + m for c in kept for m in range(multiplier)]
    assert np.array_equal(inp(out.pruned, "dw"), inp(out.original, "dw")[dw_rows])


def test_grouped_conv():
    n, t = conv_chain(channels=16)
    t = n.conv(t, 16, 16, "gconv", group=4)
    t = n.op("Relu", [t], "relu")
    proto = n.build(n.conv(t, 16, 4, "conv3", k=1))
    out = prune_and_check(proto, PRUNE)
    # conv1's channel j of every gconv group is tied: 4 units of 4 channels, keep 2
    assert row(out, "conv1")["size"] == 4 and row(out, "conv1")["kept"] == 2
    assert inp(out.pruned, "conv1").shape[0] == 8
    # gconv's own output channels are tied the same way
    assert row(out, "gconv")["size"] == 4 and row(out, "gconv")["kept"] == 2
    assert inp(out.pruned, "gconv").shape == (8, 2, 3, 3)
    assert attr(out.pruned, "gconv", "group") == 4  # not depthwise: group count unchanged
    assert inp(out.pruned, "conv3").shape == (4, 8, 1, 1)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    local = [k % 4 for k in kept]
    assert local[:2] * 4 == local, "grouped input channels must be removed rectangularly"


def test_conv_transpose():
    n, t = conv_chain()
    t = n.op("ConvTranspose", [t, n.rand((8, 6, 3, 3), "deconv.w", fan=8 * 9 // 4),
                               n.rand((6,), "deconv.b", fan=4)],
             "deconv", strides=[2, 2], pads=[1, 1, 0, 0])
    t = n.op("Relu", [t], "relu")
    proto = n.build(n.conv(t, 6, 4, "conv3"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "deconv").shape == (4, 3, 3, 3)
    assert inp(out.pruned, "deconv", 2).shape == (3,)
    assert inp(out.pruned, "conv3").shape == (4, 3, 3, 3)


def _einsum_net(second: str, y: str = "2, 5, 4") -> onnx.ModelProto:
    proto = onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        einsum (float[2, 5, 6] x) => (float[{y}] y) {{
            [mm1] h = Einsum <equation = "bsk,kn->bsn"> (x, mm1_w)
            [relu] r = Relu (h)
            [mm2] y = Einsum <equation = "{second}"> (r, mm2_w)
        }}""")
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((6, 8)) / 6**0.5).astype(np.float32), "mm1_w"),
        numpy_helper.from_array((rng.standard_normal((4, 8)) / 8**0.5).astype(np.float32), "mm2_w"),
    ])
    return proto


def test_einsum_linear_layers():
    """Einsum as a linear layer (Keras' EinsumDense, torch.einsum), W held as [k, n] or [n, k]."""
    out = prune_and_check(_einsum_net("...k,nk->...n"), PRUNE)
    kept = kept_indices(inp(out.original, "mm1"), inp(out.pruned, "mm1"), axis=1)
    assert len(kept) == 4
    assert np.array_equal(inp(out.pruned, "mm2"), inp(out.original, "mm2")[:, kept])
    # MACs: y[2, 5, n] x k per layer: 2*5*8*6 + 2*5*4*8 before, 2*5*4*6 + 2*5*4*4 after
    assert model_metrics(out.original)["macs"] == 800
    assert model_metrics(out.pruned)["macs"] == 400
    # an equation that is not x[..., k] . W[k, n] -> y[..., n] is a barrier naming the node
    blocked = prune_and_check(_einsum_net("bsk,nk->bns", "2, 4, 5"), PRUNE, expect_modified=False)
    assert any("Einsum node 'mm2'" in r and "not a linear layer" in r
               for r in row(blocked, "mm1")["blocked_by"])


# -- normalisations -----------------------------------------------------------------
def test_batch_norm():
    n, t = conv_chain()
    t = n.op("Relu", [n.bn(t, 8, "bn")], "relu")
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    assert len(kept) == 4
    for idx in range(1, 5):
        assert np.array_equal(inp(out.pruned, "bn", idx), inp(out.original, "bn", idx)[kept])


def test_instance_norm():
    n, t = conv_chain()
    t = n.op("InstanceNormalization",
             [t, n.rand((8,), "in.scale", fan=1, positive=True), n.rand((8,), "in.b", fan=4)],
             "inorm")
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "inorm", 1).shape == (4,)
    assert inp(out.pruned, "inorm", 2).shape == (4,)
    assert inp(out.pruned, "conv2").shape[1] == 4


def test_group_norm():
    # opset 21: scale and bias have one entry per channel (opset 18's per-group form is
    # deprecated and refused by the checker)
    n, t = conv_chain(opset=21)
    t = n.op("GroupNormalization",
             [t, n.rand((8,), "gn.scale", fan=1, positive=True), n.rand((8,), "gn.b", fan=4)],
             "gnorm", num_groups=4)
    # onnx infers no shape through GroupNormalization-21: state the output's
    proto = n.build(n.conv(t, 8, 4, "conv2"), shapes={"conv2": [1, 4, 8, 8]})
    out = prune_and_check(proto, PRUNE)
    # statistics are per group of 2 channels: whole groups go, num_groups 4 -> 2
    assert row(out, "conv1")["size"] == 4
    assert attr(out.pruned, "gnorm", "num_groups") == 2
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    assert len(kept) == 4 and all(kept[i] // 2 == kept[i + 1] // 2 for i in (0, 2))
    assert np.array_equal(inp(out.pruned, "gnorm", 1), inp(out.original, "gnorm", 1)[kept])
    assert np.array_equal(inp(out.pruned, "gnorm", 2), inp(out.original, "gnorm", 2)[kept])


# -- element-wise -------------------------------------------------------------------
ACTIVATIONS = {
    "Relu": lambda n, t: n.op("Relu", [t], "act"),
    "Clip": lambda n, t: n.op("Clip", [t, n.const(np.float32(-0.5)), n.const(np.float32(0.7))],
                              "act"),
    "HardSwish": lambda n, t: n.op("HardSwish", [t], "act"),
    "HardSigmoid": lambda n, t: n.op("HardSigmoid", [t], "act", alpha=0.3, beta=0.4),
    "Sigmoid": lambda n, t: n.op("Sigmoid", [t], "act"),
    "LeakyRelu": lambda n, t: n.op("LeakyRelu", [t], "act", alpha=0.2),
}


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_unary_activation(op):
    n, t = conv_chain(ACTIVATIONS[op])
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "conv2").shape[1] == 4


def test_residual_add_two_convs():
    n = Net()
    x = n.input([1, 3, 8, 8])
    t = n.op("Add", [n.conv(x, 3, 8, "conv_a"), n.conv(x, 3, 8, "conv_b")], "add")
    t = n.op("Relu", [t], "relu")
    proto = n.build(n.conv(t, 8, 4, "conv3"))
    out = prune_and_check(proto, PRUNE)
    r = row(out, "conv_a")
    assert sorted(r["producers"]) == ["conv_a", "conv_b"] and (r["size"], r["kept"]) == (8, 4)
    ka = kept_indices(inp(out.original, "conv_a"), inp(out.pruned, "conv_a"))
    kb = kept_indices(inp(out.original, "conv_b"), inp(out.pruned, "conv_b"))
    assert ka == kb  # the same channels leave both branches
    assert inp(out.pruned, "conv3").shape[1] == 4


def test_residual_identity_shortcut():
    n = Net()
    stem = n.op("Relu", [n.conv(n.input([1, 3, 8, 8]), 3, 8, "conv0")], "relu0")
    t = n.op("Relu", [n.bn(n.conv(stem, 8, 8, "conv1"), 8, "bn1")], "relu1")
    t = n.bn(n.conv(t, 8, 8, "conv2"), 8, "bn2")
    t = n.op("Relu", [n.op("Add", [stem, t], "add")], "relu2")
    proto = n.build(n.head(t, 8))
    out = prune_and_check(proto, PRUNE)
    assert sorted(row(out, "conv0")["producers"]) == ["conv0", "conv2"]
    assert row(out, "conv1")["producers"] == ["conv1"]
    assert inp(out.pruned, "conv0").shape[0] == 4
    assert inp(out.pruned, "conv1").shape == (4, 4, 3, 3)
    assert inp(out.pruned, "conv2").shape == (4, 4, 3, 3)
    assert inp(out.pruned, "fc").shape == (3, 4)


def test_per_channel_constants():
    n, t = conv_chain()
    t = n.op("Mul", [t, n.rand((8, 1, 1), "mul.c", fan=1)], "mul")
    t = n.op("Add", [n.rand((8, 1, 1), "add.c", fan=1), t], "add")
    t = n.op("Div", [t, n.rand((8, 1, 1), "div.c", fan=1, positive=True)], "div")
    t = n.op("Mul", [t, n.const(np.float32(0.5))], "scalar")  # broadcast scalar: untouched
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    assert np.array_equal(inp(out.pruned, "mul", 1), inp(out.original, "mul", 1)[kept])
    assert np.array_equal(inp(out.pruned, "add", 0), inp(out.original, "add", 0)[kept])
    assert np.array_equal(inp(out.pruned, "div", 1), inp(out.original, "div", 1)[kept])
    assert inp(out.pruned, "scalar", 1).shape == ()


def test_squeeze_excite():
    n, t = conv_chain(lambda n, t: n.op("Relu", [t], "relu1"))
    s = n.op("GlobalAveragePool", [t], "se_pool")
    s = n.op("Relu", [n.conv(s, 8, 2, "se_reduce", k=1)], "se_relu")
    s = n.op("Sigmoid", [n.conv(s, 2, 8, "se_expand", k=1)], "se_gate")
    t = n.op("Mul", [t, s], "se_mul")
    proto = n.build(n.conv(t, 8, 4, "conv3"))
    out = prune_and_check(proto, PRUNE)
    assert sorted(row(out, "conv1")["producers"]) == ["conv1", "se_expand"]
    assert row(out, "se_reduce")["kept"] == 1
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "se_reduce").shape == (1, 4, 1, 1)
    assert inp(out.pruned, "se_expand").shape == (4, 1, 1, 1)
    assert inp(out.pruned, "conv3").shape[1] == 4


# -- channel-axis layout ops --------------------------------------------------------
def test_concat_channels():
    n = Net()
    x = n.input([1, 3, 8, 8])
    t = n.op("Concat", [n.conv(x, 3, 4, "conv_a"), n.conv(x, 3, 6, "conv_b")], "cat", axis=1)
    proto = n.build(n.conv(t, 10, 4, "conv3"))
    out = prune_and_check(proto, PRUNE)
    ka = kept_indices(inp(out.original, "conv_a"), inp(out.pruned, "conv_a"))
    kb = kept_indices(inp(out.original, "conv_b"), inp(out.pruned, "conv_b"))
    assert (len(ka), len(kb)) == (2, 3)
    cols = ka + [4 + k for k in kb]  # conv_b's channels sit after conv_a's in the concat
    assert np.array_equal(inp(out.pruned, "conv3"), inp(out.original, "conv3")[:, cols])


def test_concat_with_graph_input():
    n = Net()
    x = n.input([1, 3, 8, 8])
    t = n.op("Concat", [n.conv(x, 3, 8, "conv_a"), x], "cat", axis=1)
    proto = n.build(n.conv(t, 11, 4, "conv3"))
    out = prune_and_check(proto, PRUNE)
    ka = kept_indices(inp(out.original, "conv_a"), inp(out.pruned, "conv_a"))
    assert len(ka) == 4
    w3 = inp(out.pruned, "conv3")
    assert w3.shape[1] == 4 + 3  # the graph-input channels all stay
    assert np.array_equal(w3, inp(out.original, "conv3")[:, ka + [8, 9, 10]])


@pytest.mark.parametrize("opset", [13, 18])
def test_split_channels(opset):
    n, t = conv_chain(opset=opset)
    if opset == 18:
        a, b = n.op("Split", [t], "split", outputs=2, axis=1, num_outputs=2)
        sizes = (4, 4)
    else:
        a, b = n.op("Split", [t, n.ints([3, 5])], "split", outputs=2, axis=1)
        sizes = (3, 5)
    t = n.op("Add", [n.conv(a, sizes[0], 4, "conv_a"), n.conv(b, sizes[1], 4, "conv_b")], "add")
    proto = n.build(t)
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    new = [sum(k < sizes[0] for k in kept), sum(k >= sizes[0] for k in kept)]
    assert attr(out.pruned, "split", "num_outputs") is None
    assert inp(out.pruned, "split").tolist() == new
    assert inp(out.pruned, "conv_a").shape[1] == new[0]
    assert inp(out.pruned, "conv_b").shape[1] == new[1]


def test_split_piece_is_never_emptied():
    # conv1's filter 0 is the weakest and alone in the first Split output: removing it
    # would leave an empty tensor that onnxruntime cannot run, so it must stay
    n = Net()
    w = n.rng.standard_normal((8, 3, 3, 3)) / np.sqrt(27)
    w[0] *= 0.01
    t = n.op("Conv", [n.input([1, 3, 8, 8]), n.const(w, "conv1.w")], "conv1", pads=[1] * 4)
    a, b = n.op("Split", [t, n.ints([1, 7])], "split", outputs=2, axis=1)
    t = n.op("Concat", [n.op("GlobalAveragePool", [a], "gap_a"),
                        n.op("GlobalAveragePool", [b], "gap_b")], "cat", axis=1)
    t = n.op("Flatten", [t], "flat")
    proto = n.build(n.op("Gemm", [t, n.rand((8, 3), "fc.w")], "fc"))
    out = prune_and_check(proto, "channel-prune{ratio=0.6}")
    sizes = inp(out.pruned, "split").tolist()
    assert sizes[0] == 1 and sum(sizes) == inp(out.pruned, "conv1").shape[0] < 8
    assert inp(out.pruned, "fc").shape == (sum(sizes), 3)


@pytest.mark.parametrize("opset", [13, 18])
def test_split_pieces_keep_a_channel_each(opset):
    n, t = conv_chain(opset=opset)
    outs = n.op("Split", [t, n.ints([1, 1, 6])], "split", outputs=3, axis=1)
    t = n.op("Concat", outs, "cat", axis=1)
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, "channel-prune{ratio=0.8}")
    sizes = inp(out.pruned, "split").tolist()
    assert min(sizes) >= 1 and sum(sizes) == inp(out.pruned, "conv2").shape[1] < 8


def test_slice_channels():
    n, t = conv_chain()
    t = n.op("Slice", [t, n.ints([2]), n.ints([7]), n.ints([1])], "slice")
    proto = n.build(n.conv(t, 5, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    start, stop = sum(k < 2 for k in kept), sum(k < 7 for k in kept)
    assert inp(out.pruned, "slice", 1).tolist() == [start]
    assert inp(out.pruned, "slice", 2).tolist() == [stop]
    inside = [i for i, k in enumerate(kept) if 2 <= k < 7]
    assert inp(out.pruned, "conv2").shape[1] == len(inside) == stop - start


def test_pooling():
    n, t = conv_chain()
    t = n.op("MaxPool", [t], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    t = n.op("AveragePool", [t], "avgpool", kernel_shape=[2, 2], strides=[1, 1])
    t = n.conv(t, 8, 8, "conv2")
    proto = n.build(n.head(t, 8))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "conv2").shape == (4, 4, 3, 3)
    assert inp(out.pruned, "fc").shape == (3, 4)


def test_pad_spatial():
    n, t = conv_chain()
    t = n.op("Pad", [t, n.ints([0, 0, 1, 2, 0, 0, 2, 1])], "pad", mode="reflect")
    proto = n.build(n.conv(t, 8, 4, "conv2", pads=[0, 0, 0, 0]))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "conv2").shape[1] == 4


def test_pad_channel_axis_blocks():
    n, t = conv_chain()
    t = n.op("Pad", [t, n.ints([0, 1, 0, 0, 0, 1, 0, 0])], "pad")
    proto = n.build(n.head(n.conv(t, 10, 4, "conv2"), 4))
    out = prune_and_check(proto, PRUNE)
    assert any("Pad node 'pad'" in r for r in row(out, "conv1")["blocked_by"])
    assert inp(out.pruned, "conv1").shape[0] == 8
    assert inp(out.pruned, "conv2").shape[0] == 2  # the next group still prunes


@pytest.mark.parametrize("mode", ["scales", "sizes"])
def test_resize(mode):
    n, t = conv_chain()
    if mode == "scales":
        inputs = [t, "", n.const(np.array([1, 1, 2, 2], np.float32))]
    else:
        inputs = [t, "", "", n.ints([1, 8, 12, 12])]
    t = n.op("Resize", inputs, "resize", mode="nearest")
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "conv2").shape[1] == 4
    if mode == "sizes":
        assert inp(out.pruned, "resize", 3).tolist() == [1, 4, 12, 12]


@pytest.mark.parametrize("kind", ["Flatten", "Reshape", "Reshape-1"])
def test_flatten_reshape_gemm(kind):
    n = Net()
    t = n.conv(n.input([1, 3, 4, 4]), 3, 8, "conv1", strides=[2, 2])  # -> [1, 8, 2, 2]
    if kind == "Flatten":
        t = n.op("Flatten", [t], "flat")
        gemm_w = n.rand((32, 5), "fc.w")
        t = n.op("Gemm", [t, gemm_w, n.rand((5,), "fc.b", fan=4)], "fc")
    else:
        t = n.op("Reshape", [t, n.ints([1, -1 if kind == "Reshape-1" else 32])], "flat")
        gemm_w = n.rand((5, 32), "fc.w")
        t = n.op("Gemm", [t, gemm_w, n.rand((5,), "fc.b", fan=4)], "fc", transB=1)
    out = prune_and_check(n.build(t), PRUNE)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    assert len(kept) == 4
    features = [c * 4 + s for c in kept for s in range(4)]  # channel-major, 2x2 spatial
    k_axis = 0 if kind == "Flatten" else 1
    want = np.take(inp(out.original, "fc"), features, axis=k_axis)
    assert np.array_equal(inp(out.pruned, "fc"), want)  # lost 4 channels x 4 positions
    if kind == "Reshape":
        assert inp(out.pruned, "flat", 1).tolist() == [1, 16]
    if kind == "Reshape-1":
        assert inp(out.pruned, "flat", 1).tolist() == [1, -1]  # -1 needs no rewrite


def test_matmul_features():
    n = Net()
    x = n.input([1, 6, 5])
    t = n.op("MatMul", [x, n.rand((5, 8), "mm1.w")], "mm1")
    t = n.op("Add", [t, n.rand((8,), "mm1.b", fan=4)], "bias1")
    t = n.op("Relu", [t], "relu")
    proto = n.build(n.op("MatMul", [t, n.rand((8, 4), "mm2.w")], "mm2"))
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "mm1"), inp(out.pruned, "mm1"), axis=1)
    assert len(kept) == 4
    assert np.array_equal(inp(out.pruned, "bias1"), inp(out.original, "bias1")[kept])
    assert np.array_equal(inp(out.pruned, "mm2"), inp(out.original, "mm2")[kept])


def test_squeeze_unsqueeze():
    n, t = conv_chain()
    t = n.op("GlobalAveragePool", [t], "gap")
    t = n.op("Squeeze", [t, n.ints([3])], "squeeze")  # [1, 8, 1]
    t = n.op("Unsqueeze", [t, n.ints([0])], "unsqueeze")  # [1, 1, 8, 1]
    t = n.op("Squeeze", [t, n.ints([0, 3])], "squeeze2")  # [1, 8]
    proto = n.build(n.op("Gemm", [t, n.rand((8, 3), "fc.w")], "fc"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "fc").shape == (4, 3)


def test_transpose_to_matmul():
    n, t = conv_chain()
    t = n.op("Transpose", [t], "nhwc", perm=[0, 2, 3, 1])
    proto = n.build(n.op("MatMul", [t, n.rand((8, 5), "proj.w")], "proj"))
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1"))
    assert np.array_equal(inp(out.pruned, "proj"), inp(out.original, "proj")[kept])


def test_dropout_identity():
    n, t = conv_chain()
    t = n.op("Identity", [n.op("Dropout", [t], "drop")], "ident")
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    assert inp(out.pruned, "conv2").shape[1] == 4


def test_channel_shuffle():
    n, t = conv_chain()
    t = n.op("Relu", [n.conv(t, 8, 8, "g1", group=2)], "relu1")
    t = n.op("Reshape", [t, n.ints([1, 2, 4, 8, 8])], "shuffle_split")
    t = n.op("Transpose", [t], "shuffle_swap", perm=[0, 2, 1, 3, 4])
    t = n.op("Reshape", [t, n.ints([1, 8, 8, 8])], "shuffle_merge")
    t = n.conv(t, 8, 8, "g2", group=2)
    proto = n.build(n.head(t, 8))
    out = prune_and_check(proto, PRUNE)
    # g1's channel j of both groups is tied, and the shuffle then ties g1's groups to
    # each other through g2's grouped input: 2 units of 4 channels, keep 1
    assert (row(out, "g1")["size"], row(out, "g1")["kept"]) == (2, 1)
    c = inp(out.pruned, "g1").shape[0]
    assert c == 4
    assert inp(out.pruned, "shuffle_split", 1).tolist() == [1, 2, c // 2, 8, 8]
    assert inp(out.pruned, "shuffle_merge", 1).tolist() == [1, c, 8, 8]
    assert inp(out.pruned, "g2").shape[1] * 2 == c
    assert attr(out.pruned, "g1", "group") == attr(out.pruned, "g2", "group") == 2


# -- barriers -----------------------------------------------------------------------
def _assert_blocked(out, producer: str, text: str) -> None:
    r = row(out, producer)
    assert r["status"] == "blocked", r
    assert any(text in reason for reason in r["blocked_by"]), r["blocked_by"]


def test_lrn_barrier():
    n, t = conv_chain()
    t = n.op("LRN", [t], "lrn", size=3)
    proto = n.build(n.head(n.conv(t, 8, 8, "conv2"), 8))
    out = prune_and_check(proto, PRUNE)
    _assert_blocked(out, "conv1", "LRN node 'lrn'")
    assert inp(out.pruned, "conv1").shape[0] == 8
    assert inp(out.pruned, "conv2").shape == (4, 8, 3, 3)


def test_softmax_over_channels_barrier():
    n, t = conv_chain()
    t = n.op("Softmax", [t], "softmax", axis=1)
    proto = n.build(n.head(n.conv(t, 8, 8, "conv2"), 8))
    out = prune_and_check(proto, PRUNE)
    _assert_blocked(out, "conv1", "Softmax node 'softmax'")
    assert inp(out.pruned, "conv1").shape[0] == 8


def test_softmax_over_space_is_not_a_barrier():
    n, t = conv_chain()
    t = n.op("Softmax", [t], "softmax", axis=-1)
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    out = prune_and_check(proto, PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4


def test_reduce_over_channels_barrier():
    n, t = conv_chain()
    mean = n.op("ReduceMean", [t], "chan_mean", axes=[1], keepdims=1)
    t = n.op("Mul", [n.conv(t, 8, 8, "conv2"), mean], "scale")
    proto = n.build(n.head(t, 8))
    out = prune_and_check(proto, PRUNE)
    _assert_blocked(out, "conv1", "ReduceMean node 'chan_mean'")
    assert row(out, "conv2")["status"] == "pruned"


def test_custom_op_barrier():
    n = Net(domains={"com.example": 1})
    t = n.op("Relu", [n.conv(n.input([1, 3, 8, 8]), 3, 8, "conv1")], "relu")
    u = n.op("Foo", [t], "foo", domain="com.example")
    v = n.head(n.conv(t, 8, 8, "conv2"), 8)
    graph = helper.make_graph(
        n.nodes, "test", n.inputs,
        [helper.make_tensor_value_info(u, TensorProto.FLOAT, [1, 8, 8, 8]),
         helper.make_tensor_value_info(v, TensorProto.FLOAT, [1, 3])],
        n.inits,
    )
    proto = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    analysis = analyse_channels(load_onnx(proto))
    by_producer = {r.node: g for g in analysis.groups for r in g.roots}
    blocked = by_producer["conv1"].blocked
    assert blocked and any("'foo'" in r and "Foo" in r for r in blocked), blocked
    assert by_producer["conv2"].prunable


def test_graph_output_exposes_channels():
    n, t = conv_chain(lambda n, t: n.op("Relu", [t], "relu1"))
    proto = n.build(t, n.head(n.conv(t, 8, 8, "conv2"), 8))
    out = prune_and_check(proto, PRUNE)
    _assert_blocked(out, "conv1", "graph output 'relu1'")
    assert row(out, "conv2")["status"] == "pruned"
    assert inp(out.pruned, "conv1").shape[0] == 8
    assert inp(out.pruned, "conv2").shape == (4, 8, 3, 3)


def test_everything_blocked_leaves_model_unmodified():
    n, t = conv_chain()
    proto = n.build(n.op("LRN", [t], "lrn", size=3))
    out = prune_and_check(proto, PRUNE, expect_modified=False)
    _assert_blocked(out, "conv1", "LRN node 'lrn'")


# -- options ------------------------------------------------------------------------
def _two_layer(channels: int = 8) -> onnx.ModelProto:
    n, t = conv_chain(lambda n, t: n.op("Relu", [t], "relu1"), channels=channels)
    t = n.op("Relu", [n.conv(t, channels, channels, "conv2")], "relu2")
    return n.build(n.head(t, channels))


def test_ratio_zero_is_a_no_op():
    proto = _two_layer()
    out = prune_and_check(proto, "channel-prune{ratio=0}", expect_modified=False)
    assert out.result.stats["units_removed"] == 0
    after = out.result.model.to_proto()
    before = load_onnx(proto).to_proto()
    assert {i.name: numpy_helper.to_array(i).tolist() for i in after.graph.initializer} == {
        i.name: numpy_helper.to_array(i).tolist() for i in before.graph.initializer}


def test_round_to():
    proto = _two_layer(channels=32)
    out = prune_and_check(proto, "channel-prune{ratio=0.6,round-to=8}")
    # 32 - floor(0.6 * 32) = 13 kept, rounded up to 16
    assert inp(out.pruned, "conv1").shape[0] == 16
    assert inp(out.pruned, "conv2").shape == (16, 16, 3, 3)


def test_min_channels():
    proto = _two_layer()
    out = prune_and_check(proto, "channel-prune{ratio=0.9,min-channels=3}")
    assert inp(out.pruned, "conv1").shape[0] == 3
    assert inp(out.pruned, "conv2").shape == (3, 3, 3, 3)


def test_exclude():
    proto = _two_layer()
    out = prune_and_check(proto, "channel-prune{ratio=0.5,exclude=[conv1]}")
    assert row(out, "conv1")["status"] == "excluded"
    assert row(out, "conv1")["kept"] == 8
    assert inp(out.pruned, "conv1").shape[0] == 8
    assert inp(out.pruned, "conv2").shape == (4, 8, 3, 3)


def _skewed_pair() -> onnx.ModelProto:
    """conv_a: 8 filters of equal norm; conv_b: 2 strong and 6 near-zero filters."""
    n = Net()
    x = n.input([1, 3, 8, 8])
    w_a = n.rng.standard_normal((8, 3, 3, 3))
    w_a /= np.linalg.norm(w_a.reshape(8, -1), axis=1)[:, None, None, None]
    w_b = n.rng.standard_normal((8, 8, 3, 3)) / np.sqrt(72)
    w_b[2:] *= 0.01
    t = n.op("Relu", [n.op("Conv", [x, n.const(w_a, "conv_a.w")], "conv_a", pads=[1] * 4)], "r1")
    t = n.op("Relu", [n.op("Conv", [t, n.const(w_b, "conv_b.w")], "conv_b", pads=[1] * 4)], "r2")
    return n.build(n.head(t, 8))


def test_scope_global_vs_uniform():
    proto = _skewed_pair()
    uniform = prune_and_check(proto, "channel-prune{ratio=0.5}")
    assert (row(uniform, "conv_a")["kept"], row(uniform, "conv_b")["kept"]) == (4, 4)
    glob = prune_and_check(proto, "channel-prune{ratio=0.5,scope=global}")
    # one normalised ranking: conv_b's six weak filters go first, then two of conv_a's
    assert (row(glob, "conv_a")["kept"], row(glob, "conv_b")["kept"]) == (6, 2)
    assert glob.result.stats["units_removed"] == 8
    ka = kept_indices(inp(glob.original, "conv_a"), inp(glob.pruned, "conv_a"))
    w_b = inp(glob.original, "conv_b")[:, ka]  # conv_b's inputs shrank with conv_a
    assert kept_indices(w_b, inp(glob.pruned, "conv_b")) == [0, 1]


def test_l1_and_l2_disagree():
    # spiky filters: one large weight (L1 == L2 == 3); flat filters: 27 x 0.2
    # (L1 = 5.4 but L2 = 1.04). L1 keeps the flat ones, L2 the spiky ones.
    n = Net()
    w = np.zeros((4, 3, 3, 3), np.float32)
    w[0, 0, 1, 1] = 3.0
    w[2, 1, 1, 1] = -3.0
    w[1] = 0.2
    w[3] = -0.2
    t = n.op("Relu", [n.op("Conv", [n.input([1, 3, 8, 8]), n.const(w, "conv1.w")], "conv1",
                           pads=[1] * 4)], "relu")
    proto = n.build(n.conv(t, 4, 4, "conv2"))
    l1 = prune_and_check(proto, "channel-prune{ratio=0.5,criterion=l1}")
    l2 = prune_and_check(proto, "channel-prune{ratio=0.5,criterion=l2}")
    assert kept_indices(w, inp(l1.pruned, "conv1")) == [1, 3]
    assert kept_indices(w, inp(l2.pruned, "conv1")) == [0, 2]


# -- the oracle itself --------------------------------------------------------------
def test_oracle_catches_wrong_slicing():
    """Mutations of a correct removal must fail the oracle (or the verifier)."""
    n, t = conv_chain(lambda n, t: n.op("Relu", [t], "relu1"))
    proto = n.build(n.conv(t, 8, 4, "conv2"))

    def planned():
        model = infer_shapes(load_onnx(proto))
        before = model.to_proto()
        analysis = analyse_channels(model)
        score_ctx = ScoreContext(model, analysis)
        removed, _ = plan_removal(analysis, L2Norm(), score_ctx, ChannelPruneOptions(ratio=0.5))
        assert len(removed) == 4
        return model, before, analysis, removed

    # the correct removal passes
    model, before, analysis, removed = planned()
    reference = masked_reference(before, analysis, removed)
    apply_removal(model, analysis, removed)
    verify_model(model, output_shapes(before))
    assert numeric.compare(model.to_proto(), reference) <= TOLERANCE

    # mutation 1: conv2's input columns are sliced by the wrong channels
    model, before, analysis, removed = planned()
    reference = masked_reference(before, analysis, removed)
    original_w2 = np.asarray(model.tensors()["conv2.w"].values).copy()
    apply_removal(model, analysis, removed)
    keep = analysis.keep_masks(removed)["relu1"]
    wrong = np.roll(keep, 1)
    assert (wrong != keep).any()
    conv2 = next(nd for nd in model.graph.nodes if nd.name == "conv2")
    conv2.inputs[1].values = np.compress(wrong, original_w2, axis=1)
    verify_model(model, output_shapes(before))  # still a valid model ...
    assert numeric.compare(model.to_proto(), reference) > TOLERANCE  # ... but wrong

    # mutation 2: skip the reducing slice of conv2's weight: the model is invalid
    model, before, analysis, removed = planned()
    skipped = [s for s in analysis.slices if s.reduces and s.node == "conv2"]
    assert len(skipped) == 1
    analysis.slices.remove(skipped[0])
    apply_removal(model, analysis, removed)
    with pytest.raises(VerificationError):
        verify_model(model, output_shapes(before))

    # mutation 3: the oracle does not zero a removed input channel (reference drift)
    model, before, analysis, removed = planned()
    apply_removal(model, analysis, removed)
    assert numeric.compare(model.to_proto(), before) > TOLERANCE
