"""TVM builds of what real exporters write (issue 9): dynamic dims fixed by input shapes,
Dropout / variadic Sum / negative Squeeze axes / ConvTranspose through the CPU layout
conversion, and importer errors that name the file and the node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_ir.backend import BuildOptions, build, run_artifact
from compress_ir.backend.artifact import TensorSpec
from compress_ir.backend.build import fixed_input_specs, import_relax
from compress_ir.backend.normalize import normalize_for_tvm
from compress_ir.core.errors import UnsupportedModelError, UsageError

tvm = pytest.importorskip("tvm")

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _i64(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(nodes: list, inits: list, out: str, x_shape: list, opset: int = 17,
           out_shape: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape or x_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


# One failure each, as the onnx zoo / torch exporters write them.
def dropout_model() -> onnx.ModelProto:  # squeezenet, vgg, alexnet: "Expected nested..."
    return _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                   helper.make_node("Dropout", ["c"], ["d"]),
                   helper.make_node("Conv", ["d", "w2"], ["y"])],
                  [_w("w", 8, 3, 3, 3), _w("w2", 8, 8, 1, 1)], "y", ["N", 3, 8, 8], opset=9,
                  out_shape=["N", 8, 6, 6])


def sum_model() -> onnx.ModelProto:  # resnet50, shufflenet: "Invalid SLayout ... ABCDE"
    return _model([helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["a"], ["r"]),
                   helper.make_node("Sum", ["r", "a"], ["y"])],
                  [_w("w", 8, 3, 3, 3)], "y", ["N", 3, 8, 8], opset=9, out_shape=["N", 8, 8, 8])


def squeeze_model() -> onnx.ModelProto:  # dynamo attention blocks: std::bad_alloc
    return _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                   helper.make_node("ReduceMean", ["c", "ax"], ["m"], keepdims=1),
                   helper.make_node("Squeeze", ["m", "neg"], ["y"])],
                  [_w("w", 8, 3, 1, 1), _i64("ax", [2]), _i64("neg", [-2])], "y",
                  ["N", 3, 8, 8], opset=18, out_shape=["N", 8, 8])


def deconv_model() -> onnx.ModelProto:  # segmentation decoders: CodeGenVM cannot emit
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("ConvTranspose", ["c", "wt"], ["y"], strides=[2, 2])],
                  [_w("w", 8, 3, 3, 3), _w("wt", 8, 4, 2, 2)], "y", ["N", 3, "H", "W"],
                  out_shape=["N", 4, "H2", "W2"])


def exporter_model() -> onnx.ModelProto:
    """All of the above plus a dynamic H×W and the `x.view(x.size(0), -1)` chain."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Dropout", ["r1"], ["d1"], name="drop"),
        helper.make_node("Conv", ["d1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d1", "w3"], ["c3"]),
        helper.make_node("Sum", ["c2", "c3", "d1"], ["s"], name="sum3"),
        helper.make_node("ConvTranspose", ["s", "wt"], ["up"], strides=[2, 2]),
        helper.make_node("ReduceMean", ["up", "ax3"], ["m"], keepdims=1),
        helper.make_node("Squeeze", ["m", "neg"], ["sq"]),
        helper.make_node("Shape", ["sq"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["sq", "target"], ["y"]),
    ]
    inits = [_w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 8, 8, 3, 3), _w("w3", 8, 8, 1, 1),
             _w("wt", 8, 4, 2, 2), _i64("ax3", [3]), _i64("neg", [-1]), _i64("zero", 0),
             _i64("axes0", [0]), _i64("minus1", [-1])]
    return _model(nodes, inits, "y", ["batch", 3, "height", "width"], opset=18,
                  out_shape=["batch", "F"])


def _imported(model: onnx.ModelProto, shape: tuple[int, ...]) -> object:
    specs = [TensorSpec("x", shape, "float32")]
    proto, _ = normalize_for_tvm(model, "m.onnx", specs)
    return import_relax(proto, specs, "m.onnx")


def _prepared(model: onnx.ModelProto, shape: tuple[int, ...]) -> object:
    from compress_ir.backend.schedule.pipeline import prepare

    target = tvm.target.Target("llvm")
    return prepare(_imported(model, shape), target)


def _calls(mod: object) -> dict[str, list[object]]:
    """Relax op name -> the calls of it in the module's Relax functions."""
    calls: dict[str, list[object]] = {}

    def visit(expr: object) -> None:
        op = getattr(expr, "op", None)
        if isinstance(op, tvm.ir.Op):
            calls.setdefault(op.name, []).append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, tvm.relax.Function):
            tvm.relax.analysis.post_order_visit(func, visit)
    return calls


@pytest.mark.parametrize("make", [dropout_model, sum_model, squeeze_model])
def test_layout_conversion_takes_it(make: object) -> None:
    """Each of these failed inside TVM's ConvertLayout; now every conv runs NHWC."""
    from compress_ir.backend.schedule.pipeline import layout_passes

    with tvm.target.Target("llvm"):
        mod = tvm.transform.Sequential(layout_passes())(_imported(make(), (1, 3, 8, 8)))
    calls = _calls(mod)
    convs = calls.get("relax.nn.conv2d", [])
    assert convs and all(c.attrs.data_layout == "NHWC" for c in convs)
    assert "relax.nn.dropout" not in calls and "relax.stack" not in calls
    _prepared(make(), (1, 3, 8, 8))  # legalize + fuse take the result


def test_conv_transpose_is_lowered() -> None:
    """ConvTranspose stays NCHW (TVM legalizes no other layout) between NHWC convs."""
    mod = _prepared(deconv_model(), (1, 3, 8, 8))
    assert not [c for c in _calls(mod) if c.startswith("relax.nn.")], _calls(mod)


def test_exporter_model_builds_and_verifies(tmp_path: Path) -> None:
    model = exporter_model()
    with pytest.raises(UnsupportedModelError,
                       match=r"dim 2 \(height\) is dynamic.*--input-shape x=1,3,\d+,\d+"):
        build(model, "x86", tmp_path / "a", source="exp.onnx")
    shapes = {"x": (2, 3, 10, 12)}
    art = build(model, "x86", tmp_path / "a", BuildOptions(input_shapes=shapes),
                source="exp.onnx")
    assert art.meta["inputs"][0]["shape"] == [2, 3, 10, 12]
    assert art.meta["inputs"][0]["fixed_dims"] == {"0": "batch", "2": "height", "3": "width"}
    assert art.meta["verify"]["ok"] and art.meta["verify"]["rel_error"] <= 1e-4
    norm = art.meta["normalize"]
    assert norm["removed"] == {"Dropout": 1} and norm["split_variadic"] == {"Sum": 1}
    assert art.meta["build"]["options"]["input_shapes"] == {"x": [2, 3, 10, 12]}
    x = RNG.standard_normal((2, 3, 10, 12)).astype(np.float32)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    got = run_artifact(art.path, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match=r"dims 0 \(batch\), 2 \(height\), 3 \(width\) were "
                       r"fixed when building: rebuild with --input-shape x=1,3,16,16"):
        run_artifact(art.path, {"x": np.zeros((1, 3, 16, 16), np.float32)})


def test_input_shapes_are_checked_against_the_model() -> None:
    model = exporter_model()
    assert [s.shape for s in fixed_input_specs(model, 1, {"x": (1, 3, 4, 5)})] == [(1, 3, 4, 5)]
    with pytest.raises(UsageError, match="the input has rank 4"):
        fixed_input_specs(model, 1, {"x": (1, 3, 4)})
    with pytest.raises(UsageError, match="dim 1 is fixed to 3 in the model, got 4"):
        fixed_input_specs(model, 1, {"x": (1, 4, 4, 5)})
    with pytest.raises(UsageError, match="the model has no input 'z'"):
        fixed_input_specs(model, 1, {"z": (1,)})
    with pytest.raises(UsageError, match="positive"):
        fixed_input_specs(model, 1, {"x": (1, 3, 0, 4)})


def test_unsupported_op_names_file_and_first_node(tmp_path: Path) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu1"),
                    helper.make_node("Celu", ["r"], ["c"], name="celu1"),
                    helper.make_node("Celu", ["c"], ["y"], name="celu2")], [], "y",
                   [1, 3, 4, 4])
    path = tmp_path / "celu.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError) as info:
        build(path, "x86", tmp_path / "a")
    assert str(info.value).startswith(f"{path}: TVM cannot import the model: node 'celu1' (Celu)")


def test_converter_failure_names_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    from tvm.relax.frontend.onnx import onnx_frontend

    def broken(*args: object, **kwargs: object) -> object:
        raise ValueError("converter exploded")

    monkeypatch.setattr(onnx_frontend.Relu, "get_converter", classmethod(lambda cls, v: broken))
    model = _model([helper.make_node("Neg", ["x"], ["n"], name="neg1"),
                    helper.make_node("Relu", ["n"], ["y"], name="relu1")], [], "y", [1, 3])
    with pytest.raises(UnsupportedModelError,
                       match=r"^m\.onnx: TVM cannot import the model: node 'relu1' \(Relu\): "
                             "converter exploded"):
        import_relax(model, [TensorSpec("x", (1, 3), "float32")], "m.onnx")
    assert onnx_frontend.ONNXGraphImporter.__dict__["_parse_value_proto"].__name__ != "parse"
