"""The ONNX frontend: malformed input fails as one clear line, good input loads and
normalises, the input is never modified and outputs are written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle import param_count, prune_and_check

from compress_ir.cli import main
from compress_ir.core.errors import EXIT_MODEL, ModelLoadError
from compress_ir.frontends.onnx import load_onnx, save_onnx


def tiny_net(seed: int = 0, constants: bool = False) -> onnx.ModelProto:
    """x[1,3,8,8] -> conv1(8) -> relu1 -> conv2(4) -> y; weights as initializers or Constants."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv1.w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "conv1.b": rng.standard_normal(8).astype(np.float32),
        "conv2.w": rng.standard_normal((4, 8, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h"], name="conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", "conv2.w"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    if constants:
        consts = [
            helper.make_node("Constant", [], [name], name=f"const_{name}",
                             value=numpy_helper.from_array(value, name))
            for name, value in weights.items()
        ]
        nodes, inits = consts + nodes, []
    else:
        inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    (init,) = [i for i in model.graph.initializer if i.name == name]
    init.CopyFrom(numpy_helper.from_array(value, name))


def _load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_onnx(path)
    assert info.value.exit_code == EXIT_MODEL == 3
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --- malformed files ------------------------------------------------------------


def _truncated(tmp: Path) -> Path:
    data = tiny_net().SerializeToString()
    (tmp / "m.onnx").write_bytes(data[: len(data) // 2])
    return tmp / "m.onnx"


def _random_bytes(tmp: Path) -> Path:
    (tmp / "m.onnx").write_bytes(np.random.default_rng(1).bytes(2000))
    return tmp / "m.onnx"


def _empty(tmp: Path) -> Path:
    (tmp / "m.onnx").write_bytes(b"")
    return tmp / "m.onnx"


def _missing(tmp: Path) -> Path:
    return tmp / "does-not-exist.onnx"


def _missing_initializer(tmp: Path) -> Path:
    model = tiny_net()
    model.graph.node[2].input[1] = "conv2.missing"
    return _save(model, tmp / "m.onnx")


def _cycle(tmp: Path) -> Path:
    model = tiny_net()
    model.graph.node.extend([
        helper.make_node("Relu", ["cyc_b_out"], ["cyc_a_out"], name="cyc_a"),
        helper.make_node("Relu", ["cyc_a_out"], ["cyc_b_out"], name="cyc_b"),
        helper.make_node("Relu", ["cyc_b_out"], ["after_out"], name="after"),  # not in it
    ])
    return _save(model, tmp / "m.onnx")


def _unknown_op(tmp: Path) -> Path:
    model = tiny_net()
    model.graph.node[1].op_type = "Frobnicate"
    return _save(model, tmp / "m.onnx")


def _wrong_weight_channels(tmp: Path) -> Path:
    model = tiny_net()  # conv2 reads 8 channels, its weight says 5
    _set_init(model, "conv2.w", np.zeros((4, 5, 3, 3), np.float32))
    return _save(model, tmp / "m.onnx")


def _wrong_bias_length(tmp: Path) -> Path:
    model = tiny_net()  # conv1 has 8 filters, its bias 7 entries
    _set_init(model, "conv1.b", np.zeros(7, np.float32))
    return _save(model, tmp / "m.onnx")


def _wrong_weight_rank(tmp: Path) -> Path:
    model = tiny_net()
    _set_init(model, "conv2.w", np.zeros((4, 8, 3), np.float32))
    return _save(model, tmp / "m.onnx")


def _external(tmp: Path, location: str) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    onnx.save_model(tiny_net(), str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    (tmp / "x.bin").write_bytes((folder / "w.bin").read_bytes())  # exists, but outside
    return _save(model, folder / "m.onnx")


def _external_escape(tmp: Path) -> Path:
    return _external(tmp, "../x.bin")


def _external_absolute(tmp: Path) -> Path:
    return _external(tmp, str(tmp / "x.bin"))


def _external_missing(tmp: Path) -> Path:
    return _external(tmp, "gone.bin")


MALFORMED = {
    "truncated": (_truncated, ["not", "ONNX model"]),
    "random-bytes": (_random_bytes, ["ONNX model"]),
    "empty": (_empty, ["no graph"]),
    "missing-file": (_missing, ["no such file"]),
    "missing-initializer": (_missing_initializer, ["'conv2'", "'conv2.missing'"]),
    "cycle": (_cycle, ["cycle: 'cyc_a' -> 'cyc_b' -> 'cyc_a'"]),
    "unknown-op": (_unknown_op, ["'relu1'", "unknown op", "'Frobnicate'"]),
    "wrong-weight-channels": (_wrong_weight_channels, ["conv2", "conv2.w", "channels"]),
    "wrong-bias-length": (_wrong_bias_length, ["conv1", "conv1.b"]),
    "wrong-weight-rank": (_wrong_weight_rank, ["conv2", "invalid model"]),
    "external-escapes-folder": (_external_escape, ["'../x.bin'", "outside the model's folder"]),
    "external-absolute": (_external_absolute, ["outside the model's folder"]),
    "external-missing": (_external_missing, ["'gone.bin'", "missing"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_model_is_one_line_model_load_error(case: str, tmp_path: Path) -> None:
    make, fragments = MALFORMED[case]
    message = _load_error(make(tmp_path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_malformed_proto_names_node_without_a_file() -> None:
    model = tiny_net()
    model.graph.node[1].op_type = "Frobnicate"
    with pytest.raises(ModelLoadError, match="relu1.*Frobnicate"):
        load_onnx(model)


# --- good input ------------------------------------------------------------------


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    model = tiny_net()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    assert (tmp_path / "w.bin").stat().st_size > 0
    assert path.stat().st_size < 1000  # the weights really are outside the .onnx
    ir = load_onnx(path)
    loaded = {i.name: numpy_helper.to_array(i) for i in ir.to_proto().graph.initializer}
    for init in tiny_net().graph.initializer:  # save_model moved `model`'s data out
        np.testing.assert_array_equal(loaded[init.name], numpy_helper.to_array(init))
    assert ir.source == str(path)


def test_external_data_model_prunes_through_cli(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_net(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    out = tmp_path / "out" / "small.onnx"
    assert main([str(path), "--pass", "channel-prune", "-o", str(out), "--quiet"]) == 0
    pruned = onnx.load(str(out))
    assert param_count(pruned) < param_count(tiny_net())


def test_constant_nodes_become_initializers() -> None:
    ir = load_onnx(tiny_net(constants=True))
    assert [n.op for n in ir.graph.nodes] == ["Conv", "Relu", "Conv"]
    tensors = ir.tensors()
    for name in ("conv1.w", "conv1.b", "conv2.w"):
        assert isinstance(tensors[name], gs.Constant), name
    proto = ir.to_proto()
    assert {i.name for i in proto.graph.initializer} == {"conv1.w", "conv1.b", "conv2.w"}
    reference = {i.name: numpy_helper.to_array(i) for i in tiny_net().graph.initializer}
    for init in proto.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), reference[init.name])


def test_scalar_constant_attributes_become_initializers() -> None:
    model = tiny_net()
    model.graph.node.extend([
        helper.make_node("Constant", [], ["two"], name="c_two", value_float=2.0),
        helper.make_node("Mul", ["y", "two"], ["y2"], name="scale"),
    ])
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 8, 8]))
    ir = load_onnx(model)
    assert "Constant" not in [n.op for n in ir.graph.nodes]
    two = ir.tensors()["two"]
    assert isinstance(two, gs.Constant) and float(np.asarray(two.values)) == 2.0


def test_model_with_constant_node_weights_prunes_like_initializers() -> None:
    with_consts = prune_and_check(tiny_net(constants=True))
    with_inits = prune_and_check(tiny_net())
    assert param_count(with_consts.pruned) == param_count(with_inits.pruned)
    assert param_count(with_consts.pruned) < param_count(with_consts.original)
    a = {i.name: numpy_helper.to_array(i) for i in with_consts.pruned.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in with_inits.pruned.graph.initializer}
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["conv1.w"].shape[0] < 8 and a["conv2.w"].shape[1] == a["conv1.w"].shape[0]


def test_load_does_not_modify_the_proto() -> None:
    model = tiny_net(constants=True)
    before = model.SerializeToString()
    load_onnx(model)
    assert model.SerializeToString() == before


def test_cli_never_modifies_the_input_file(tmp_path: Path) -> None:
    path = _save(tiny_net(constants=True), tmp_path / "in.onnx")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a distinctive, old mtime
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main([str(path), "--pass", "channel-prune{ratio=0.5}", "-o", str(out),
                 "--report", str(report), "--quiet"]) == 0
    assert out.exists() and report.exists()
    assert path.read_bytes() == data
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "r.json"]


# --- atomic save -------------------------------------------------------------------


def test_save_onnx_writes_a_loadable_model_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.onnx"
    size = save_onnx(load_onnx(tiny_net()), target)
    assert size == target.stat().st_size
    assert [p.name for p in target.parent.iterdir()] == ["m.onnx"]
    onnx.checker.check_model(onnx.load(str(target)))


def test_save_onnx_replaces_an_existing_output(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old contents")
    proto = tiny_net()
    save_onnx(proto, target)
    assert target.read_bytes() == proto.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_save_onnx_gives_the_output_the_usual_file_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        target = tmp_path / "m.onnx"
        save_onnx(tiny_net(), target)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_save_onnx_renames_a_temp_file_from_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_replace = os.replace

    def spy(src, dst):  # noqa: ANN001
        calls.append((Path(src), Path(dst)))
        assert Path(src).read_bytes() == proto.SerializeToString()  # complete before rename
        return real_replace(src, dst)

    proto = tiny_net()
    monkeypatch.setattr(os, "replace", spy)
    save_onnx(proto, tmp_path / "m.onnx")
    ((src, dst),) = calls
    assert src.parent == dst.parent == tmp_path and src != dst


def test_failed_save_keeps_the_old_output_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old contents")

    def fail(src, dst):  # noqa: ANN001
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_onnx(tiny_net(), target)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
