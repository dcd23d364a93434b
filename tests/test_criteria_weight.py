"""Weight-only criteria (`fpgm`, `bn-scale`, `nisp`, `merge`) on models with known answers.

Hand-made weights make the right ranking obvious (a duplicated filter, the smallest
|gamma|, a channel nobody reads); expected NISP values are worked out by hand in the
test. Every criterion also runs through the masked-model oracle on a residual +
concat model and on torchvision's MobileNetV2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from oracle import prune_and_check
from test_channel_ops import Net, inp, kept_indices

from compress_ir.core import numeric
from compress_ir.core.errors import UsageError
from compress_ir.core.model import infer_shapes
from compress_ir.core.passes import PassContext
from compress_ir.core.pipeline import build_passes
from compress_ir.frontends.onnx import load_onnx
from compress_ir.frontends.placeholders import fill_placeholders
from compress_ir.passes.analysis.channel_groups import analyse_channels
from compress_ir.passes.analysis.importance import CRITERIA, ScoreContext
from compress_ir.passes.transform.channel_slicing import apply_removal, masked_reference

WEIGHT_CRITERIA = ["fpgm", "bn-scale", "nisp", "merge"]
MOBILENET = Path(__file__).parent / "fixtures" / "torchvision" / "mobilenet_v2.onnx"


def prune(name: str, ratio: float) -> str:
    return f"channel-prune{{ratio={ratio},criterion={name}}}"


def position_scores(proto: onnx.ModelProto, name: str, producer: str) -> np.ndarray:
    """The criterion's score of each output channel of `producer` (one unit per channel)."""
    model = infer_shapes(load_onnx(proto))
    analysis = analyse_channels(model)
    ctx = ScoreContext(model, analysis)
    root = next(r for r in analysis.roots if r.node == producer)
    group = next(g for g in analysis.groups if root in g.roots)
    scores = dict(zip(group.units.tolist(), CRITERIA.get(name)().score(group, ctx), strict=True))
    units = analysis.unit_of[root.first : root.first + root.size]
    return np.array([scores[int(u)] for u in units])


def conv_model(w1: np.ndarray, w2: np.ndarray, act: str = "Relu", b1=None) -> onnx.ModelProto:
    """x[1,C,6,6] -> conv1(w1[, b1]) -> act -> conv2(w2) -> y."""
    n = Net()
    inputs = [n.input([1, w1.shape[1], 6, 6]), n.const(w1, "conv1.w")]
    if b1 is not None:
        inputs.append(n.const(b1, "conv1.b"))
    k1, k2 = w1.shape[-1], w2.shape[-1]
    t = n.op("Conv", inputs, "conv1", pads=[k1 // 2] * 4)
    bounds = [n.const(np.float32(0.0)), n.const(np.float32(6.0))] if act == "Clip" else []
    t = n.op(act, [t, *bounds], "act")
    return n.build(n.op("Conv", [t, n.const(w2, "conv2.w")], "conv2", pads=[k2 // 2] * 4))


def twin_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 random 3x3 filters where filter 5 is exactly 2 x filter 2."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32)
    w1[5] = 2 * w1[2]
    w2 = (rng.standard_normal((4, 8, 3, 3)) / 8).astype(np.float32)
    return w1, w2


def surviving_rows(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    """Indices of `original`'s rows in `pruned` (rows may repeat in `original`)."""
    return [next(i for i in range(len(original)) if np.array_equal(original[i], r))
            for r in pruned]


# -- registry -----------------------------------------------------------------------
@pytest.mark.parametrize("name", WEIGHT_CRITERIA)
def test_registered_with_summary_and_paper(name: str) -> None:
    cls = CRITERIA.get(name)
    assert cls.name == name and cls.summary and not cls.needs_calibration
    assert any(year in cls.__doc__ for year in ("2015", "2017", "2018", "2019"))


# -- fpgm -----------------------------------------------------------------------------
def test_fpgm_ranks_a_duplicated_filter_lowest() -> None:
    # 8 orthonormal filters, filter 5 a copy of filter 2: distinct filters are sqrt(2)
    # apart, so a copy's distance sum is 6 sqrt(2) and everyone else's 7 sqrt(2).
    w1 = np.zeros((8, 3, 3, 3), np.float32)
    for k in range(8):
        w1.reshape(8, -1)[k, 3 * k] = 1.0
    w1[5] = w1[2]
    w2 = np.random.default_rng(1).standard_normal((4, 8, 3, 3)).astype(np.float32)
    proto = conv_model(w1, w2)
    scores = position_scores(proto, "fpgm", "conv1")
    mean = (2 * 6 + 6 * 7) / 8
    expected = np.full(8, 7 / mean)
    expected[[2, 5]] = 6 / mean
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    out = prune_and_check(proto, prune("fpgm", 0.125))
    assert surviving_rows(w1, inp(out.pruned, "conv1")) in ([0, 1, 2, 3, 4, 6, 7],
                                                            [0, 1, 3, 4, 5, 6, 7])


# -- merge ----------------------------------------------------------------------------
def test_merge_ranks_a_scaled_twin_lowest() -> None:
    w1, w2 = twin_weights()
    scores = position_scores(conv_model(w1, w2), "merge", "conv1")
    others = np.delete(scores, [2, 5])
    assert scores[2] < 1e-4 * others.min() and scores[5] < 1e-4 * others.min()
    assert (scores >= 0).all()


def test_merge_score_is_the_merge_error_bound() -> None:
    """Score of filter j = ||a_j|| * min over other filters i, s >= 0 of ||v_j - s v_i||
    (Srinivas & Babu's saliency), worked out here by brute force over i and s."""
    w1, w2 = twin_weights()
    scores = position_scores(conv_model(w1, w2), "merge", "conv1")
    v = w1.reshape(8, -1).astype(np.float64)
    out = np.sqrt((w2.astype(np.float64) ** 2).sum(axis=(0, 2, 3)))  # ||a_j||: conv2's reads
    grid = np.linspace(0.0, 3.0, 30001)
    for j in (0, 3, 7):
        best = min(np.linalg.norm(v[j][None, :] - grid[:, None] * v[i][None, :], axis=1).min()
                   for i in range(8) if i != j)
        np.testing.assert_allclose(scores[j], out[j] * best, rtol=1e-4)


def _gemm_head_model(w1: np.ndarray, b1: np.ndarray) -> onnx.ModelProto:
    """conv1(w1, b1) -> Relu -> MaxPool -> Flatten -> Gemm: the twin crosses a flatten."""
    n = Net(seed=3)
    t = n.op("Conv", [n.input([1, 3, 6, 6]), n.const(w1, "conv1.w"), n.const(b1, "conv1.b")],
             "conv1", pads=[1] * 4)
    t = n.op("MaxPool", [n.op("Relu", [t], "relu")], "pool", kernel_shape=[2, 2], strides=[2, 2])
    t = n.op("Flatten", [t], "flat")
    return n.build(n.op("Gemm", [t, n.rand((5, 8 * 9), "fc.w"), n.rand((5,), "fc.b")], "fc",
                        transB=1))


@pytest.mark.parametrize("topology", ["conv-relu-conv", "bias-pool-flatten-gemm"])
def test_merge_compensation_reproduces_the_original(topology: str) -> None:
    w1, w2 = twin_weights()
    if topology == "conv-relu-conv":
        proto, consumer = conv_model(w1, w2), "conv2"
    else:
        b1 = np.random.default_rng(2).standard_normal(8).astype(np.float32)
        b1[5] = 2 * b1[2]  # proportional bias: still an exact twin
        proto, consumer = _gemm_head_model(w1, b1), "fc"
    original = load_onnx(proto).to_proto()
    (p,) = build_passes(prune("merge", 0.125))
    result = p.run(load_onnx(proto), PassContext())
    pruned = result.model.to_proto()
    rows = surviving_rows(w1, inp(pruned, "conv1"))
    assert rows in ([0, 1, 2, 3, 4, 6, 7], [0, 1, 3, 4, 5, 6, 7])
    assert numeric.compare(pruned, original) <= 1e-5
    assert numeric.compare(pruned, result.reference) <= 1e-5

    # the twin's consumer weights absorbed the removed channel's: w_i += a w_j
    gone, twin = (5, 2) if 2 in rows else (2, 5)
    alpha = 2.0 if gone == 5 else 0.5
    per = 1 if consumer == "conv2" else 9  # Flatten: 9 spatial columns per channel

    def cols(channel: int) -> list[int]:
        return list(range(channel * per, (channel + 1) * per))

    w_orig = inp(original, consumer)
    expected = w_orig.copy()
    expected[:, cols(twin)] += alpha * w_orig[:, cols(gone)]
    expected = expected[:, [c for r in rows for c in cols(r)]]
    np.testing.assert_allclose(inp(pruned, consumer), expected, rtol=1e-6, atol=1e-7)

    # plain pruning of the same channel is not exact: the merged weights were needed
    model = infer_shapes(load_onnx(proto))
    analysis = analyse_channels(model)
    root = next(r for r in analysis.roots if r.node == "conv1")
    removed = {int(analysis.unit_of[root.first + gone])}
    before = model.to_proto()
    assert numeric.compare(masked_reference(before, analysis, removed), original) > 1e-2
    apply_removal(model, analysis, removed)
    assert numeric.compare(model.to_proto(), original) > 1e-2


def test_l1_prunes_the_small_twin_without_compensation() -> None:
    w1, w2 = twin_weights()
    w1[[2, 5]] /= 20  # the twins are now the two smallest filters
    w1[5] = 2 * w1[2]
    proto = conv_model(w1, w2)
    original = load_onnx(proto).to_proto()
    l1 = prune_and_check(proto, prune("l1", 0.125))
    assert surviving_rows(w1, inp(l1.pruned, "conv1")) == [0, 1, 3, 4, 5, 6, 7]
    assert numeric.compare(l1.pruned, original) > 1e-3
    merged = prune_and_check(proto, prune("merge", 0.125))
    assert numeric.compare(merged.pruned, original) <= 1e-5


def test_merge_skips_compensation_through_a_non_homogeneous_op() -> None:
    w1, w2 = twin_weights()
    proto = conv_model(w1, w2, act="Clip")  # Clip (ReLU6) is not positively homogeneous
    out = prune_and_check(proto, prune("merge", 0.125))
    rows = surviving_rows(w1, inp(out.pruned, "conv1"))
    assert len(rows) == 7
    assert np.array_equal(inp(out.pruned, "conv2"), w2[:, rows])  # only sliced, not merged


def test_merge_of_an_approximate_twin_beats_plain_removal() -> None:
    """A bias that is not proportional (relu(2z + 1) != 2 relu(z + 1)) makes the twin
    approximate: it is still merged, and the result is closer to the original model
    than removing the same channel without merging."""
    w1, w2 = twin_weights()
    proto = conv_model(w1, w2, b1=np.ones(8, np.float32))
    original = load_onnx(proto).to_proto()
    out = prune_and_check(proto, prune("merge", 0.125))
    rows = surviving_rows(w1, inp(out.pruned, "conv1"))
    gone = next(i for i in (2, 5) if i not in rows)
    assert not np.array_equal(inp(out.pruned, "conv2"), w2[:, rows])  # merged
    model = infer_shapes(load_onnx(proto))
    analysis = analyse_channels(model)
    root = next(r for r in analysis.roots if r.node == "conv1")
    plain = masked_reference(model.to_proto(), analysis,
                             {int(analysis.unit_of[root.first + gone])})
    merged_err = numeric.compare(out.pruned, original)
    assert merged_err < 0.5 * numeric.compare(plain, original), merged_err


# -- bn-scale -------------------------------------------------------------------------
GAMMA = np.array([0.5, -0.1, 2.0, 0.05, 1.0, -3.0, 0.2, 0.7], np.float32)


def _bn_model(gamma: np.ndarray) -> onnx.ModelProto:
    n = Net(seed=4)
    t = n.conv(n.input([1, 3, 6, 6]), 3, 8, "conv1")
    t = n.op("BatchNormalization", [t, n.const(gamma, "bn.scale"), n.rand((8,), "bn.bias"),
                                    n.rand((8,), "bn.mean"),
                                    n.rand((8,), "bn.var", positive=True)], "bn")
    return n.build(n.conv(n.op("Relu", [t], "relu"), 8, 4, "conv2"))


def test_bn_scale_keeps_the_largest_gammas() -> None:
    proto = _bn_model(GAMMA)
    scores = position_scores(proto, "bn-scale", "conv1")
    np.testing.assert_allclose(scores, np.abs(GAMMA) / np.abs(GAMMA).mean(), rtol=1e-6)
    out = prune_and_check(proto, prune("bn-scale", 0.5))
    assert kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1")) == [2, 4, 5, 7]
    assert np.array_equal(inp(out.pruned, "bn", 1), GAMMA[[2, 4, 5, 7]])


def test_bn_scale_ranks_units_without_bn_last_to_go() -> None:
    # conv1's channels 0-3 pass a BN, channels 4-7 do not: only 0-3 can be removed
    n = Net(seed=5)
    t = n.conv(n.input([1, 3, 6, 6]), 3, 8, "conv1")
    a, b = n.op("Split", [t, n.ints([4, 4])], "split", outputs=2, axis=1)
    gamma = np.array([0.3, 0.01, 0.2, 2.0], np.float32)
    a = n.op("BatchNormalization", [a, n.const(gamma, "bn.scale"), n.rand((4,), "bn.bias"),
                                    n.rand((4,), "bn.mean"),
                                    n.rand((4,), "bn.var", positive=True)], "bn")
    t = n.op("Relu", [n.op("Concat", [a, b], "cat", axis=1)], "relu")
    proto = n.build(n.conv(t, 8, 4, "conv2"))
    scores = position_scores(proto, "bn-scale", "conv1")
    assert (scores[4:] == scores[:4].max() + 1).all()
    out = prune_and_check(proto, prune("bn-scale", 0.25))
    assert kept_indices(inp(out.original, "conv1"), inp(out.pruned, "conv1")) == [0, 3, 4, 5,
                                                                                    6, 7]


def test_bn_scale_without_bn_is_a_usage_error() -> None:
    w1, w2 = twin_weights()
    with pytest.raises(UsageError, match=r"BatchNormalization.*conv1"):
        prune_and_check(conv_model(w1, w2), prune("bn-scale", 0.5))


# -- nisp -----------------------------------------------------------------------------
def test_nisp_propagates_through_two_layers() -> None:
    # x -> conv1 (3 ch, 1x1) -> relu -> conv2 (2 ch, 3x3) -> relu -> conv3 (2 ch, 1x1) -> y
    n = Net()
    w1 = np.random.default_rng(6).standard_normal((3, 2, 1, 1)).astype(np.float32)
    kernel = np.zeros((3, 3), np.float32)
    kernel[1, 1], kernel[0, 0] = 1.0, -1.0  # sum |kernel| = 2
    v2 = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, 0.5]], np.float32)  # conv1's channel 1 unread
    w2 = v2[:, :, None, None] * kernel
    w3 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)[:, :, None, None]
    t = n.op("Conv", [n.input([1, 2, 5, 5]), n.const(w1, "conv1.w")], "conv1")
    t = n.op("Conv", [n.op("Relu", [t], "relu1"), n.const(w2, "conv2.w")], "conv2",
             pads=[1] * 4)
    proto = n.build(n.op("Conv", [n.op("Relu", [t], "relu2"), n.const(w3, "conv3.w")], "conv3"))
    # the outputs of conv3 have importance 1 each
    i2 = np.array([1 + 3, 2 + 0.5])  # column sums of |w3|
    i1 = np.array([2 * (1 * i2[0] + 2 * i2[1]), 0.0, 2 * (1 * i2[0] + 0.5 * i2[1])])
    np.testing.assert_allclose(i2, [4.0, 2.5])
    np.testing.assert_allclose(i1, [18.0, 0.0, 10.5])
    np.testing.assert_allclose(position_scores(proto, "nisp", "conv2"), i2, rtol=1e-6)
    np.testing.assert_allclose(position_scores(proto, "nisp", "conv1"), i1, rtol=1e-6)
    out = prune_and_check(proto, prune("nisp", 0.34))
    assert kept_indices(w1, inp(out.pruned, "conv1")) == [0, 2]  # the unread channel goes


def test_nisp_grouped_consumer_is_exact() -> None:
    # conv1 (4 ch) -> relu -> conv2 (group=2: outputs 0 / 1 read channels 0,1 / 2,3)
    # -> relu -> conv3 (1 output, weights [2, 5]) -> y. The grouped conv ties channel j
    # with j + 2, so conv1 has 2 units: {0, 2} and {1, 3}.
    n = Net(seed=7)
    w2 = np.array([[1.0, 3.0], [2.0, -0.5]], np.float32)[:, :, None, None]
    w3 = np.array([[2.0, -5.0]], np.float32)[:, :, None, None]
    t = n.conv(n.input([1, 3, 5, 5]), 3, 4, "conv1", k=1)
    t = n.op("Conv", [n.op("Relu", [t], "relu1"), n.const(w2, "conv2.w")], "conv2", group=2)
    proto = n.build(n.op("Conv", [n.op("Relu", [t], "relu2"), n.const(w3, "conv3.w")], "conv3"))
    # conv2 outputs: importance |w3| = [2, 5]; conv1 channel p of group g: |w2[g, p - 2g]| I2[g]
    per_channel = np.array([1 * 2, 3 * 2, 2 * 5, 0.5 * 5])
    unit_scores = per_channel[[0, 1]] + per_channel[[2, 3]]  # [12, 8.5]
    scores = position_scores(proto, "nisp", "conv1")
    np.testing.assert_allclose(scores, np.tile(unit_scores, 2), rtol=1e-6)
    # conv2's two outputs are tied too (one per group): one unit, importance 2 + 5
    np.testing.assert_allclose(position_scores(proto, "nisp", "conv2"), [7.0, 7.0], rtol=1e-6)


def test_nisp_through_a_channel_shuffle() -> None:
    # conv_a, conv_b (3 ch each) -> concat -> shuffle (groups 2) -> conv2 (weights 1..6).
    # After the shuffle the channels are [a0, b0, a1, b1, a2, b2]; the shuffle unites
    # a_k with b_k, so the importance 1+2, 3+4, 5+6 of each pair is split evenly.
    n = Net()
    x = n.input([1, 2, 4, 4])
    w_b = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    pre = n.op("Relu", [n.conv(x, 2, 3, "conv_pre", k=1, bias=False)], "relu_pre")
    b = n.op("Conv", [pre, n.const(w_b[:, :, None, None], "conv_b.w")], "conv_b")
    t = n.op("Concat", [n.conv(x, 2, 3, "conv_a", k=1, bias=False), b], "cat", axis=1)
    t = n.op("Reshape", [t, n.ints([1, 2, 3, 4, 4])], "shuffle_split")
    t = n.op("Transpose", [t], "shuffle_swap", perm=[0, 2, 1, 3, 4])
    t = n.op("Reshape", [t, n.ints([1, 6, 4, 4])], "shuffle_merge")
    w2 = np.arange(1, 7, dtype=np.float32).reshape(1, 6, 1, 1)
    proto = n.build(n.op("Conv", [t, n.const(w2, "conv2.w")], "conv2"))
    np.testing.assert_allclose(position_scores(proto, "nisp", "conv_a"), [3.0, 7.0, 11.0])
    i_b = np.array([1.5, 3.5, 5.5])
    np.testing.assert_allclose(position_scores(proto, "nisp", "conv_pre"), np.abs(w_b).T @ i_b)
    np.testing.assert_allclose(np.abs(w_b).T @ i_b, [1.5, 3.5, 12.0])


def test_nisp_seeds_where_channels_leave_tracking() -> None:
    # conv2's channels are summed by a ReduceSum (an end point): importance 1 each
    n = Net()
    w2 = np.array([[1.0, -2.0, 0.0], [0.5, 0.0, 0.0]], np.float32)[:, :, None, None]
    t = n.op("Relu", [n.conv(n.input([1, 2, 4, 4]), 2, 3, "conv1", k=1)], "relu")
    t = n.op("Conv", [t, n.const(w2, "conv2.w")], "conv2")
    proto = n.build(n.op("ReduceSum", [t, n.ints([1])], "sum"))
    np.testing.assert_allclose(position_scores(proto, "nisp", "conv1"), [1.5, 2.0, 0.0])


# -- every criterion on real topologies ----------------------------------------------
def residual_concat_model() -> onnx.ModelProto:
    """BN'd stem, an identity residual block, a two-branch concat, a Gemm head."""
    n = Net(seed=8)
    stem = n.op("Relu", [n.bn(n.conv(n.input([1, 3, 8, 8]), 3, 8, "conv0"), 8, "bn0")], "relu0")
    t = n.op("Relu", [n.bn(n.conv(stem, 8, 8, "conv1"), 8, "bn1")], "relu1")
    t = n.bn(n.conv(t, 8, 8, "conv2"), 8, "bn2")
    t = n.op("Relu", [n.op("Add", [stem, t], "add")], "relu2")
    a = n.op("Relu", [n.bn(n.conv(t, 8, 4, "conv_a"), 4, "bn_a")], "relu_a")
    b = n.op("Relu", [n.bn(n.conv(t, 8, 6, "conv_b", k=1), 6, "bn_b")], "relu_b")
    t = n.op("Concat", [a, b], "cat", axis=1)
    t = n.op("Relu", [n.bn(n.conv(t, 10, 8, "conv3"), 8, "bn3")], "relu3")
    return n.build(n.head(t, 8))


@pytest.mark.parametrize("scope", ["uniform", "global"])
@pytest.mark.parametrize("name", WEIGHT_CRITERIA)
def test_residual_concat_model(name: str, scope: str) -> None:
    out = prune_and_check(residual_concat_model(),
                          f"channel-prune{{ratio=0.5,criterion={name},scope={scope}}}")
    assert out.result.stats["units_removed"] > 0
    assert inp(out.pruned, "conv_a").shape[0] + inp(out.pruned, "conv_b").shape[0] < 10


@pytest.fixture(scope="module")
def mobilenet_v2() -> onnx.ModelProto:
    return fill_placeholders(onnx.load(MOBILENET), seed=0)


@pytest.mark.parametrize("name", ["fpgm", "nisp", "merge"])
def test_mobilenet_v2(mobilenet_v2: onnx.ModelProto, name: str) -> None:
    out = prune_and_check(mobilenet_v2, prune(name, 0.5))
    assert out.result.stats["groups_pruned"] >= 20


def test_mobilenet_v2_bn_scale_is_rejected(mobilenet_v2: onnx.ModelProto) -> None:
    # the fixture's BNs are folded into its convs: there is no gamma to rank by
    with pytest.raises(UsageError, match="BatchNormalization") as info:
        prune_and_check(mobilenet_v2, prune("bn-scale", 0.5))
    assert "features.0" in str(info.value) and "\n" not in str(info.value)
