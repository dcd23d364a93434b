"""The pre-import rewrite for TVM (`backend/normalize.py`): every rewrite removes what it
should and the rewritten model computes what the original computes (onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_ir.backend.artifact import TensorSpec
from compress_ir.backend.normalize import normalize_for_tvm

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes: list, inits: list, outputs: list[tuple[str, list]], opset: int = 17,
           x_shape: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                   x_shape or ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"x": x}), strict=True))


def _normalize(model: onnx.ModelProto, shape: tuple[int, ...] = (2, 3, 6, 6)
               ) -> tuple[onnx.ModelProto, dict]:
    before = model.SerializeToString()
    out, stats = normalize_for_tvm(model, "m.onnx", [TensorSpec("x", shape, "float32")])
    assert model.SerializeToString() == before, "the input proto must not change"
    onnx.checker.check_model(out, full_check=True)
    return out, stats


def _same(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, ...] = (2, 3, 6, 6)
          ) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    want, got = _run(a, x), _run(b, x)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_dropout_and_identity_are_removed() -> None:
    model = _model([
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Dropout", ["c"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["i"], name="ident"),
        helper.make_node("Relu", ["i"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"], name="out_ident"),  # feeds the graph output
    ], [_w("w", 4, 3, 1, 1)], [("y", ["N", 4, 6, 6])])
    out, stats = _normalize(model)
    assert _ops(out) == ["Conv", "Relu"]
    assert stats["removed"] == {"Dropout": 1, "Identity": 2}
    assert [o.name for o in out.graph.output] == ["y"]
    _same(model, out)


def test_dropout_whose_mask_is_used_is_kept() -> None:
    model = _model([
        helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["d", "m"], ["y"]),
    ], [], [("y", ["N", 3, 6, 6])])
    out, stats = _normalize(model)
    assert "Dropout" in _ops(out) and "removed" not in stats
    _same(model, out)


@pytest.mark.parametrize(("op", "binary"), [("Sum", "Add"), ("Mean", "Add"), ("Max", "Max"),
                                            ("Min", "Min")])
def test_variadic_ops_become_binary_chains(op: str, binary: str) -> None:
    model = _model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["x", "w2"], ["b"]),
        helper.make_node("Conv", ["x", "w3"], ["c"]),
        helper.make_node(op, ["a", "b", "c"], ["y"], name="v"),
    ], [_w("w1", 4, 3, 1, 1), _w("w2", 4, 3, 1, 1), _w("w3", 4, 3, 1, 1)],
        [("y", ["N", 4, 6, 6])])
    out, stats = _normalize(model)
    assert op not in _ops(out) or op == binary
    assert _ops(out).count(binary) == 2
    assert stats["split_variadic"] == {op: 1}
    _same(model, out)


def test_two_input_sum_becomes_add() -> None:
    model = _model([helper.make_node("Sum", ["x", "x"], ["y"])], [], [("y", ["N", 3, 6, 6])])
    out, _ = _normalize(model)
    assert _ops(out) == ["Add"]
    _same(model, out)


def test_shape_chain_folds_at_the_fixed_input_shape() -> None:
    """`x.view(x.size(0), -1)` as torch.onnx writes it: a computed Reshape target."""
    model = _model([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ], [numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1")],
        [("y", ["N", 108])])
    out, _ = _normalize(model)
    assert _ops(out) == ["Reshape"]
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 6, 6]
    _same(model, out)


def test_old_opset_is_upgraded() -> None:
    model = _model([
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Unsqueeze", ["bn"], ["u"], axes=[0]),
        helper.make_node("Squeeze", ["u"], ["y"], axes=[0]),
    ], [_w("w", 4, 3, 1, 1), _w("s", 4), _w("b", 4), _w("m", 4),
        numpy_helper.from_array(np.full(4, 2.0, np.float32), "v")],
        [("y", ["N", 4, 6, 6])], opset=9)
    out, stats = _normalize(model)
    assert stats["opset_upgrade"] == {"from": 9, "to": 17}
    assert out.opset_import[0].version == 17
    _same(model, out)


def test_identity_read_by_a_subgraph_is_kept() -> None:
    """An If branch reads the Identity's output by name from the outer scope."""
    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["i"], ["o"])], op, [],
                                 [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])

    model = _model([
        helper.make_node("Identity", ["x"], ["i"], name="ident"),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("Relu"),
                         else_branch=branch("Neg")),
    ], [numpy_helper.from_array(np.array(True), "cond")], [("y", ["N", 3, 6, 6])])
    out, stats = _normalize(model)
    assert "Identity" in _ops(out) and "removed" not in stats
    _same(model, out)


def test_constant_of_shape_over_an_empty_shape_becomes_a_scalar() -> None:
    """transformers 5.17's BERT export: `ConstantOfShape(Shape(x)[0:0])`, a scalar, which
    TVM 0.27 imports as a `broadcast_to` to rank 0 and rejects."""
    model = _model([
        helper.make_node("Shape", ["x"], ["s"], start=0, end=0),
        helper.make_node("ConstantOfShape", ["s"], ["c"],
                         value=numpy_helper.from_array(np.array([2.5], np.float32))),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ], [], [("y", ["N", 3, 6, 6])])
    out, stats = _normalize(model)
    assert "ConstantOfShape" not in _ops(out)
    assert stats["scalar_constant_of_shape"] == {"ConstantOfShape": 1}
    _same(model, out)
    from compress_ir.backend.build import import_relax

    import_relax(out, [TensorSpec("x", (2, 3, 6, 6), "float32")], "m.onnx")  # raised before
