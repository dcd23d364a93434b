"""`sparse_initializer` storage: write COO, load dense, run equal in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compress_ir.api import compress
from compress_ir.core.errors import ModelLoadError
from compress_ir.frontends.onnx import load_onnx, save_onnx
from compress_ir.frontends.sparse_storage import dense_to_sparse, sparse_to_dense


def _model(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x[N,64] -> Gemm(w1 [128,64], transB) -> Relu -> MatMul(w2 [128,32]); a Reshape shape."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
        helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape"),
    ]
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(np.linspace(-1, 1, 128).astype(np.float32), "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "shape")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _sparse_weights(seed: int, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((128, 64)) * (rng.random((128, 64)) >= sparsity)
    w2 = rng.standard_normal((128, 32)) * (rng.random((128, 32)) >= sparsity)
    return w1, w2


def _run(path_or_proto, x: np.ndarray) -> np.ndarray:
    data = path_or_proto if isinstance(path_or_proto, str) else \
        path_or_proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_round_trip_at_high_sparsity(tmp_path) -> None:
    dense = _model(*_sparse_weights(0, 0.9))
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    save_onnx(dense, tmp_path / "dense.onnx")
    size = save_onnx(dense, tmp_path / "sparse.onnx", sparse=True)
    stored = onnx.load(tmp_path / "sparse.onnx")
    assert sorted(s.values.name for s in stored.graph.sparse_initializer) == ["w1", "w2"]
    assert {i.name for i in stored.graph.initializer} == {"b1", "shape"}  # dense / int64 stay
    onnx.checker.check_model(stored)
    assert size == (tmp_path / "sparse.onnx").stat().st_size
    assert size < 0.5 * (tmp_path / "dense.onnx").stat().st_size
    np.testing.assert_array_equal(_run(str(tmp_path / "sparse.onnx"), x), _run(dense, x))
    assert not dense.graph.sparse_initializer  # the caller's proto is not modified
    back = load_onnx(tmp_path / "sparse.onnx").to_proto()
    assert not back.graph.sparse_initializer
    got = {i.name: numpy_helper.to_array(i) for i in back.graph.initializer}
    for init in dense.graph.initializer:
        np.testing.assert_array_equal(got[init.name], numpy_helper.to_array(init))


def test_low_sparsity_stays_dense(tmp_path) -> None:
    """COO costs 12 bytes per float32 non-zero: at 50 % it would be larger, so it is not used."""
    dense = _model(*_sparse_weights(2, 0.5))
    save_onnx(dense, tmp_path / "a.onnx", sparse=True, min_sparsity=0.3)
    assert not onnx.load(tmp_path / "a.onnx").graph.sparse_initializer
    dense = _model(*_sparse_weights(2, 0.8))
    save_onnx(dense, tmp_path / "b.onnx", sparse=True, min_sparsity=0.95)
    assert not onnx.load(tmp_path / "b.onnx").graph.sparse_initializer


def test_sparsified_model_written_sparse(tmp_path) -> None:
    rng = np.random.default_rng(3)
    dense = _model(rng.standard_normal((128, 64)), rng.standard_normal((128, 32)))
    result = compress(dense, "sparsify{sparsity=0.9,skip-first=false,skip-last=false}")
    save_onnx(result.model, tmp_path / "s.onnx", sparse=True)
    stored = onnx.load(tmp_path / "s.onnx")
    onnx.checker.check_model(stored)
    assert len(stored.graph.sparse_initializer) == 2
    x = rng.standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(str(tmp_path / "s.onnx"), x), _run(result.model, x))


def test_coordinate_indices_are_loaded(tmp_path) -> None:
    """The spec's other COO form: indices [NNZ, rank]."""
    w1, w2 = _sparse_weights(4, 0.9)
    model = _model(w1, w2)
    coords = np.argwhere(w2 != 0).astype(np.int64)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(w2[w2 != 0].astype(np.float32), "w2"),
        numpy_helper.from_array(coords, ""), list(w2.shape))
    kept = [i for i in model.graph.initializer if i.name != "w2"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.sparse_initializer.append(sparse)
    onnx.checker.check_model(model)
    loaded = load_onnx(model).to_proto()
    got = {i.name: numpy_helper.to_array(i) for i in loaded.graph.initializer}
    np.testing.assert_array_equal(got["w2"], w2.astype(np.float32))
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(loaded, x), _run(model, x))


def test_bad_sparse_initializer_is_a_load_error() -> None:
    model = _model(*_sparse_weights(6, 0.9))
    bad = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(3, np.float32), "w9"),
        numpy_helper.from_array(np.array([0, 5, 99], np.int64), ""), [4, 4])
    model.graph.sparse_initializer.append(bad)
    with pytest.raises(ModelLoadError, match="w9"):
        load_onnx(model)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), seed=st.integers(0, 999),
       density=st.floats(0.0, 1.0), dtype=st.sampled_from([np.float32, np.float16, np.float64]))
def test_coo_round_trip(shape: list[int], seed: int, density: float, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    array = (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(dtype)
    sparse = dense_to_sparse(numpy_helper.from_array(array, "t"))
    assert numpy_helper.to_array(sparse.values).size == np.count_nonzero(array)
    back = numpy_helper.to_array(sparse_to_dense(sparse))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
