"""`share-weights`: at most 2^bits codes per layer, zeros kept, Lloyd's fixed point
reached, the written dense model equals its codebook form, options honoured."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.core.errors import NumericMismatchError, UsageError
from compress_ir.core.pipeline import build_passes
from compress_ir.passes.transform.share_weights import (
    codebook_reference,
    kmeans_1d,
    share_weight,
)


def sparse_net(seed: int = 0, sparsity: float = 0.6) -> onnx.ModelProto:
    """x[2,3,6,6] -> Conv(8) -> Relu -> Flatten -> Gemm(transB=1, 16) -> MatMul(5)."""
    rng = np.random.default_rng(seed)

    def sparse(*shape: int) -> np.ndarray:
        w = rng.standard_normal(shape).astype(np.float32)
        w[rng.random(shape) < sparsity] = 0
        return w

    inits = [
        numpy_helper.from_array(sparse(8, 3, 3, 3), "conv.w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv.b"),
        numpy_helper.from_array(sparse(16, 8 * 4 * 4), "fc1.w"),
        numpy_helper.from_array(sparse(16, 5), "fc2.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc1.w"], ["h"], name="fc1", transB=1),
        helper.make_node("MatMul", ["h", "fc2.w"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "sparse_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def assert_lloyd_fixed_point(old: np.ndarray, new: np.ndarray) -> None:
    """Each shared value is the mean of the weights mapped to it, and each weight is
    mapped to its nearest shared value (Lloyd's k-means has converged)."""
    nz = old != 0
    values = np.unique(new[nz])
    for v in values:
        members = old[nz & (new == v)].astype(np.float64)
        assert np.isclose(members.mean(), v, rtol=1e-5, atol=1e-6)
    dist = np.abs(old[nz].astype(np.float64)[:, None] - values[None, :])
    chosen = np.abs(old[nz].astype(np.float64) - new[nz])
    assert np.all(chosen <= dist.min(axis=1) + 1e-6)


# --- k-means ------------------------------------------------------------------------


def test_kmeans_finds_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    groups = [rng.normal(mu, 0.01, 50) for mu in (-2.0, 0.5, 3.0)]
    centroids, labels = kmeans_1d(np.concatenate(groups), 3, 100)
    assert np.allclose(centroids, [g.mean() for g in groups])
    assert labels.tolist() == [0] * 50 + [1] * 50 + [2] * 50


def test_kmeans_linear_init_drops_empty_clusters() -> None:
    # values at the two ends only: the middle centroids of the linear init stay empty
    centroids, labels = kmeans_1d(np.array([-1.0, -1.0, 1.0, 1.0]), 4, 10)
    assert centroids.tolist() == [-1.0, 1.0] and labels.tolist() == [0, 0, 1, 1]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 6), st.sampled_from([0.0, 0.5, 0.9]),
       st.sampled_from([np.float32, np.float64, np.float16]))
def test_share_weight_properties(seed: int, bits: int, sparsity: float, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rng.integers(1, 30), rng.integers(1, 30))).astype(dtype)
    w[rng.random(w.shape) < sparsity] = 0
    sw = share_weight(w, bits, iterations=1000)
    if sw is None:  # already few enough values: nothing to share
        assert np.unique(w).size <= 2**bits
        return
    assert sw.dense.dtype == w.dtype and sw.dense.shape == w.shape
    assert np.array_equal(sw.dense == 0, w == 0)  # zeros stay, non-zeros stay non-zero
    assert np.unique(sw.dense).size <= 2**bits  # zero included
    assert np.array_equal(sw.codebook[sw.codes], sw.dense)
    if dtype != np.float16:  # float16 rounding of centroids moves the fixed point
        assert_lloyd_fixed_point(w, sw.dense)


# --- the pass -----------------------------------------------------------------------


def test_pass_shares_every_layer_and_checks_against_codebook_form() -> None:
    proto = sparse_net()
    result = compress(proto, "share-weights{bits=3,iterations=1000}")
    before, after = weights(proto), weights(result.model)
    for name in ("conv.w", "fc1.w", "fc2.w"):
        assert np.array_equal(after[name] == 0, before[name] == 0), name
        assert np.unique(after[name]).size <= 8, name  # 7 centroids + zero
        assert_lloyd_fixed_point(before[name], after[name])
    assert np.array_equal(after["conv.b"], before["conv.b"])  # biases are not shared
    stats = result.report["passes"][0]["stats"]
    assert stats["layers"] == stats["layers_changed"] == 3
    assert 0 < stats["weight_rel_error"] < 0.2
    assert stats["output_rel_error"] == pytest.approx(numeric.compare(result.model, proto), 1e-6)
    (check,) = result.report["checks"]
    assert check["ok"] and check["rel_error"] < 1e-5


def test_codebook_reference_catches_a_wrong_dense_weight() -> None:
    proto = sparse_net()
    w = weights(proto)["fc1.w"]
    sw = share_weight(w, 2, 100)
    shared = onnx.ModelProto()
    shared.CopyFrom(proto)
    for init in shared.graph.initializer:
        if init.name == "fc1.w":
            init.CopyFrom(numpy_helper.from_array(sw.dense, "fc1.w"))
    ref = codebook_reference(proto, {"fc1.w": sw})
    onnx.checker.check_model(ref)
    assert numeric.compare(shared, ref) < 1e-6
    broken = onnx.ModelProto()
    broken.CopyFrom(shared)
    for init in broken.graph.initializer:
        if init.name == "fc1.w":
            wrong = sw.dense.copy()
            wrong[wrong != 0] *= -1  # same codebook magnitudes, wrong signs
            init.CopyFrom(numpy_helper.from_array(wrong, "fc1.w"))
    assert numeric.compare(broken, ref) > 1e-2


def test_conv_and_fc_bits() -> None:
    proto = sparse_net()
    after = weights(compress(proto, "share-weights{conv-bits=2,fc-bits=4}").model)
    assert np.unique(after["conv.w"]).size <= 4
    assert 4 < np.unique(after["fc1.w"]).size <= 16
    rows = {r["weight"]: r for r in compress(proto, "share-weights{conv-bits=2,fc-bits=4}")
            .report["passes"][0]["details"]["layers"]}
    assert rows["conv.w"]["bits"] == 2 and rows["fc2.w"]["bits"] == 4


def test_more_bits_lose_less() -> None:
    proto = sparse_net(seed=3, sparsity=0.0)
    errs = [compress(proto, f"share-weights{{bits={b}}}").report["passes"][0]["stats"]
            ["weight_rel_error"] for b in (1, 3, 6)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_dense_layer_gets_all_codes() -> None:
    proto = sparse_net(seed=4, sparsity=0.0)
    after = weights(compress(proto, "share-weights{bits=2,iterations=500}").model)
    assert np.unique(after["fc1.w"]).size == 4 and np.count_nonzero(after["fc1.w"] == 0) == 0


def test_exclude_and_min_size_leave_weights_alone() -> None:
    proto = sparse_net()
    before = weights(proto)
    after = weights(compress(proto, "share-weights{bits=2,exclude=[fc*]}").model)
    assert np.array_equal(after["fc1.w"], before["fc1.w"])
    assert np.array_equal(after["fc2.w"], before["fc2.w"])
    assert not np.array_equal(after["conv.w"], before["conv.w"])
    after = weights(compress(proto, "share-weights{bits=2,min-size=200}").model)
    assert not np.array_equal(after["conv.w"], before["conv.w"])  # 216 >= 200: shared
    assert not np.array_equal(after["fc1.w"], before["fc1.w"])
    assert np.array_equal(after["fc2.w"], before["fc2.w"])  # 80 < 200


def test_sharing_twice_changes_nothing() -> None:
    once = compress(sparse_net(), "share-weights{bits=3}").model
    result = compress(once, "share-weights{bits=3}")  # at most 8 values already
    assert not result.report["passes"][0]["modified"]
    assert result.report["checks"] == []
    assert all(np.array_equal(weights(once)[k], v) for k, v in weights(result.model).items())


@pytest.mark.parametrize("spec", ["share-weights{bits=0}", "share-weights{bits=9}",
                                  "share-weights{fc-bits=12}", "share-weights{iterations=0}"])
def test_bad_options_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        build_passes(spec)


def test_numeric_check_failure_names_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import compress_ir.passes.transform.share_weights as sw_mod

    def corrupt(proto: onnx.ModelProto, shared: dict) -> onnx.ModelProto:
        ref = codebook_reference(proto, shared)
        for init in ref.graph.initializer:
            if init.name.endswith("__codebook"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
        return ref

    monkeypatch.setattr(sw_mod, "codebook_reference", corrupt)
    # issue 10: a mismatch keeps its class (exit 1), the message names the pass
    with pytest.raises(NumericMismatchError, match="share-weights"):
        compress(sparse_net(), "share-weights{bits=2}")
