"""Property-based tests: random small CNN DAGs through `channel-prune` and its oracle.

Hypothesis draws a DAG of blocks (convs of every kind, BN, ReLU, residual adds,
concats, channel splits, channel shuffles, SE blocks, pooling) over 8x8 tensors
with 4-32 channels; every dangling tensor ends in GlobalAveragePool -> Flatten,
concatenated into one Gemm head. Each model is pruned with a random ratio and scope
and must pass `oracle.prune_and_check`: valid, same output shapes, and equal to the
masked original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from oracle import param_count, prune_and_check

from compress_ir.core.model import infer_shapes
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.channel_groups import analyse_channels
from compress_ir.passes.analysis.importance import CRITERIA, ScoreContext
from compress_ir.passes.transform.channel_prune import ChannelPruneOptions, plan_removal

MAX_CHANNELS = 32


@dataclass
class Tensor:
    name: str
    channels: int
    size: int  # spatial height == width


@dataclass
class Dag:
    """A model under construction; tracks which tensors nobody consumes yet."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes)}"

    def const(self, value: np.ndarray, name: str) -> str:
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def rand(self, shape: tuple, name: str, fan: int | None = None, positive=False) -> str:
        fan = fan or max(1, int(np.prod(shape[1:])))
        value = self.rng.standard_normal(shape) / np.sqrt(fan)
        return self.const(np.abs(value) + 0.5 if positive else value, name)

    def op(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        name = self.fresh(op.lower())
        outs = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        self.used.update(i for i in inputs if i)
        return outs

    def add(self, name: str, channels: int, size: int) -> Tensor:
        t = Tensor(name, channels, size)
        self.tensors.append(t)
        return t

    # -- blocks -------------------------------------------------------------------
    def conv(self, x: Tensor, cout: int, k: int = 3, group: int = 1, bn=False,
             relu=False) -> Tensor:
        name = self.fresh("conv")
        w = self.rand((cout, x.channels // group, k, k), f"{name}.w")
        b = self.rand((cout,), f"{name}.b", fan=4)
        (y,) = self.op("Conv", [x.name, w, b], group=group, pads=[k // 2] * 4)
        if bn:
            name = self.fresh("bn")
            params = [self.rand((cout,), f"{name}.s", fan=1, positive=True),
                      self.rand((cout,), f"{name}.b", fan=4),
                      self.rand((cout,), f"{name}.m", fan=4),
                      self.rand((cout,), f"{name}.v", fan=1, positive=True)]
            (y,) = self.op("BatchNormalization", [y, *params])
        if relu:
            (y,) = self.op("Relu", [y])
        return self.add(y, cout, x.size)

    def ints(self, values: list[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64), self.fresh("shape") + "_c")

    def split(self, x: Tensor, first: int) -> list[Tensor]:
        sizes = [first, x.channels - first]
        outs = self.op("Split", [x.name, self.ints(sizes)], outputs=2, axis=1)
        return [self.add(o, c, x.size) for o, c in zip(outs, sizes, strict=True)]

    def shuffle(self, x: Tensor, groups: int) -> Tensor:
        c, s = x.channels, x.size
        (t,) = self.op("Reshape", [x.name, self.ints([1, groups, c // groups, s, s])])
        (t,) = self.op("Transpose", [t], perm=[0, 2, 1, 3, 4])
        (t,) = self.op("Reshape", [t, self.ints([1, c, s, s])])
        return self.add(t, c, s)

    def squeeze_excite(self, x: Tensor) -> Tensor:
        c, hidden = x.channels, max(2, x.channels // 4)
        (s,) = self.op("GlobalAveragePool", [x.name])
        s = self.conv(Tensor(s, c, 1), hidden, k=1, relu=True)
        self.tensors.remove(s)
        s = self.conv(s, c, k=1)
        self.tensors.remove(s)
        (g,) = self.op("Sigmoid", [s.name])
        (y,) = self.op("Mul", [x.name, g])
        return self.add(y, c, x.size)

    def pool(self, x: Tensor, kind: str) -> Tensor:
        if kind == "max":
            (y,) = self.op("MaxPool", [x.name], kernel_shape=[3, 3], pads=[1] * 4)
            return self.add(y, x.channels, x.size)
        (y,) = self.op("AveragePool", [x.name], kernel_shape=[2, 2], strides=[2, 2])
        return self.add(y, x.channels, x.size // 2)

    def head(self, classes: int = 3) -> str:
        leaves = [t for t in self.tensors if t.name not in self.used]
        feats = []
        for t in leaves:
            (p,) = self.op("GlobalAveragePool", [t.name])
            (f,) = self.op("Flatten", [p])
            feats.append(f)
        if len(feats) > 1:
            (f,) = self.op("Concat", feats, axis=1)
        width = sum(t.channels for t in leaves)
        name = self.fresh("fc")
        (y,) = self.op("Gemm", [f, self.rand((classes, width), f"{name}.w"),
                                self.rand((classes,), f"{name}.b", fan=4)], transB=1)
        return y


def _divisors(c: int, cout: int) -> list[int]:
    return [g for g in (2, 4) if c % g == 0 and cout % g == 0 and g < c]


@st.composite
def random_cnn(draw) -> onnx.ModelProto:
    dag = Dag(np.random.default_rng(draw(st.integers(0, 2**16))))
    x = Tensor("x", 3, 8)
    width = st.sampled_from([4, 8, 12, 16, 24, 32])
    dag.conv(x, draw(width), bn=draw(st.booleans()), relu=True)
    dag.log.append(f"stem conv -> {dag.tensors[-1].channels}")
    for _ in range(draw(st.integers(2, 7))):
        kind = draw(st.sampled_from(
            ["conv", "depthwise", "grouped", "add", "concat", "split", "shuffle", "se",
             "pool"]))
        src = draw(st.sampled_from(dag.tensors))
        c = src.channels
        if kind == "conv":
            dag.conv(src, draw(width), k=draw(st.sampled_from([1, 3])),
                     bn=draw(st.booleans()), relu=draw(st.booleans()))
        elif kind == "depthwise":
            mult = draw(st.sampled_from([1, 2])) if 2 * c <= MAX_CHANNELS else 1
            dag.conv(src, c * mult, group=c, bn=draw(st.booleans()), relu=True)
        elif kind == "grouped":
            cout = draw(width)
            groups = _divisors(c, cout)
            if not groups:
                continue
            dag.conv(src, cout, group=draw(st.sampled_from(groups)), relu=draw(st.booleans()))
        elif kind == "add":
            mates = [t for t in dag.tensors
                     if t is not src and (t.channels, t.size) == (c, src.size)]
            if not mates:
                continue
            other = draw(st.sampled_from(mates))
            (y,) = dag.op("Add", [src.name, other.name])
            (y,) = dag.op("Relu", [y])
            dag.add(y, c, src.size)
        elif kind == "concat":
            mates = [t for t in dag.tensors
                     if t is not src and t.size == src.size and t.channels + c <= 48]
            if not mates:
                continue
            other = draw(st.sampled_from(mates))
            (y,) = dag.op("Concat", [src.name, other.name], axis=1)
            dag.add(y, c + other.channels, src.size)
        elif kind == "split":
            if c < 4:
                continue
            dag.split(src, draw(st.integers(1, c - 1)))
        elif kind == "shuffle":
            if c % 2:
                continue
            pre = dag.conv(src, c, group=2, relu=True)
            dag.shuffle(pre, 2)
        elif kind == "se":
            dag.squeeze_excite(src)
        elif kind == "pool":
            dag.pool(src, "avg" if src.size >= 4 and draw(st.booleans()) else "max")
        dag.log.append(f"{kind}({src.name}:{c}) -> {dag.tensors[-1].name}")
        event(kind)
    out = dag.head()
    graph = helper.make_graph(
        dag.nodes, "random_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3])],
        dag.inits,
    )
    note("; ".join(dag.log))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _plans_removal(proto: onnx.ModelProto, opts: ChannelPruneOptions) -> tuple[bool, bool]:
    """Whether the pass will remove units, and whether any survive the empty-tensor guard."""
    model = infer_shapes(load_onnx(proto))
    analysis = analyse_channels(model)
    criterion = CRITERIA.get(opts.criterion)()
    removed, _ = plan_removal(analysis, criterion, ScoreContext(model, analysis), opts)
    return bool(removed), bool(analysis.nonempty(removed))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    proto=random_cnn(),
    ratio=st.floats(0.1, 0.8),
    scope=st.sampled_from(["uniform", "global"]),
    criterion=st.sampled_from(["l1", "l2"]),
)
def test_random_dag_prunes_like_its_masked_oracle(proto, ratio, scope, criterion):
    ratio = round(ratio, 3)
    pipeline = f"channel-prune{{ratio={ratio},scope={scope},criterion={criterion}}}"
    note(pipeline)
    expected, effective = _plans_removal(
        proto, ChannelPruneOptions(ratio=ratio, scope=scope, criterion=criterion))
    event(f"pruned: {expected}")
    out = prune_and_check(proto, pipeline, expect_modified=expected)
    stats = out.result.stats
    rows = out.result.details["groups"]
    # nothing but the classifier head (it writes the graph output) may be blocked
    blocked = [r for r in rows if r["status"] == "blocked"]
    assert all(any("graph output" in b for b in r["blocked_by"]) for r in blocked), blocked
    assert stats["groups_blocked"] == len(blocked)
    for r in rows:
        assert 1 <= r["kept"] <= r["size"]
    if expected:
        assert stats["units_removed"] > 0 and stats["channels_removed"] > 0
    else:
        assert stats["units_removed"] == 0
    if effective:  # (the guard may give back every planned unit of a tiny split piece)
        assert param_count(out.pruned) < param_count(out.original)
