"""Data-driven criteria (activation statistics and reconstruction error).

Every model is tiny and built so that the right answer follows from reasoning, not
from the code under test: equal filters with ordered biases, dead or constant
channels, consumer weights on orthogonal outputs whose energies are set exactly,
duplicate filters whose contributions cancel. Each test runs the whole
`channel-prune` pass with a calibration set and reads which conv1 channels survive.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_ir.passes  # noqa: F401
from compress_ir.cli import main
from compress_ir.core import numeric
from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import EXIT_USAGE, UsageError
from compress_ir.core.passes import PassContext, PassResult
from compress_ir.core.pipeline import build_passes
from compress_ir.core.verify import output_shapes, verify_model
from compress_ir.frontends.onnx import load_onnx
from compress_ir.passes.analysis.importance.reconstruction_error import (
    inverse_blocks,
    lasso_scores,
    thinet_order,
)

ACTIVATION = ["apoz", "act-mean", "act-var"]
RECONSTRUCTION = ["thinet", "lasso", "obd", "obs"]
DATA_CRITERIA = [*ACTIVATION, "hrank", *RECONSTRUCTION]
RNG = np.random.default_rng(1234)


# -- builders -----------------------------------------------------------------------
def unit_filters(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """`count` random filters of unit Frobenius norm: on i.i.d. N(0, 1) inputs each
    unpadded output value is exactly N(0, 1), whatever the filter."""
    w = np.random.default_rng(seed).standard_normal((count, *shape))
    return w / np.linalg.norm(w.reshape(count, -1), axis=1).reshape(-1, *[1] * len(shape))


def conv_net(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, hw: int = 10,
             head: str = "conv") -> onnx.ModelProto:
    """x[N,3,hw,hw] -> conv1(w1, b1; no padding) -> relu -> consumer -> y.

    head "conv": conv2 (w2, same padding); "flatten": Flatten -> Gemm(w2 [O, C*H*W]);
    "gap": GlobalAveragePool -> Flatten -> Gemm(w2 [O, C]).
    """
    inits = [numpy_helper.from_array(w1.astype(np.float32), "conv1.w"),
             numpy_helper.from_array(b1.astype(np.float32), "conv1.b"),
             numpy_helper.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h"], name="conv1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu1")]
    if head == "conv":
        pad = w2.shape[-1] // 2
        nodes.append(helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2",
                                      pads=[pad] * 4))
    else:
        src = "r"
        if head == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"))
            src = "p"
        nodes += [helper.make_node("Flatten", [src], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def gaussian_calib(shape: tuple[int, ...], count: int = 64, seed: int = 0) -> CalibrationSet:
    x = np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
    return CalibrationSet({"x": x}, "test")


def prune(proto: onnx.ModelProto, criterion: str, ratio: float,
          calib: CalibrationSet | None) -> PassResult:
    (p,) = build_passes(f"channel-prune{{ratio={ratio},criterion={criterion}}}")
    return p.run(load_onnx(proto), PassContext(calibration=calib))


def _init(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == name)


def removed_channels(original: onnx.ModelProto, result: PassResult) -> set[int]:
    """conv1 channels that are gone: each channel is identified by its filter, bias and
    consumer weights together (filters alone may repeat)."""
    pruned = result.model.to_proto()

    def signature(proto: onnx.ModelProto) -> list[np.ndarray]:
        w1, b1, w2 = _init(proto, "conv1.w"), _init(proto, "conv1.b"), _init(proto, "w2")
        if w2.ndim == 2:  # Gemm [O, C*H*W]: the columns of channel c
            w2 = w2.reshape(w2.shape[0], w1.shape[0], -1)
        return [np.concatenate([w1[c].ravel(), b1[c:c + 1], w2[:, c].ravel()])
                for c in range(w1.shape[0])]

    before, after = signature(original), signature(pruned)
    kept = {next(i for i, s in enumerate(before) if np.array_equal(s, t)) for t in after}
    assert len(kept) == len(after)
    return set(range(len(before))) - kept


# -- activation statistics ----------------------------------------------------------
def biased_net() -> onnx.ModelProto:
    """Eight channels with the *same* filter and biases b: relu(z + b) grows pointwise
    with b, so APoZ falls and mean |a| and variance (Cov of two increasing functions
    of z is >= 0) rise with b. Channel 1 (b = -100) is dead."""
    f = unit_filters(1, (3, 3, 3))[0]
    w1 = np.stack([f] * 8)
    b1 = np.array([0.5, -100.0, 1.5, -0.5, 2.0, -1.0, 1.0, 0.0])
    return conv_net(w1, b1, unit_filters(4, (8, 3, 3), seed=1))


@pytest.mark.parametrize("criterion", ACTIVATION)
def test_activation_criteria_follow_the_bias(criterion):
    proto = biased_net()
    calib = gaussian_calib((3, 10, 10))
    assert removed_channels(proto, prune(proto, criterion, 0.125, calib)) == {1}  # dead first
    # the four largest biases (2.0, 1.5, 1.0, 0.5 at channels 4, 2, 6, 0) survive
    assert removed_channels(proto, prune(proto, criterion, 0.5, calib)) == {1, 3, 5, 7}


@pytest.mark.parametrize("criterion", ACTIVATION)
def test_activation_criteria_average_flattened_positions(criterion):
    f = unit_filters(1, (3, 3, 3))[0]
    b1 = np.array([0.5, -100.0, 1.5, -0.5, 2.0, -1.0, 1.0, 0.0])
    proto = conv_net(np.stack([f] * 8), b1, unit_filters(5, (8 * 16,), seed=1), hw=6,
                     head="flatten")
    calib = gaussian_calib((3, 6, 6), count=256)
    assert removed_channels(proto, prune(proto, criterion, 0.5, calib)) == {1, 3, 5, 7}


# -- HRank ----------------------------------------------------------------------------
def rank_net(head: str) -> onnx.ModelProto:
    """Random channels have (near) full-rank 8x8 maps; channel 1 is all-zero (rank 0)
    and channel 3 has a zero filter and bias 1, a constant map (rank 1)."""
    w1 = unit_filters(8, (3, 3, 3))
    w1[[1, 3]] = 0.0
    b1 = np.zeros(8)
    b1[3] = 1.0
    w2 = unit_filters(4, (8, 3, 3), seed=1) if head == "conv" else unit_filters(5, (8,), seed=1)
    return conv_net(w1, b1, w2, head=head)


@pytest.mark.parametrize("head", ["conv", "gap"])
def test_hrank_prunes_low_rank_maps(head):
    # "gap": the consumer sees [N, 8] pooled values, so HRank reads the relu output
    proto = rank_net(head)
    result = prune(proto, "hrank", 0.25, gaussian_calib((3, 10, 10), count=16))
    assert removed_channels(proto, result) == {1, 3}


def test_hrank_without_feature_maps_is_a_usage_error():
    w1, w2 = RNG.standard_normal((8, 16)), RNG.standard_normal((3, 8))
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1.astype(np.float32), "w1"),
         numpy_helper.from_array(w2.astype(np.float32), "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = CalibrationSet({"x": RNG.standard_normal((8, 16)).astype(np.float32)}, "test")
    with pytest.raises(UsageError, match=r"hrank.*fc1.*4-D"):
        prune(proto, "hrank", 0.5, calib)
    result = prune(proto, "act-mean", 0.5, calib)  # other criteria are fine on an MLP
    assert _init(result.model.to_proto(), "w1").shape == (4, 16)


# -- reconstruction error -------------------------------------------------------------
BIG = [1, 3, 5, 6]


def big_filters_tiny_consumers(head: str) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Channels BIG have 10x filters but 1e-3x consumer weights: their contribution to
    the consumer's output is 1e-2 of the others' (relu is positively homogeneous)."""
    w1 = unit_filters(8, (3, 3, 3))
    w1[BIG] *= 10.0
    if head == "conv":
        w2 = np.random.default_rng(1).standard_normal((4, 8, 3, 3))
        w2 /= np.sqrt((w2**2).sum(axis=(0, 2, 3), keepdims=True))  # unit norm per input
        w2[:, BIG] *= 1e-3
        return conv_net(w1, np.zeros(8), w2), (3, 10, 10)
    w2 = unit_filters(5, (8, 16), seed=1)
    w2[:, BIG] *= 1e-3
    return conv_net(w1, np.zeros(8), w2.reshape(5, -1), hw=6, head="flatten"), (3, 6, 6)


@pytest.mark.parametrize("head", ["conv", "flatten"])
@pytest.mark.parametrize("criterion", RECONSTRUCTION)
def test_reconstruction_ignores_filter_norm(criterion, head):
    proto, shape = big_filters_tiny_consumers(head)
    calib = gaussian_calib(shape, count=64)
    assert removed_channels(proto, prune(proto, criterion, 0.5, calib)) == set(BIG)
    if criterion == "thinet" and head == "conv":  # a weight-only criterion keeps them
        assert removed_channels(proto, prune(proto, "l1", 0.5, None)) == {0, 2, 4, 7}


def cancelling_pair_net() -> onnx.ModelProto:
    """conv2 is 1x1 and sends each conv1 channel to its own output, so contributions
    Z_c are orthogonal and ||Z_c||^2 = E[relu(N(0,1))^2] * ||W[:, c]||^2 with the same
    E[.] = 1/2 for every channel. Channels 2 (q) and 5 (p) share a filter; p writes
    -2x q's output: energies q = 1, p = 4, channel 0 = 2.5, the rest >= 9 (units of
    1/2). Removing q then p leaves only (1 - 2)^2 = 1 of change."""
    w1 = unit_filters(8, (3, 3, 3))
    w1[5] = w1[2]
    w2 = np.zeros((8, 8, 1, 1))
    scale = {0: math.sqrt(2.5), 1: 3.0, 3: 3.5, 4: 4.0, 6: 4.5, 7: 5.0, 2: 1.0}
    for c, s in scale.items():
        w2[c, c] = s
    w2[2, 5] = -2.0
    return conv_net(w1, np.zeros(8), w2)


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [
        ("obd", {2, 0}),  # diagonal saliency = own energy: 1 and 2.5 are the smallest
        ("thinet", {2, 5}),  # greedy: q (1), then p costs (1 - 2)^2 = 1 < 1 + 2.5
        ("obs", {2, 5}),  # each duplicate is absorbed by the other: ~damping-sized
        ("lasso", {2, 5}),  # q never enters (p fits its direction at half the L1 cost),
        # p enters at lambda = |<Z_p, Y>| = 4 - 2 = 2 < 2.5 (channel 0), the rest earlier
    ],
)
def test_reconstruction_sees_correlated_channels(criterion, expected):
    proto = cancelling_pair_net()
    result = prune(proto, criterion, 0.25, gaussian_calib((3, 10, 10), count=64))
    assert removed_channels(proto, result) == expected


def test_unsupported_consumer_is_a_usage_error_unless_another_covers_it():
    """conv1 feeds a grouped conv (which `linear` cannot sample) and, in the second
    model, also a plain conv: only the first must refuse."""
    def build(with_plain: bool) -> onnx.ModelProto:
        w = {"conv1.w": unit_filters(8, (3, 3, 3)), "conv1.b": np.zeros(8),
             "g.w": unit_filters(8, (4, 3, 3), seed=1), "c.w": unit_filters(8, (8, 1, 1), 2)}
        nodes = [helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h"], name="conv1"),
                 helper.make_node("Relu", ["h"], ["r"], name="relu1"),
                 helper.make_node("Conv", ["r", "g.w"], ["g"], name="gconv", group=2,
                                  pads=[1] * 4)]
        if with_plain:
            nodes += [helper.make_node("Conv", ["r", "c.w"], ["c"], name="plain"),
                      helper.make_node("Add", ["g", "c"], ["y"], name="add")]
        else:
            nodes += [helper.make_node("Identity", ["g"], ["y"], name="out")]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return onnx.shape_inference.infer_shapes(model)

    calib = gaussian_calib((3, 10, 10), count=8)
    for criterion in RECONSTRUCTION:
        with pytest.raises(UsageError, match=r"conv1.*Conv node 'gconv'"):
            prune(build(False), criterion, 0.5, calib)
        result = prune(build(True), criterion, 0.5, calib)
        assert result.modified
        assert numeric.compare(result.model.to_proto(), result.reference) <= 1e-4


# -- exactness on a residual + concat model ---------------------------------------------
def residual_concat_net() -> onnx.ModelProto:
    """conv1 -> relu -> conv2 -> (+ relu1) -> relu -> [conv3] ; concat(relu2, conv3)
    -> relu -> conv4 (1x1) -> GAP -> Flatten -> Gemm: a residual-tied group, a group
    split by a Concat, and a group read by a Gemm behind GAP/Flatten."""
    rng = np.random.default_rng(7)

    def w(*shape):
        return (rng.standard_normal(shape) / math.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = {"w1": w(8, 3, 3, 3), "b1": w(8, 1)[:, 0], "w2": w(8, 8, 3, 3), "w3": w(6, 8, 3, 3),
             "b3": w(6, 1)[:, 0], "w4": w(10, 14, 1, 1), "fc.w": w(3, 10), "fc.b": w(3, 1)[:, 0]}
    conv = {"pads": [1] * 4}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **conv),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", **conv),
        helper.make_node("Concat", ["r2", "c3"], ["cat"], name="concat", axis=1),
        helper.make_node("Relu", ["cat"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], name="conv4"),
        helper.make_node("GlobalAveragePool", ["c4"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "rescat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_match_the_masked_oracle(criterion):
    proto = residual_concat_net()
    original = load_onnx(proto).to_proto()
    result = prune(proto, criterion, 0.5, gaussian_calib((3, 8, 8), count=32))
    assert result.modified
    assert result.stats["groups_pruned"] == 3, result.details
    verify_model(result.model, output_shapes(original))
    assert numeric.compare(result.model.to_proto(), result.reference) <= 1e-4


# -- calibration is required ------------------------------------------------------------
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_need_calibration(criterion):
    with pytest.raises(UsageError, match="calibration") as info:
        prune(residual_concat_net(), criterion, 0.5, None)
    assert info.value.exit_code == EXIT_USAGE


def test_cli_without_calib_exits_2(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save_model(residual_concat_net(), str(path))
    code = main([str(path), "--pass", "channel-prune{criterion=thinet}", "-o",
                 str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "--calib" in err and "Traceback" not in err


# -- solver pieces ----------------------------------------------------------------------
def test_inverse_blocks_direct_and_woodbury_agree_with_a_dense_inverse():
    for rows, k in [(40, 12), (10, 30)]:  # K <= S: direct; K > S: Woodbury
        x = RNG.standard_normal((rows, k))
        h = 2.0 * x.T @ x / rows
        dense = np.linalg.inv(h + 1e-2 * np.mean(np.diag(h)) * np.eye(k))
        blocks = [np.arange(0, 3), np.array([4, 7, 11])]
        for f, got in zip(blocks, inverse_blocks(x, blocks, 1e-2), strict=True):
            np.testing.assert_allclose(got, dense[np.ix_(f, f)], rtol=1e-8, atol=1e-10)


def test_thinet_and_lasso_on_hand_made_grams():
    # orthogonal contributions: both reduce to ranking by energy
    energy = np.array([3.0, 1.0, 4.0, 2.0])
    assert list(thinet_order(np.diag(energy))) == [1, 3, 0, 2]
    assert list(np.argsort(lasso_scores(np.diag(energy)))) == [1, 3, 0, 2]
    # units 0 and 1 cancel exactly (Z_1 = -Z_0): LASSO zeroes both, ThiNet removes
    # them together once one of them is the cheapest
    z = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    gram = z @ z.T
    assert set(np.argsort(lasso_scores(gram))[:2]) == {0, 1}
    assert list(thinet_order(gram))[:2] == [0, 1]
