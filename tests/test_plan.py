"""The pruning plan (`--plan`): its schema, that it describes exactly what was cut,
module paths from exporter metadata, node metadata kept through passes, and the
one-line errors for framework files. None of this needs torch."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_ir.api import compress
from compress_ir.cli import main
from compress_ir.core.errors import EXIT_MODEL, EXIT_OK, EXIT_USAGE, UsageError
from compress_ir.core.plan import PLAN_SCHEMA, read_plan, validate_plan
from compress_ir.passes.analysis.prune_plan import MODULE_KEY, module_path


def _net(seed: int = 0) -> onnx.ModelProto:
    """x -> stem conv(8) -> BN -> relu -> depthwise(8) -> relu -> pw conv(6) -> GAP -> fc(4).

    Node names follow the TorchScript exporter; one node carries dynamo-style scopes,
    one an explicit module path, as the exporters and frontends.torch.export write them.
    """
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    inits = {
        "stem.weight": w(8, 3, 3, 3), "stem.bias": w(8),
        "bn.weight": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.bias": w(8),
        "bn.running_mean": w(8), "bn.running_var": rng.uniform(0.5, 2, 8).astype(np.float32),
        "dw.weight": w(8, 1, 3, 3), "pw.weight": w(6, 8, 1, 1), "fc.weight": w(4, 6),
        "fc.bias": w(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "stem.weight", "stem.bias"], ["s"], name="/stem/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["s", "bn.weight", "bn.bias", "bn.running_mean",
                                                "bn.running_var"], ["b"],
                         name="/bn/BatchNormalization"),
        helper.make_node("Relu", ["b"], ["r"], name="/Relu"),
        helper.make_node("Conv", ["r", "dw.weight"], ["d"], name="node_conv2d_1", group=8,
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r2"], name="/Relu_1"),
        helper.make_node("Conv", ["r2", "pw.weight"], ["p"], name="pointwise"),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="/fc/Gemm",
                         transB=1),
    ]
    nodes[3].metadata_props.add(key="pkg.torch.onnx.name_scopes",
                                value="['', 'layer1', 'layer1.0', 'layer1.0.dw', 'conv2d_1']")
    nodes[5].metadata_props.add(key=MODULE_KEY, value="layer1.0.pw")
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def net_path(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save_model(_net(), str(path))
    return path


def _inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_plan_describes_exactly_what_was_cut(net_path: Path, tmp_path: Path) -> None:
    out, plan_path = tmp_path / "out.onnx", tmp_path / "plan.json"
    result = compress(str(net_path), "channel-prune{ratio=0.5}", output=str(out),
                      plan=str(plan_path))
    plan = read_plan(plan_path)  # validates against PLAN_SCHEMA
    assert plan == json.loads(json.dumps(result.plan))
    assert plan["exact"] and plan["weight_changes"] == []
    (step,) = plan["steps"]
    before, after = _inits(onnx.load(str(net_path))), _inits(onnx.load(str(out)))
    # replaying the plan's slices on the input weights gives the written model's weights
    replay = dict(before)
    for s in step["slices"]:
        assert list(before[s["param"]].shape) == s["shape"]
        replay[s["param"]] = np.take(replay[s["param"]], s["kept"], axis=s["axis"])
    for name, value in after.items():
        np.testing.assert_array_equal(replay[name], value, err_msg=name)
    changed = {n for n in before if before[n].shape != after[n].shape}
    assert changed == {s["param"] for s in step["slices"]}
    assert changed  # something was pruned
    # the depthwise conv's group attribute is in the plan with its new value
    (attr,) = [a for a in step["attributes"] if a["kind"] == "conv-group"]
    assert attr["module"] == "layer1.0.dw" and attr["value"] == after["dw.weight"].shape[0]


def test_plan_groups_partition_and_rank_by_score(net_path: Path) -> None:
    result = compress(str(net_path), "channel-prune{ratio=0.5}")
    for g in result.plan["steps"][0]["groups"]:
        units = g["units"]
        assert sorted(units["kept"] + units["removed"]) == list(range(g["size"]))
        assert len(units["kept"]) == g["kept"]
        if g["status"] != "pruned":
            continue
        scores = np.array(units["scores"])
        assert len(scores) == g["size"]
        # uniform l2 allocation removes the lowest-scoring units
        assert scores[units["removed"]].max() <= scores[units["kept"]].min()
        for p in g["producers"]:
            assert sorted(p["kept"] + p["removed"]) == list(range(len(p["kept"] + p["removed"])))


def test_module_paths_from_each_exporter_convention(net_path: Path) -> None:
    step = compress(str(net_path), "channel-prune{ratio=0.5}").plan["steps"][0]
    stem_group = next(g for g in step["groups"] if g["producers"][0]["node"] == "/stem/Conv")
    assert stem_group["producers"][0]["module"] == "stem"
    consumers = {c["node"]: c["module"] for c in stem_group["consumers"]}
    assert consumers == {"pointwise": "layer1.0.pw"}  # depthwise passes through
    slices = {(s["node"], s["param"]): s for s in step["slices"]}
    assert slices[("/bn/BatchNormalization", "bn.running_var")]["module"] == "bn"
    assert slices[("node_conv2d_1", "dw.weight")]["module"] == "layer1.0.dw"
    assert set(step["modules"]) >= {"stem", "bn", "layer1.0.dw", "layer1.0.pw", "fc", ""}


@pytest.mark.parametrize(("name", "meta", "want"), [
    ("/layer1/layer1.0/conv1/Conv", {}, "layer1.0.conv1"),
    ("/block/mlp/mlp.0/MatMul", {}, "block.mlp.0"),
    ("/features/features.0/features.0.0/Conv", {}, "features.0.0"),
    ("/Relu", {}, ""),
    ("conv1", {}, None),
    ("node_x", {"pkg.torch.onnx.name_scopes": "['', 'a', 'a.b', 'conv2d']"}, "a.b"),
    ("node_x", {"pkg.torch.onnx.name_scopes": "not a list"}, None),
    ("/x/Conv", {MODULE_KEY: "explicit"}, "explicit"),
])
def test_module_path(name: str, meta: dict, want: str | None) -> None:
    assert module_path(name, meta) == want


def test_node_metadata_survives_the_pipeline(net_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    compress(str(net_path), "channel-prune{ratio=0.5},fold-bn", output=str(out))
    meta = {n.name: {p.key: p.value for p in n.metadata_props} for n in onnx.load(str(out))
            .graph.node}
    assert meta["pointwise"] == {MODULE_KEY: "layer1.0.pw"}
    assert "pkg.torch.onnx.name_scopes" in meta["node_conv2d_1"]


def test_node_metadata_survives_every_pass(net_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    pipeline = ("channel-prune{ratio=0.5,criterion=thinet},reconstruct,sparsify{sparsity=0.5},"
                "share-weights{bits=4},fold-bn")
    compress(str(net_path), pipeline, output=str(out), calibration="random:8", check=False)
    before = {n.name: list(n.metadata_props) for n in onnx.load(str(net_path)).graph.node}
    after = {n.name: list(n.metadata_props) for n in onnx.load(str(out)).graph.node}
    kept = [name for name in before if name in after and before[name]]
    assert kept == ["node_conv2d_1", "pointwise"]
    assert all(after[name] == before[name] for name in kept)


def test_plan_is_not_exact_when_weights_change(net_path: Path) -> None:
    plan = compress(str(net_path), "channel-prune{ratio=0.5},sparsify{sparsity=0.5}").plan
    assert not plan["exact"] and plan["weight_changes"] == ["sparsify"]
    plan = compress(str(net_path), "channel-prune{ratio=0.5},fold-bn").plan
    assert plan["exact"]


def test_cli_plan_flag(net_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plan_path = tmp_path / "sub" / "plan.json"
    code = main([str(net_path), "--pass", "channel-prune{ratio=0.25}", "--plan", str(plan_path),
                 "--quiet"])
    assert code == EXIT_OK
    assert read_plan(plan_path)["steps"][0]["pass"] == "channel-prune{ratio=0.25}"
    assert [p.name for p in plan_path.parent.iterdir()] == ["plan.json"]  # no temp files left
    code = main([str(net_path), "--pass", "fold-bn", "--plan", str(tmp_path / "p2.json")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1 and "channel-prune" in err
    assert not (tmp_path / "p2.json").exists()


def test_plan_from_a_recipe(net_path: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": str(net_path), "passes": [
        {"channel-prune": {"ratio": 0.25}}], "plan": str(tmp_path / "plan.json")}))
    assert main(["--config", str(recipe), "--quiet"]) == EXIT_OK
    assert read_plan(tmp_path / "plan.json")["steps"][0]["pass"] == "channel-prune{ratio=0.25}"
    assert main(["--config", str(recipe), "--plan", str(tmp_path / "p2.json"),
                 "--print-config"]) == EXIT_OK
    assert "p2.json" in capsys.readouterr().out  # the flag overrides the file


def test_validate_plan_names_the_bad_key(net_path: Path) -> None:
    plan = json.loads(json.dumps(compress(str(net_path), "channel-prune{ratio=0.5}").plan))
    del plan["steps"][0]["slices"][0]["kept"]
    with pytest.raises(UsageError, match=r"plan\.steps\[0\]\.slices\[0\]: missing key 'kept'"):
        validate_plan(plan)
    plan = json.loads(json.dumps(compress(str(net_path), "channel-prune{ratio=0.5}").plan))
    plan["steps"][0]["groups"][0]["status"] = "gone"
    with pytest.raises(UsageError, match="is not one of"):
        validate_plan(plan)
    with pytest.raises(UsageError, match="expected 'compress-ir-plan'"):
        validate_plan({**plan, "format": "other"})


def test_schema_agrees_with_jsonschema(net_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    plan = json.loads(json.dumps(compress(str(net_path), "channel-prune{ratio=0.5}").plan))
    jsonschema.validate(plan, PLAN_SCHEMA)
    del plan["steps"][0]["groups"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(plan, PLAN_SCHEMA)


def _torchscript_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/code/__torch__.py", "")
        z.writestr("model/data.pkl", b"")
    return path


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: _torchscript_zip(d / "m.pt"), "TorchScript module"),
    (lambda d: (d / "m.pth").write_bytes(b"\x80\x02junk") and d / "m.pth", "PyTorch"),
    (lambda d: (d / "saved").mkdir() or (d / "saved" / "saved_model.pb").write_bytes(b"pb")
     and d / "saved", "TensorFlow SavedModel"),
    (lambda d: (d / "m.tflite").write_bytes(b"TFL3") and d / "m.tflite", "TFLite"),
    (lambda d: (d / "m.h5").write_bytes(b"\x89HDF") and d / "m.h5", "Keras"),
])
def test_framework_files_get_a_one_line_route(
    tmp_path: Path, capsys: pytest.CaptureFixture, make: object, says: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    code = main([str(path), "--pass", "channel-prune"])
    err = capsys.readouterr().err
    assert code == EXIT_MODEL
    assert err.count("\n") == 1 and says in err and "compress-ir reads ONNX" in err
    assert "compress-ir[torch]" in err or "compress-ir[tensorflow]" in err
