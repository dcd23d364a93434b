"""Channel pruning through shape arithmetic with symbolic dims (issue 9).

Pure-ONNX graphs (built here, so CI needs no torch) for each chain real exporters
write: `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`, a literal C*H*W with
an unknown batch, Flatten, an attention `[B, S, heads, head_dim]` split,
`Expand(x, Shape(y))`, Tile, ConstantOfShape; and the barriers that must be named,
never crash (unknown rank, subgraphs, Range, a rule that raises). Every prune is
checked against the masked oracle, and again at batch/sequence sizes other than
the 1 the default check uses, so a baked-in symbolic dim would show.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from oracle import TOLERANCE, prune_and_check
from test_channel_ops import Net, inp, kept_indices, node, row

from compress_ir.core import numeric
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis import channel_rules
from compress_ir.passes.analysis.channel_groups import analyse_channels

PRUNE = "channel-prune{ratio=0.5}"


def agree_at(outcome, feeds: dict[str, tuple[int, ...]]) -> None:
    """Pruned model and masked oracle agree on inputs of the given (non-default) shapes."""
    rng = np.random.default_rng(1)
    data = {k: rng.standard_normal(s).astype(np.float32) for k, s in feeds.items()}
    got = numeric.session(outcome.pruned).run(None, data)
    want = numeric.session(outcome.result.reference).run(None, data)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= TOLERANCE * max(1.0, float(np.abs(w).max()))


def cnn(batch, flatten) -> tuple[Net, str]:
    """x[batch,1,4,4] -> conv1(8) -> relu -> conv2(6) -> <flatten> -> fc(96 -> 5)."""
    n = Net()
    x = n.input([batch, 1, 4, 4])
    t = n.op("Relu", [n.conv(x, 1, 8, "conv1")], "relu1")
    t = n.conv(t, 8, 6, "conv2")
    t = flatten(n, t, x)
    fc = n.op("Gemm", [t, n.rand((5, 96), "fc.w"), n.rand((5,), "fc.b", fan=4)], "fc", transB=1)
    return n, fc


def view_size0(n: Net, t: str, x: str) -> str:
    """torch's `t.view(t.size(0), -1)` as the TorchScript exporter writes it."""
    shape = n.op("Shape", [t], "shape")
    n0 = n.op("Gather", [shape, n.const(np.array(0, np.int64))], "gather0", axis=0)
    n0 = n.op("Unsqueeze", [n0, n.ints([0])], "unsq0")
    target = n.op("Concat", [n0, n.ints([-1])], "target", axis=0)
    return n.op("Reshape", [t, target], "view")


def check_fc_shrunk(out) -> None:
    kept = kept_indices(inp(out.original, "conv2", 2), inp(out.pruned, "conv2", 2))
    assert len(kept) == 3
    features = [c * 16 + s for c in kept for s in range(16)]
    assert np.array_equal(inp(out.pruned, "fc"), inp(out.original, "fc")[:, features])
    assert row(out, "conv2")["status"] == "pruned"


def test_view_size0_dynamic_batch():
    n, y = cnn("N", view_size0)
    out = prune_and_check(n.build(y), PRUNE)
    check_fc_shrunk(out)
    assert not [r for r in out.result.details["groups"] if r["status"] == "blocked"
                and r["producers"] != ["fc"]]
    agree_at(out, {"x": (3, 1, 4, 4)})


@pytest.mark.parametrize("batch", ["N", None])  # named, and unknown (inference's unk__)
@pytest.mark.parametrize("first", [-1, 0])
def test_literal_chw_with_symbolic_batch(batch, first):
    n, y = cnn(batch, lambda n, t, x: n.op("Reshape", [t, n.ints([first, 96])], "flat"))
    out = prune_and_check(n.build(y), PRUNE)
    check_fc_shrunk(out)
    assert inp(out.pruned, "flat").tolist() == [first, 48]
    agree_at(out, {"x": (2, 1, 4, 4)})


def test_flatten_symbolic_batch():
    n, y = cnn("N", lambda n, t, x: n.op("Flatten", [t], "flat", axis=1))
    out = prune_and_check(n.build(y), PRUNE)
    check_fc_shrunk(out)
    agree_at(out, {"x": (4, 1, 4, 4)})


@pytest.mark.parametrize("shared", [False, True])
def test_concat_literal_is_rewritten(shared):
    """Concat([N, C*H*W]): the constant element is rewritten (via an Add if shared)."""

    def flatten(n: Net, t: str, x: str) -> str:
        n0 = n.op("Gather", [n.op("Shape", [x], "shape"), n.const(np.array([0], np.int64))],
                  "gather0", axis=0)
        target = n.op("Concat", [n0, n.ints([96])], "target", axis=0)
        if shared:  # the same target also reshapes a second, untracked tensor
            other = n.op("Reshape", [n.op("Tile", [x, n.ints([1, 6, 1, 1])], "tile"), target],
                         "other")
            n.extra = other
        return n.op("Reshape", [t, target], "flat")

    n, y = cnn("N", flatten)
    outputs = [y, n.extra] if shared else [y]
    out = prune_and_check(n.build(*outputs), PRUNE)
    check_fc_shrunk(out)
    if shared:
        assert node(out.pruned, "flat").input[1] != node(out.pruned, "other").input[1]
        assert any(nd.op_type == "Add" for nd in out.pruned.graph.node)
    else:
        assert inp(out.pruned, "target").tolist() == [48]
    agree_at(out, {"x": (3, 1, 4, 4)})


def attention_like(head_elems: str) -> onnx.ModelProto:
    """x[B,S,16] -> q(16) -> [B,S,heads,head_dim] -> relu -> [B,S,16] -> proj(5).

    The split target is built from Shape(x) like torch's `view(b, s, h, d)`;
    `head_elems` says which of heads (4) / head_dim (4... here 2x8) are literals.
    """
    n = Net()
    x = n.input(["B", "S", 16])
    q = n.op("Add", [n.op("MatMul", [x, n.rand((16, 16), "q.w")], "q"),
                     n.rand((16,), "q.b", fan=4)], "q_bias")
    shape = n.op("Shape", [x], "shape")
    bs = n.op("Slice", [shape, n.ints([0]), n.ints([2])], "bs")
    if head_elems == "literal":
        split = n.op("Concat", [bs, n.ints([2, 8])], "split_shape", axis=0)
    else:  # heads computed from the hidden size (C // 8), head_dim literal 8
        hidden = n.op("Gather", [n.op("Shape", [q], "qshape"), n.ints([2])], "hidden", axis=0)
        heads = n.op("Div", [hidden, n.ints([8])], "heads")
        split = n.op("Concat", [bs, heads, n.ints([8])], "split_shape", axis=0)
    t = n.op("Relu", [n.op("Reshape", [q, split], "split")], "relu")
    merge = n.op("Concat", [bs, n.ints([16])], "merge_shape", axis=0)
    t = n.op("Reshape", [t, merge], "merge")
    return n.build(n.op("MatMul", [t, n.rand((16, 5), "proj.w")], "proj"))


@pytest.mark.parametrize("head_elems", ["literal", "computed"])
def test_head_split(head_elems):
    proto = attention_like(head_elems)
    analysis = analyse_channels(load_onnx(proto))
    (split,) = [h for h in analysis.head_splits if h.node == "split"]
    assert split.table.shape == (2, 8) and split.axes == [2, 3]
    # channel c of q sits at (head, position) = divmod(c, 8)
    q_ids = analysis.layouts["q"].ids
    assert np.array_equal(split.table.ravel(), q_ids)
    out = prune_and_check(proto, PRUNE)
    kept = kept_indices(inp(out.original, "q"), inp(out.pruned, "q"), axis=1)
    assert len(kept) == 8
    if head_elems == "literal":  # head_dim 8 -> 4, the same positions in both heads
        assert split.carried == 3
        assert kept[:4] == [k - 8 for k in kept[4:]]
        assert inp(out.pruned, "split_shape", 1).tolist() == [2, 4]
    else:  # heads follow the computed C // 8: whole heads go
        assert split.carried == 2
        assert kept in ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15])
    assert inp(out.pruned, "merge_shape", 1).tolist() == [8]
    agree_at(out, {"x": (2, 5, 16)})


def test_head_split_that_does_not_follow_is_blocked():
    """Both split elements computed from the channel count: no pruned count fits both."""
    n = Net()
    x = n.input(["B", 3, 16])
    q = n.op("MatMul", [x, n.rand((16, 16), "q.w")], "q")
    qshape = n.op("Shape", [q], "qshape")
    c = n.op("Gather", [qshape, n.ints([2])], "c", axis=0)
    heads, dim = n.op("Div", [c, n.ints([8])], "heads"), n.op("Div", [c, n.ints([2])], "dim")
    target = n.op("Concat", [n.op("Slice", [qshape, n.ints([0]), n.ints([2])], "bs"),
                             heads, dim], "target", axis=0)
    t = n.op("Reshape", [q, target], "split")
    t = n.op("Flatten", [n.op("Relu", [t], "relu")], "merge", axis=2)
    out = prune_and_check(n.build(n.op("MatMul", [t, n.rand((16, 5), "p.w")], "p")), PRUNE,
                          expect_modified=False)
    (reason,) = row(out, "q")["blocked_by"]
    assert "Reshape node 'split'" in reason and "does not follow" in reason


def test_expand_as_couples_the_channels():
    """SE-style `s.expand_as(y)`: Expand(s, Shape(y)) couples s's and y's channels."""
    n = Net()
    y = n.conv(n.input(["N", 3, 6, 6]), 3, 8, "conv1")
    s = n.op("GlobalAveragePool", [y], "gap")
    s = n.op("Sigmoid", [n.conv(s, 8, 8, "fc", k=1)], "gate")
    t = n.op("Mul", [y, n.op("Expand", [s, n.op("Shape", [y], "yshape")], "expand")], "scale")
    out = prune_and_check(n.build(n.conv(t, 8, 4, "conv2")), PRUNE)
    assert row(out, "conv1") is row(out, "fc")  # one group
    assert inp(out.pruned, "conv1").shape[0] == 4 and inp(out.pruned, "fc").shape[0] == 4
    agree_at(out, {"x": (2, 3, 6, 6)})


def test_expand_literal_channel_count_is_rewritten():
    n = Net()
    y = n.conv(n.input([1, 3, 6, 6]), 3, 8, "conv1")
    s = n.op("GlobalAveragePool", [y], "gap")
    t = n.op("Expand", [s, n.ints([1, 8, 6, 6])], "expand")
    out = prune_and_check(n.build(n.conv(t, 8, 4, "conv2")), PRUNE)
    assert inp(out.pruned, "expand").tolist() == [1, 4, 6, 6]


def test_constant_of_shape_follows_channels():
    n = Net()
    y = n.conv(n.input(["N", 3, 6, 6]), 3, 8, "conv1")
    zeros = n.op("ConstantOfShape", [n.op("Shape", [y], "yshape")], "zeros",
                 value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]))
    t = n.op("Add", [y, zeros], "add")
    out = prune_and_check(n.build(n.conv(t, 8, 4, "conv2")), PRUNE)
    assert inp(out.pruned, "conv1").shape[0] == 4
    agree_at(out, {"x": (2, 3, 6, 6)})


def test_tile_keeps_channels_when_repeating_other_axes():
    n = Net()
    y = n.conv(n.input([1, 3, 4, 4]), 3, 8, "conv1")
    t = n.op("Tile", [y, n.ints([1, 1, 2, 1])], "tile")
    out = prune_and_check(n.build(n.conv(t, 8, 4, "conv2")), PRUNE)
    assert inp(out.pruned, "conv2").shape[1] == 4


def test_tile_of_channel_axis_blocks():
    n = Net()
    y = n.conv(n.input([1, 3, 4, 4]), 3, 8, "conv1")
    t = n.op("Tile", [y, n.ints([1, 2, 1, 1])], "tile")
    out = prune_and_check(n.build(n.conv(t, 16, 4, "conv2")), PRUNE, expect_modified=False)
    assert any("Tile node 'tile'" in r for r in row(out, "conv1")["blocked_by"])


def test_range_of_channel_count_is_a_named_barrier():
    """A channel count that becomes data (Range values) cannot follow: blocked, by name."""
    n = Net()
    y = n.conv(n.input(["N", 3, 4, 4]), 3, 8, "conv1")  # symbolic: Shape is not folded
    c = n.op("Gather", [n.op("Shape", [y], "yshape"), n.const(np.array(1, np.int64))], "c",
             axis=0)
    r = n.op("Range", [n.const(np.array(0, np.int64)), c, n.const(np.array(1, np.int64))],
             "range")
    pos = n.op("Cast", [r], "pos", to=TensorProto.FLOAT)
    pos = n.op("Reshape", [pos, n.ints([1, -1, 1, 1])], "pos4")
    t = n.op("Add", [y, pos], "add")
    out = prune_and_check(n.build(n.conv(t, 8, 4, "conv2")), PRUNE, expect_modified=False)
    reasons = row(out, "conv1")["blocked_by"]
    assert any("Range node 'range' uses a value computed from the channel count" in r
               for r in reasons), reasons


def test_unknown_rank_is_a_named_barrier():
    """SVTR-like: a MatMul input of unknown rank (after a custom op) blocks, never crashes."""
    n = Net(domains={"custom": 1})
    y = n.conv(n.input([1, 3, 4, 4]), 3, 8, "conv1")
    t = n.op("Mystery", [y], "mystery", domain="custom")  # no shape inference
    t = n.op("MatMul", [t, n.rand((4, 5), "mm.w")], "mm")
    t = n.op("Add", [t, n.rand((5,), "mm.b", fan=4)], "bias")
    model = load_onnx(n.build(t, shapes={t: ["d0", "d1"]}))
    analysis = analyse_channels(model)
    (group,) = [g for g in analysis.groups if g.roots[0].node == "conv1"]
    assert any("'mystery'" in r and "not understood" in r for r in group.blocked)
    (mm,) = [g for g in analysis.groups if g.roots[0].node == "mm"]
    assert mm.blocked  # the unknown-rank consumer keeps its channels, with a reason


def test_unknown_rank_input_to_rank_reading_rule():
    n = Net(domains={"custom": 1})
    y = n.conv(n.input([1, 3, 4, 4]), 3, 8, "conv1")
    y = n.op("Relu", [n.op("Mystery", [y], "mystery", domain="custom")], "relu")
    y = n.op("Transpose", [y], "tr")
    model = load_onnx(n.build(y, shapes={y: ["d0", "d1", "d2", "d3"]}))
    analysis = analyse_channels(model)  # must not raise
    assert analysis.groups[0].blocked


def test_rule_exception_becomes_a_named_barrier(monkeypatch):
    """Any rule that trips over missing information blocks its node, naming it."""

    def broken(a, nd):
        a.set_layout(nd.outputs[0], 1, a.layout(nd.inputs[0]).ids)
        raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'int'")

    monkeypatch.setitem(channel_rules.RULES, "Relu", broken)
    n = Net()
    y = n.op("Relu", [n.conv(n.input([1, 3, 4, 4]), 3, 8, "conv1")], "relu")
    out = prune_and_check(n.build(n.conv(y, 8, 4, "conv2")), PRUNE, expect_modified=False)
    reasons = row(out, "conv1")["blocked_by"]
    assert any("Relu node 'relu'" in r and "shape information is missing" in r
               for r in reasons), reasons


def test_subgraph_use_of_a_tracked_tensor_blocks():
    """An If branch reading conv1's output from the outer scope keeps conv1 whole."""
    n = Net()
    x = n.input([1, 3, 4, 4])
    y = n.conv(x, 3, 8, "conv1")
    z = n.conv(n.op("Relu", [n.conv(x, 3, 6, "convb")], "rb"), 6, 4, "convc")
    cond = n.const(np.array(True), "cond")
    branch = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", [y], [f"{name}_out"], name=f"{name}_id")], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 8, 4, 4])])
    n.nodes.append(helper.make_node("If", [cond], ["branch"], name="if",
                                    then_branch=branch("then"), else_branch=branch("else")))
    t = n.conv(n.op("Relu", [n.op("Add", ["branch", y], "add")], "r"), 8, 4, "conv2")
    out = prune_and_check(n.build(t, z), PRUNE)
    assert any("If node 'if' uses 'conv1' inside a subgraph" in r
               for r in row(out, "conv1")["blocked_by"])
    assert row(out, "convb")["status"] == "pruned"


def test_resize_sizes_built_from_a_skip_shape():
    """A U-Net decoder's `Resize(x, sizes=[1, 16] ++ Shape(skip)[2:])`: 16 is rewritten."""
    n = Net()
    x = n.input([1, 3, "H", "W"])
    skip = n.op("Relu", [n.conv(x, 3, 4, "enc")], "skip")
    t = n.conv(skip, 4, 8, "down", strides=[2, 2])
    hw = n.op("Slice", [n.op("Shape", [skip], "sshape"), n.ints([2]), n.ints([4])], "hw")
    sizes = n.op("Concat", [n.ints([1, 8]), hw], "sizes", axis=0)
    t = n.op("Resize", [t, "", "", sizes], "up", mode="linear")
    t = n.op("Concat", [t, skip], "cat", axis=1)
    out = prune_and_check(n.build(n.conv(t, 12, 2, "head")), PRUNE)
    assert row(out, "down")["status"] == "pruned"
    assert inp(out.pruned, "sizes", 0).tolist() == [1, 4]
    agree_at(out, {"x": (1, 3, 8, 12)})


def test_expanded_class_token_is_sliced_with_the_stream():
    """ViT: Concat(Expand(cls[1,1,D], [B,1,1]), patches) along the sequence."""
    n = Net()
    x = n.input(["B", 3, 4, 4])
    t = n.conv(x, 3, 8, "patch", k=2, strides=[2, 2], pads=[0, 0, 0, 0])  # [B, 8, 2, 2]
    t = n.op("Transpose", [n.op("Reshape", [t, n.ints([0, 8, 4])], "flat")], "tokens",
             perm=[0, 2, 1])  # [B, 4, 8]
    b = n.op("Slice", [n.op("Shape", [x], "xshape"), n.ints([0]), n.ints([1])], "b")
    cls = n.op("Expand", [n.rand((1, 1, 8), "cls"), n.op("Concat", [b, n.ints([1, 1])],
                                                         "cls_shape", axis=0)], "cls_b")
    t = n.op("Concat", [cls, t], "seq", axis=1)  # [B, 5, 8]
    out = prune_and_check(n.build(n.op("MatMul", [t, n.rand((8, 3), "proj.w")], "proj")),
                          PRUNE)
    kept = kept_indices(inp(out.original, "patch", 2), inp(out.pruned, "patch", 2))
    assert np.array_equal(inp(out.pruned, "cls_b", 0), inp(out.original, "cls_b", 0)[..., kept])
    agree_at(out, {"x": (3, 3, 4, 4)})


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_macs_take_k_from_the_weight_when_the_input_shape_is_lost(op):
    """A dynamic view() can leave the head's input without a known shape: K is B's."""
    from compress_ir.core.metrics import model_metrics

    n = Net(domains={"custom": 1})
    t = n.op("Mystery", [n.input([1, 12])], "mystery", domain="custom")
    w = n.rand((12, 5), "fc.w")
    y = n.op(op, [t, w], "fc")
    proto = n.build(y, shapes={y: [1, 5]})
    assert model_metrics(proto)["macs"] == 1 * 5 * 12


def test_single_channel_broadcast_over_the_others():
    """MobileViT linear attention: a 1-channel score split off the qkv conv scales 8
    key channels; it is broadcast, not coupled, and its channel is never removed."""
    n = Net()
    qkv = n.conv(n.input(["N", 3, 4, 4]), 3, 17, "qkv", k=1)
    s, k, v = n.op("Split", [qkv, n.ints([1, 8, 8])], "split", outputs=3, axis=1)
    scores = n.op("Softmax", [s], "scores", axis=-1)
    ctx = n.op("ReduceSum", [n.op("Mul", [k, scores], "keys"), n.ints([2, 3])], "ctx")
    t = n.op("Mul", [n.op("Relu", [v], "relu"), ctx], "attn")
    out = prune_and_check(n.build(n.conv(t, 8, 4, "proj", k=1)), PRUNE)
    assert row(out, "qkv")["status"] == "pruned"
    kept = kept_indices(inp(out.original, "qkv", 2), inp(out.pruned, "qkv", 2))
    assert kept[0] == 0  # the score channel stays
    agree_at(out, {"x": (2, 3, 4, 4)})


def test_tf2onnx_flatten_with_lost_shapes():
    """tf2onnx's Keras Flatten: NHWC Transpose -> Shape -> Cast(int32) -> Slice ->
    Concat([n, 576]) -> Cast(int64) -> Reshape; inference loses the rank of
    everything after it (issue 9: `None - 1` in the MatMul rule). Now it prunes."""
    n = Net(opset=13)
    x = n.input(["N", 1, 8, 8])
    t = n.op("Relu", [n.conv(x, 1, 8, "conv1")], "relu1")
    t = n.op("MaxPool", [t], "pool", kernel_shape=[2, 2], strides=[2, 2])
    t = n.op("Transpose", [t], "nhwc", perm=[0, 2, 3, 1])  # [N, 4, 4, 8]
    shape = n.op("Cast", [n.op("Shape", [t], "shape")], "shape32", to=TensorProto.INT32)
    b = n.op("Slice", [shape, n.ints([0]), n.ints([1]), n.ints([0])], "b")
    target = n.op("Concat", [b, n.const(np.array([128], np.int32))], "target", axis=0)
    t = n.op("Reshape", [t, n.op("Cast", [target], "target64", to=TensorProto.INT64)], "flat")
    t = n.op("Add", [n.op("MatMul", [t, n.rand((128, 6), "dense.w")], "dense"),
                     n.rand((6,), "dense.b", fan=4)], "dense_b")
    t = n.op("MatMul", [n.op("Relu", [t], "relu2"), n.rand((6, 3), "probs.w")], "probs")
    proto = n.build(t, shapes={t: ["N", 3]})
    model = load_onnx(proto)
    assert model.shape(next(v for k, v in model.tensors().items() if k == "flat")) is None
    out = prune_and_check(proto, PRUNE)
    assert row(out, "conv1")["status"] == "pruned"
    assert row(out, "dense")["status"] == "pruned"
    assert inp(out.pruned, "dense").shape == (64, 3)
    agree_at(out, {"x": (3, 1, 8, 8)})


@pytest.mark.parametrize("first", [True, False])
def test_channel_count_as_data_is_blocked(first):
    """`out = C * z` (either operand order), `z` not tracked: the count is data."""
    n = Net()
    x = n.input(["N", 3, 4, 4])
    y = n.conv(x, 3, 8, "conv1")
    c = n.op("Cast", [n.op("Gather", [n.op("Shape", [y], "yshape"),
                                      n.const(np.array(1, np.int64))], "c", axis=0)],
             "cf", to=TensorProto.FLOAT)
    z = n.op("Relu", [x], "z")
    scaled = n.op("Mul", [c, z] if first else [z, c], "scaled")
    out = prune_and_check(n.build(n.conv(y, 8, 4, "conv2"), scaled), PRUNE,
                          expect_modified=False)
    assert any("channel count" in r and ("'scaled'" in r or "'scaled' is computed" in r)
               for r in row(out, "conv1")["blocked_by"]), row(out, "conv1")["blocked_by"]


def test_chunk_with_computed_bounds():
    """torch `a, b = y.chunk(2, 1)` with a dynamic batch: Slice bounds (C + 1) // 2 and
    2 * ((C + 1) // 2) from Shape. The halves are tied, so each loses the same channels."""
    n = Net()
    y = n.op("Relu", [n.conv(n.input(["N", 3, 4, 4]), 3, 8, "conv1")], "relu1")
    c = n.op("Gather", [n.op("Shape", [y], "yshape"), n.ints([1])], "c", axis=0)
    half = n.op("Div", [n.op("Add", [c, n.ints([1])], "c1"), n.ints([2])], "half")
    end1 = n.op("Mul", [half, n.ints([1])], "end1")
    end2 = n.op("Mul", [half, n.ints([2])], "end2")
    a = n.op("Slice", [y, n.ints([0]), end1, n.ints([1])], "first")
    b = n.op("Slice", [y, end1, end2, n.ints([1])], "second")
    t = n.op("Concat", [n.conv(a, 4, 4, "conva"), b], "cat", axis=1)
    out = prune_and_check(n.build(n.conv(t, 8, 2, "head")), PRUNE)
    kept = kept_indices(inp(out.original, "conv1", 2), inp(out.pruned, "conv1", 2))
    assert len(kept) == 4 and [k for k in kept if k < 4] == [k - 4 for k in kept if k >= 4]
    agree_at(out, {"x": (2, 3, 4, 4)})


def test_float_shape_arithmetic():
    """Resize sizes computed in float (H * 2.0, cast back): the value is still followed."""
    n = Net()
    x = n.input([1, 3, "H", "W"])
    t = n.conv(x, 3, 8, "conv1")
    hw = n.op("Cast", [n.op("Slice", [n.op("Shape", [t], "tshape"), n.ints([2]),
                                      n.ints([4])], "hw")], "hwf", to=TensorProto.FLOAT)
    hw2 = n.op("Cast", [n.op("Mul", [hw, n.const(np.array([2.0], np.float32))], "hw2f")],
               "hw2", to=TensorProto.INT64)
    sizes = n.op("Concat", [n.op("Slice", [n.op("Shape", [t], "tshape2"), n.ints([0]),
                                           n.ints([2])], "nc"), hw2], "sizes", axis=0)
    t = n.op("Resize", [t, "", "", sizes], "up", mode="nearest")
    out = prune_and_check(n.build(n.conv(t, 8, 2, "head")), PRUNE)
    assert row(out, "conv1")["status"] == "pruned"
    agree_at(out, {"x": (1, 3, 4, 6)})


def test_matmul_of_activations_contracting_channels_blocks():
    """x.x^T sums over the channels of both operands: a barrier, named."""
    n = Net()
    h = n.op("MatMul", [n.input(["B", 4, 6]), n.rand((6, 8), "proj.w")], "proj")
    gram = n.op("MatMul", [h, n.op("Transpose", [h], "ht", perm=[0, 2, 1])], "gram")
    out = prune_and_check(n.build(n.op("Relu", [gram], "r")), PRUNE, expect_modified=False)
    assert any("MatMul node 'gram'" in r for r in row(out, "proj")["blocked_by"])
